"""ETL throughput: events/s of `generate` and `prepare` on local[2] at 1M and 10M events.

Each size runs in one SparkSession, started (and its JVM warmed by a tiny job) before timing,
so the figures are job time, not JVM start-up. Peak memory is the RSS of this process plus
Spark's JVM, sampled every 0.2 s. Writes benchmarks/results/etl.json and prints the table.

    python -m benchmarks.etl_bench [--sizes 1000000,10000000] [--work /tmp/etl-bench]
"""
from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

from benchmarks.common import PeakRss, machine, write_results
from etl.config import GenerateConfig, PrepareConfig, SparkConfig
from common.cli import run_cli
from common.tables import table
from common.schema import EtlLayout

log = logging.getLogger("benchmarks.etl")


def shape_for(events: int) -> tuple[int, int]:
    """Users and items for a size: ~20 events per user, ~100 per item (a retail-like log)."""
    return max(1000, events // 20), max(500, events // 100)


def run_size(spark, events: int, work: Path, partitions: int) -> list[dict]:
    from etl.generate import generate
    from etl.prepare import prepare

    users, items = shape_for(events)
    layout = EtlLayout.under(work / f"e{events}")
    shutil.rmtree(layout.root, ignore_errors=True)
    cfg = GenerateConfig(users=users, items=items, events=events, partitions=partitions)
    rows = []
    with PeakRss() as mem:
        t = time.perf_counter()
        generate(spark, cfg, layout)
        gen_s = time.perf_counter() - t
    rows.append({"step": "generate", "events": events, "users": users, "items": items,
                 "seconds": round(gen_s, 1), "events_per_s": round(events / gen_s),
                 "peak_rss_mb": mem.peak_mb})
    log.info("generate %d events: %.1f s", events, gen_s)
    with PeakRss() as mem:
        t = time.perf_counter()
        result = prepare(spark, layout.raw_events, layout.raw_catalog, layout, PrepareConfig())
        prep_s = time.perf_counter() - t
    rows.append({"step": "prepare", "events": events, "users": users, "items": items,
                 "seconds": round(prep_s, 1), "events_per_s": round(events / prep_s),
                 "peak_rss_mb": mem.peak_mb, "counts": result.counts,
                 "input_bytes": sum(p.stat().st_size for p in Path(layout.raw_events).rglob("*.parquet"))})
    log.info("prepare %d events: %.1f s", events, prep_s)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--work", default="/tmp/etl-bench")
    parser.add_argument("--driver-memory", default="6g")
    parser.add_argument("--shuffle-partitions", type=int, default=16)
    parser.set_defaults(fn=_run)
    return run_cli(parser, argv)


def _run(args: argparse.Namespace) -> int:
    from etl.spark import get_spark

    spark_cfg = SparkConfig(master="local[2]", driver_memory=args.driver_memory,
                            shuffle_partitions=args.shuffle_partitions)
    spark = get_spark(spark_cfg)
    spark.range(1000).selectExpr("sum(id)").collect()  # warm the JVM before timing
    info = machine()
    runs = []
    for size in (int(s) for s in args.sizes.split(",")):
        runs += run_size(spark, size, Path(args.work), partitions=max(2, size // 1_000_000 * 2))
    spark.stop()
    payload = {"machine": info, "spark": {"master": spark_cfg.master, "driver_memory": args.driver_memory,
                                          "shuffle_partitions": args.shuffle_partitions},
               "runs": runs}
    path = write_results("etl", payload)
    print(table(["step", "events", "users", "items", "seconds", "events/s", "peak RSS MB"],
                [[r["step"], r["events"], r["users"], r["items"], r["seconds"], r["events_per_s"],
                  r["peak_rss_mb"]] for r in runs]))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
