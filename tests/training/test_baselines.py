"""Baselines: each against a direct formula or a ranking it must produce."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from training.baselines import (ContentModel, EASEModel, ItemKNNModel, PopularityModel,
                                SparkALSModel)
from training.evaluation import evaluate, split_cold_items


def test_popularity_counts_distinct_users_not_weights():
    # item 0: 1 user (weight 9); item 1: 3 users; item 2: 2 users; item 3: none
    train = sp.csr_matrix(np.array([[9, 1, 1, 0],
                                    [0, 1, 0, 0],
                                    [0, 1, 1, 0]], dtype=np.float32))
    model = PopularityModel().fit(train)
    scores = model.score(np.array([0, 2]))
    assert scores.shape == (2, 4)
    assert scores[0].tolist() == [1, 3, 2, 0] and scores[1].tolist() == [1, 3, 2, 0]
    assert np.argsort(-scores[0], kind="stable").tolist() == [1, 2, 0, 3]


def test_ease_matches_the_closed_form():
    rng = np.random.default_rng(0)
    X = (rng.random((12, 6)) < 0.4).astype(np.float64)
    lam = 2.0
    # Steck 2019: P = (X^T X + lambda I)^-1; B_ij = -P_ij / P_jj off the diagonal, B_jj = 0
    P = np.linalg.inv(X.T @ X + lam * np.eye(6))
    B = np.eye(6) - P / np.diag(P)[None, :]
    np.fill_diagonal(B, 0.0)
    model = EASEModel(lambda_=lam).fit(sp.csr_matrix(X))
    np.testing.assert_allclose(model.B, B, rtol=1e-5, atol=1e-6)
    assert np.all(np.diag(model.B) == 0)
    users = np.array([3, 0, 7])
    np.testing.assert_allclose(model.score(users), X[users] @ B, rtol=1e-5, atol=1e-6)


def test_item_knn_is_the_cosine_of_item_columns():
    # weights are ignored (binary), an item without users is similar to nothing
    train = sp.csr_matrix(np.array([[3, 1, 0, 0],
                                    [1, 1, 1, 0],
                                    [0, 0, 1, 0],
                                    [1, 0, 1, 0]], dtype=np.float32))
    X = (train.toarray() > 0).astype(np.float64)
    norms = np.linalg.norm(X, axis=0)
    norms[norms == 0] = 1.0
    expected = (X.T @ X) / np.outer(norms, norms)
    got = ItemKNNModel().fit(train).similar(np.array([0, 2, 3, 0]))
    np.testing.assert_allclose(got, expected[[0, 2, 3, 0]], rtol=1e-6)
    assert got[0, 1] == pytest.approx(2 / np.sqrt(3 * 2)) and got[2].tolist() == [0, 0, 0, 0]


def block_matrix(n_users_per_block: int = 8, n_items_per_block: int = 5):
    """Two taste blocks: users 0..7 use items 0..4, users 8..15 use items 5..9, plus one extra
    item (10) nobody has used. User 0's item 4 is held out as its test positive."""
    n_users, n_items = 2 * n_users_per_block, 2 * n_items_per_block + 1
    dense = np.zeros((n_users, n_items), dtype=np.float32)
    dense[:n_users_per_block, :n_items_per_block] = 1
    dense[n_users_per_block:, n_items_per_block:2 * n_items_per_block] = 1
    dense[0, 4] = 0
    test = np.zeros_like(dense)
    test[0, 4] = 1
    return sp.csr_matrix(dense), sp.csr_matrix(test)


def test_ease_recovers_the_held_out_in_block_item():
    train, test = block_matrix()
    model = EASEModel(lambda_=1.0).fit(train)
    s = model.score(np.array([0]))[0]
    assert s[4] > s[5:].max()
    res = evaluate(model.score, train, test, ks=(1,))
    assert res["recall@1"] == 1.0


def test_content_model_ranks_the_matching_cold_item_first():
    # 3 features. Trained items 0, 1 are about feature 0, items 2, 3 about feature 1.
    # Cold items (no training interaction): 4 mostly feature 0, 5 feature 2, 6 feature 1.
    feats = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0],
                      [0.8, 0, 0.6], [0, 0, 1], [0, 1, 0]], dtype=np.float32)
    train = sp.csr_matrix(np.array([[1, 1, 0, 0, 0, 0, 0],     # user 0 likes feature 0
                                    [0, 0, 1, 1, 0, 0, 0]],    # user 1 likes feature 1
                                   dtype=np.float32))
    test = sp.csr_matrix(np.array([[0, 0, 0, 0, 1, 0, 0],
                                   [0, 0, 0, 0, 0, 0, 1]], dtype=np.float32))
    model = ContentModel().fit(train, sp.csr_matrix(feats))
    s = model.score(np.array([0, 1]))
    # user 0's profile = (1,0,0)+(1,0,0) normalised = (1,0,0): cosine with item 4 = 0.8
    np.testing.assert_allclose(s[0], [1, 1, 0, 0, 0.8, 0, 0], atol=1e-6)
    np.testing.assert_allclose(s[1], [0, 0, 1, 1, 0, 0, 1], atol=1e-6)
    _, test_cold, cold = split_cold_items(train, test)
    assert cold.tolist() == [False] * 4 + [True] * 3
    res = evaluate(model.score, train, test_cold, ks=(1,), candidate_items=cold)
    assert res["users"] == 2 and res["recall@1"] == 1.0 and res["mrr"] == 1.0


def test_content_model_user_without_history_scores_zero():
    feats = sp.csr_matrix(np.eye(3, dtype=np.float32))
    model = ContentModel().fit(sp.csr_matrix((2, 3), dtype=np.float32), feats)
    assert np.all(model.score(np.array([0, 1])) == 0)


def test_spark_als_ranks_the_in_block_item_above_out_of_block(spark):
    train, test = block_matrix()
    model = SparkALSModel(rank=4, reg_param=0.01, alpha=10.0, max_iter=8, seed=7, num_blocks=2)
    model.fit(spark, train)
    assert model.user_factors.shape == (16, 4) and model.item_factors.shape == (11, 4)
    # item 10 never appears in training: zero factors, zero score
    assert np.all(model.item_factors[10] == 0)
    s = model.score(np.array([0]))[0]
    assert s[4] > s[5:10].max()
    assert s[10] == 0
    res = evaluate(model.score, train, test, ks=(1,))
    assert res["users"] == 1 and res["recall@1"] == 1.0
