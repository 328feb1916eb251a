"""Test helpers: a real TorchServe on free loopback ports, always stopped afterwards.

    with running_server(out, config="prod") as state:
        client = TorchServeClient(state)
        ...

Also usable from benchmarks (the lead's ``make`` targets use ``python -m archives serve``).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator

import psutil

from archives import server as S
from common.net import free_ports


@contextlib.contextmanager
def running_server(out: str | Path, *, config: str = "prod", models: dict[str, str] | None = None,
                   timeout: float = 300.0, extra_properties: dict[str, str] | None = None,
                   attempts: int = 2) -> Iterator[S.ServerState]:
    """Start TorchServe for ``out`` on three free 127.0.0.1 ports; stop it (and its workers) on exit.

    A port taken between choosing and binding (another process on the machine) is retried once
    with fresh ports.
    """
    state = None
    for attempt in range(attempts):
        inf, mgt, met = free_ports(3)
        try:
            state = S.start(out, config=config, host="127.0.0.1",
                            ports={"inference": inf, "management": mgt, "metrics": met},
                            models=models, timeout=timeout, extra_properties=extra_properties)
            break
        except S.ServerError as e:
            S.stop(out)
            if attempt + 1 >= attempts or "in use" not in str(e) and "Address already" not in str(e):
                raise
            time.sleep(1)
    try:
        yield state
    finally:
        S.stop(out)


def worker_memory(state: S.ServerState) -> list[dict[str, float]]:
    """RSS / USS / PSS (MiB) and shared file-backed memory of each Python worker of ``state``.

    RSS counts shared pages (e.g. a memory-mapped catalog) in every worker; USS is what a worker
    holds privately; PSS splits shared pages between the processes mapping them.
    """
    out = []
    for p in S.worker_processes(state):
        try:
            m = p.memory_full_info()
        except psutil.Error:
            continue
        out.append({"pid": p.pid, "rss_mib": m.rss / 2**20, "uss_mib": m.uss / 2**20,
                    "pss_mib": m.pss / 2**20, "shared_mib": m.shared / 2**20})
    return out


CATEGORIES = ("Comedy", "Drama", "Horror", "Action", "Romance")


def make_random_artifact(path: str | Path, *, n_users: int = 60, n_items: int = 500, dim: int = 16,
                         hidden: int = 32, seed: int = 0, model_version: str = "1",
                         recency_boost: float = 2.0, recency_tau: float = 3.0,
                         category_signal: float = 0.0) -> Path:
    """A small, valid serving artifact from random tensors (core.artifact.save_artifact).

    Users ``"1".."n_users"`` each have 3-12 training items in a random time order (stored oldest
    first); their vectors come from the serving user tower (core/encoder.py) with recency
    weights on, as a trained model's do. Items ``"10", "20", ...`` have category
    ``CATEGORIES[i % 5]`` (and every 7th item also ``"Comedy"``); popularity decreases with the
    item index, so the popularity fallback ranks ``"10", "20", "30", ...`` first.

    ``category_signal`` > 0 plants structure a test can see through the served path: each
    item's encoder row leans towards its category's prototype by that much, and item vectors
    are the tower's encoding of the item alone (plus noise), so a history of one category's
    items ranks that category first. 0 keeps the purely random tensors.
    """
    import torch

    from core.artifact import save_artifact
    from core.encoder import HistoryBagEncoder

    g = torch.Generator().manual_seed(seed)
    item_ids = [str(10 * (i + 1)) for i in range(n_items)]
    user_ids = [str(u + 1) for u in range(n_users)]
    cats = [sorted({i % len(CATEGORIES)} | ({0} if i % 7 == 0 else set())) for i in range(n_items)]
    cat_ptr = torch.tensor([0] + [len(c) for c in cats]).cumsum(0)
    cat_idx = torch.tensor([c for cs in cats for c in cs], dtype=torch.int64)
    hist = [torch.randperm(n_items, generator=g)[: int(torch.randint(3, 13, (1,), generator=g))]
            for _ in range(n_users)]  # chronological: oldest first
    h_ptr = torch.tensor([0] + [len(h) for h in hist]).cumsum(0)
    h_idx = torch.cat(hist).to(torch.int64)
    encoder = {"encoder.in.weight": torch.randn(n_items, hidden, generator=g) * 0.5,
               "encoder.in.bias": torch.randn(hidden, generator=g) * 0.1,
               "encoder.layers.0.weight": torch.randn(dim, hidden, generator=g) * 0.3,
               "encoder.layers.0.bias": torch.zeros(dim)}
    if category_signal > 0:
        protos = torch.randn(len(CATEGORIES), hidden, generator=g)
        primary = torch.tensor([i % len(CATEGORIES) for i in range(n_items)])
        encoder["encoder.in.weight"] = category_signal * protos[primary] + \
            0.3 * torch.randn(n_items, hidden, generator=g)
    tower = HistoryBagEncoder.from_tensors(encoder, {"n_layers": 1, "recency_boost": recency_boost,
                                                     "recency_tau": recency_tau})
    if category_signal > 0:
        alone = tower.encode([torch.tensor([i]) for i in range(n_items)])
        item_vectors = alone / alone.norm(dim=1, keepdim=True).clamp_min(1e-6) + \
            0.05 * torch.randn(n_items, dim, generator=g)
    else:
        item_vectors = torch.randn(n_items, dim, generator=g)
    n_text = 8
    tensors = {
        "item_vectors": item_vectors,
        "item_bias": torch.randn(n_items, generator=g) * 0.1,
        "user_vectors": tower.encode(hist),
        "popularity": torch.arange(n_items, 0, -1, dtype=torch.float32),
        "item_warm": torch.ones(n_items, dtype=torch.uint8),
        **encoder,
        "content.weight": torch.randn(n_text + len(CATEGORIES), dim, generator=g) * 0.1,
        "content.bias": torch.zeros(n_text + len(CATEGORIES)),
        "item_categories.indptr": cat_ptr.to(torch.int64), "item_categories.indices": cat_idx,
        "user_history.indptr": h_ptr.to(torch.int64), "user_history.indices": h_idx,
    }
    config = {"model_version": model_version, "dim": dim,
              "encoder": {**tower.config(), "includes_user_id_embedding": False,
                          "history_source": "random"},
              "content": {"n_text_features": n_text, "n_categories": len(CATEGORIES),
                          "categories": list(CATEGORIES), "category_weight": 1.0},
              "note": "random test artifact (testkit.archives.make_random_artifact)"}
    items = [{"title": f"Item {iid} ({', '.join(CATEGORIES[c] for c in cs)})",
              "categories": [CATEGORIES[c] for c in cs]} for iid, cs in zip(item_ids, cats)]
    return save_artifact(path, tensors, config, user_ids, item_ids, items)


def build_random_versions(root: str | Path, versions=(("1", 0), ("2", 1)), *,
                          model_name: str | None = None, n_users: int = 60, n_items: int = 500,
                          batch_size: int = 8, delay_ms: int | dict[str, int] = 5,
                          faults: dict | None = None) -> Path:
    """OUT (``root/out``) with one small archive per ``(version, seed)``, each from its own
    :func:`make_random_artifact` (``root/artifact-v<version>``), one worker each, named
    ``model_name`` (default: archives.build's). ``delay_ms``
    may differ per version (``{"1": 200, "2": 5}``). ``faults`` (core/faults.py) goes into every
    archive of this call: build a faulty version with its own call, e.g.
    ``build_random_versions(root, versions=(("9", 2),), faults={"error_user_prefix": "fault-"})``."""
    from archives import build as B

    root = Path(root)
    out = root / "out"
    for version, seed in versions:
        art = make_random_artifact(root / f"artifact-v{version}", n_users=n_users, n_items=n_items,
                                   seed=seed, model_version=version)
        delay = delay_ms[version] if isinstance(delay_ms, dict) else delay_ms
        B.build_from_folder(art, out, version=version, model_name=model_name or B.DEFAULT_MODEL_NAME,
                            config=B.ArchiveConfig(batch_size=batch_size, max_batch_delay_ms=delay,
                                                   min_workers=1, max_workers=1, faults=faults),
                            archive_format="zip-store")
    return out


__all__ = ["running_server", "worker_memory", "make_random_artifact", "build_random_versions",
           "CATEGORIES"]
