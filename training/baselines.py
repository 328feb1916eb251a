"""Non-neural baselines: the bar every trained model has to clear under the same evaluation.

Each model has ``fit(...)`` and ``score(user_indices) -> np.ndarray`` of shape
(len(user_indices), n_items), so ``model.score`` plugs straight into
:func:`training.evaluation.evaluate`. Masking of training items is the evaluator's job, not the
model's.
"""
from __future__ import annotations

import tempfile
import time

import numpy as np
import scipy.sparse as sp
import torch


def _csr(m, dtype=np.float32) -> sp.csr_matrix:
    out = sp.csr_matrix(m, dtype=dtype, copy=True)
    out.eliminate_zeros()
    out.sum_duplicates()
    return out


def _binary(m) -> sp.csr_matrix:
    out = _csr(m)
    out.data[:] = 1.0
    return out


def _rows(users) -> np.ndarray:
    return np.asarray(users, dtype=np.int64).reshape(-1)


class PopularityModel:
    """Scores every item by how many distinct training users interacted with it.

    The floor any personalised model must beat; identical scores for every user.
    """

    def __init__(self) -> None:
        self.item_counts: np.ndarray | None = None

    def fit(self, train) -> "PopularityModel":
        self.item_counts = np.asarray(_binary(train).sum(axis=0), dtype=np.float32).ravel()
        return self

    def score(self, user_indices) -> np.ndarray:
        assert self.item_counts is not None, "call fit() first"
        return np.tile(self.item_counts, (len(_rows(user_indices)), 1))


class ItemKNNModel:
    """Item-based collaborative filtering (Sarwar et al., 2001): cosine between items' columns of
    the binary training matrix, sim(i, j) = |U_i & U_j| / sqrt(|U_i| |U_j|) -- "users who liked
    this also liked". The baseline of related items: :meth:`similar` scores every item against
    each query item."""

    def __init__(self) -> None:
        self.by_user: sp.csr_matrix | None = None   # users x items, columns L2-normalised
        self.by_item: sp.csr_matrix | None = None   # its transpose

    def fit(self, train) -> "ItemKNNModel":
        X = _binary(train)
        norms = np.sqrt(np.asarray(X.sum(axis=0), dtype=np.float64).ravel())
        norms[norms == 0] = 1.0
        self.by_user = _csr(X @ sp.diags((1.0 / norms).astype(np.float32)))
        self.by_item = self.by_user.T.tocsr()
        return self

    def similar(self, items) -> np.ndarray:
        """Cosine of every item to each of ``items``: (len(items), n_items)."""
        assert self.by_user is not None and self.by_item is not None, "call fit() first"
        return np.asarray((self.by_item[_rows(items)] @ self.by_user).toarray(), dtype=np.float32)


class EASEModel:
    """EASE (Steck 2019): closed-form item-item linear autoencoder with a zero diagonal.

    P = (X^T X + lambda I)^-1, B = I - P / diag(P) (column-wise), diag(B) = 0; scores = X_u B.
    Strong on small/medium catalogs and cheap to fit: one dense n_items x n_items inverse
    (O(n_items^3); 10k items peaked at 2.7 GB RSS in float64, the fitted B is 400 MB float32).
    """

    def __init__(self, lambda_: float = 200.0, binarize: bool = True,
                 dtype: torch.dtype = torch.float64) -> None:
        self.lambda_ = float(lambda_)
        self.binarize = binarize
        self.dtype = dtype
        self.B: np.ndarray | None = None
        self.X: sp.csr_matrix | None = None

    def fit(self, train) -> "EASEModel":
        X = _binary(train) if self.binarize else _csr(train)
        gram = (X.T @ X).toarray()
        G = torch.from_numpy(gram).to(self.dtype)
        del gram
        G.diagonal().add_(self.lambda_)
        P = torch.linalg.inv(G)  # LU inverse; measured no slower than Cholesky routes here
        del G
        P.div_(-torch.diagonal(P).clone().unsqueeze(0))  # B_ij = -P_ij / P_jj (in place)
        P.fill_diagonal_(0.0)
        self.B = P.to(torch.float32).numpy()
        self.X = X
        return self

    def score(self, user_indices) -> np.ndarray:
        assert self.B is not None and self.X is not None, "call fit() first"
        return np.asarray(self.X[_rows(user_indices)] @ self.B)


