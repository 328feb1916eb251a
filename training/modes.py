"""eval.json's tables of the API modes -- ``related_items``, ``rerank``, ``diversity`` -- answered
by the handler's engine over the shipped variant (the code path TorchServe runs: request bodies
through core/validation.py, then the engine), on the P1 split.

* ``related_items``: per test user, ``{"user_id": u, "similar_to": <u's last training item>,
  "k": K}`` (u's training items excluded, as served); HitRate@10 and Recall@10 against u's test
  items (P1's main slice), next to item-kNN (cosine over the training co-occurrence matrix,
  from the same item) and popularity;
* ``rerank``: per test user, ``{"user_id": u, "candidates": [u's test items and 100 sampled
  negatives, shuffled]}``; NDCG@10 of the order answered, against the same list in
  popularity order;
* ``diversity``: ``{"user_id": u, "k": 10, "diversity": d}`` for d in 0, 0.3, 0.7: Recall@10 and
  NDCG@10 of the list as served, its intra-list category diversity and distinct categories.

Every ranking metric comes from training/evaluation.py, the code behind the models table.
"""
from __future__ import annotations

import logging
import time
from itertools import combinations
from typing import Callable, Sequence

import numpy as np
import torch

from core.engine import Recommender
from core.validation import validate_request
from training.baselines import ItemKNNModel, PopularityModel
from common.splits import SplitData, chronological_rows
from training.evaluation import RankFn, evaluate, evaluate_ranked, split_cold_items
from training.served import answered_lists, engine_rank_fn

log = logging.getLogger("training.modes")
K = 10
NEGATIVES = 100
DIVERSITY_LEVELS = (0.0, 0.3, 0.7)
SEED = 0

PROTOCOL = {
    "related_items": "per test user, the items similar to the user's last training item "
                     "(similar_to, user_id: training items excluded), against the user's P1 "
                     "test items (main slice); item_knn = cosine over the binary training "
                     "matrix's item columns from the same item; popularity = P1's",
    "rerank": f"per test user, candidates = the user's P1 test items (main slice) + {NEGATIVES} "
              "negatives drawn uniformly from training items the user has in neither train nor "
              "test, shuffled; NDCG@10 / Recall@10 of the order answered; popularity = the same "
              "list by training popularity (ties: the shuffled order)",
    "diversity": "per test user, {user_id, k: 10, diversity}: Recall@10 / NDCG@10 of the list as "
                 "served (an item outside P1's candidates counts as a miss); ild@10 = mean "
                 "pairwise category distance (1 - Jaccard) in the list; categories@10 = distinct "
                 "categories in the list; more_categories_than_0 = share of users whose list has "
                 "more distinct categories than at diversity 0",
}


def _listed(lists: dict[int, list[int]]) -> RankFn:
    """A rank function over lists answered beforehand (user index -> item indices)."""
    def rank(users: np.ndarray, k: int, candidates: np.ndarray) -> torch.Tensor:
        out = torch.full((len(users), k), -1, dtype=torch.int64)
        for r, u in enumerate(users):
            row = lists.get(int(u), [])[:k]
            out[r, :len(row)] = torch.tensor(row, dtype=torch.int64)
        return out
    return rank


def _scored_users(data: SplitData, test) -> np.ndarray:
    """Users with a test item left once their training items are set aside (P1's scored users)."""
    left = test - test.multiply(data.train_full.astype(bool))
    left.eliminate_zeros()
    return np.flatnonzero(np.diff(left.tocsr().indptr) > 0)


def last_training_items(data: SplitData) -> np.ndarray:
    """Per user, the latest training item (time order, ties by item index, as the user tower
    reads the history); -1 for a user without one."""
    rows = chronological_rows(data.train_full, data.timestamps)
    ends = rows.indptr[1:]
    out = np.full(data.n_users, -1, dtype=np.int64)
    has = np.diff(rows.indptr) > 0
    out[has] = rows.indices[ends[has] - 1]
    return out


def related_items(rec: Recommender, name: str, data: SplitData) -> dict:
    test_warm, _, cold = split_cold_items(data.train_full, data.test)
    last = last_training_items(data)
    users = _scored_users(data, test_warm)
    users = users[last[users] >= 0]
    ids = data.user_ids
    served = engine_rank_fn(rec, ids, request=lambda u, k: validate_request(
        {"user_id": str(ids[u]), "similar_to": str(data.item_ids[last[u]]), "k": k}))
    knn = ItemKNNModel().fit(data.train_full)
    pop = PopularityModel().fit(data.train_full)
    kw = dict(ks=(K,), users=users, candidate_items=~cold)
    models = {name: evaluate_ranked(served, data.train_full, test_warm, **kw),
              "item_knn": evaluate(lambda us: knn.similar(last[us]), data.train_full, test_warm, **kw),
              "popularity": evaluate(pop.score, data.train_full, test_warm, **kw)}
    return {"protocol": PROTOCOL["related_items"], "served_row": name, "models": models,
            "goal_hit_vs_item_knn": models[name][f"hit@{K}"] - models["item_knn"][f"hit@{K}"]}


