"""Model -> serving artifact (common/artifact.py): precomputed item and user vectors plus what
serving needs to handle users and items the model never saw, without any training code."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp
import torch

from common.artifact import save_artifact
from common.schema import SCHEMA_VERSION, EtlLayout
from training.data import SplitData
from training.model import HybridModel, bags_from_csr


def _csr_tensors(prefix: str, m: sp.csr_matrix) -> dict[str, torch.Tensor]:
    m = sp.csr_matrix(m)
    m.sort_indices()
    return {f"{prefix}.indptr": torch.from_numpy(m.indptr.astype(np.int64)),
            f"{prefix}.indices": torch.from_numpy(m.indices.astype(np.int64))}


@torch.no_grad()
def export_artifact(model: HybridModel, data: SplitData, out_dir: str | Path, version: str,
                    metrics: Mapping[str, Any] | None = None) -> Path:
    """Write the serving artifact of ``model`` trained on ``data`` into ``out_dir``."""
    model = model.to("cpu").eval()
    items_vec, items_bias = model.item_vectors()
    history = model.history_matrix(data.train_full, data.timestamps)
    users = np.arange(data.n_users)
    user_vecs = torch.cat([model.user_vectors(bags_from_csr(history, users[s:s + 4096]),
                                              torch.from_numpy(users[s:s + 4096]))
                           for s in range(0, data.n_users, 4096)]) if data.n_users else \
        torch.zeros(0, model.dim)
    popularity = torch.from_numpy(np.asarray((data.train_full > 0).sum(axis=0)).ravel()
                                  .astype(np.float32))
    tensors: dict[str, torch.Tensor] = {
        "item_vectors": items_vec.float(),
        "item_bias": items_bias.float(),
        "user_vectors": user_vecs.float(),
        "popularity": popularity,
        "item_warm": model.warm.to(torch.uint8),
        "encoder.in.weight": model.enc_in.weight.float(),
        "encoder.in.bias": model.enc_in_bias.float(),
        **_csr_tensors("item_categories", data.item_categories),
        **_csr_tensors("user_history", data.train_full),
    }
    for k, lin in enumerate(model.enc_layers):
        tensors[f"encoder.layers.{k}.weight"] = lin.weight.float()
        tensors[f"encoder.layers.{k}.bias"] = lin.bias.float()
    n_text = model.n_text_features if model.use_content else data.n_features
    if model.use_content:
        tensors["content.weight"] = model.content_proj.weight.float()
        tensors["content.bias"] = model.content_bias.weight.float().reshape(-1)
    else:  # keep the format total: a zero projection embeds new items at the origin
        tensors["content.weight"] = torch.zeros(data.n_features + data.n_categories, model.dim)
        tensors["content.bias"] = torch.zeros(data.n_features + data.n_categories)

    config = {
        "model_version": str(version),
        "schema_version": SCHEMA_VERSION,
        "dim": model.dim,
        "model": model.spec(),
        "encoder": {"n_layers": len(model.enc_layers), "dims": list(model.dims),
                    "activation": "tanh", "input_norm": "l2",
                    "recency_boost": model.recency_boost, "recency_tau": model.recency_tau},
        "content": {"n_text_features": int(n_text), "n_categories": int(data.n_categories),
                    "categories": list(data.categories),
                    "category_weight": float(model.category_weight)},
        "etl": {"root": str(data.etl_root), "scheme": data.scheme},
        "metrics": dict(metrics or {}),
    }
    items = ({"title": str(t), "categories": list(c)}
             for t, c in zip(data.item_titles, data.item_category_names))
    vectorizer = EtlLayout(data.etl_root).vectorizer
    return save_artifact(out_dir, tensors, config, [str(u) for u in data.user_ids],
                         [str(i) for i in data.item_ids], items,
                         vectorizer if Path(vectorizer).exists() else None)
