"""Serving benchmark: every variant through a real TorchServe, open-loop, side by side.

One TorchServe (started empty) serves one archive at a time, registered through the management
API: for each variant of core/retrieval.py, the same generated catalog, the same requests
(common/loadgen.py: known users, history-only, unknown; 70/20/10) at the same offered rates.
Latency is measured from the intended send time, so queueing shows; every response's
``X-Handler-Ms`` splits the round trip into handler and frontend time; Recall@10 of each variant
is measured on what TorchServe answered, against the exact fp32 answer to the same request.

Then the knobs (batchSize, workers x threads) on the baseline and the best variant, and the scale
run (10M users x 1M items: archive size, load time, RSS of the first and a further worker,
P50/P99 exact vs approximate). Writes ``benchmarks/results/serving.json``, ``serving.md`` (the
tables) and a latency CDF per catalog size (``serving_cdf_<items>.png``).

    python -m benchmarks.serving_bench [--quick] [--work runs/bench-serving] [--catalog-items ...]
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from archives import build as B
from archives import server as S
from archives.client import TorchServeClient
from archives.store import model_store
from benchmarks.common import RESULTS, machine
from benchmarks.config import ServingBenchConfig
from benchmarks.serving_analysis import (BASELINE, cdf_plots, headline, knob_summary, markdown,
                                         parse_ints, parse_names, resummarize)
from common import loadgen
from common.cli import run_cli
from common.dataclass_args import add_dataclass_args, from_args, to_dict
from core.jsonio import write_json
from common.stats import PERCENTILE_METHOD, percentiles
from core.config import ArchiveConfig
from testkit.archives import running_server, worker_memory

log = logging.getLogger("benchmarks.serving")

# --quick: a smoke run (make test) that exercises every stage in about a minute
QUICK = ServingBenchConfig(catalog_items=3000, catalog_users=2000, dim=16, variants="fp32,sq8,hnsw",
                           rates="20", requests=60, warmup=10, knob_batch_sizes="1,8", knob_batch_delays_ms="2",
                           knob_workers_threads="1x1", knob_rates="20", scale_items=5000,
                           scale_users=20000, scale_dim=16, scale_variants="sq8,ivf",
                           scale_rates="10", scale_requests=30)


# --------------------------------------------------------------------------------------------
# Catalogs, archives, requests
# --------------------------------------------------------------------------------------------

def make_catalog(work: Path, n_users: int, n_items: int, dim: int, seed: int) -> Path:
    from benchmarks.synthetic import make_scale_artifact

    art = work / f"artifact-{n_items}x{n_users}x{dim}"
    if not (art / "config.json").exists():
        t = time.perf_counter()
        make_scale_artifact(art, n_users=n_users, n_items=n_items, dim=dim, hidden=dim, seed=seed)
        log.info("catalog %d items x %d users x d=%d generated in %.0f s", n_items, n_users, dim,
                 time.perf_counter() - t)
    return art


def build_archive(art: Path, work: Path, name: str, variant: str, *, batch_size: int, delay_ms: int,
                  workers: int, threads: int, min_workers: int | None = None) -> dict[str, Any]:
    """``min_workers`` < ``workers``: the archive starts that many (the scale run measures the
    first worker alone, then scales up through the management API)."""
    cfg = ArchiveConfig(batch_size=batch_size, max_batch_delay_ms=delay_ms if batch_size > 1 else 0,
                        min_workers=min_workers or workers, max_workers=workers, torch_threads=threads,
                        scoring=variant)
    t = time.perf_counter()
    info = B.build_from_folder(art, work, version="1", model_name=name, config=cfg,
                               archive_format="zip-store", force=True)
    built = B.build_info(work, name, "1")
    return {"name": name, "archive": info.path.name, "archive_bytes": info.path.stat().st_size,
            "build_s": round(time.perf_counter() - t, 2), "variant": variant,
            "index": {k: built.get("artifact", {}).get(k) for k in ("params", "index_build_s", "quality")},
            "batch_size": batch_size, "max_batch_delay_ms": cfg.max_batch_delay_ms,
            "workers": workers, "threads": threads}


def request_set(art: Path, n: int, seed: int) -> list[loadgen.RequestSpec]:
    """The same request mix for every variant: known user ids and history items from the catalog."""
    from core.artifact import load_artifact

    a = load_artifact(art, mmap=True)
    g = torch.Generator().manual_seed(seed)
    known = torch.randint(0, a.n_users, (min(5000, a.n_users),), generator=g).tolist()
    by_pop = torch.sort(a.popularity.float(), descending=True, stable=True).indices[:20000].tolist()
    return loadgen.request_mix([a.user_ids[u] for u in known], [a.item_ids[i] for i in by_pop], n,
                               seed=seed)


class ExactReference:
    """The exact (fp32, full scan) answer to a request, computed in-process by the same engine."""

    def __init__(self, art: Path):
        from core.artifact_adapter import load_recommender

        self.rec = load_recommender(art, scoring="fp32")
        self._cache: dict[int, list[str]] = {}

    def items(self, i: int, body: dict) -> list[str]:
        if i not in self._cache:
            from core.validation import parse_request

            out = self.rec.recommend([parse_request(body)])[0]
            self._cache[i] = [it["item_id"] for it in out.body["items"]]
        return self._cache[i]


def served_recall(result: loadgen.RunResult, reqs: list[loadgen.RequestSpec], ref: ExactReference,
                  k: int = 10) -> float | None:
    """Mean |served top-k & exact top-k| / |exact top-k| over personalized answers."""
    vals = []
    for r in result.responses:
        body = reqs[r["i"]].body
        if reqs[r["i"]].kind == "unknown" or r.get("items") is None:
            continue
        exact = ref.items(r["i"], body)[:k]
        if exact:
            vals.append(len(set(r["items"][:k]) & set(exact)) / len(exact))
    return round(sum(vals) / len(vals), 5) if vals else None


# --------------------------------------------------------------------------------------------
# One registered model under load
# --------------------------------------------------------------------------------------------

def _memory(state: S.ServerState) -> dict[str, Any]:
    mem = sorted(worker_memory(state), key=lambda m: m["pid"])
    return {"workers": [{k: round(v, 1) for k, v in m.items() if k != "pid"} for m in mem],
            "rss_mb_per_worker": round(sum(m["rss_mib"] for m in mem) / len(mem), 1) if mem else None,
            "uss_mb_per_worker": round(sum(m["uss_mib"] for m in mem) / len(mem), 1) if mem else None}


def _pct(values: list[float], q: float) -> float | None:
    """A handler-time percentile by the same function as the round trip's (loadgen.percentiles)."""
    return round(percentiles(values, [q])[0], 3) if values else None


