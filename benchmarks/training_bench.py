"""Training time and the 3-seed study of the default configuration on ml-latest-small (P1).

Runs ``training.experiments``' study of the default TrainConfig over three seeds with one torch
thread (the trainer's setting on a shared machine), beside the reference models, and keeps the
result: wall and CPU seconds per seed (the budget is 10 minutes), and every P1 metric as mean ±
std (the quality goal is judged on the means; docs/results.md's seed-study table is generated from
this file by ``python -m training results``). The ETL output is reused when ``--etl`` is given,
else made once from ``../shared/data/ml-latest-small``.

    python -m benchmarks.training_bench [--etl runs/mls/etl] [--seeds 1,2,3]

Writes ``benchmarks/results/training.json`` and ``training.md``.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from core.jsonio import write_json
from benchmarks.common import RESULTS, machine
from training.config import TrainConfig
from common.cli import run_cli
from common.tables import table

log = logging.getLogger("benchmarks.training")
DATASET = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small"
BUDGET_S = 600.0


def _etl(work: Path) -> Path:
    from common.schema import EtlLayout
    from etl.__main__ import main as etl_main

    layout = EtlLayout.under(work)
    if not Path(layout.manifest).exists():
        if not (DATASET / "ratings.csv").exists():
            raise SystemExit(f"error: {DATASET} is missing; pass --etl OUT/etl of a MovieLens run")
        log.info("ETL of %s into %s", DATASET, work)
        if etl_main(["run", "--dataset", str(DATASET), "--out", str(work)]) != 0:
            raise SystemExit("error: the ETL failed")
    return Path(layout.root)


def markdown(result: dict) -> str:
    from training.experiments import markdown as study_table

    hybrid = next(r for r in result["study"]["rows"] if r["variant"] == "hybrid")
    per_seed = [[r["seed"], r["train_s"], r["train_cpu_s"], r["best_epoch"]]
                for r in hybrid["runs"]]
    m = result["machine"]
    return "\n".join([
        "# Training benchmark (benchmarks/training_bench.py)", "",
        f"Default TrainConfig on ml-latest-small, protocol P1, {len(per_seed)} seeds, one torch "
        f"thread, {m['cpus']} CPUs (load average {m['load_avg_at_start'][0]} at start). Wall "
        "time covers the early-stopped run and the refit on train + valid; the budget is "
        f"{BUDGET_S / 60:.0f} minutes per training.", "",
        table(["seed", "train wall s", "train CPU s", "best epoch"], per_seed), "",
        f"Slowest training: {result['max_train_s']:.0f} s wall "
        f"({'within' if result['within_budget'] else 'OVER'} the {BUDGET_S:.0f} s budget).", "",
        "## Quality (mean ± std over the seeds)", "", study_table(result["study"]), ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.training_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--etl", help="an ETL output folder of ml-latest-small (OUT/etl)")
    p.add_argument("--work", default="runs/bench-training", help="ETL output when --etl is not given")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--results", default=str(RESULTS))
    p.set_defaults(fn=_run)
    return run_cli(p, argv)


def _run(args: argparse.Namespace) -> int:
    from common.splits import load_split
    from training.experiments import study

    etl = Path(args.etl) if args.etl else _etl(Path(args.work))
    info = machine()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = load_split(etl, "temporal")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    base = TrainConfig(progress=False, num_threads=1)
    res = study(data, ["hybrid"], seeds, base)
    hybrid = res["rows"][0]
    result = {"machine": info, "dataset": str(etl), "seconds": round(time.perf_counter() - t0, 1),
              "max_train_s": max(r["train_s"] for r in hybrid["runs"]),
              "max_train_cpu_s": max(r["train_cpu_s"] for r in hybrid["runs"]),
              "budget_s": BUDGET_S, "study": res}
    result["within_budget"] = result["max_train_s"] <= BUDGET_S
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "training.json"
    write_json(path, result)
    (out / "training.md").write_text(markdown(result))
    print(markdown(result))
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
