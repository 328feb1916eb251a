"""training/modes.py's pieces against hand-computed answers (the whole tables: test_pipeline)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from training.modes import _category_stats, _listed, last_training_items


def test_last_training_item_is_the_latest_of_train_full(tiny):
    last = last_training_items(tiny)
    ts = tiny.timestamps.tocsr()
    for u in range(tiny.n_users):
        row = slice(ts.indptr[u], ts.indptr[u + 1])
        items, times = ts.indices[row], ts.data[row]
        assert last[u] == items[np.argmax(times)]  # distinct times here
    # validation items are part of the history served (train_full), test items are not
    assert not tiny.test[np.arange(tiny.n_users), last].any()


def test_ties_in_time_go_to_the_higher_item_index(tiny):
    from dataclasses import replace

    ts = tiny.timestamps.tocsr().copy()
    ts.data[:] = 7  # every interaction at the same time
    last = last_training_items(replace(tiny, timestamps=ts))
    assert last.tolist() == [int(tiny.train_full[u].indices.max()) for u in range(tiny.n_users)]


def test_category_diversity_by_hand():
    cats = [frozenset({"A"}), frozenset({"A", "B"}), frozenset({"C"}), frozenset()]
    ild, distinct, per_user = _category_stats({0: [0, 1, 2], 1: [0, 0], 2: [3]}, cats)
    # user 0: pairs (A | AB) 1 - 1/2, (A | C) 1, (AB | C) 1 -> 2.5 / 3; user 1: identical -> 0;
    # user 2: a single item -> 0
    assert ild == pytest.approx((2.5 / 3 + 0 + 0) / 3)
    assert per_user == {0: 3, 1: 1, 2: 0} and distinct == pytest.approx(4 / 3)


def test_listed_rank_fn_pads_and_cuts():
    rank = _listed({3: [5, 6, 7], 4: [1]})
    out = rank(np.array([4, 3, 9]), 2, np.ones(10, dtype=bool))
    assert torch.equal(out, torch.tensor([[1, -1], [5, 6], [-1, -1]]))