def serve_and_load(client: TorchServeClient, state: S.ServerState, arch: dict, reqs, rates: list[int],
                   cfg: ServingBenchConfig, ref: ExactReference | None, *, catalog: dict,
                   stop_when_saturated: bool = False, memory_steps: bool = False) -> list[dict]:
    """Register ``arch``, run each rate, unregister. One row per rate (issue's run schema)."""
    name = arch["name"]
    t = time.perf_counter()
    r = client.register(arch["archive"], name, initial_workers=1 if memory_steps else arch["workers"],
                        timeout=1800)
    if r.status_code != 200:
        raise RuntimeError(f"registering {name} failed: {r.status_code} {r.text}")
    load_s = time.perf_counter() - t
    extra: dict[str, Any] = {"load_s": round(load_s, 2)}
    url = state.inference_url
    path = f"/predictions/{name}"
    if memory_steps:  # RSS of the first worker alone, then of each further one
        loadgen.run(url, reqs[:50], 20, warmup=0, path=path)
        first = _memory(state)
        t = time.perf_counter()
        client.request("management", "PUT", f"/models/{name}",
                       params={"min_worker": arch["workers"], "max_worker": arch["workers"],
                               "synchronous": "true"}, timeout=1800)
        extra["scale_up_s"] = round(time.perf_counter() - t, 2)
        loadgen.run(url, reqs[:100], 20, warmup=0, path=path)
        extra["memory_first_worker"] = first["workers"]
    rows = []
    for rate in rates:
        res = loadgen.run(url, reqs[: cfg.warmup + cfg.requests], rate, warmup=cfg.warmup, path=path,
                          seed=cfg.seed, collect=True)
        handler = [x["handler_ms"] for x in res.responses if x.get("handler_ms") is not None]
        mem = _memory(state)
        row = {**catalog, "variant": arch["variant"], "model": name, "batch_size": arch["batch_size"],
               "max_batch_delay_ms": arch["max_batch_delay_ms"], "workers": arch["workers"],
               "threads": arch["threads"], **{k: v for k, v in res.summary().items()
                                              if k not in ("rate_rps",)},
               "rate_rps": rate, "handler_p50_ms": _pct(handler, 50), "handler_p99_ms": _pct(handler, 99),
               "recall@10": served_recall(res, reqs, ref) if ref is not None else None,
               "rss_mb_per_worker": mem["rss_mb_per_worker"], "uss_mb_per_worker": mem["uss_mb_per_worker"],
               "worker_memory": mem["workers"], **extra, "_latencies": res.latencies_ms}
        rows.append(row)
        log.info("%-28s %5d rps: p50 %7.2f p99 %8.2f ms (handler p99 %s), %.0f rps, %d errors, "
                 "recall %s", name, rate, row["p50_ms"], row["p99_ms"], row["handler_p99_ms"],
                 row["throughput_rps"], row["errors"], row["recall@10"])
        if stop_when_saturated and (row["errors"] or row["throughput_rps"] < 0.9 * rate
                                    or row["p99_ms"] > 20 * cfg.p99_budget_ms):
            break
    client.unregister(name, "1")
    return rows


