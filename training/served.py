"""Offline evaluation of what an archive ships: the serving engine itself, per variant.

The rows ``served_<variant>`` and ``hybrid_int8_<variant>`` of eval.json come from here: the
exported serving artifact, a serving pack built for the variant exactly as ``archives build``
builds it (core/artifact_adapter.py ``write_pack``), and the handler's engine
(core/engine.py) answering ``{"user_id": u, "k": K}`` for every test user. P1 ranks only the
slice's candidate items (training items for the main slice, cold items for the cold slice), so
the engine's answer is read down to the first K candidates, asking for a deeper list when the
first one holds fewer (what the engine answers for that deeper request, index path included;
the cold slice asks past the API's k <= 1000 at once, which the engine answers by its exact scan).
"""
from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from core.artifact_adapter import PACK_FILE, load_recommender, write_pack
from core.engine import Recommender
from core.validation import RecRequest

log = logging.getLogger("training.served")
BATCH = 64  # requests per engine call (TorchServe hands the handler batches of up to batchSize)


def engine_rank_fn(rec: Recommender, user_ids,
                   request: Callable[[int, int], RecRequest] | None = None,
                   item_index: Mapping[str, int] | None = None
                   ) -> Callable[[np.ndarray, int, np.ndarray], torch.Tensor]:
    """A ``training.evaluation.evaluate_ranked`` rank function answering through ``rec``:
    ``request(user index, k)`` is the request sent (default ``{"user_id": u, "k": k}``);
    ``item_index`` maps answered item ids to the evaluation's item indices (default: the
    engine's own, when both index the same catalog)."""
    index = item_index if item_index is not None else rec.data.item_index
    n_items = rec.data.n_items
    # the slices of one candidate set (main, few interactions, long history) share users' lists
    memo: dict[tuple[int, int, bytes], torch.Tensor] = {}
    ask = request or (lambda u, k: RecRequest(str(user_ids[u]), k=k))

    def rank(users: np.ndarray, k: int, candidates: np.ndarray) -> torch.Tensor:
        key = hashlib.blake2b(candidates.tobytes(), digest_size=16).digest()
        fresh = [u for u in users if (int(u), k, key) not in memo]
        if fresh:
            for u, row in zip(fresh, _rank(np.asarray(fresh), k, candidates)):
                memo[(int(u), k, key)] = row
        return torch.stack([memo[(int(u), k, key)] for u in users]) if len(users) else \
            torch.zeros((0, k), dtype=torch.int64)

    def _rank(users: np.ndarray, k: int, candidates: np.ndarray) -> torch.Tensor:
        out = torch.full((len(users), k), -1, dtype=torch.int64)
        n_other = int((~candidates).sum())
        # the cold slice (few candidates) goes deep at once; the main slice doubles from 2k
        fetch = min(n_items, 2 * k if n_other < n_items // 2 else k + n_other)
        todo = list(range(len(users)))
        while todo:
            retry = []
            for s in range(0, len(todo), BATCH):
                rows = todo[s:s + BATCH]
                outs = rec.recommend([ask(users[r], fetch) for r in rows])
                for r, o in zip(rows, outs):
                    got = [index.get(it["item_id"]) for it in o.body["items"]]
                    kept = [i for i in got if i is not None and candidates[i]][:k]
                    if len(kept) < k and len(got) >= fetch and fetch < n_items:
                        retry.append(r)
                    else:
                        out[r, :len(kept)] = torch.tensor(kept, dtype=torch.int64)
            todo, fetch = retry, min(n_items, 2 * fetch)
        return out

    return rank


def answered_lists(rec: Recommender, requests: Sequence[RecRequest]) -> list[list[int]]:
    """The item indices the engine answers to each request, as served (batches of BATCH)."""
    index = rec.data.item_index
    out: list[list[int]] = []
    for s in range(0, len(requests), BATCH):
        for o in rec.recommend(list(requests[s:s + BATCH])):
            if o.error is not None:
                raise ValueError(f"the engine refused an evaluation request: {o.error.message}")
            out.append([index.get(it["item_id"]) for it in o.body["items"]])
    return out


def served_recommenders(artifact_dir: Path, variants: list[str], work: Path | None = None,
                        threads: int = 1) -> dict[str, Recommender]:
    """variant -> the engine over ``artifact_dir`` with a pack built for that variant."""
    root = Path(work or tempfile.mkdtemp(prefix="served-"))
    out = {}
    for variant in variants:
        t = time.perf_counter()
        pack = root / variant / PACK_FILE
        info = write_pack(artifact_dir, pack, variant=variant, threads=threads)
        out[variant] = load_recommender(artifact_dir, scoring=variant, pack_path=pack, threads=threads)
        log.info("serving pack %s built in %.1f s (recall vs exact %s)", variant,
                 time.perf_counter() - t, info.get("quality", {}).get("recall_vs_exact"))
    return out


__all__ = ["engine_rank_fn", "answered_lists", "served_recommenders"]
