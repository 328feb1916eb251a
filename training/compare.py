"""Every model through the same harness, on the same split: the comparison behind eval.json.

All models are scored by ``training.evaluation.evaluate`` with protocol P1: the main slice ranks
items seen in training (train + valid) with each user's training items masked; the cold-item
slice ranks only items without training interactions (id-only models cannot rank them); the
few-interactions slice is the main protocol restricted to users with little history.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp

from training.baselines import ContentModel, EASEModel, PopularityModel, SparkALSModel
from common.splits import SplitData
from training.evaluation import (RankFn, evaluate, evaluate_ranked, split_cold_items,
                                 users_with_few_interactions, users_with_long_histories)

log = logging.getLogger("training.compare")
ScoreFn = Callable[[np.ndarray], np.ndarray]

PROTOCOL = {
    "name": "P1",
    "positives": "explicit rating >= 4.0 (implicit events: every kept event)",
    "min_user_positives": 5,
    "split": "per user, by time (ties by item id): last round(0.2 n), at least 1, are test; "
             "validation (early stopping) is carved from the training part",
    "ranking": "full ranking over items with training interactions, user's training items masked",
    "cold_items": "test positives on items absent from training; ranked among those items only",
    "few_interactions": "users with at most 10 training items, main protocol",
    "long_history": "users with more than 50 training items, main protocol",
    "served": "served_<variant> / hybrid_int8_<variant>: the handler's engine answering "
              "{user_id, k} per test user over the variant's serving pack, its list read down to "
              "the first K candidates of the slice (no MRR: no full ranking)",
    "metrics": "Recall@K = hits / min(K, |test|); NDCG@K binary gains, ideal DCG over "
               "min(K, |test|); MRR over the full ranking; HitRate@K; coverage@K = distinct "
               "recommended items / candidate items; means over users with a test item",
    "ks": [10, 20],
}


class WarmOnly:
    """Fit an id-only model on the items that have training interactions, score zero elsewhere.

    EASE inverts an items x items matrix: restricting it to warm items keeps that matrix as small
    as the information in it (cold columns are all zero anyway)."""

    def __init__(self, model, warm: np.ndarray):
        self.model, self.warm = model, warm

    def fit(self, train: sp.csr_matrix) -> "WarmOnly":
        self.n_items = train.shape[1]
        self.model.fit(train[:, self.warm])
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        out = np.zeros((len(users), self.n_items), dtype=np.float32)
        out[:, self.warm] = self.model.score(users)
        return out


@dataclass(frozen=True)
class Ranked:
    """A model evaluated from the ranked lists it answers (the serving engine), not from scores."""

    rank: RankFn


SLICES = ("cold_items", "few_interactions", "long_history")


def evaluate_slices(model: "ScoreFn | Ranked", data: SplitData, ks=(10, 20)) -> dict[str, dict]:
    """{"main": ..., "cold_items": ..., "few_interactions": ..., "long_history": ...} for one
    model (a score function, or :class:`Ranked`)."""
    test_warm, test_cold, cold = split_cold_items(data.train_full, data.test)
    few = users_with_few_interactions(data.train_full, max_n=10)
    long = users_with_long_histories(data.train_full, min_n=51)

    def ev(test, **kw):
        if isinstance(model, Ranked):
            return evaluate_ranked(model.rank, data.train_full, test, ks=ks, **kw)
        return evaluate(model, data.train_full, test, ks=ks, **kw)

    return {
        "main": ev(test_warm, candidate_items=~cold),
        "cold_items": ev(test_cold, candidate_items=cold),
        "few_interactions": ev(test_warm, users=few, candidate_items=~cold),
        "long_history": ev(test_warm, users=long, candidate_items=~cold),
    }


def fit_baselines(data: SplitData, spark=None, *, als: bool = True) -> dict[str, tuple[ScoreFn, float]]:
    """Fit the reference models on the P1 training part; name -> (score_fn, fit seconds)."""
    warm = data.warm_items(full=True)
    fitted: dict[str, tuple[ScoreFn, float]] = {}

    def timed(name: str, build: Callable[[], object]) -> None:
        t = time.perf_counter()
        model = build()
        fitted[name] = (model.score, time.perf_counter() - t)  # type: ignore[attr-defined]
        log.info("fitted %s in %.1f s", name, fitted[name][1])

    timed("popularity", lambda: PopularityModel().fit(data.train_full))
    timed("ease", lambda: WarmOnly(EASEModel(lambda_=200.0), warm).fit(data.train_full))
    timed("content", lambda: ContentModel().fit(data.train_full, data.item_features))
    if als and spark is not None:
        timed("als", lambda: SparkALSModel(rank=64, reg_param=0.05, alpha=10.0, max_iter=15,
                                           seed=42, num_blocks=2).fit(spark, data.train_full))
    return fitted


def comparison(models: "dict[str, ScoreFn | Ranked]", data: SplitData, ks=(10, 20)) -> tuple[dict, dict]:
    """(models section, slices section) of eval.json for already fitted score functions."""
    main: dict[str, dict] = {}
    slices: dict[str, dict[str, dict]] = {name: {} for name in SLICES}
    for name, fn in models.items():
        res = evaluate_slices(fn, data, ks)
        main[name] = res["main"]
        for s in slices:
            slices[s][name] = res[s]
    return main, slices