# --------------------------------------------------------------------------------------------
# The three parts
# --------------------------------------------------------------------------------------------

def run_variants(cfg: ServingBenchConfig, work: Path, client, state) -> tuple[list[dict], dict]:
    art = make_catalog(work, cfg.catalog_users, cfg.catalog_items, cfg.dim, cfg.seed)
    reqs = request_set(art, cfg.warmup + cfg.requests, cfg.seed)
    ref = ExactReference(art)
    catalog = {"catalog_items": cfg.catalog_items, "users": cfg.catalog_users, "dim": cfg.dim}
    rows, builds = [], {}
    for v in parse_names(cfg.variants):
        arch = build_archive(art, work, f"c{cfg.catalog_items}-{v}", v, batch_size=cfg.batch_size,
                             delay_ms=cfg.max_batch_delay_ms, workers=cfg.workers, threads=cfg.threads)
        builds[v] = arch
        log.info("built %s: %.1f MB in %.1f s, index %s", arch["archive"], arch["archive_bytes"] / 1e6,
                 arch["build_s"], arch["index"])
        rows += serve_and_load(client, state, arch, reqs, parse_ints(cfg.rates), cfg, ref, catalog=catalog)
    return rows, builds


def run_knobs(cfg: ServingBenchConfig, work: Path, client, state, best: str) -> tuple[list[dict], dict]:
    art = make_catalog(work, cfg.catalog_users, cfg.catalog_items, cfg.dim, cfg.seed)
    reqs = request_set(art, cfg.warmup + cfg.requests, cfg.seed)
    catalog = {"catalog_items": cfg.catalog_items, "users": cfg.catalog_users, "dim": cfg.dim}
    rows = []
    for v in dict.fromkeys([BASELINE, best]):
        for bs in parse_ints(cfg.knob_batch_sizes):
            arch = build_archive(art, work, f"k-{v}-b{bs}", v, batch_size=bs,
                                 delay_ms=cfg.max_batch_delay_ms, workers=cfg.workers, threads=cfg.threads)
            rows += serve_and_load(client, state, arch, reqs, parse_ints(cfg.knob_rates), cfg, None,
                                   catalog=catalog, stop_when_saturated=True)
        for delay in parse_ints(cfg.knob_batch_delays_ms):
            if delay == cfg.max_batch_delay_ms:
                continue  # measured above
            arch = build_archive(art, work, f"k-{v}-b{cfg.batch_size}-d{delay}", v, batch_size=cfg.batch_size,
                                 delay_ms=delay, workers=cfg.workers, threads=cfg.threads)
            rows += serve_and_load(client, state, arch, reqs, parse_ints(cfg.knob_rates), cfg, None,
                                   catalog=catalog, stop_when_saturated=True)
        for wt in parse_names(cfg.knob_workers_threads):
            w, t = (int(x) for x in wt.split("x"))
            if (w, t) == (cfg.workers, cfg.threads):
                continue  # measured above with the default batch size
            arch = build_archive(art, work, f"k-{v}-w{w}x{t}", v, batch_size=cfg.batch_size,
                                 delay_ms=cfg.max_batch_delay_ms, workers=w, threads=t)
            rows += serve_and_load(client, state, arch, reqs, parse_ints(cfg.knob_rates), cfg, None,
                                   catalog=catalog, stop_when_saturated=True)
    return rows, knob_summary(rows, cfg, best)


