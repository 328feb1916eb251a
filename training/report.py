"""README tables generated from eval.json (``python -m training readme --eval OUT/eval.json``).

Each table lives in the README between ``<!-- eval:<name> -->`` markers and is rewritten from the
results file, never typed by hand.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from common.report import replace_block, table

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
    """P1 metrics of every model, with the slices: the numbers behind the README's claims."""
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


TABLES: dict[str, Callable[[dict], str]] = {"eval:models": models_table}


def update_readme(eval_json: Path, readme: Path) -> list[str]:
    """Rewrite every eval block the README has; returns the names rewritten."""
    ev = json.loads(Path(eval_json).read_text())
    text = Path(readme).read_text()
    done = []
    for name, build in TABLES.items():
        if f"<!-- {name} -->" in text:
            text = replace_block(text, name, build(ev))
            done.append(name)
    Path(readme).write_text(text)
    return done


__all__ = ["models_table", "update_readme", "TABLES"]
