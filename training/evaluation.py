"""Offline ranking evaluation shared by every model (protocol P1 in NOTES.md).

One implementation so that every number we report is comparable:

* full ranking over the candidate items (default: the whole catalog) with each user's
  training items masked out;
* ties broken deterministically: equal scores rank the lower item index first;
* Recall@K = hits / min(K, |test_u|); NDCG@K with binary gains and the ideal DCG over
  min(K, |test_u|) positions; HitRate@K = 1 if any hit in the top K;
* ``mrr`` is the reciprocal rank of the first relevant item in the *full* ranking (no cutoff);
* coverage@K = distinct items recommended in the top K across scored users / number of candidate
  items;
* means over *scored* users: users with at least one test item left after filtering.

Test positives that cannot be ranked are dropped before scoring: items outside the candidates,
and items the user also has in training (those are masked, so they could never be hit).

Memory: scores are requested from the model one batch of users at a time, so nothing larger than
``batch_size x n_items`` is ever materialized.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np
import scipy.sparse as sp
import torch

ScoreFn = Callable[[np.ndarray], "np.ndarray | torch.Tensor"]


def _csr(m) -> sp.csr_matrix:
    """A canonical CSR copy without explicit zeros (a stored 0 is not an interaction)."""
    out = sp.csr_matrix(m, copy=True)
    out.eliminate_zeros()
    out.sum_duplicates()
    out.sort_indices()
    return out


def _keep_columns(m: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    """``m`` with only the entries whose column is marked in ``keep`` (dtype preserved)."""
    coo = m.tocoo()
    sel = keep[coo.col]
    return _csr(sp.csr_matrix((coo.data[sel], (coo.row[sel], coo.col[sel])), shape=m.shape))


def _candidate_mask(candidate_items, n_items: int) -> np.ndarray:
    if candidate_items is None:
        return np.ones(n_items, dtype=bool)
    cand = np.asarray(candidate_items)
    if cand.dtype == bool:
        if cand.shape != (n_items,):
            raise ValueError(f"candidate mask has shape {cand.shape}, expected ({n_items},)")
        return cand.copy()
    if cand.size and (cand.min() < 0 or cand.max() >= n_items):
        raise ValueError("candidate item index out of range")
    mask = np.zeros(n_items, dtype=bool)
    mask[cand.astype(np.int64)] = True
    return mask


def _rows_to_dense(m: sp.csr_matrix, rows: np.ndarray) -> torch.Tensor:
    """Boolean (len(rows), n_cols) tensor of the stored entries of ``m[rows]``."""
    sub = m[rows]
    out = torch.zeros((len(rows), m.shape[1]), dtype=torch.bool)
    r = np.repeat(np.arange(len(rows)), np.diff(sub.indptr))
    out[torch.from_numpy(r), torch.from_numpy(sub.indices.astype(np.int64))] = True
    return out


def top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` (values, indices) per row, ordered by score desc then item index asc.

    ``torch.topk`` gives no guarantee about which of several equal scores it returns, so the
    k-th score is used as a threshold: everything above it is in, and the lowest-index items
    equal to it fill the remaining places. Exact, and only O(rows x items) extra work.
    """
    n_rows, n_items = scores.shape
    k = min(k, n_items)
    if k == 0:
        empty = torch.empty((n_rows, 0))
        return empty.to(scores.dtype), empty.long()
    thr = torch.topk(scores, k, dim=1, sorted=True).values[:, -1:]
    above = scores > thr
    equal = scores == thr
    need = k - above.sum(dim=1, keepdim=True)
    chosen = above | (equal & (torch.cumsum(equal, dim=1, dtype=torch.int32) <= need))
    idx = chosen.nonzero()[:, 1].view(n_rows, k)  # row-major: ascending item index per row
    vals = torch.gather(scores, 1, idx)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return torch.gather(vals, 1, order), torch.gather(idx, 1, order)


