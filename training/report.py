"""docs/results.md's tables generated from eval.json (``python -m training results --eval OUT/eval.json``).

Each table lives in docs/results.md between ``<!-- eval:<name> -->`` markers and is rewritten from the
results file, never typed by hand.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

from common.tables import replace_block, table

log = logging.getLogger("training.report")

LABELS = {"hybrid": "**hybrid** (fp32 model)", "ease": "EASE (λ = 200)",
          "als": "Spark ALS (64 f, implicit)", "popularity": "popularity",
          "content": "content (TF-IDF profile)"}


def _label(name: str, ev: dict) -> str:
    served = ev.get("served", {})
    if name == served.get("row"):
        return f"**{name}** (shipped: engine over the `{served['variant']}` pack)"
    if name.startswith("hybrid_int8_"):
        return f"{name} (engine over the `{name[len('hybrid_int8_'):]}` pack)"
    return LABELS.get(name, name)


def models_table(ev: dict) -> str:
    """P1 metrics of every model, with the slices: the numbers behind the README's summary."""
    slices = ev["slices"]
    rows = []
    for name, m in sorted(ev["models"].items(), key=lambda kv: -kv[1]["ndcg@10"]):
        rows.append([_label(name, ev), m["recall@10"], m["ndcg@10"], m["recall@20"],
                     m["mrr"] if "mrr" in m else "–", m["coverage@10"],
                     slices["cold_items"][name]["recall@10"],
                     slices["few_interactions"][name]["recall@10"],
                     slices["long_history"][name]["recall@10"]])
    users = ev["models"]["hybrid"]["users"]
    note = (f"\n\n{users} users scored; cold items: {slices['cold_items']['hybrid']['users']} users, "
            f"≤ 10 training items: {slices['few_interactions']['hybrid']['users']}, > 50: "
            f"{slices['long_history']['hybrid']['users']}. The shipped row's relative loss against "
            f"fp32: Recall@10 {ev['served']['recall@10_relative_loss']:+.2%}, NDCG@10 "
            f"{ev['served']['ndcg@10_relative_loss']:+.2%}.")
    return table(["model", "Recall@10", "NDCG@10", "Recall@20", "MRR", "coverage@10",
                  "cold Recall@10", "≤ 10 items Recall@10", "> 50 items Recall@10"], rows) + note


def related_items_table(ev: dict) -> str:
    """``similar_to`` from each test user's last training item, next to item-kNN and popularity."""
    t = ev["related_items"]
    row = t["served_row"]
    labels = {row: f"**similar_to** (engine over the `{ev['served']['variant']}` pack, cosine)",
              "item_knn": "item-kNN (cosine over training co-occurrence)", "popularity": "popularity"}
    rows = [[labels.get(name, name), m["hit@10"], m["recall@10"], m["ndcg@10"], m["coverage@10"]]
            for name, m in t["models"].items()]
    gap = t["goal_hit_vs_item_knn"]
    note = (f"\n\n{t['models'][row]['users']} test users, each asking for the items similar to "
            f"their last training item (their training items excluded). Goal, similar_to ≥ "
            f"item-kNN by HitRate@10: {'met' if gap >= 0 else 'not met'} ({gap:+.4f}).")
    return table(["related items", "HitRate@10", "Recall@10", "NDCG@10", "coverage@10"], rows) + note


def rerank_table(ev: dict) -> str:
    """NDCG@10 of ordering each test user's candidate list, against popularity order."""
    t = ev["rerank"]
    row = t["served_row"]
    labels = {row: f"**candidates** (engine over the `{ev['served']['variant']}` pack)",
              "popularity": "popularity order"}
    rows = [[labels.get(name, name), m["ndcg@10"], m["recall@10"], m["hit@10"]]
            for name, m in t["models"].items()]
    note = (f"\n\n{t['models'][row]['users']} test users; each list holds the user's test items "
            f"and {t['negatives']} sampled negatives ({t['mean_candidates']:.1f} candidates on "
            f"average), shuffled.")
    return table(["ranking of a candidate list", "NDCG@10", "Recall@10", "HitRate@10"], rows) + note


