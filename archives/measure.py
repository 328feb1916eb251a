"""Measure the served recommender: worker memory (RSS/USS/PSS) and handler vs round-trip latency.

    python -m archives.measure --out runs/measure [--items 200000 --dim 64 --hidden 128]
                               [--artifact DIR] [--requests 500] [--workers 2]

Builds two archives of the same artifact (``recsys-int8``: INT8 sq8 catalog scoring,
``recsys-fp32``: float32), serves both (dev config, free ports), sends sequential single
requests from one keep-alive client (a mix of known users, history-only users and fallbacks),
and reads the handler's own per-batch timings from the model metrics log
(``RecHandlerLatencySeconds``, ``RecScoringLatencySeconds``). Writes ``OUT/measure.json``.
Without ``--artifact`` a random artifact of the given size is generated.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import time
from pathlib import Path

import requests

from archives import build as B
from archives.testing import make_random_artifact, running_server, worker_memory


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def _summary(xs_s: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in xs_s]
    return {"n": len(ms), "p50_ms": round(_pct(ms, 50), 3), "p95_ms": round(_pct(ms, 95), 3),
            "p99_ms": round(_pct(ms, 99), 3), "mean_ms": round(statistics.fmean(ms), 3) if ms else None}


def _handler_metrics(run_dir: Path, model: str, name: str) -> list[float]:
    """Values the handler emitted for metric ``name`` (in prometheus mode TorchServe logs them in
    ts_log.log, each line twice; a value string is unique enough to de-duplicate)."""
    pat = re.compile(rf"\[METRICS\]{name}\.\w+:([0-9.eE+-]+)\|#ModelName:{re.escape(model)},")
    vals: dict[str, None] = {}
    for f in sorted((run_dir / "logs").glob("*.log")):
        for line in f.read_text(errors="replace").splitlines():
            m = pat.search(line)
            if m:
                vals.setdefault(m.group(1), None)
    return [float(v) for v in vals]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--artifact", help="serving artifact folder (default: a random one)")
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-batch-delay", type=int, default=5)
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    art = Path(a.artifact) if a.artifact else out / "artifact"
    if not a.artifact and not (art / "config.json").exists():
        t = time.time()
        make_random_artifact(art, n_users=a.users, n_items=a.items, dim=a.dim, hidden=a.hidden)
        print(f"random artifact {a.items} items x {a.dim} in {time.time() - t:.1f} s")
    for name, scoring in (("recsys-int8", "auto"), ("recsys-fp32", "fp32")):
        if not (out / "model-store" / f"{name}-v1.mar").exists():
            B.build_from_folder(art, out, version="1", model_name=name, archive_format="zip-store",
                                config=B.ArchiveConfig(batch_size=8, max_batch_delay_ms=a.max_batch_delay,
                                                     min_workers=a.workers, max_workers=a.workers,
                                                     scoring=scoring))
    info = B.build_info(out, "recsys-int8", "1")["artifact"]
    users = info["example_users"]
    items = info["popular_items"]
    result: dict = {"artifact": {k: info.get(k) for k in ("n_items", "n_users", "dim", "int8_quality",
                                                          "pack_bytes")},
                    "workers_per_model": a.workers, "requests": a.requests}
    with running_server(out, config="dev", models={"recsys-int8": "recsys-int8-v1.mar",
                                                   "recsys-fp32": "recsys-fp32-v1.mar"}) as st:
        s = requests.Session()
        rng = random.Random(0)
        bodies = []
        for i in range(a.requests):
            kind = i % 4
            if kind in (0, 1):
                bodies.append({"user_id": rng.choice(users), "k": 10})
            elif kind == 2:
                bodies.append({"user_id": f"new-{i}", "k": 10, "history": rng.sample(items, 3)})
            else:
                bodies.append({"user_id": f"anon-{i}", "k": 10})
        for model in ("recsys-int8", "recsys-fp32"):
            url = f"{st.inference_url}/predictions/{model}"
            for b in bodies[:20]:  # warm-up
                s.post(url, json=b)
            rt = []
            for b in bodies:
                t = time.perf_counter()
                r = s.post(url, json=b)
                rt.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
            time.sleep(1.5)  # let the metrics log flush
            handler = _handler_metrics(st.run_dir, model, "RecHandlerLatencySeconds")[-len(bodies):]
            scoring = _handler_metrics(st.run_dir, model, "RecScoringLatencySeconds")[-len(bodies):]
            result[model] = {"round_trip": _summary(rt), "handler": _summary(handler),
                             "scoring": _summary(scoring)}
        mem = worker_memory(st)
        result["worker_memory_mib"] = [{k: round(v, 1) for k, v in m.items()} for m in mem]
    (out / "measure.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
