"""ETL command line: ``python -m etl {generate,ingest,prepare,run,emr-submit} --help``."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common.dataclass_args import add_dataclass_args, from_args, to_dict

from etl.config import GenerateConfig, PrepareConfig, SparkConfig
from common.cli import run_cli
from common.tables import table
from common.schema import EtlLayout
from core.storage import as_path, is_local
from etl.readers import InputError


def _spark(args: argparse.Namespace):
    from etl.spark import get_spark

    return get_spark(from_args(SparkConfig, args, prefix="spark-"))


def _print_summary(result) -> None:
    c = result.counts
    print("\nETL summary (events)")
    print(table(["input", "kept", "filtered", "duplicates", "quarantined"],
                [[c["input"], c["kept"], c["filtered"], c["duplicates"], c["quarantined"]]]))
    rows = [[scheme, s["train"], s["valid"], s["test"]] for scheme, s in result.split_sizes.items()]
    print("\nSplits ((user, item) pairs)")
    print(table(["scheme", "train", "valid", "test"], rows))
    reasons = [[f"quarantined: {k}", v] for k, v in result.quarantine_reasons.items()]
    reasons += [[f"filtered: {k}", v] for k, v in result.filtered_reasons.items()]
    if reasons:
        print("\nWhy rows were not kept (a quarantined row may have several reasons)")
        print(table(["reason", "rows"], reasons))
    print(f"\nusers {result.index_sizes['users']:,}  items {result.index_sizes['items']:,}  "
          f"catalog quarantined {result.catalog['quarantined']:,}  ({result.seconds:.1f} s)")


def cmd_generate(args: argparse.Namespace) -> int:
    from etl.generate import generate

    stats = generate(_spark(args), from_args(GenerateConfig, args, prefix="gen-"),
                     EtlLayout.under(args.out))
    print(json.dumps(stats, indent=2))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from etl.ingest import ingest

    print(json.dumps(ingest(_spark(args), Path(args.dataset), EtlLayout.under(args.out)), indent=2))
    return 0


def _prepare(spark, args: argparse.Namespace, inputs_meta: dict) -> int:
    from etl.manifest import describe_inputs
    from etl.prepare import prepare

    layout = EtlLayout.under(args.out)
    events = ([as_path(p) for p in args.events.split(",") if p] if args.events
              else [layout.raw_events])
    catalog = as_path(args.catalog) if args.catalog else layout.raw_catalog
    previous = EtlLayout(as_path(args.previous_maps)) if args.previous_maps else None
    meta = {"events": ",".join(map(str, events)), "catalog": str(catalog), **inputs_meta}
    local = [p for p in (*events, catalog) if is_local(p) and p.exists()]
    if local:
        meta["files"] = describe_inputs(*local)
    result = prepare(spark, events, catalog, layout, from_args(PrepareConfig, args), previous, meta)
    _print_summary(result)
    print(f"\nmanifest: {layout.manifest}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    return _prepare(_spark(args), args, {})


def cmd_run(args: argparse.Namespace) -> int:
    """The demo's ETL: generate (or ingest ``--dataset``) into OUT/etl/raw, then prepare."""
    spark = _spark(args)
    layout = EtlLayout.under(args.out)
    started = time.time()
    if args.dataset:
        from etl.ingest import ingest

        source = ingest(spark, Path(args.dataset), layout)
    else:
        from etl.generate import generate

        cfg = from_args(GenerateConfig, args, prefix="gen-")
        generate(spark, cfg, layout)
        source = {"dataset": "generated", "generator": to_dict(cfg)}
    code = _prepare(spark, args, {"source": source})
    print(f"ETL finished in {time.time() - started:.1f} s")
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m etl", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_spark(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        add_dataclass_args(p, SparkConfig, prefix="spark-")
        return p

    p = with_spark(sub.add_parser("generate", help="write a synthetic raw event log and catalog"))
    p.add_argument("--out", required=True, help="run folder; writes OUT/etl/raw/{events,catalog}")
    add_dataclass_args(p, GenerateConfig, prefix="gen-")
    p.set_defaults(fn=cmd_generate)

    p = with_spark(sub.add_parser("ingest", help="convert a MovieLens folder to the raw layout"))
    p.add_argument("--dataset", required=True, help="ml-latest(-small), ml-100k or ml-1m folder")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_ingest)

    def prepare_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", required=True, help="run folder; writes OUT/etl/...")
        p.add_argument("--events", help="raw events (CSV/JSON lines/Parquet); several folders "
                                        "comma-separated, e.g. the original events and the "
                                        "gateway's training-event log; default OUT/etl/raw/events")
        p.add_argument("--catalog", help="raw catalog; default OUT/etl/raw/catalog")
        p.add_argument("--previous-maps", help="an earlier run's etl folder whose id maps to extend "
                                               "(default: the maps already under OUT/etl)")
        add_dataclass_args(p, PrepareConfig)

    p = with_spark(sub.add_parser("prepare", help="raw -> validated, indexed, split training data"))
    prepare_args(p)
    p.set_defaults(fn=cmd_prepare)

    p = with_spark(sub.add_parser("run", help="generate or ingest, then prepare (what make demo runs)"))
    prepare_args(p)
    p.add_argument("--dataset", help="a MovieLens folder; omitted: generate synthetic data")
    add_dataclass_args(p, GenerateConfig, prefix="gen-")
    p.set_defaults(fn=cmd_run)

    try:
        from etl import emr
    except ImportError:  # boto3 missing: the local commands still work
        emr = None
    if emr is not None and hasattr(emr, "add_cli"):
        emr.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv, (InputError,))


if __name__ == "__main__":
    sys.exit(main())