class _Prepared:
    """The P1 preliminaries shared by :func:`evaluate` and :func:`evaluate_ranked`: canonical
    matrices, unrankable test positives dropped, the users to score."""

    def __init__(self, train, test, users, candidate_items, ks):
        self.ks = sorted({int(k) for k in ks})
        if not self.ks or self.ks[0] < 1:
            raise ValueError("ks must be positive integers")
        train, test = _csr(train), _csr(test).astype(np.float64)
        if train.shape != test.shape:
            raise ValueError(f"train {train.shape} and test {test.shape} differ in shape")
        self.n_users, self.n_items = train.shape
        self.cand = _candidate_mask(candidate_items, self.n_items)
        self.n_cand = int(self.cand.sum())
        # Drop unrankable test positives: non-candidates and items already in the user's training row.
        test = _keep_columns(test, self.cand)
        self.test = _csr(test - test.multiply(train.astype(bool)))
        self.train = train
        self.n_test = np.diff(self.test.indptr)
        if users is None:
            pool = np.arange(self.n_users)
        else:
            pool = np.unique(np.asarray(users, dtype=np.int64))
            if pool.size and (pool[0] < 0 or pool[-1] >= self.n_users):
                raise ValueError("user index out of range")
        self.scored = pool[self.n_test[pool] > 0]
        self.k_max = min(self.ks[-1], self.n_cand)  # never recommend a masked item to fill a slot
        self.discounts = 1.0 / np.log2(np.arange(2, self.ks[-1] + 2))
        self.ideal = np.concatenate([[0.0], np.cumsum(self.discounts)])  # IDCG with m relevant
        self.sums = {f"{name}@{k}": 0.0 for k in self.ks for name in ("recall", "ndcg", "hit")}
        self.recommended = {k: np.zeros(self.n_items, dtype=bool) for k in self.ks}
        self.cand_t = torch.from_numpy(self.cand)

    def batches(self, batch_size: int):
        for start in range(0, len(self.scored), batch_size):
            yield self.scored[start:start + batch_size]

    def allowed(self, batch: np.ndarray) -> torch.Tensor:
        return self.cand_t.unsqueeze(0) & ~_rows_to_dense(self.train, batch)

    def add(self, batch: np.ndarray, idx: torch.Tensor, allowed: torch.Tensor) -> None:
        """Accumulate the top-``k_max`` lists ``idx`` (item indices, -1 = empty slot) of a batch;
        a slot holding a masked or non-candidate item counts as a miss."""
        safe = idx.clamp_min(0)
        valid = (torch.gather(allowed, 1, safe) & (idx >= 0)).numpy()
        hits = (torch.gather(_rows_to_dense(self.test, batch), 1, safe).numpy()) & valid
        idx = idx.numpy()
        n_rel = self.n_test[batch]
        for k in self.ks:
            h = hits[:, :k]
            n_hits = h.sum(axis=1)
            denom = np.minimum(k, n_rel)
            self.sums[f"recall@{k}"] += float((n_hits / denom).sum())
            dcg = (h * self.discounts[: h.shape[1]]).sum(axis=1)
            self.sums[f"ndcg@{k}"] += float((dcg / self.ideal[denom]).sum())
            self.sums[f"hit@{k}"] += float((n_hits > 0).sum())
            self.recommended[k][idx[:, :k][valid[:, :k]]] = True

    def result(self) -> dict[str, float]:
        n = len(self.scored)
        result: dict[str, float] = {}
        for k in self.ks:
            for name in ("recall", "ndcg", "hit"):
                result[f"{name}@{k}"] = self.sums[f"{name}@{k}"] / n if n else math.nan
            result[f"coverage@{k}"] = float(self.recommended[k].sum()) / self.n_cand \
                if n and self.n_cand else 0.0
        result["users"] = n
        return result


