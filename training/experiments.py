"""Protocol P1 table of the hybrid's variants against the baselines.

    python -m training.experiments --etl runs/mls/etl            # default + loss variants
    python -m training.experiments --etl runs/mls/etl --variants all --seeds 1,2,3

Every variant is chosen/early-stopped on the validation split (carved from train); the test
split is only reported: recall/ndcg@10 over the items seen in train_full with each user's
train_full items masked, and the cold-item slice (test positives on items without any
train_full interaction, candidates = those items). ``train s`` is fit time (early-stopped run
on train + refit on train + valid when the variant refits), ``eval s`` the P1 evaluation.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common.config import TrainConfig
from common.report import table
from training.data import SplitData, load_split
from training.evaluation import evaluate, split_cold_items
from training.train import evaluate_p1, fit

VARIANTS: dict[str, dict] = {
    "hybrid": {},
    "hybrid, sampled softmax": {"loss": "sampled_softmax"},
    "hybrid, BPR": {"loss": "bpr"},
    "hybrid, denoise objective": {"objective": "denoise"},
    "hybrid, no recency weights": {"recency_boost": 0.0},
    "hybrid, no content": {"content": False},
    "hybrid, no item ids": {"item_ids": False},
    "hybrid, no refit": {"refit_full": False},
    "hybrid, Mult-DAE setup": {"objective": "denoise", "recency_boost": 0.0, "dim": 256,
                               "dropout": 0.5, "ema": 0.0, "refit_full": False},
}
DEFAULT_VARIANTS = ("hybrid", "hybrid, sampled softmax", "hybrid, BPR")

# Peer baselines measured elsewhere under P1 (shared/NOTES.md), for reference only.
REPORTED = {"BPR (implicit, reported)": (0.081, 0.071), "iALS (implicit, reported)": (0.093, 0.085),
            "Spark ALS (reported)": (0.097, 0.085)}


def _baselines(data: SplitData, ease: bool) -> list[dict]:
    from training.baselines import ContentModel, EASEModel, PopularityModel

    test_warm, test_cold, cold = split_cold_items(data.train_full, data.test)
    warm = ~cold
    rows = []

    def run(name, make):
        t = time.perf_counter()
        score = make()
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        m = evaluate(score, data.train_full, test_warm, ks=(10,), candidate_items=warm)
        c = evaluate(score, data.train_full, test_cold, ks=(10,), candidate_items=cold)
        rows.append({"variant": name, "recall@10": m["recall@10"], "ndcg@10": m["ndcg@10"],
                     "cold_recall@10": c["recall@10"], "train_s": fit_s,
                     "eval_s": time.perf_counter() - t})
        print(f"  {name}: recall@10 {m['recall@10']:.4f} ndcg@10 {m['ndcg@10']:.4f}",
              file=sys.stderr, flush=True)

    run("popularity", lambda: PopularityModel().fit(data.train_full).score)
    run("content (TF-IDF cosine)",
        lambda: ContentModel().fit(data.train_full, data.item_features).score)
    if ease:
        def make_ease():
            # fit on the items seen in train_full only (P1 never ranks the others): same
            # scores, and the n_items^3 inverse runs on a much smaller matrix
            cols = np.flatnonzero(warm)
            model = EASEModel(lambda_=200.0).fit(data.train_full[:, cols])

            def score(users):
                out = np.zeros((len(users), data.n_items), dtype=np.float32)
                out[:, cols] = model.score(users)
                return out
            return score
        run("EASE (lambda 200)", make_ease)
    return rows


def run_variant(data: SplitData, name: str, cfg: TrainConfig) -> dict:
    res = fit(data, cfg)
    t = time.perf_counter()
    m = evaluate_p1(res.model, data, ks=(10,))
    row = {"variant": name, "recall@10": m["recall@10"], "ndcg@10": m["ndcg@10"],
           "cold_recall@10": m["cold_recall@10"], "val_ndcg@10": res.best_val_ndcg,
           "best_epoch": res.best_epoch, "train_s": res.seconds,
           "eval_s": time.perf_counter() - t, "seed": cfg.seed}
    print(f"  {name} (seed {cfg.seed}): recall@10 {row['recall@10']:.4f} ndcg@10 "
          f"{row['ndcg@10']:.4f} cold {row['cold_recall@10']:.4f} val {row['val_ndcg@10']:.4f} "
          f"epoch {row['best_epoch']} {row['train_s']:.0f} s", file=sys.stderr, flush=True)
    return row


def _mean_rows(rows: list[dict]) -> dict:
    out = dict(rows[0])
    for k in ("recall@10", "ndcg@10", "cold_recall@10", "val_ndcg@10", "train_s", "eval_s",
              "best_epoch"):
        vals = [r[k] for r in rows if r.get(k) is not None and not
                (isinstance(r[k], float) and math.isnan(r[k]))]
        out[k] = float(np.mean(vals)) if vals else float("nan")
        if len(rows) > 1 and k in ("recall@10", "ndcg@10"):
            out[k + "_std"] = float(np.std(vals))
    out["seeds"] = [r["seed"] for r in rows]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.experiments", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--etl", required=True, help="an ETL output folder (OUT/etl)")
    p.add_argument("--scheme", default="temporal")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated names, or 'all': {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="42", help="comma-separated; metrics are averaged")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = default)")
    p.add_argument("--no-ease", action="store_true", help="skip the EASE baseline (slowest)")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)

    names = list(VARIANTS) if args.variants == "all" else \
        [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    data = load_split(Path(args.etl), args.scheme)
    print(f"{data.n_users} users x {data.n_items} items; train {data.train.nnz} / valid "
          f"{data.valid.nnz} / test {data.test.nnz}; {int(data.warm_items().sum())} items seen "
          f"in train_full", file=sys.stderr, flush=True)
    rows = [] if args.no_baselines else _baselines(data, ease=not args.no_ease)
    base = TrainConfig(progress=False, num_threads=args.threads)
    for name in names:
        runs = [run_variant(data, name, dataclasses.replace(base, seed=s, **VARIANTS[name]))
                for s in seeds]
        rows.append(_mean_rows(runs))

    def cell(r, k):
        v = r.get(k)
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else v

    headers = ["model", "recall@10", "ndcg@10", "cold recall@10", "val ndcg@10", "epochs",
               "train s", "eval s"]
    body = [[r["variant"], cell(r, "recall@10"), cell(r, "ndcg@10"), cell(r, "cold_recall@10"),
             cell(r, "val_ndcg@10"), cell(r, "best_epoch"), cell(r, "train_s"), cell(r, "eval_s")]
            for r in rows]
    body += [[name, rec, ndcg, "", "", "", "", ""] for name, (rec, ndcg) in REPORTED.items()]
    print(f"\nProtocol P1 on {args.etl} (test split; seeds {seeds}; mean over seeds)")
    print(table(headers, body))
    if len(seeds) > 1:
        print("\nstd over seeds: " + "; ".join(
            f"{r['variant']}: recall {r['recall@10_std']:.4f} ndcg {r['ndcg@10_std']:.4f}"
            for r in rows if "recall@10_std" in r))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
