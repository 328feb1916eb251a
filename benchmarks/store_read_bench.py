"""The recent-event store's read on its own: what the gateway's per-request read costs without
the rest of the stack competing for the two cores.

``python -m benchmarks.store_read_bench`` (``make bench-store``): a real ``redis-server`` on
loopback and the embedded store, each holding ``--users`` users with ``--events`` recent events;
reads as the gateway does them (``RecentEvents.read``'s call: ``store.recent(user,
timeout_s=...)``, uvloop), in alternating rounds per store: sequential, then ``--concurrency``
at a time. Latency per read (P50/P99, ``common.stats``), the process's CPU per read, and the
share past the read deadline. Writes ``benchmarks/results/store_read.{json,md}``.

Read it next to ``make bench-gateway``'s ``fast+redis`` row, which measures the same read from
the gateway's histogram under 300 req/s with TorchServe and the load generator on the same two
cores: the difference between the two is scheduling, not the store.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, machine, write_results
from common import stats
from common.cli import run_cli
from realtime import redis_server
from realtime.config import RealtimeConfig
from realtime.store import Event, MemoryStore, RedisStore, StoreTimeout


async def _fill(store, users: int, events: int) -> None:
    now = time.time()
    batch = [Event(f"u{u}", str(i), now - 100 + i) for u in range(users) for i in range(events)]
    for k in range(0, len(batch), 1000):
        await store.append(batch[k:k + 1000])


async def _round(store, n: int, users: int, concurrency: int, deadline_s: float) -> dict:
    lat: list[float] = []
    late = 0

    async def one(i: int) -> None:
        nonlocal late
        t = time.perf_counter()
        try:
            await store.recent(f"u{i % users}", timeout_s=deadline_s)
        except StoreTimeout:
            late += 1
        lat.append((time.perf_counter() - t) * 1000)

    cpu = time.process_time()
    for start in range(0, n, concurrency):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + concurrency))))
    cpu_us = (time.process_time() - cpu) / n * 1e6
    p50, p99 = stats.percentiles(lat, [50, 99])
    return {"p50_ms": round(p50, 4), "p99_ms": round(p99, 4), "cpu_us_per_read": round(cpu_us, 1),
            "past_deadline": late, "reads": n}


async def _main(a: argparse.Namespace, url: str) -> dict:
    cfg = RealtimeConfig(redis_url=url, key_prefix="bench:")
    stores = {"memory": MemoryStore(RealtimeConfig()), "redis": RedisStore(cfg)}
    for s in stores.values():
        await _fill(s, a.users, a.events)
    rounds: list[dict] = []
    for k in range(a.rounds):
        for name, s in stores.items():
            for conc in (1, a.concurrency):
                r = await _round(s, a.reads, a.users, conc, a.deadline_ms / 1000)
                rounds.append({"round": k + 1, "store": name, "concurrency": conc, **r})
                print(f"[store-read] round {k + 1} {name:6s} x{conc:<3d} p50 {r['p50_ms']:.3f} "
                      f"p99 {r['p99_ms']:.3f} ms cpu {r['cpu_us_per_read']:.0f} us", flush=True)
    await stores["redis"].close()
    pooled = {}
    for name in stores:
        for conc in (1, a.concurrency):
            rs = [r for r in rounds if r["store"] == name and r["concurrency"] == conc]
            pooled[f"{name}_x{conc}"] = {
                "p50_ms": round(sorted(r["p50_ms"] for r in rs)[len(rs) // 2], 4),
                "p99_ms_per_round": [r["p99_ms"] for r in rs],
                "p99_ms": round(max(r["p99_ms"] for r in rs), 4),
                "cpu_us_per_read": round(sum(r["cpu_us_per_read"] for r in rs) / len(rs), 1)}
    return {"rounds": rounds, "headline": pooled}


def markdown(res: dict) -> str:
    c = res["config"]
    lines = ["# Recent-event store reads (benchmarks/store_read_bench.py)", "",
             f"{c['users']} users x {c['events']} recent events, {c['reads']} reads per round, "
             f"{c['rounds']} alternating rounds, read deadline {c['deadline_ms']} ms; Redis "
             f"{res['redis_version']} on loopback; {res['machine']['cpus']} cores, no TorchServe, "
             "gateway or load generator competing.", "",
             "| store, concurrency | P50 ms (median round) | P99 ms (worst round; per round) | "
             "CPU us per read |", "|---|---|---|---|"]
    for key, h in res["headline"].items():
        lines.append(f"| {key.replace('_x', ', x')} | {h['p50_ms']:.3f} | {h['p99_ms']:.3f} ("
                     + ", ".join(f"{x:.3f}" for x in h["p99_ms_per_round"])
                     + f") | {h['cpu_us_per_read']:.0f} |")
    return "\n".join(lines + [""])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.store_read_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=600)
    p.add_argument("--events", type=int, default=20)
    p.add_argument("--reads", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--deadline-ms", type=float, default=5.0)
    p.add_argument("--no-write", action="store_true")
    p.set_defaults(fn=_run)
    return run_cli(p, argv, logs=False)


def _run(a: argparse.Namespace) -> int:
    import uvloop

    run = Path(tempfile.mkdtemp(prefix="store-read-"))
    inst = redis_server.start(run, 0)
    try:
        import subprocess
        version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                 text=True).stdout.split()[2].removeprefix("v=")
        res = {"machine": machine(), "config": {k: v for k, v in vars(a).items() if k != "fn"}, "redis_version": version,
               **uvloop.run(_main(a, inst.url))}
    finally:
        redis_server.stop(run)
    md = markdown(res)
    print(md)
    if not a.no_write:
        path = write_results("store_read", res)
        (RESULTS / "store_read.md").write_text(md)
        print(f"wrote {path} and {RESULTS / 'store_read.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