def run_scale(cfg: ServingBenchConfig, work: Path, client, state) -> list[dict]:
    art = make_catalog(work, cfg.scale_users, cfg.scale_items, cfg.scale_dim, cfg.seed)
    reqs = request_set(art, cfg.warmup + cfg.scale_requests, cfg.seed)
    ref = ExactReference(art)
    catalog = {"catalog_items": cfg.scale_items, "users": cfg.scale_users, "dim": cfg.scale_dim}
    scale_cfg = dataclasses.replace(cfg, requests=cfg.scale_requests)
    artifact_bytes = sum(f.stat().st_size for f in art.iterdir() if f.is_file())
    rows = []
    for v in parse_names(cfg.scale_variants):
        arch = build_archive(art, work, f"s{cfg.scale_items}-{v}", v, batch_size=cfg.batch_size,
                             delay_ms=cfg.max_batch_delay_ms, workers=cfg.workers, threads=cfg.threads,
                             min_workers=1)
        log.info("built %s: %.2f GB in %.0f s", arch["archive"], arch["archive_bytes"] / 1e9, arch["build_s"])
        got = serve_and_load(client, state, arch, reqs, parse_ints(cfg.scale_rates), scale_cfg, ref,
                             catalog=catalog, memory_steps=True)
        for r in got:
            r.update({"archive_bytes": arch["archive_bytes"], "artifact_bytes": artifact_bytes,
                      "build_s": arch["build_s"], "index": arch["index"]})
        (work / "model-store" / arch["archive"]).unlink(missing_ok=True)  # gigabytes each
        rows += got
    return rows


# --------------------------------------------------------------------------------------------
# The floor: what one request must cost on this machine
# --------------------------------------------------------------------------------------------

