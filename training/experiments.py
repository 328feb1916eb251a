"""Protocol P1 studies of the hybrid: variants x seeds, mean and standard deviation per metric.

    python -m training.experiments --etl runs/mls/etl --seeds 1,2,3 --json study.json
    python -m training.experiments --etl runs/mls/etl --no-test --seeds 1,2,3 --dim 800
    python -m training.experiments --etl runs/mls/etl --variants all

Every TrainConfig field is a flag (``--dim 800``) applied to every variant. A variant is chosen
and early-stopped on the validation split (carved from train). ``--no-test`` screens on
validation alone (validation NDCG@10 and cold-item Recall@10): the test split is then never
read, which is how a configuration is chosen. Without it each run also reports P1 test
metrics, evaluated exactly as ``eval.json`` is (training.compare: main, cold_items,
long_history slices), plus the row of what the archive ships: the exported serving artifact
answered by the handler's engine for the default serving variant (training.served).

``train_s`` is fit wall time (early-stopped run plus the refit on train + valid) and
``train_cpu_s`` this process's CPU time over it: on a shared machine the wall time also
counts waiting for a core. ``benchmarks/training_bench.py`` runs the default over three seeds
and keeps the result (docs/results.md's seed-study table is generated from it).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.cli import UsageError, run_cli
from core.jsonio import write_json
from core.config import ArchiveConfig
from common.dataclass_args import add_dataclass_args, from_args
from training.config import TrainConfig
from common.tables import table
from training.compare import PROTOCOL, Ranked, comparison, fit_baselines
from common.splits import SplitData, load_split

VARIANTS: dict[str, dict] = {
    "hybrid": {},
    "hybrid, sampled softmax": {"loss": "sampled_softmax"},
    "hybrid, BPR": {"loss": "bpr"},
    "hybrid, denoise objective": {"objective": "denoise"},
    "hybrid, no recency weights": {"recency_boost": 0.0},
    "hybrid, no augmentation": {"truncate": 0.0, "crop": 0.0},
    "hybrid, no target normalisation": {"target_norm": 0.0},
    "hybrid, no content": {"content": False},
    "hybrid, no item ids": {"item_ids": False},
    "hybrid, no refit": {"refit_full": False},
    "hybrid, no EMA": {"ema": 0.0},
    "hybrid, Mult-DAE setup": {"objective": "denoise", "recency_boost": 0.0, "dim": 256,
                               "dropout": 0.5, "ema": 0.0, "refit_full": False,
                               "truncate": 0.0, "crop": 0.0, "target_norm": 0.0,
                               "id_dropout": 0.1},
}
DEFAULT_VARIANTS = ("hybrid",)

# Per-run metrics averaged over seeds (a run that did not measure one leaves it out).
METRICS = ("recall@10", "ndcg@10", "cold_recall@10", "long_recall@10", "long_ndcg@10",
           "served_recall@10", "served_ndcg@10", "val_ndcg@10", "val_cold_recall@10",
           "best_epoch", "train_s", "train_cpu_s", "eval_s")
GOAL = {"ease_ratio": 1.20, "cold_vs_popularity": 2.5, "served_relative_loss": 0.01}


def _slice_metrics(main: dict, slices: dict, name: str, prefix: str = "") -> dict:
    return {f"{prefix}recall@10": main[name]["recall@10"], f"{prefix}ndcg@10": main[name]["ndcg@10"],
            **({} if prefix else {
                "cold_recall@10": slices["cold_items"][name]["recall@10"],
                "long_recall@10": slices["long_history"][name]["recall@10"],
                "long_ndcg@10": slices["long_history"][name]["ndcg@10"]})}


def baseline_rows(data: SplitData) -> list[dict]:
    """popularity, EASE (lambda 200) and content-only, evaluated as eval.json evaluates them."""
    fitted = fit_baselines(data, None, als=False)
    main, slices = comparison({n: fn for n, (fn, _) in fitted.items()}, data, ks=(10,))
    rows = []
    for name, (_, seconds) in fitted.items():
        rows.append({"variant": name, **_slice_metrics(main, slices, name), "train_s": seconds})
        print(f"  {name}: recall@10 {main[name]['recall@10']:.4f} ndcg@10 "
              f"{main[name]['ndcg@10']:.4f} cold {rows[-1]['cold_recall@10']:.4f}",
              file=sys.stderr, flush=True)
    return rows


def run_variant(data: SplitData, name: str, cfg: TrainConfig, *, test: bool,
                served_variant: str = ArchiveConfig.scoring) -> dict:
    """Fit one configuration (one seed); validation metrics, and with ``test`` the P1 test
    metrics of the model and of its shipped variant through the serving engine."""
    from training.train import fit

    c0 = time.process_time()
    res = fit(data, cfg)
    row: dict[str, Any] = {"variant": name, "seed": cfg.seed, "val_ndcg@10": res.best_val_ndcg,
                           "best_epoch": res.best_epoch, "train_s": res.seconds,
                           "train_cpu_s": time.process_time() - c0}
    row["val_cold_recall@10"] = res.val_cold_recall
    if test:
        from training.export import export_artifact
        from training.served import engine_rank_fn, served_recommenders

        t = time.perf_counter()
        work = Path(tempfile.mkdtemp(prefix="experiment-"))
        try:
            export_artifact(res.model, data, work / "artifact", version="0", metrics=None)
            rec = served_recommenders(work / "artifact", [served_variant], work / "packs")[served_variant]
            hist = res.model.history_matrix(data.train_full, data.timestamps)
            main, slices = comparison(
                {"hybrid": lambda u: res.model.score_users(hist, u),
                 "served": Ranked(engine_rank_fn(rec, data.user_ids))}, data, ks=(10,))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        row.update(_slice_metrics(main, slices, "hybrid"))
        row.update(_slice_metrics(main, slices, "served", prefix="served_"))
        row["served_variant"] = served_variant
        row["eval_s"] = time.perf_counter() - t
    print(f"  {name} (seed {cfg.seed}): " + " ".join(
        f"{k} {row[k]:.4f}" for k in ("recall@10", "ndcg@10", "cold_recall@10", "served_recall@10",
                                      "val_ndcg@10", "val_cold_recall@10") if k in row)
          + f" epoch {row['best_epoch']} {row['train_s']:.0f} s ({row['train_cpu_s']:.0f} s CPU)",
          file=sys.stderr, flush=True)
    return row


def _mean_rows(runs: list[dict]) -> dict:
    """One row per variant: mean and (population) standard deviation over seeds per metric."""
    out: dict[str, Any] = {"variant": runs[0]["variant"]}
    for k in METRICS:
        vals = [float(r[k]) for r in runs if r.get(k) is not None and not math.isnan(float(r[k]))]
        if not vals:
            continue
        out[k] = float(np.mean(vals))
        if len(runs) > 1:
            out[k + "_std"] = float(np.std(vals))
    if "served_variant" in runs[0]:
        out["served_variant"] = runs[0]["served_variant"]
    out["seeds"] = [r["seed"] for r in runs]
    out["runs"] = runs
    return out


def goal_check(rows: list[dict], model: str = "hybrid") -> dict | None:
    """The quality goal (issue 14) on the rows' means: Recall@10 and NDCG@10 >= 1.2x EASE,
    cold-item Recall@10 >= 2.5x popularity and above content-only, the shipped variant within 1%."""
    by = {r["variant"]: r for r in rows}
    need = (model, "ease", "popularity", "content")
    if not all(n in by and "recall@10" in by[n] for n in need):
        return None
    h, e, p, c = (by[n] for n in need)
    out = {
        "recall_vs_ease": h["recall@10"] / e["recall@10"],
        "ndcg_vs_ease": h["ndcg@10"] / e["ndcg@10"],
        "cold_vs_popularity": h["cold_recall@10"] / max(p["cold_recall@10"], 1e-12),
        "cold_vs_content": h["cold_recall@10"] / max(c["cold_recall@10"], 1e-12),
    }
    if "served_recall@10" in h:
        out["served_recall_loss"] = 1 - h["served_recall@10"] / h["recall@10"]
        out["served_ndcg_loss"] = 1 - h["served_ndcg@10"] / h["ndcg@10"]
    out["met"] = {
        "recall": out["recall_vs_ease"] >= GOAL["ease_ratio"],
        "ndcg": out["ndcg_vs_ease"] >= GOAL["ease_ratio"],
        "cold": out["cold_vs_popularity"] >= GOAL["cold_vs_popularity"] and out["cold_vs_content"] > 1,
        "served": max(out.get("served_recall_loss", 0), out.get("served_ndcg_loss", 0))
        <= GOAL["served_relative_loss"],
    }
    out["targets"] = {"recall@10": GOAL["ease_ratio"] * e["recall@10"],
                      "ndcg@10": GOAL["ease_ratio"] * e["ndcg@10"],
                      "cold_recall@10": max(GOAL["cold_vs_popularity"] * p["cold_recall@10"],
                                            c["cold_recall@10"])}
    return out


def _cell(row: dict, k: str) -> str:
    v = row.get(k)
    if v is None:
        return "—"
    std = row.get(k + "_std")
    digits = 0 if k in ("train_s", "train_cpu_s", "best_epoch") else 4
    return f"{v:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def markdown(study: dict) -> str:
    """The study's table (Markdown): one row per model, mean ± std over the seeds."""
    cols = [("recall@10", "Recall@10"), ("ndcg@10", "NDCG@10"), ("cold_recall@10", "cold Recall@10"),
            ("long_recall@10", "long-history Recall@10"), ("served_recall@10", "shipped Recall@10"),
            ("served_ndcg@10", "shipped NDCG@10"), ("val_ndcg@10", "val NDCG@10"),
            ("train_s", "train s"), ("train_cpu_s", "train CPU s")]
    rows = study["rows"]
    present = [(k, h) for k, h in cols if any(k in r for r in rows)]
    body = [[r["variant"], ",".join(map(str, r.get("seeds", []))) or "—"]
            + [_cell(r, k) for k, _ in present] for r in rows]
    lines = [table(["model", "seeds"] + [h for _, h in present], body)]
    g = study.get("goal")
    if g:
        t = g["targets"]
        lines += ["", f"Goal on the means: Recall@10 {g['recall_vs_ease']:.3f}x EASE and NDCG@10 "
                      f"{g['ndcg_vs_ease']:.3f}x (target 1.20x: {t['recall@10']:.4f} / "
                      f"{t['ndcg@10']:.4f}); cold-item Recall@10 {g['cold_vs_popularity']:.2f}x "
                      f"popularity and {g['cold_vs_content']:.2f}x content-only (targets 2.5x and "
                      f"> 1x); shipped variant loss {g.get('served_recall_loss', float('nan')):.2%} "
                      f"Recall@10 / {g.get('served_ndcg_loss', float('nan')):.2%} NDCG@10. "
                      "Met: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in g["met"].items())
                      + "."]
    return "\n".join(lines)


