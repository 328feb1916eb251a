"""Trained HybridModel -> serving artifact folder (format: core/artifact.py)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from core.artifact import save_artifact
from common.schema import SCHEMA_VERSION
from common.splits import SplitData, chronological_rows
from training.model import HybridModel


def _csr_tensors(prefix: str, m: sp.csr_matrix, keep_order: bool = False) -> dict[str, torch.Tensor]:
    """indptr/indices of ``m``; rows sorted by column unless ``keep_order`` (a time-ordered
    history keeps its order)."""
    m = sp.csr_matrix(m)
    if not keep_order:
        m.sort_indices()
    return {f"{prefix}.indptr": torch.from_numpy(m.indptr.astype(np.int64)),
            f"{prefix}.indices": torch.from_numpy(m.indices.astype(np.int64))}


@torch.no_grad()
def artifact_tensors(model: HybridModel, data: SplitData, batch_size: int = 4096) -> dict:
    """Every tensor of the artifact, computed from ``model`` in eval mode on the CPU.

    Known users' vectors come from their train_full history (what P1 masks) through the user
    tower (core/encoder.py), the same module that encodes a history sent at serving time; the
    artifact stores that history in time order (``user_history``)."""
    was = model.training
    model.eval()
    m = model.to("cpu")
    item_vecs, item_bias = m.item_vectors()
    history = chronological_rows(data.train_full, data.timestamps)
    users = []
    for s in range(0, data.n_users, batch_size):
        rows = np.arange(s, min(s + batch_size, data.n_users))
        # the serving path: chronological item lists -> core/encoder.py's bags -> the tower
        lists = [torch.from_numpy(history.indices[history.indptr[u]:history.indptr[u + 1]]
                                  .astype(np.int64)) for u in rows]
        v = m.user_tower(m.user_tower.bags(lists))
        if m.user_emb is not None:
            v = v + m.user_emb(torch.from_numpy(rows))
        users.append(v)
    user_vecs = torch.cat(users) if users else torch.zeros(0, m.dim)
    binary = sp.csr_matrix(data.train_full, dtype=np.float32, copy=True)
    binary.data[:] = 1.0
    pop = np.asarray(binary.sum(axis=0), dtype=np.float32).ravel()
    t = {
        "item_vectors": item_vecs.float().contiguous(),
        "item_bias": item_bias.float().contiguous(),
        "user_vectors": user_vecs.float().contiguous(),
        "popularity": torch.from_numpy(pop),
        "item_warm": m.warm.to(torch.uint8).contiguous(),
        **m.user_tower.artifact_tensors(),
    }
    n_text, n_cat = data.n_features, data.n_categories
    if m.use_content:
        t["content.weight"] = m.content_proj.weight.detach().float().contiguous()
        t["content.bias"] = m.content_bias.weight.detach().float().reshape(-1).contiguous()
    else:  # no content signal: new items get a zero vector and bias
        t["content.weight"] = torch.zeros(n_text + n_cat, m.dim)
        t["content.bias"] = torch.zeros(n_text + n_cat)
    t.update(_csr_tensors("item_categories", data.item_categories))
    t.update(_csr_tensors("user_history", history, keep_order=True))
    model.train(was)
    return t


def _manifest_hash(etl_root: Path) -> str | None:
    try:
        return json.loads((Path(etl_root) / "manifest.json").read_text()).get("content_hash")
    except (OSError, ValueError):
        return None


def export_artifact(model: HybridModel, data: SplitData, out_dir: str | Path, version: str,
                    metrics: dict | None = None, train_config=None) -> Path:
    """Write the serving artifact of ``model`` to ``out_dir`` (replaced atomically)."""
    tensors = artifact_tensors(model, data)
    spec = model.spec()
    config = {
        "model_version": str(version),
        "schema_version": SCHEMA_VERSION,
        "model_type": "hybrid-history-encoder",
        "dim": int(model.dim),
        "scoring": "dot(user_vector, item_vectors[i]) + item_bias[i]",
        "encoder": {**model.user_tower.config(),
                    "includes_user_id_embedding": bool(spec["user_ids"]),
                    "history_source": "train_full"},
        "content": {"n_text_features": data.n_features, "n_categories": data.n_categories,
                    "categories": list(data.categories),
                    "category_weight": spec["category_weight"],
                    "category_normalize": "l2", "enabled": bool(spec["content"])},
        "items": {"warm": int(model.warm.sum()), "cold": int(data.n_items - model.warm.sum())},
        "model": spec,
        "train_config": (dataclasses.asdict(train_config)
                         if dataclasses.is_dataclass(train_config) else train_config),
        "metrics": metrics or {},
        "etl": {"root": str(data.etl_root), "scheme": data.scheme,
                "content_hash": _manifest_hash(data.etl_root)},
    }
    items = ({"title": str(data.item_titles[i]), "categories": list(data.item_category_names[i])}
             for i in range(data.n_items))
    vec = Path(data.etl_root) / "features" / "vectorizer.json"
    return save_artifact(out_dir, tensors, config, [str(u) for u in data.user_ids],
                         [str(i) for i in data.item_ids], items,
                         vectorizer=vec if vec.exists() else None)