def _best_of(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_floor(items: list[int], dim: int, threads: int = 1) -> dict[str, Any]:
    """Memory read bandwidth and matmul rates on one core (what a worker gets), and the time a
    one-user exact scan cannot beat: bytes of the item matrix over bandwidth, and operations
    over the measured kernel rate."""
    torch.set_num_threads(threads)
    big = torch.ones(256 * 2**20 // 4)  # 256 MiB, far larger than the caches
    bw = big.numel() * 4 / _best_of(lambda: big.sum(), 5)
    out: dict[str, Any] = {"threads": threads, "read_bandwidth_gb_s": round(bw / 1e9, 2), "catalogs": {}}
    for n in items:
        n_meas = min(n, 200_000)  # rates measured on <= 200k rows, scaled linearly
        w = torch.randn(n_meas, dim)
        w8 = torch.randint(-127, 128, (n_meas, dim), dtype=torch.int8)
        row: dict[str, Any] = {}
        for b in (1, 8, 32):
            u = torch.randn(b, dim)
            u8 = torch.randint(-127, 128, (b, dim), dtype=torch.int8)
            f32 = 2 * b * n_meas * dim / _best_of(lambda: u @ w.T, 10)
            try:
                i8 = 2 * b * n_meas * dim / _best_of(lambda: torch._int_mm(u8, w8.T), 10)
            except RuntimeError:
                i8 = float("nan")
            row[f"batch{b}"] = {"fp32_gflop_s": round(f32 / 1e9, 1), "int8_gop_s": round(i8 / 1e9, 1)}
        fp32_bytes, int8_bytes = n * dim * 4, n * dim
        ops = 2 * n * dim
        row["one_user_floor_ms"] = {
            "fp32_bytes_over_bandwidth": round(fp32_bytes / bw * 1e3, 3),
            "int8_bytes_over_bandwidth": round(int8_bytes / bw * 1e3, 3),
            "fp32_ops_over_rate": round(ops / (row["batch1"]["fp32_gflop_s"] * 1e9) * 1e3, 3),
            "int8_ops_over_rate": round(ops / (row["batch1"]["int8_gop_s"] * 1e9) * 1e3, 3),
        }
        row["bytes_per_scan"] = {"fp32": fp32_bytes, "int8": int8_bytes}
        out["catalogs"][str(n)] = row
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/bench-serving", help="catalogs, archives, TorchServe run folder")
    p.add_argument("--results", default=str(RESULTS), help="where serving.json/.md/.png go")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke run), results under --work")
    p.add_argument("--parts", default="floor,variants,knobs,scale")
    p.add_argument("--resummarize", metavar="SERVING_JSON",
                   help="no runs: recompute the headline, knob summary and serving.md of an "
                        "existing serving.json (they are pure functions of its runs)")
    add_dataclass_args(p, ServingBenchConfig)
    p.set_defaults(fn=_run)
    return run_cli(p, argv)


def _run(a: argparse.Namespace) -> int:
    if a.resummarize:
        return resummarize(Path(a.resummarize))
    cfg = QUICK if a.quick else from_args(ServingBenchConfig, a)
    work = Path(a.work).resolve()
    results = Path(a.results) if not a.quick else work / "results"
    results.mkdir(parents=True, exist_ok=True)
    parts = set(parse_names(a.parts))
    shutil.rmtree(model_store(work), ignore_errors=True)
    model_store(work).mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"machine": machine(), "config": to_dict(cfg), "runs": [],
                           "percentile_method": PERCENTILE_METHOD,
                           "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    t0 = time.perf_counter()
    if "floor" in parts:
        out["floor"] = {"catalog": measure_floor([cfg.catalog_items], cfg.dim),
                        "scale": measure_floor([cfg.scale_items], cfg.scale_dim)}
        log.info("floor: %s", out["floor"])
    # start empty: models are registered one at a time through the management API
    with running_server(work, config="dev", models={}, extra_properties={"job_queue_size": "10000"}) \
            as state:
        client = TorchServeClient(state, timeout=1800)
        best = None
        if "variants" in parts:
            rows, builds = run_variants(cfg, work, client, state)
            out["runs"] += [{**r, "part": "variants"} for r in rows]
            out["builds"] = builds
            out["headline"] = headline(rows, cfg)
            best = out["headline"].get("best")
            log.info("headline: %s", out["headline"])
        if "knobs" in parts:
            rows, summary = run_knobs(cfg, work, client, state, best or "sq8")
            out["runs"] += [{**r, "part": "knobs"} for r in rows]
            out["knobs"] = summary
        if "scale" in parts and cfg.scale_users > 0:
            out["runs"] += [{**r, "part": "scale"} for r in run_scale(cfg, work, client, state)]
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    out["plots"] = cdf_plots(out["runs"], results)
    for r in out["runs"]:
        r.pop("_latencies", None)
    out.setdefault("headline", {})
    write_json(results / "serving.json", out)
    (results / "serving.md").write_text(markdown(out))
    print(markdown(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