class ContentModel:
    """Content-based: cosine between a user's TF-IDF profile and each item's TF-IDF row.

    Profile = sum of the feature rows of the user's training items, L2-normalised. Needs no
    interactions on the item side, so it is the baseline for the cold-item slice.
    """

    def __init__(self) -> None:
        self.profiles: sp.csr_matrix | None = None
        self.item_features: sp.csr_matrix | None = None

    def fit(self, train, item_features) -> "ContentModel":
        X = _binary(train)
        F = _csr(item_features)
        if X.shape[1] != F.shape[0]:
            raise ValueError(f"train has {X.shape[1]} items but item_features {F.shape[0]} rows")
        prof = _csr(X @ F)
        norms = np.sqrt(np.asarray(prof.multiply(prof).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        self.profiles = _csr(sp.diags(1.0 / norms) @ prof)
        self.item_features = F
        return self

    def score(self, user_indices) -> np.ndarray:
        assert self.profiles is not None and self.item_features is not None, "call fit() first"
        prof = self.profiles[_rows(user_indices)].toarray()  # (batch, n_features), dense
        return np.asarray(self.item_features @ prof.T).T     # sparse @ dense: (batch, n_items)


class SparkALSModel:
    """Implicit-feedback ALS from Spark MLlib (Hu, Koren & Volinsky), confidence 1 + alpha * r.

    The matrix factorisation that scales out on the same Spark cluster as the ETL. Factors are
    pulled to numpy after fitting; users/items Spark never saw get zero vectors (score 0).
    Note Spark scales ``regParam`` by each user's/item's number of ratings (ALS-WR), so its
    value is not interchangeable with the `implicit` library's ``regularization``.
    """

    def __init__(self, rank: int = 64, reg_param: float = 0.05, alpha: float = 10.0,
                 max_iter: int = 15, seed: int = 42, num_blocks: int = 10,
                 checkpoint_interval: int = 5, checkpoint_dir: str | None = None) -> None:
        self.rank = rank
        self.reg_param = reg_param
        self.alpha = alpha
        self.max_iter = max_iter
        self.seed = seed
        self.num_blocks = num_blocks  # Spark's default; fewer blocks = fewer tiny tasks locally
        self.checkpoint_interval = checkpoint_interval
        self.checkpoint_dir = checkpoint_dir
        """Used only if the SparkContext has no checkpoint dir yet (default: a fresh temp dir)."""
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None
        self.fit_seconds: float | None = None

    def fit(self, spark, train) -> "SparkALSModel":
        import pandas as pd
        from pyspark.ml.recommendation import ALS

        X = _csr(train).tocoo()
        n_users, n_items = X.shape
        pdf = pd.DataFrame({"user": X.row.astype(np.int32), "item": X.col.astype(np.int32),
                            "rating": X.data.astype(np.float32)})
        t0 = time.perf_counter()
        sc = spark.sparkContext
        if sc.getCheckpointDir() is None:
            # Without checkpoints the factor RDDs' lineage grows every iteration and, past ~10
            # iterations, materializing them dies with java.lang.StackOverflowError.
            sc.setCheckpointDir(self.checkpoint_dir or tempfile.mkdtemp(prefix="als-checkpoints-"))
        df = spark.createDataFrame(pdf, schema="user int, item int, rating float")
        als = ALS(rank=self.rank, regParam=self.reg_param, alpha=self.alpha,
                  maxIter=self.max_iter, implicitPrefs=True, seed=self.seed,
                  numUserBlocks=self.num_blocks, numItemBlocks=self.num_blocks,
                  checkpointInterval=self.checkpoint_interval,
                  userCol="user", itemCol="item", ratingCol="rating", nonnegative=False)
        model = als.fit(df)
        self.user_factors = self._to_numpy(model.userFactors, n_users)
        self.item_factors = self._to_numpy(model.itemFactors, n_items)
        self.fit_seconds = time.perf_counter() - t0
        return self

    def _to_numpy(self, factors_df, n: int) -> np.ndarray:
        out = np.zeros((n, self.rank), dtype=np.float32)
        rows = factors_df.toPandas()
        if len(rows):
            out[rows["id"].to_numpy()] = np.stack(rows["features"].to_numpy()).astype(np.float32)
        return out

    def score(self, user_indices) -> np.ndarray:
        assert self.user_factors is not None and self.item_factors is not None, "call fit() first"
        return self.user_factors[_rows(user_indices)] @ self.item_factors.T
