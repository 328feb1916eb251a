"""The popularity model as a serving artifact and a registry version: the demo's A/B control.

The artifact has the hybrid's format (core/artifact.py), so the same handler serves it: item
vectors and the user tower are zeros (every user vector is 0), and the item bias is the item's
training popularity, so every user gets the most popular items they have not seen. Registered as
the next version of the same registered model, with its P1 metrics, so "archive version =
registry version" holds and an experiment can compare it with a hybrid version.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from core.artifact import save_artifact
from core.encoder import HistoryBagEncoder
from common.schema import SCHEMA_VERSION, EtlLayout
from common.splits import SplitData, load_split

log = logging.getLogger("training.popularity")
DIM = 8  # smallest vector our serving indexes handle well; all zeros


def popularity_tensors(data: SplitData) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, encoder config) of the popularity artifact."""
    from training.export import _csr_tensors
    from common.splits import chronological_rows

    pop = torch.from_numpy(np.diff(data.train_full.tocsc().indptr).astype(np.float32))
    tower = HistoryBagEncoder(data.n_items, [DIM])
    with torch.no_grad():
        tower.enc_in.weight.zero_()
    n_content = data.n_features + data.n_categories
    tensors = {
        "item_vectors": torch.zeros(data.n_items, DIM),
        "item_bias": pop.clone(),
        "user_vectors": tower.encode([torch.zeros(0, dtype=torch.int64)] * data.n_users)
        if data.n_users else torch.zeros(0, DIM),
        "popularity": pop,
        "item_warm": (pop > 0).to(torch.uint8),
        **tower.artifact_tensors(),
        "content.weight": torch.zeros(n_content, DIM),
        "content.bias": torch.zeros(n_content),
        **_csr_tensors("item_categories", data.item_categories),
        **_csr_tensors("user_history", chronological_rows(data.train_full, data.timestamps),
                       keep_order=True),
    }
    return tensors, {**tower.config(), "includes_user_id_embedding": False,
                     "history_source": "train_full"}


def export_popularity_artifact(data: SplitData, out_dir: Path, version: str,
                               metrics: dict | None = None) -> Path:
    tensors, encoder = popularity_tensors(data)
    config = {"model_version": str(version), "schema_version": SCHEMA_VERSION,
              "model_type": "popularity", "dim": DIM,
              "scoring": "item_bias[i] = distinct training users of item i (user vectors are 0)",
              "encoder": encoder,
              "content": {"n_text_features": data.n_features, "n_categories": data.n_categories,
                          "categories": list(data.categories), "category_weight": 0.0,
                          "enabled": False},
              "metrics": metrics or {}}
    items = ({"title": str(data.item_titles[i]), "categories": list(data.item_category_names[i])}
             for i in range(data.n_items))
    return save_artifact(out_dir, tensors, config, [str(u) for u in data.user_ids],
                         [str(i) for i in data.item_ids], items)


def register_popularity(out: Path, scheme: str = "temporal") -> int:
    """Evaluate, export and register the popularity model; returns its registry version."""
    from common import registry
    from common.registry import EXPERIMENT, MODEL_NAME, next_version
    from training import tracking
    from training.baselines import PopularityModel
    from training.compare import evaluate_slices
    from training.pipeline import split_hash

    etl = EtlLayout.under(out)
    data = load_split(etl, scheme)
    main = evaluate_slices(PopularityModel().fit(data.train_full).score, data)["main"]
    hash_ = split_hash(etl, scheme)
    artifact_dir = out / "model" / "popularity_artifact"
    with tracking.start_run(EXPERIMENT, out, run_name="popularity",
                            params={"model": "popularity", "scheme": scheme}) as run:
        tracking.log_eval_table({"models": {"popularity": main}}, split_hash=hash_,
                                primary="models.popularity")
        version = str(next_version(out))
        export_popularity_artifact(data, artifact_dir, version,
                                   metrics={"recall@10": main["recall@10"], "ndcg@10": main["ndcg@10"]})
        tracking.log_serving_artifact(artifact_dir)
        registered = registry.register_version(run.info.run_id, MODEL_NAME, split_hash=hash_,
                                               alias="baseline",
                                               description="popularity model (A/B control)")
    if str(registered) != version:
        raise RuntimeError(f"registry gave version {registered}, the artifact says {version}: "
                           "another registration raced this one; re-run")
    log.info("popularity model registered as %s version %s (recall@10 %.4f)", MODEL_NAME,
             registered, main["recall@10"])
    return registered


__all__ = ["export_popularity_artifact", "popularity_tensors", "register_popularity"]