def evaluate(
    score_fn: ScoreFn,
    train,
    test,
    *,
    ks: Iterable[int] = (10, 20),
    users=None,
    candidate_items=None,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Rank items for every scored user and return mean metrics.

    Args:
        score_fn: maps an int64 array of user indices to scores of shape (len(users), n_items),
            as a numpy array or torch tensor; higher is better. NaN scores are an error.
        train: (n_users, n_items) sparse matrix of training interactions; its stored entries are
            masked out of each user's ranking.
        test: (n_users, n_items) sparse matrix of held-out positives (binary relevance).
        ks: cutoffs for recall/ndcg/hit/coverage.
        users: restrict evaluation to these user indices (e.g. a sparse-user slice);
            default all users. Users without test items after filtering are never scored.
        candidate_items: bool mask of length n_items or an index array; only these items are
            ranked, and test positives outside them are dropped (the cold-item slice passes
            the cold items here). Default: every item.
        batch_size: users scored per call of ``score_fn``.

    Returns:
        ``{"recall@K", "ndcg@K", "hit@K", "coverage@K" for each K, "mrr", "users"}``; metrics
        are NaN (coverage 0.0) when no user could be scored.
    """
    P = _Prepared(train, test, users, candidate_items, ks)
    rr_sum = 0.0
    for batch in P.batches(batch_size):
        scores = score_fn(batch)
        scores = torch.as_tensor(np.asarray(scores) if not torch.is_tensor(scores) else scores)
        scores = scores.detach().to("cpu", torch.float32)
        if scores.shape != (len(batch), P.n_items):
            raise ValueError(f"score_fn returned shape {tuple(scores.shape)}, "
                             f"expected ({len(batch)}, {P.n_items})")
        if torch.isnan(scores).any():
            raise ValueError("score_fn returned NaN scores")
        # Masked items must sort after every allowed item, even one the model scored -inf.
        scores = scores.clone()
        scores[torch.isneginf(scores)] = torch.finfo(torch.float32).min
        allowed = P.allowed(batch)
        scores.masked_fill_(~allowed, float("-inf"))
        _, idx = top_k(scores, P.k_max)
        P.add(batch, idx, allowed)

        # Full-ranking rank of the first relevant item: the relevant item that sorts first
        # (highest score, lowest index); its rank = #items before it in the same order + 1.
        relevant = _rows_to_dense(P.test, batch)
        rel_scores = scores.masked_fill(~relevant, float("-inf"))
        _, first = top_k(rel_scores, 1)
        s_first = torch.gather(scores, 1, first)
        item_ids = torch.arange(P.n_items).unsqueeze(0)
        before = (scores > s_first) | ((scores == s_first) & (item_ids < first))
        rank = before.sum(dim=1).numpy() + 1
        rr_sum += float((1.0 / rank).sum())
    result = P.result()
    result["mrr"] = rr_sum / result["users"] if result["users"] else math.nan
    return result


RankFn = Callable[[np.ndarray, int, np.ndarray], torch.Tensor]


def evaluate_ranked(
    rank_fn: RankFn,
    train,
    test,
    *,
    ks: Iterable[int] = (10, 20),
    users=None,
    candidate_items=None,
    batch_size: int = 256,
) -> dict[str, float]:
    """:func:`evaluate` for a model that answers ranked lists instead of scores (the serving
    engine: training/served.py). ``rank_fn(users, k, candidates)`` returns int64 item indices
    ``[len(users), k]``, best first, restricted to the bool mask ``candidates`` and padded with
    -1; the user's training items must already be left out (a returned one counts as a miss).
    Same metrics as :func:`evaluate` but no ``mrr`` (it needs the full ranking)."""
    P = _Prepared(train, test, users, candidate_items, ks)
    for batch in P.batches(batch_size):
        idx = torch.as_tensor(rank_fn(batch, P.k_max, P.cand), dtype=torch.int64)
        if idx.shape != (len(batch), P.k_max):
            raise ValueError(f"rank_fn returned shape {tuple(idx.shape)}, "
                             f"expected ({len(batch)}, {P.k_max})")
        P.add(batch, idx, P.allowed(batch))
    return P.result()


def split_cold_items(train, test) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    """Split ``test`` by P1's rule: positives on items absent from training form the cold slice.

    Returns ``(test_warm, test_cold, cold_item_mask)``; ``cold_item_mask[i]`` is True when item
    ``i`` has no training interaction. Evaluate the main metrics on ``test_warm`` with
    ``candidate_items=~cold_item_mask`` (P1 ranks over training items), and the cold slice on
    ``test_cold`` with ``candidate_items=cold_item_mask``.
    """
    train, test = _csr(train), _csr(test)
    if train.shape != test.shape:
        raise ValueError(f"train {train.shape} and test {test.shape} differ in shape")
    cold = np.diff(train.tocsc().indptr) == 0
    return _keep_columns(test, ~cold), _keep_columns(test, cold), cold


def users_with_few_interactions(train, max_n: int = 10, min_n: int = 1) -> np.ndarray:
    """Indices of users with ``min_n <= #training items <= max_n`` (the sparse-user slice).

    ``min_n`` defaults to 1 so that users with no history at all (a cold-user problem, not a
    sparse one) are not mixed into this slice; pass 0 to include them.
    """
    counts = np.diff(_csr(train).indptr)
    return np.flatnonzero((counts >= min_n) & (counts <= max_n))


def users_with_long_histories(train, min_n: int = 51) -> np.ndarray:
    """Indices of users with at least ``min_n`` training items (the long-history slice)."""
    return np.flatnonzero(np.diff(_csr(train).indptr) >= min_n)