def diversity_table(ev: dict) -> str:
    """What diversity costs and buys: Recall@10 against category diversity of the top 10."""
    t = ev["diversity"]
    rows = [[level, m["recall@10"], m["ndcg@10"], m["ild@10"], m["categories@10"],
             f"{m['more_categories_than_0']:.0%}" if "more_categories_than_0" in m else "–",
             m["coverage@10"]] for level, m in t["levels"].items()]
    users = next(iter(t["levels"].values()))["users"]
    note = (f"\n\n{users} test users, `{{\"user_id\", \"k\": 10, \"diversity\"}}`; metrics of the "
            "ten items as served (a cold item counts as a miss, so the 0.0 row can sit a hair under "
            "the shipped row of the models table); intra-list category diversity = mean pairwise "
            "1 - Jaccard of the items' categories.")
    return table(["diversity", "Recall@10", "NDCG@10", "intra-list category diversity",
                  "distinct categories", "users with more categories than at 0", "coverage@10"],
                 rows) + note


def added_items_table(ev: dict) -> str:
    """Items added without retraining (``python -m training added-items``) against a model
    retrained with them and popularity, on the test users' positives among those items."""
    info, rows = ev["added_items"], []
    labels = {"added": "added without retraining (content only, `archives add-items`)",
              "retrained": "model retrained with them", "popularity": "popularity (trained with them)"}
    for name in ("added", "retrained", "popularity"):
        m = ev["slices"]["added_items"][name]
        rows.append([labels[name], m["recall@10"], m["ndcg@10"], m["hit@10"], m["users"]])
    note = (f"\n\n{info['items']} items first seen in the last {info['share_of_time_span']:.0%} of "
            f"the time span ({info['warm_in_full_training']} of them with training interactions "
            f"in the full split), ranked among themselves for the test users who liked one, "
            f"through the engine over the `{info['variant']}` pack.")
    return table(["model", "Recall@10", "NDCG@10", "HitRate@10", "users"], rows) + note


TABLES: dict[str, Callable[[dict], str]] = {
    "eval:models": models_table, "eval:related_items": related_items_table,
    "eval:rerank": rerank_table, "eval:diversity": diversity_table,
    "eval:added_items": added_items_table}


def seed_study_table(bench: dict) -> str:
    """The default configuration over three seeds beside the reference models
    (``benchmarks/results/training.json``, written by ``benchmarks/training_bench.py``)."""
    from training.experiments import markdown

    return (markdown(bench["study"]) + f"\n\nSlowest of the {len(bench['study']['seeds'])} "
            f"trainings: {bench['max_train_s']:.0f} s wall, {bench['max_train_cpu_s']:.0f} s CPU "
            f"(one torch thread; budget {bench['budget_s']:.0f} s).")


def update_results(eval_json: Path | None, doc: Path, study_json: Path | None = None) -> list[str]:
    """Rewrite every eval block ``doc`` (docs/results.md) has (and the seed-study block when ``study_json``
    is given); returns the names rewritten."""
    text = Path(doc).read_text()
    done = []
    if study_json is not None and "<!-- study:seeds -->" in text:
        text = replace_block(text, "study:seeds",
                             seed_study_table(json.loads(Path(study_json).read_text())))
        done.append("study:seeds")
    if eval_json is None:
        Path(doc).write_text(text)
        return done
    ev = json.loads(Path(eval_json).read_text())
    for name, build in TABLES.items():
        if f"<!-- {name} -->" not in text:
            continue
        try:
            text = replace_block(text, name, build(ev))
        except KeyError as e:  # e.g. added_items before `python -m training added-items` ran
            log.warning("block %s left as it is: %s has no %s", name, eval_json, e)
            continue
        done.append(name)
    Path(doc).write_text(text)
    return done


__all__ = ["models_table", "related_items_table", "rerank_table", "diversity_table",
           "added_items_table", "seed_study_table", "update_results", "TABLES"]