def rerank(rec: Recommender, name: str, data: SplitData) -> dict:
    test_warm, _, cold = split_cold_items(data.train_full, data.test)
    users = _scored_users(data, test_warm)
    rng = np.random.default_rng(SEED)
    warm = np.flatnonzero(~cold)
    train, test = data.train_full.tocsr(), test_warm.tocsr()
    pop = PopularityModel().fit(data.train_full).item_counts
    lists: dict[int, np.ndarray] = {}
    for u in users:
        seen = set(train.indices[train.indptr[u]:train.indptr[u + 1]].tolist())
        pos = [i for i in test.indices[test.indptr[u]:test.indptr[u + 1]].tolist() if i not in seen]
        pool = np.setdiff1d(warm, np.fromiter(seen | set(pos), dtype=np.int64), assume_unique=False)
        neg = rng.choice(pool, size=min(NEGATIVES, len(pool)), replace=False)
        lists[int(u)] = rng.permutation(np.concatenate([np.asarray(pos, dtype=np.int64), neg]))
    reqs = [validate_request({"user_id": str(data.user_ids[u]),
                              "candidates": [str(data.item_ids[i]) for i in lists[u]]}) for u in lists]
    answered = dict(zip(lists, answered_lists(rec, reqs)))
    by_pop = {u: c[np.argsort(-pop[c], kind="stable")].tolist() for u, c in lists.items()}
    kw = dict(ks=(K,), users=users, candidate_items=~cold)
    models = {name: evaluate_ranked(_listed(answered), data.train_full, test_warm, **kw),
              "popularity": evaluate_ranked(_listed(by_pop), data.train_full, test_warm, **kw)}
    sizes = [len(c) for c in lists.values()]
    return {"protocol": PROTOCOL["rerank"], "served_row": name, "negatives": NEGATIVES,
            "mean_candidates": float(np.mean(sizes)) if sizes else 0.0,
            "answered_all": all(len(answered[u]) == len(lists[u]) for u in lists),
            "models": models}


def _category_stats(lists: dict[int, list[int]], cats: Sequence[frozenset]) -> tuple[float, float, dict]:
    """(mean ILD, mean distinct categories, user -> distinct categories) over the lists."""
    ild, distinct = [], {}
    for u, items in lists.items():
        sets = [cats[i] for i in items]
        pairs = [1.0 - (len(a & b) / len(a | b) if a | b else 1.0) for a, b in combinations(sets, 2)]
        ild.append(float(np.mean(pairs)) if pairs else 0.0)
        distinct[u] = len(frozenset().union(*sets)) if sets else 0
    return (float(np.mean(ild)) if ild else 0.0,
            float(np.mean(list(distinct.values()))) if distinct else 0.0, distinct)


def diversity(rec: Recommender, name: str, data: SplitData,
              levels: Sequence[float] = DIVERSITY_LEVELS) -> dict:
    test_warm, _, cold = split_cold_items(data.train_full, data.test)
    users = _scored_users(data, test_warm)
    cats = [frozenset(c) for c in data.item_category_names]
    rows, base = {}, None
    for level in levels:
        reqs = [validate_request({"user_id": str(data.user_ids[u]), "k": K, "diversity": level})
                for u in users]
        lists = dict(zip(users.tolist(), answered_lists(rec, reqs)))
        m = evaluate_ranked(_listed(lists), data.train_full, test_warm, ks=(K,), users=users,
                            candidate_items=~cold)
        ild, n_cats, per_user = _category_stats(lists, cats)
        row = {f"recall@{K}": m[f"recall@{K}"], f"ndcg@{K}": m[f"ndcg@{K}"], f"ild@{K}": ild,
               f"categories@{K}": n_cats, f"coverage@{K}": m[f"coverage@{K}"], "users": m["users"]}
        if base is None:
            base = per_user
        else:
            row["more_categories_than_0"] = float(np.mean([per_user[u] > base[u] for u in base]))
        rows[f"{level:.1f}"] = row
    return {"protocol": PROTOCOL["diversity"], "served_row": name, "levels": rows}


TABLES: dict[str, Callable[[Recommender, str, SplitData], dict]] = {
    "related_items": related_items, "rerank": rerank, "diversity": diversity}


def mode_tables(rec: Recommender, name: str, data: SplitData) -> dict[str, dict]:
    """{"related_items": ..., "rerank": ..., "diversity": ...} for eval.json (``name``: the
    models row of the engine ``rec``, e.g. ``served_ivf``)."""
    out = {}
    for table, build in TABLES.items():
        t = time.perf_counter()
        out[table] = build(rec, name, data)
        log.info("%s table through the engine in %.1f s", table, time.perf_counter() - t)
    return out


__all__ = ["mode_tables", "related_items", "rerank", "diversity", "last_training_items",
           "PROTOCOL", "DIVERSITY_LEVELS", "NEGATIVES"]