def study(data: SplitData, variants: list[str], seeds: list[int], base: TrainConfig, *,
          test: bool = True, baselines: bool = True) -> dict:
    """Run the variants over the seeds; the study's JSON document (rows, goal, config)."""
    reference = baseline_rows(data) if (baselines and test) else []
    rows = []
    for name in variants:
        runs = [run_variant(data, name, dataclasses.replace(base, seed=s, **VARIANTS[name]),
                            test=test) for s in seeds]
        rows.append(_mean_rows(runs))
    rows += reference
    return {"protocol": PROTOCOL, "test_read": test, "seeds": seeds,
            "config": dataclasses.asdict(base), "torch_threads": torch.get_num_threads(),
            "rows": rows, "goal": goal_check(rows) if test else None}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.experiments", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--etl", required=True, help="an ETL output folder (OUT/etl)")
    p.add_argument("--scheme", default="temporal")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"semicolon-separated names, or 'all': {'; '.join(VARIANTS)}")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated; mean and std per metric")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = default)")
    p.add_argument("--no-test", action="store_true",
                   help="validation metrics only: the test split is not read (for choosing)")
    p.add_argument("--no-baselines", action="store_true", help="skip popularity, EASE, content")
    p.add_argument("--json", help="write the study here")
    add_dataclass_args(p, TrainConfig)
    p.set_defaults(fn=cmd_study)
    return p


def cmd_study(args: argparse.Namespace) -> int:
    names = list(VARIANTS) if args.variants == "all" else \
        [v.strip() for v in args.variants.split(";") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise UsageError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    base = dataclasses.replace(from_args(TrainConfig, args), progress=False,
                               num_threads=max(args.threads, 0))

    t0 = time.perf_counter()
    data = load_split(Path(args.etl), args.scheme)
    print(f"{data.n_users} users x {data.n_items} items; train {data.train.nnz} / valid "
          f"{data.valid.nnz} / test {data.test.nnz}; {int(data.warm_items().sum())} items seen "
          f"in train_full", file=sys.stderr, flush=True)
    result = study(data, names, seeds, base, test=not args.no_test,
                   baselines=not args.no_baselines)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"\nProtocol P1 on {args.etl} ({'test' if not args.no_test else 'validation'} split; "
          f"seeds {seeds}; mean ± std over seeds)\n")
    print(markdown(result))
    print(f"\ntotal {result['seconds']:.0f} s")
    if args.json:
        write_json(Path(args.json), result)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(parser(), argv, logs=False)


if __name__ == "__main__":
    sys.exit(main())
