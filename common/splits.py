"""Load one ETL run's split, features and id maps into in-memory sparse matrices, and order
each user's history by time.

The reader of the ETL's outputs every later stage shares (training fits and evaluates on it,
archives/parity.py and gateway/replay.py replay its users, monitoring compares live traffic
with it), so it sits in common/, below all of them.

Everything here is indexed by the ETL's contiguous ``user_idx`` / ``item_idx`` (``maps/``), so
row ``u`` of every user matrix and row ``i`` of every item matrix line up with line ``u`` / ``i``
of the id lists. The item axis spans the whole validated catalog (items without any interaction
included): those are the cold items that only content can score.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from common.schema import EtlLayout

SPLITS = ("train", "valid", "test")


@dataclass
class SplitData:
    """One split scheme of one ETL run as CSR matrices (n_users x n_items unless noted).

    ``train``/``valid``/``test``/``train_full`` are binary (1.0 per kept positive); P1 masks
    ``train_full`` (= train + valid) when ranking for test, and the final model may fit on it.
    ``weights`` holds the ETL's implicit-feedback weight and ``timestamps`` the (latest) event
    time of every ``train_full`` pair, on exactly ``train_full``'s sparsity pattern.
    """

    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    train_full: sp.csr_matrix
    weights: sp.csr_matrix
    timestamps: sp.csr_matrix
    item_features: sp.csr_matrix
    """(n_items, vocabulary) L2-normalised TF-IDF rows as the ETL wrote them."""
    item_categories: sp.csr_matrix
    """(n_items, n_categories) binary."""
    n_users: int
    n_items: int
    user_ids: np.ndarray
    """Original user id (str) of each user_idx."""
    item_ids: np.ndarray
    """Original item id (str) of each item_idx."""
    item_titles: np.ndarray
    item_category_names: list[list[str]]
    vocabulary: list[str]
    categories: list[str]
    etl_root: Path
    scheme: str

    @property
    def n_features(self) -> int:
        return self.item_features.shape[1]

    @property
    def n_categories(self) -> int:
        return self.item_categories.shape[1]

    def keep_items(self, keep: np.ndarray) -> "SplitData":
        """The same split over the items marked in ``keep`` only (the others never existed:
        their interactions, features and ids are gone; item indices are renumbered)."""
        cols = np.flatnonzero(keep)
        m = lambda x: sp.csr_matrix(x[:, cols])  # noqa: E731
        return SplitData(train=m(self.train), valid=m(self.valid), test=m(self.test),
                         train_full=m(self.train_full), weights=m(self.weights),
                         timestamps=m(self.timestamps), item_features=self.item_features[cols],
                         item_categories=self.item_categories[cols], n_users=self.n_users,
                         n_items=len(cols), user_ids=self.user_ids, item_ids=self.item_ids[cols],
                         item_titles=self.item_titles[cols],
                         item_category_names=[self.item_category_names[i] for i in cols],
                         vocabulary=self.vocabulary, categories=self.categories,
                         etl_root=self.etl_root, scheme=self.scheme)

    def warm_items(self, full: bool = True) -> np.ndarray:
        """Bool mask of items with at least one interaction in train_full (or train)."""
        m = self.train_full if full else self.train
        return np.diff(m.tocsc().indptr) > 0


def _root(etl_root: str | Path | EtlLayout) -> EtlLayout:
    if isinstance(etl_root, EtlLayout):
        return etl_root
    p = Path(etl_root)
    if not (p / "manifest.json").exists() and (p / "etl" / "manifest.json").exists():
        p = p / "etl"  # accept OUT as well as OUT/etl
    return EtlLayout(p)


def _matrix(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape, dtype) -> sp.csr_matrix:
    m = sp.csr_matrix((vals.astype(dtype), (rows, cols)), shape=shape)
    m.sum_duplicates()
    m.sort_indices()
    return m


def _ragged_csr(indices, values, n_rows: int, n_cols: int, row_idx: np.ndarray) -> sp.csr_matrix:
    """CSR from per-row arrays (``values`` None = binary)."""
    lengths = np.array([0 if x is None else len(x) for x in indices], dtype=np.int64)
    cols = (np.concatenate([np.asarray(x, dtype=np.int64) for x in indices if x is not None and len(x)])
            if lengths.sum() else np.zeros(0, dtype=np.int64))
    if values is None:
        vals = np.ones(len(cols), dtype=np.float32)
    else:
        vals = (np.concatenate([np.asarray(x, dtype=np.float32) for x in values if x is not None and len(x)])
                if lengths.sum() else np.zeros(0, dtype=np.float32))
    rows = np.repeat(row_idx.astype(np.int64), lengths)
    return _matrix(rows, cols, vals, (n_rows, n_cols), np.float32)


def load_split(etl_root: str | Path | EtlLayout, scheme: str = "temporal") -> SplitData:
    """Read ``splits/<scheme>``, ``maps/``, ``items/``, ``features/`` of one ETL run."""
    layout = _root(etl_root)
    users = pd.read_parquet(layout.user_map, columns=["user_id", "user_idx"])
    items_map = pd.read_parquet(layout.item_map, columns=["item_id", "item_idx"])
    n_users = int(users["user_idx"].max()) + 1 if len(users) else 0
    n_items = int(items_map["item_idx"].max()) + 1 if len(items_map) else 0
    user_ids = np.full(n_users, "", dtype=object)
    user_ids[users["user_idx"].to_numpy()] = users["user_id"].astype(str).to_numpy()
    item_ids = np.full(n_items, "", dtype=object)
    item_ids[items_map["item_idx"].to_numpy()] = items_map["item_id"].astype(str).to_numpy()

    df = pd.read_parquet(layout.split(scheme),
                         columns=["user_idx", "item_idx", "weight", "timestamp", "split"])
    split = df["split"].astype(str).to_numpy()
    shape = (n_users, n_items)
    mats = {}
    for name in SPLITS:
        part = df[split == name]
        mats[name] = _matrix(part["user_idx"].to_numpy(), part["item_idx"].to_numpy(),
                             np.ones(len(part)), shape, np.float32)
    fit = df[np.isin(split, ("train", "valid"))]
    r, c = fit["user_idx"].to_numpy(), fit["item_idx"].to_numpy()
    train_full = _matrix(r, c, np.ones(len(fit)), shape, np.float32)
    weights = _matrix(r, c, fit["weight"].to_numpy(), shape, np.float32)
    ts = sp.csr_matrix((fit["timestamp"].to_numpy().astype(np.int64), (r, c)), shape=shape)
    ts.sort_indices()  # pairs are unique per split scheme, so no duplicates to sum

    vec = json.loads(layout.vectorizer.read_text())
    vocabulary, categories = list(vec["vocabulary"]), list(vec["categories"])
    feats = pd.read_parquet(layout.item_features)
    fidx = feats["item_idx"].to_numpy()
    item_features = _ragged_csr(feats["text_indices"].to_numpy(), feats["text_values"].to_numpy(),
                                n_items, len(vocabulary), fidx)
    item_categories = _ragged_csr(feats["category_indices"].to_numpy(), None, n_items,
                                  len(categories), fidx)
    item_categories.data[:] = 1.0

    catalog = pd.read_parquet(layout.items, columns=["item_idx", "title", "categories"])
    titles = np.full(n_items, "", dtype=object)
    titles[catalog["item_idx"].to_numpy()] = catalog["title"].fillna("").astype(str).to_numpy()
    cat_names: list[list[str]] = [[] for _ in range(n_items)]
    for i, cats in zip(catalog["item_idx"].to_numpy(), catalog["categories"].to_numpy()):
        cat_names[int(i)] = [str(c) for c in cats] if cats is not None else []

    return SplitData(train=mats["train"], valid=mats["valid"], test=mats["test"],
                     train_full=train_full, weights=weights, timestamps=ts,
                     item_features=item_features, item_categories=item_categories,
                     n_users=n_users, n_items=n_items, user_ids=user_ids, item_ids=item_ids,
                     item_titles=titles, item_category_names=cat_names, vocabulary=vocabulary,
                     categories=categories, etl_root=layout.root, scheme=scheme)


def time_ranks(X: sp.csr_matrix, ts: sp.csr_matrix | None) -> sp.csr_matrix:
    """X's pattern (indices sorted); value = 1 + position of the item in its user's time order
    (ties by item index; entries without a timestamp count as time 0)."""
    X = sp.csr_matrix(X, copy=True)
    X.sort_indices()
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    t = np.zeros(X.nnz, dtype=np.int64)
    if ts is not None and X.nnz:
        t = np.asarray(sp.csr_matrix(ts)[rows, X.indices]).ravel().astype(np.int64)
    order = np.lexsort((X.indices, t, rows))
    ranks = np.empty(X.nnz, dtype=np.float64)
    ranks[order] = np.arange(X.nnz) - X.indptr[rows[order]] + 1
    return sp.csr_matrix((ranks, X.indices.copy(), X.indptr.copy()), shape=X.shape)


def chronological_rows(X: sp.csr_matrix, ts: sp.csr_matrix | None) -> sp.csr_matrix:
    """X's pattern with each row's item indices in time order (ties by item index): row u lists
    user u's history oldest first, the order a request's ``history`` uses and the artifact's
    ``user_history`` CSR stores."""
    R = time_ranks(X, ts)
    order = np.lexsort((R.data, np.repeat(np.arange(R.shape[0]), np.diff(R.indptr))))
    out = sp.csr_matrix((np.ones(R.nnz, dtype=np.float32), R.indices[order], R.indptr.copy()),
                        shape=R.shape)
    out.has_sorted_indices = False
    return out
