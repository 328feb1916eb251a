"""Train/serve parity through a running TorchServe: a known user's answer must equal the answer
to a new id that sends that user's training history.

For a sample of known users (all of them, up to ``max_users``), two requests go to the served
version: ``{"user_id": u, "k": 10}`` (the vector precomputed at export) and ``{"user_id": <a new
id>, "k": 10, "history": u's history, oldest first}`` (the vector the handler computes per
request). The history is read from the ETL's split, not from the artifact (the rows the stored
vectors were computed from: ``train_full``, or ``train`` when the artifact says so), ordered by
training's own time order (``common.splits.chronological_rows``). Both rank the same items
unless something between training and serving differs: a lost recency weight, another order,
another encoder. A user id embedding makes them differ by design; ``parity.json`` says when the
artifact has one.

Writes ``OUT/parity.json``: ``{"users", "mean_overlap", "min_overlap", ...}``.
"""
from __future__ import annotations

import json
import logging
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from core.jsonio import write_json
from archives.client import TorchServeClient
from archives.store import find_archive

log = logging.getLogger("archives.parity")
THRESHOLD = 0.99


def _artifact_config(mar: Path) -> dict:
    with zipfile.ZipFile(mar) as z:
        return json.loads(z.read("artifact/config.json"))


def histories(out: Path, source: str, user_ids: list[str] | None = None) -> dict[str, list[str]]:
    """user id -> item ids of the ETL history the stored vector was computed from, oldest first."""
    from common.schema import EtlLayout
    from common.splits import chronological_rows, load_split

    data = load_split(EtlLayout.under(out), "temporal")
    rows = chronological_rows(data.train if source == "train" else data.train_full, data.timestamps)
    out_map = {}
    for u, uid in enumerate(data.user_ids):
        items = rows.indices[rows.indptr[u]:rows.indptr[u + 1]]
        if len(items):
            out_map[str(uid)] = [str(data.item_ids[i]) for i in items]
    return out_map if user_ids is None else {u: out_map[u] for u in user_ids if u in out_map}


def check(out: str | Path, *, model_name: str = "recsys", version: str | None = None,
          k: int = 10, max_users: int = 1000, seed: int = 0, threshold: float = THRESHOLD,
          workers: int = 8) -> dict:
    """Run the parity check against the TorchServe running for ``out``; returns (and writes) the
    summary."""
    out = Path(out)
    client = TorchServeClient.for_out(out)
    version = version or client.default_version(model_name)
    if version is None:
        raise LookupError(f"{model_name} is not served by the TorchServe of {out}")
    cfg = _artifact_config(find_archive(out, model_name, version).path)
    encoder = cfg.get("encoder", {})
    source = encoder.get("history_source", "train_full")
    hist = histories(out, source)
    users = sorted(hist)
    if len(users) > max_users:
        users = sorted(np.random.default_rng(seed).choice(users, max_users, replace=False).tolist())
    prefix = f"parity-{uuid.uuid4().hex[:12]}-"

    def pair(u: str) -> tuple[list[str], list[str], str, str]:
        a = client.predict(model_name, {"user_id": u, "k": k}, version)
        b = client.predict(model_name, {"user_id": prefix + u, "k": k, "history": hist[u]}, version)
        for r in (a, b):
            if r.status_code != 200:
                raise RuntimeError(f"parity request for user {u!r} failed: HTTP {r.status_code} "
                                   f"{r.text[:300]}")
        da, db = a.json(), b.json()
        return ([it["item_id"] for it in da["items"]], [it["item_id"] for it in db["items"]],
                da["strategy"], db["strategy"])

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(pair, users))
    overlaps = [len(set(a) & set(b)) / max(len(a), 1) for a, b, _, _ in results]
    strategies = {}
    for _, _, sa, sb in results:
        key = f"{sa}/{sb}"
        strategies[key] = strategies.get(key, 0) + 1
    summary = {
        "users": len(users), "mean_overlap": float(np.mean(overlaps)) if overlaps else float("nan"),
        "min_overlap": float(np.min(overlaps)) if overlaps else float("nan"),
        "identical_lists": int(sum(a == b for a, b, _, _ in results)),
        "k": k, "model_name": model_name, "model_version": str(version),
        "history_source": source,
        "user_id_embedding": bool(encoder.get("includes_user_id_embedding", False)),
        "strategies": strategies, "threshold": threshold,
    }
    summary["passed"] = bool(overlaps) and summary["mean_overlap"] >= threshold
    write_json(out / "parity.json", summary)
    log.info("parity of %s v%s over %d users: mean top-%d overlap %.4f (min %.2f)", model_name,
             version, len(users), k, summary["mean_overlap"], summary["min_overlap"])
    return summary


__all__ = ["check", "histories", "THRESHOLD"]
