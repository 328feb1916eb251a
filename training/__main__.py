"""Training command line: ``python -m training {run,popularity,added-items,results,promote} --help``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.config import ArchiveConfig
from common.dataclass_args import add_dataclass_args, from_args
from training.config import TrainConfig
from core.retrieval import VARIANTS
from common.cli import run_cli


def cmd_run(args: argparse.Namespace) -> int:
    from training.pipeline import run

    run(Path(args.out), from_args(TrainConfig, args), scheme=args.scheme,
        baselines=not args.no_baselines, als=not args.no_als, register=not args.no_register,
        served_variant=args.served_variant)
    print(f"\nwritten: {Path(args.out) / 'eval.json'}")
    return 0


def cmd_popularity(args: argparse.Namespace) -> int:
    from training.popularity import register_popularity

    version = register_popularity(Path(args.out), scheme=args.scheme)
    print(version)
    return 0


def cmd_added_items(args: argparse.Namespace) -> int:
    from training.added_items import study

    out = Path(args.out)
    ev = json.loads((out / "eval.json").read_text()) if (out / "eval.json").exists() else {}
    trained = (ev.get("train") or {}).get("config")  # the configuration `training run` used
    cfg = TrainConfig(**{**trained, "progress": False}) if trained else TrainConfig(progress=False)
    res = study(out, cfg, share=args.share)
    print(json.dumps(res, indent=2, default=float))
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from training.report import update_results

    if not args.eval and not args.study:
        print("error: give --eval and/or --study", file=sys.stderr)
        return 2
    done = update_results(Path(args.eval) if args.eval else None, Path(args.doc),
                         Path(args.study) if args.study else None)
    print(f"rewrote {', '.join(done) or 'nothing'} in {args.doc}")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from common import registry

    registry.configure(args.out)
    decision = registry.promote(args.model_name or registry.MODEL_NAME, tolerance=args.tolerance,
                                metric=args.metric)
    print(json.dumps(decision.to_dict(), indent=2, default=str))
    print(("promoted: " if decision.promoted else "not promoted: ") + decision.reason)
    return 0 if decision.promoted else 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train, evaluate against baselines, export, register (OUT/eval.json)")
    p.add_argument("--out", required=True, help="run folder holding OUT/etl (from python -m etl)")
    p.add_argument("--scheme", default="temporal", choices=["temporal", "random"])
    p.add_argument("--served-variant", default=ArchiveConfig.scoring, choices=VARIANTS,
                   help="the serving variant the archive ships (archives build --scoring): "
                        "eval.json's served_<variant> row, through the handler's engine")
    p.add_argument("--no-baselines", action="store_true", help="evaluate the hybrid only")
    p.add_argument("--no-als", action="store_true", help="skip the Spark ALS baseline")
    p.add_argument("--no-register", action="store_true", help="no MLflow run or registry version")
    add_dataclass_args(p, TrainConfig)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("popularity", help="export the popularity model as a serving artifact and "
                                          "register it as the next version (alias baseline); "
                                          "prints the version")
    p.add_argument("--out", required=True, help="run folder holding OUT/etl (from python -m etl)")
    p.add_argument("--scheme", default="temporal", choices=["temporal", "random"])
    p.set_defaults(fn=cmd_popularity)

    p = sub.add_parser("added-items", help="hold out the newest items, train without them, add "
                                           "them without retraining (as archives add-items "
                                           "does): eval.json slice added_items")
    p.add_argument("--out", required=True, help="a run folder after `training run`")
    p.add_argument("--share", type=float, default=0.1, help="last share of the time span whose "
                                                             "first-seen items are held out")
    p.set_defaults(fn=cmd_added_items)

    p = sub.add_parser("results", help="rewrite docs/results.md's eval tables from an eval.json and "
                                      "the seed-study table from the training benchmark")
    p.add_argument("--eval", help="OUT/eval.json")
    p.add_argument("--study", help="benchmarks/results/training.json "
                                   "(python -m benchmarks.training_bench)")
    p.add_argument("--doc", default="docs/results.md", help="the file holding the blocks")
    p.set_defaults(fn=cmd_results)

    p = sub.add_parser("promote", help="move alias champion to the challenger if it passes the gate")
    p.add_argument("--out", required=True, help="run folder whose MLflow store to use")
    p.add_argument("--model-name")
    p.add_argument("--tolerance", type=float, default=0.01, help="relative; default 1%%")
    p.add_argument("--metric", default="recall@10")
    p.set_defaults(fn=cmd_promote)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
