"""The latency cost of the model's vector size through TorchServe: the serving benchmark's
headline setup at the previous dimension and at today's ``TrainConfig.dim``, side by side.

Why: the quality work (issue 14) moved the default model from d = 256 to d = 600. Every request
runs the user tower for history-only and unknown users (EmbeddingBag over the catalog, INT8
where the variant says so) and scores the catalog with d-wide vectors, so the vector size is
what the new configuration costs at serving time. The budget: P99 at the headline rate at most
20% above the old dimension's.

Same catalog shape, variant, rate, request mix and TorchServe settings as the serving
benchmark's headline (``ServingBenchConfig``: 100,000 items x 200,000 users, ``ivf``, 300 req/s,
batchSize 8, 2 workers x 1 thread); one TorchServe; the dimensions alternate over ``--rounds``
rounds so drift on a noisy machine hits both alike, and the pooled latencies are compared.

    python -m benchmarks.tower_bench [--dims 256,600] [--rounds 6] [--rate 300]

Writes ``benchmarks/results/tower.json`` and ``tower.md``.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

from archives.client import TorchServeClient
from archives.store import model_store
from benchmarks.common import RESULTS, machine
from benchmarks.config import ServingBenchConfig
from benchmarks.serving_bench import (ExactReference, build_archive, make_catalog, request_set,
                                      served_recall)
from common import loadgen
from common.loadgen import percentiles
from common.cli import run_cli
from core.jsonio import write_json
from common.tables import table
from testkit.archives import running_server
from training.config import TrainConfig

log = logging.getLogger("benchmarks.tower")
P99_BUDGET = 1.20


def run(dims: list[int], rounds: int, rate: int, work: Path, cfg: ServingBenchConfig) -> dict:
    catalogs = {d: make_catalog(work, cfg.catalog_users, cfg.catalog_items, d, cfg.seed) for d in dims}
    reqs = {d: request_set(catalogs[d], cfg.warmup + cfg.requests, cfg.seed) for d in dims}
    refs = {d: ExactReference(catalogs[d]) for d in dims}
    archives = {d: build_archive(catalogs[d], work, f"d{d}", "ivf", batch_size=cfg.batch_size,
                                 delay_ms=cfg.max_batch_delay_ms, workers=cfg.workers,
                                 threads=cfg.threads) for d in dims}
    runs: list[dict] = []
    pooled: dict[int, list[float]] = {d: [] for d in dims}
    handler: dict[int, list[float]] = {d: [] for d in dims}
    with running_server(work, config="dev", models={},
                        extra_properties={"job_queue_size": "10000"}) as state:
        client = TorchServeClient(state, timeout=1800)
        for d in dims:
            r = client.register(archives[d]["archive"], archives[d]["name"],
                                initial_workers=cfg.workers, timeout=1800)
            if r.status_code != 200:
                raise RuntimeError(f"registering d={d} failed: {r.status_code} {r.text}")
        for rnd in range(1, rounds + 1):
            for d in (dims if rnd % 2 else dims[::-1]):
                res = loadgen.run(state.inference_url, reqs[d][: cfg.warmup + cfg.requests], rate,
                                  warmup=cfg.warmup, path=f"/predictions/{archives[d]['name']}",
                                  seed=cfg.seed + rnd, collect=True)
                hms = [x["handler_ms"] for x in res.responses if x.get("handler_ms") is not None]
                row = {"dim": d, "round": rnd, **res.summary(),
                       "handler_p99_ms": percentiles(hms)["p99_ms"] if hms else None,
                       "recall@10": served_recall(res, reqs[d], refs[d])}
                runs.append(row)
                pooled[d] += res.latencies_ms
                handler[d] += hms
                log.info("round %d d=%d: p50 %.2f p99 %.2f ms, %.0f rps, %d errors, late %d",
                         rnd, d, row["p50_ms"], row["p99_ms"], row["throughput_rps"],
                         row["errors"], row["late_sends"])
    summary = {str(d): {**percentiles(pooled[d]),
                        "handler_p99_ms": percentiles(handler[d])["p99_ms"] if handler[d] else None,
                        "errors": sum(r["errors"] for r in runs if r["dim"] == d),
                        "late_sends": sum(r["late_sends"] for r in runs if r["dim"] == d),
                        "n": sum(r["n"] for r in runs if r["dim"] == d),
                        "archive_bytes": archives[d]["archive_bytes"]} for d in dims}
    old, new = str(dims[0]), str(dims[-1])
    ratio = summary[new]["p99_ms"] / summary[old]["p99_ms"]
    return {"dims": dims, "rate_rps": rate, "rounds": rounds, "variant": "ivf", "runs": runs,
            "pooled": summary, "p99_ratio": round(ratio, 3),
            "p50_ratio": round(summary[new]["p50_ms"] / summary[old]["p50_ms"], 3),
            "budget_ratio": P99_BUDGET, "within_budget": ratio <= P99_BUDGET}


def markdown(res: dict) -> str:
    rows = [[f"d = {d}", s["p50_ms"], s["p99_ms"], s["handler_p99_ms"], s["errors"],
             f"{100 * s['late_sends'] / max(1, s['n']):.1f}%", round(s["archive_bytes"] / 1e6)]
            for d, s in res["pooled"].items()]
    c = res["config"]
    return "\n".join([
        "# Vector size through TorchServe (benchmarks/tower_bench.py)", "",
        f"{c['catalog_items']:,} items x {c['catalog_users']:,} users, `{res['variant']}` archive, "
        f"{res['rate_rps']} req/s open loop (the serving benchmark's headline), batchSize "
        f"{c['batch_size']}, {c['workers']} workers x {c['threads']} thread, {res['rounds']} "
        f"alternating rounds of {c['requests']} measured requests per dimension, pooled. "
        f"Load average {res['machine']['load_avg_at_start'][0]} at start.", "",
        table(["model", "P50 ms", "P99 ms", "handler P99 ms", "errors", "late sends", "archive MB"],
              rows), "",
        f"P99 ratio d = {res['dims'][-1]} / d = {res['dims'][0]}: **{res['p99_ratio']:.3f}** "
        f"(budget {res['budget_ratio']:.2f}: {'met' if res['within_budget'] else 'NOT met'}); "
        f"P50 ratio {res['p50_ratio']:.3f}.", ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tower_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", default=f"256,{TrainConfig.dim}", help="old,new")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--rate", type=int, default=300)
    p.add_argument("--requests", type=int, default=ServingBenchConfig.requests)
    p.add_argument("--work", default="runs/bench-tower")
    p.add_argument("--results", default=str(RESULTS))
    p.set_defaults(fn=_run)
    return run_cli(p, argv)


def _run(a: argparse.Namespace) -> int:
    cfg = ServingBenchConfig(requests=a.requests)
    dims = [int(x) for x in a.dims.split(",")]
    work = Path(a.work).resolve()
    shutil.rmtree(model_store(work), ignore_errors=True)
    model_store(work).mkdir(parents=True, exist_ok=True)
    info = machine()
    t0 = time.perf_counter()
    res = {"machine": info, "config": {"catalog_items": cfg.catalog_items,
                                       "catalog_users": cfg.catalog_users,
                                       "batch_size": cfg.batch_size, "workers": cfg.workers,
                                       "threads": cfg.threads, "requests": cfg.requests,
                                       "warmup": cfg.warmup},
           **run(dims, a.rounds, a.rate, work, cfg)}
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "tower.json", res)
    (out / "tower.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
