"""How good are items added without retraining? The ``added_items`` slice of eval.json.

``python -m training added-items --out OUT`` (after ``python -m training run``):

1. the held-out items are those first seen (first kept interaction) in the last ``share`` (10%)
   of the data's time span;
2. a model is trained as ``training run`` trains, on the same split with those items removed
   from the catalog (they never existed for it), and exported;
3. the items are added to that artifact by the code ``python -m archives add-items`` runs
   (``core.vectorizer.vectorize`` + ``core.artifact.with_new_items``: content only, no
   retraining);
4. P1's test users are scored on their test positives among the held-out items (candidates:
   those items only, training items masked, as the cold-item slice) through the handler's engine
   over the shipped serving variant: the added items (``added``), the model retrained with them
   (``retrained``: OUT's own serving artifact, trained with their training interactions) and
   ``popularity`` (trained with them).

Writes ``slices.added_items.<model>`` and ``added_items`` (the held-out set) into OUT/eval.json.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from core.jsonio import write_json
from core.artifact import load_artifact, with_new_items
from core.config import ArchiveConfig
from training.config import TrainConfig
from core.encoder import item_input_tensors
from common.schema import EtlLayout
from core.vectorizer import ContentVectorizer, vectorize
from training.compare import Ranked
from common.splits import SplitData, load_split
from training.evaluation import evaluate, evaluate_ranked

log = logging.getLogger("training.added_items")


def held_out_items(etl: EtlLayout, data: SplitData, share: float = 0.1) -> tuple[np.ndarray, dict]:
    """Bool mask over items first seen in the last ``share`` of the time span."""
    df = pd.read_parquet(etl.interactions, columns=["item_idx", "timestamp"])
    t0, t1 = int(df["timestamp"].min()), int(df["timestamp"].max())
    cutoff = t0 + (1.0 - share) * (t1 - t0)
    first = df.groupby("item_idx")["timestamp"].min()
    mask = np.zeros(data.n_items, dtype=bool)
    mask[first.index[first.to_numpy() >= cutoff].to_numpy()] = True
    return mask, {"share_of_time_span": share, "cutoff_timestamp": int(cutoff),
                  "items": int(mask.sum())}


def _catalog_rows(etl: EtlLayout, ids: list[str]) -> list[dict]:
    """The held-out items' validated catalog rows (as add-items reads a catalog file)."""
    cat = pd.read_parquet(etl.items, columns=["item_id", "title", "description", "categories", "tags"])
    cat = cat[cat["item_id"].astype(str).isin(set(ids))]
    return [{"item_id": str(r.item_id), "title": r.title, "description": r.description or "",
             "categories": list(r.categories if r.categories is not None else []),
             "tags": list(r.tags if r.tags is not None else [])} for r in cat.itertuples()]


def study(out: str | Path, cfg: TrainConfig | None = None, share: float = 0.1,
          variant: str = ArchiveConfig.scoring) -> dict:
    from training.baselines import PopularityModel
    from training.export import export_artifact
    from training.served import engine_rank_fn, served_recommenders
    from training.train import fit

    out = Path(out)
    etl = EtlLayout.under(out)
    data = load_split(etl)
    held, info = held_out_items(etl, data, share)
    if not held.any():
        raise ValueError("no item is first seen in the last part of the time span")
    reduced = data.keep_items(~held)
    cfg = cfg or TrainConfig(progress=False)
    t0 = time.perf_counter()
    res = fit(reduced, cfg)
    log.info("trained without the %d held-out items in %.0f s", int(held.sum()), time.perf_counter() - t0)
    work = Path(tempfile.mkdtemp(prefix=".added-items-", dir=out / "model"))
    try:
        base_dir = export_artifact(res.model, reduced, work / "base", version="0")
        base = load_artifact(base_dir)
        ids = [str(i) for i in data.item_ids[held]]
        new = vectorize(_catalog_rows(etl, ids), ContentVectorizer.load(base_dir / "vectorizer.json"))
        added_dir = with_new_items(base, new, work / "added", "0",
                                   item_input_tensors(base.config["encoder"]))
        index = {str(i): k for k, i in enumerate(data.item_ids)}
        recs = {"added": served_recommenders(added_dir, [variant], work / "packs-added")[variant],
                "retrained": served_recommenders(out / "model" / "serving_artifact", [variant],
                                                 work / "packs-full")[variant]}
        models = {name: Ranked(engine_rank_fn(rec, data.user_ids, item_index=index))
                  for name, rec in recs.items()}
        result = {}
        for name, m in models.items():
            result[name] = evaluate_ranked(m.rank, data.train_full, data.test, ks=(10,),
                                           candidate_items=held)
        result["popularity"] = evaluate(PopularityModel().fit(data.train_full).score,
                                        data.train_full, data.test, ks=(10,), candidate_items=held)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info.update({"added": len(new), "variant": variant, "train_seconds": round(res.seconds, 1),
                 "warm_in_full_training": int((held & data.warm_items()).sum())})
    ev_path = out / "eval.json"
    ev = json.loads(ev_path.read_text()) if ev_path.exists() else {}
    ev.setdefault("slices", {})["added_items"] = result
    ev["added_items"] = info
    write_json(ev_path, ev)
    log.info("added items: recall@10 added %.4f, retrained %.4f, popularity %.4f over %d users",
             result["added"]["recall@10"], result["retrained"]["recall@10"],
             result["popularity"]["recall@10"], result["added"]["users"])
    return {"slice": result, "info": info}


__all__ = ["study", "held_out_items"]
