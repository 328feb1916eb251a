"""Fixtures for the hybrid model tests: one generated ETL run per session, and tiny in-memory
datasets with a known answer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from training.config import TrainConfig
from common.schema import EtlLayout
from common.splits import SplitData, load_split

FAST = TrainConfig(dim=32, max_epochs=40, eval_every=2, patience=6, progress=False, seed=3,
                   num_threads=1)


@pytest.fixture(scope="session")
def generated_etl(spark, tmp_path_factory) -> EtlLayout:
    """A real ETL run (local Spark) on generated data with content signal (~30 s)."""
    from etl.__main__ import main

    out = tmp_path_factory.mktemp("generated")
    assert main(["run", "--out", str(out), "--gen-users", "300", "--gen-items", "200",
                 "--gen-events", "20000", "--spark-shuffle-partitions", "4"]) == 0
    return EtlLayout.under(out)


@pytest.fixture(scope="session")
def generated_data(generated_etl) -> SplitData:
    return load_split(generated_etl.root)


@pytest.fixture(scope="session")
def generated_model(generated_data):
    """The hybrid fitted on the generated run the way the pipeline does it (early stopping on
    valid, then a refit on train + valid)."""
    from dataclasses import replace

    from training.train import fit

    return fit(generated_data, replace(FAST, refit_full=True))


def two_cluster_split(n_users: int = 40, per_cluster: int = 10, seed: int = 0) -> SplitData:
    """Users 0..n/2-1 like cluster A items, the rest cluster B. Content: feature 0 marks A,
    feature 1 marks B (plus one id-like feature per item). Items 2*per_cluster (A content)
    and 2*per_cluster+1 (B content) have no interactions at all: cold items."""
    rng = np.random.default_rng(seed)
    n_items = 2 * per_cluster + 2
    a_items = np.arange(per_cluster)
    b_items = np.arange(per_cluster, 2 * per_cluster)
    rows, cols, ts = [], [], []
    for u in range(n_users):
        pool = a_items if u < n_users // 2 else b_items
        chosen = rng.choice(pool, size=6, replace=False)
        for k, i in enumerate(chosen):
            rows.append(u), cols.append(i), ts.append(1000 * u + k)
    rows, cols, ts = map(np.asarray, (rows, cols, ts))
    shape = (n_users, n_items)
    full = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)
    # last item of each user is test, the one before valid
    last = np.asarray([k == 5 for k in np.tile(np.arange(6), n_users)])
    before = np.asarray([k == 4 for k in np.tile(np.arange(6), n_users)])
    def m(sel):
        return sp.csr_matrix((np.ones(sel.sum(), np.float32), (rows[sel], cols[sel])), shape=shape)
    train, valid, test = m(~last & ~before), m(before), m(last)
    train_full = m(~last)
    tsm = sp.csr_matrix((ts[~last], (rows[~last], cols[~last])), shape=shape).astype(np.int64)
    n_feat = 2 + n_items
    f_rows, f_cols, f_vals = [], [], []
    for i in range(n_items):
        is_a = i < per_cluster or i == 2 * per_cluster
        f_rows += [i, i]
        f_cols += [0 if is_a else 1, 2 + i]
        f_vals += [0.9, 0.436]
    feats = sp.csr_matrix((np.asarray(f_vals, np.float32), (f_rows, f_cols)), shape=(n_items, n_feat))
    cats = sp.csr_matrix((np.ones(n_items, np.float32),
                          (np.arange(n_items), [0 if (i < per_cluster or i == 2 * per_cluster) else 1
                                                for i in range(n_items)])), shape=(n_items, 2))
    return SplitData(train=train, valid=valid, test=test, train_full=train_full, weights=train_full,
                     timestamps=tsm, item_features=feats, item_categories=cats, n_users=n_users,
                     n_items=n_items, user_ids=np.array([f"u{u}" for u in range(n_users)], object),
                     item_ids=np.array([f"i{i}" for i in range(n_items)], object),
                     item_titles=np.array([f"Item {i}" for i in range(n_items)], object),
                     item_category_names=[["A"] if c == 0 else ["B"]
                                          for c in cats.indices.tolist()],
                     vocabulary=[f"t{j}" for j in range(n_feat)], categories=["A", "B"],
                     etl_root=Path("/nonexistent"), scheme="temporal")


@pytest.fixture
def tiny() -> SplitData:
    return two_cluster_split()
