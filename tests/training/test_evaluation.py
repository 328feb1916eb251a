"""The evaluator against hand-computed examples (arithmetic in the comments) and a brute force."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from training.evaluation import (evaluate, evaluate_ranked, split_cold_items, top_k,
                                 users_with_few_interactions)

LOG2_3 = math.log2(3)  # discount of rank 2 is 1/log2(3) = 0.6309


def fixed(scores) -> callable:
    """score_fn returning rows of a fixed (n_users, n_items) score table."""
    table = np.asarray(scores, dtype=np.float32)
    return lambda users: table[users]


def csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    """Binary CSR with the given item lists per user."""
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(c)), (r, c)), shape=(len(rows), n_items))


DESC6 = [[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]]  # one user; ranking is items 0, 1, 2, 3, 4, 5


def test_hits_at_ranks_1_and_3():
    # Test items {0, 2} sit at ranks 1 and 3 of the ranking 0,1,2,3,4,5 (nothing masked).
    res = evaluate(fixed(DESC6), csr([[]], 6), csr([[0, 2]], 6), ks=(2, 3))
    # K=2: top-2 = [0, 1], one hit. recall = 1 / min(2, 2) = 0.5
    assert res["recall@2"] == pytest.approx(0.5)
    # DCG = 1/log2(2) = 1; IDCG over min(2, 2) = 2 positions = 1 + 1/log2(3) = 1.6309
    assert res["ndcg@2"] == pytest.approx(1 / (1 + 1 / LOG2_3))  # 0.6131
    assert res["hit@2"] == 1.0
    # K=3: top-3 = [0, 1, 2], two hits. recall = 2 / min(3, 2) = 1.0
    assert res["recall@3"] == pytest.approx(1.0)
    # DCG = 1 + 1/log2(4) = 1.5; IDCG over 2 positions = 1.6309 -> 0.9197
    assert res["ndcg@3"] == pytest.approx(1.5 / (1 + 1 / LOG2_3))
    # first relevant item (0) is at rank 1
    assert res["mrr"] == pytest.approx(1.0)
    # one user, 6 candidate items: 2 resp. 3 distinct items recommended
    assert res["coverage@2"] == pytest.approx(2 / 6)
    assert res["coverage@3"] == pytest.approx(3 / 6)
    assert res["users"] == 1


def test_mrr_uses_the_full_ranking_not_the_cutoff():
    # Only test item is 4, at rank 5: no hit in the top 2, but MRR = 1/5 (no cutoff).
    res = evaluate(fixed(DESC6), csr([[]], 6), csr([[4]], 6), ks=(2,))
    assert res["recall@2"] == 0.0 and res["ndcg@2"] == 0.0 and res["hit@2"] == 0.0
    assert res["mrr"] == pytest.approx(1 / 5)


def test_recall_denominator_is_min_k_and_test_size():
    # 3 test items {0, 1, 5}, K=2: top-2 = [0, 1] are both hits.
    # recall = 2 / min(2, 3) = 1.0 (not 2/3); NDCG = (1 + 1/log2 3) / (1 + 1/log2 3) = 1.0
    res = evaluate(fixed(DESC6), csr([[]], 6), csr([[0, 1, 5]], 6), ks=(2,))
    assert res["recall@2"] == pytest.approx(1.0)
    assert res["ndcg@2"] == pytest.approx(1.0)


def test_training_items_are_masked():
    # User trained on items 0 and 1 (the two best scores): ranking becomes 2, 3, 4, 5.
    # Test item 3 is at rank 2: recall@2 = 1 / min(2, 1) = 1; NDCG = (1/log2 3) / 1 = 0.6309;
    # MRR = 1/2; recommended items are {2, 3}: coverage = 2/6.
    res = evaluate(fixed(DESC6), csr([[0, 1]], 6), csr([[3]], 6), ks=(2,))
    assert res["recall@2"] == pytest.approx(1.0)
    assert res["ndcg@2"] == pytest.approx(1 / LOG2_3)
    assert res["mrr"] == pytest.approx(0.5)
    assert res["coverage@2"] == pytest.approx(2 / 6)


def test_test_items_also_in_training_are_dropped():
    # User 0's only test item (1) is in its training row: it could never be recommended, so it is
    # dropped and user 0 is not scored. User 1: test item 0 at rank 1 -> all metrics 1.
    train = csr([[0, 1], []], 6)
    test = csr([[1], [0]], 6)
    res = evaluate(fixed(DESC6 * 2), train, test, ks=(2,))
    assert res["users"] == 1
    assert res["recall@2"] == 1.0 and res["mrr"] == 1.0


def test_masked_items_never_fill_the_top_k():
    # 5 items, user trained on 4 of them: only item 4 is rankable. K=10 > 1 allowed item:
    # recall = 1 / min(10, 1) = 1, and coverage@10 counts only item 4: 1/5.
    scores = [[5.0, 4.0, 3.0, 2.0, 1.0]]
    res = evaluate(fixed(scores), csr([[0, 1, 2, 3]], 5), csr([[4]], 5), ks=(10,))
    assert res["recall@10"] == 1.0 and res["ndcg@10"] == 1.0
    assert res["coverage@10"] == pytest.approx(1 / 5)


def test_minus_inf_scores_still_rank_before_masked_items():
    # Item 2 scored -inf by the model is still a valid candidate; training item 0 is not.
    scores = [[10.0, 1.0, -np.inf]]
    res = evaluate(fixed(scores), csr([[0]], 3), csr([[2]], 3), ks=(2,))
    # ranking: 1, 2 -> test item 2 at rank 2: recall@2 = 1, MRR = 1/2
    assert res["recall@2"] == 1.0 and res["mrr"] == pytest.approx(0.5)


def test_ties_break_to_lower_item_index():
    # All scores equal: the ranking is 0, 1, 2, 3, 4, 5.
    zeros = [[0.0] * 6]
    # test item 1 at rank 2: recall@2 = 1, NDCG = 1/log2 3, MRR = 1/2
    res = evaluate(fixed(zeros), csr([[]], 6), csr([[1]], 6), ks=(2,))
    assert res["recall@2"] == 1.0
    assert res["ndcg@2"] == pytest.approx(1 / LOG2_3)
    assert res["mrr"] == pytest.approx(0.5)
    # test item 3 at rank 4: outside the top 2, MRR = 1/4
    res = evaluate(fixed(zeros), csr([[]], 6), csr([[3]], 6), ks=(2,))
    assert res["recall@2"] == 0.0 and res["mrr"] == pytest.approx(0.25)
    # a tie between a relevant and an irrelevant item at the cutoff: scores 1, 0.5, 0.5:
    # ranking 0, 1, 2; test item 2 loses the tie for the 2nd place to item 1.
    res = evaluate(fixed([[1.0, 0.5, 0.5]]), csr([[]], 3), csr([[2]], 3), ks=(2,))
    assert res["recall@2"] == 0.0 and res["mrr"] == pytest.approx(1 / 3)


def test_top_k_orders_by_score_then_index():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])
    assert top_k(scores, 2)[1].tolist() == [[1, 2]]
    assert top_k(scores, 4)[1].tolist() == [[1, 2, 4, 3]]
    vals, idx = top_k(scores, 10)  # k is capped at the number of items
    assert idx.tolist() == [[1, 2, 4, 3, 0]] and vals.tolist() == [[3, 3, 3, 2, 1]]


def test_top_k_matches_a_stable_sort_with_many_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(50, 40)).astype(np.float32)
    expected = np.array([np.lexsort((np.arange(40), -row))[:7] for row in scores])
    assert np.array_equal(top_k(torch.from_numpy(scores), 7)[1].numpy(), expected)


@pytest.mark.parametrize("as_index_array", [False, True])
def test_candidate_restriction(as_index_array):
    # Candidates {3, 4, 5}. Test {1, 4}: item 1 is not a candidate and is dropped.
    # Ranking among candidates: 3, 4, 5 -> test item 4 at rank 2.
    # recall@2 = 1 / min(2, 1) = 1; NDCG = 1/log2 3; MRR = 1/2; coverage = |{3, 4}| / 3.
    cand = np.array([3, 4, 5]) if as_index_array else np.arange(6) >= 3
    res = evaluate(fixed(DESC6), csr([[]], 6), csr([[1, 4]], 6), ks=(2,), candidate_items=cand)
    assert res["recall@2"] == 1.0
    assert res["ndcg@2"] == pytest.approx(1 / LOG2_3)
    assert res["mrr"] == pytest.approx(0.5)
    assert res["coverage@2"] == pytest.approx(2 / 3)


def test_user_with_only_non_candidate_test_items_is_not_scored():
    res = evaluate(fixed(DESC6), csr([[]], 6), csr([[1]], 6), ks=(2,), candidate_items=[3, 4])
    assert res["users"] == 0 and math.isnan(res["recall@2"]) and res["coverage@2"] == 0.0


def test_users_without_test_items_are_not_scored_and_means_are_per_user():
    # 3 users over 5 items. User 1 has no test item and must not even be scored.
    # user 0 prefers 0 > 1 > ..., test {0}: recall@2 = 1, NDCG = 1, MRR = 1
    # user 2 prefers 4 > 3 > ..., test {0}: ranking 4,3,2,1,0 -> recall 0, MRR = 1/5
    # means: recall 0.5, ndcg 0.5, hit 0.5, MRR (1 + 0.2) / 2 = 0.6
    # coverage@2: {0, 1} U {4, 3} = 4 distinct of 5 items (user 1's {2, 3} is not counted)
    scores = [[5, 4, 3, 2, 1], [0, 0, 9, 8, 0], [1, 2, 3, 4, 5]]
    seen: list[int] = []

    def score_fn(users):
        seen.extend(users.tolist())
        return fixed(scores)(users)

    res = evaluate(score_fn, csr([[], [], []], 5), csr([[0], [], [0]], 5), ks=(2,))
    assert sorted(seen) == [0, 2]
    assert res["users"] == 2
    assert res["recall@2"] == pytest.approx(0.5)
    assert res["ndcg@2"] == pytest.approx(0.5)
    assert res["hit@2"] == pytest.approx(0.5)
    assert res["mrr"] == pytest.approx(0.6)
    assert res["coverage@2"] == pytest.approx(4 / 5)
    # restricting to users=[2] scores only user 2
    res = evaluate(fixed(scores), csr([[], [], []], 5), csr([[0], [], [0]], 5), ks=(2,), users=[2, 1])
    assert res["users"] == 1 and res["recall@2"] == 0.0 and res["mrr"] == pytest.approx(0.2)


def test_errors_on_bad_scores():
    with pytest.raises(ValueError, match="NaN"):
        evaluate(fixed([[np.nan] * 6]), csr([[]], 6), csr([[0]], 6))
    with pytest.raises(ValueError, match="shape"):
        evaluate(fixed([[0.0] * 5]), csr([[]], 6), csr([[0]], 6))


def brute_force(scores, train, test, k, cand):
    """Reference: full stable sort per user, straight from the definitions."""
    rec, ndcg, hit, rr, covered, n = 0.0, 0.0, 0.0, 0.0, set(), 0
    for u in range(scores.shape[0]):
        tr = set(train[u].indices)
        allowed = [i for i in range(scores.shape[1]) if cand[i] and i not in tr]
        rel = {i for i in test[u].indices if i in allowed}
        if not rel:
            continue
        n += 1
        ranking = sorted(allowed, key=lambda i: (-scores[u, i], i))
        top = ranking[:k]
        covered.update(top)
        hits = [1.0 if i in rel else 0.0 for i in top]
        m = min(k, len(rel))
        rec += sum(hits) / m
        ndcg += sum(h / math.log2(r + 2) for r, h in enumerate(hits)) / sum(
            1 / math.log2(r + 2) for r in range(m))
        hit += float(any(hits))
        rr += 1.0 / (next(r for r, i in enumerate(ranking) if i in rel) + 1)
    return {f"recall@{k}": rec / n, f"ndcg@{k}": ndcg / n, f"hit@{k}": hit / n, "mrr": rr / n,
            f"coverage@{k}": len(covered) / int(np.sum(cand)), "users": n}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_with_batches_ties_and_candidates(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items = 37, 23
    train = sp.csr_matrix(rng.random((n_users, n_items)) < 0.2, dtype=np.float32)
    test = sp.csr_matrix(rng.random((n_users, n_items)) < 0.15, dtype=np.float32)
    scores = rng.integers(0, 5, size=(n_users, n_items)).astype(np.float32)  # many ties
    cand = rng.random(n_items) < 0.8
    for k in (3, 10):
        expected = brute_force(scores, train, test, k, cand)
        for batch_size in (4, 1024):
            # score_fn may return a torch tensor as well
            res = evaluate(lambda u: torch.from_numpy(scores[u]), train, test, ks=(k,),
                           candidate_items=cand, batch_size=batch_size)
            assert res["users"] == expected["users"]
            for key, val in expected.items():
                assert res[key] == pytest.approx(val), key


def test_split_cold_items_and_sparse_users():
    # item 4 has no training interaction -> cold; test positives on it move to the cold slice
    train = csr([[0, 1], [1, 2, 3], []], 5)
    test = csr([[2, 4], [4], [0]], 5)
    warm, cold, mask = split_cold_items(train, test)
    assert mask.tolist() == [False, False, False, False, True]
    assert warm.toarray().tolist() == csr([[2], [], [0]], 5).toarray().tolist()
    assert cold.toarray().tolist() == csr([[4], [4], []], 5).toarray().tolist()
    # cold slice: rank only cold items; user 0 and 1 both hit item 4 at rank 1
    res = evaluate(fixed(np.zeros((3, 5))), train, cold, ks=(1,), candidate_items=mask)
    assert res["users"] == 2 and res["recall@1"] == 1.0 and res["coverage@1"] == 1.0
    # sparse users: 1..2 training items -> user 0 only (user 2 has none)
    assert users_with_few_interactions(train, max_n=2).tolist() == [0]
    assert users_with_few_interactions(train, max_n=2, min_n=0).tolist() == [0, 2]


def test_ranked_lists_give_the_same_metrics_as_scores():
    """evaluate_ranked (what the serving engine is scored with) agrees with evaluate on the same
    rankings, and a returned training item or non-candidate counts as a miss."""
    rng = np.random.default_rng(3)
    n_users, n_items = 40, 30
    table = rng.random((n_users, n_items)).astype(np.float32)
    train = sp.csr_matrix(rng.random((n_users, n_items)) < 0.2, dtype=np.float32)
    test = sp.csr_matrix((rng.random((n_users, n_items)) < 0.15) & ~train.toarray().astype(bool),
                         dtype=np.float32)
    cand = np.arange(n_items) % 4 != 0

    def ranked(users, k, candidates):
        s = torch.from_numpy(table[users]).clone()
        s[~torch.from_numpy(candidates).unsqueeze(0).expand_as(s)] = float("-inf")
        s[torch.from_numpy(train[users].toarray() > 0)] = float("-inf")
        idx = top_k(s, k)[1]
        return torch.where(torch.isfinite(torch.gather(s, 1, idx)), idx, -1)

    ref = evaluate(fixed(table), train, test, ks=(5, 10), candidate_items=cand)
    got = evaluate_ranked(ranked, train, test, ks=(5, 10), candidate_items=cand)
    assert "mrr" not in got and got["users"] == ref["users"] > 0
    for key in got:
        assert got[key] == pytest.approx(ref[key]), key

    def cheating(users, k, candidates):  # returns training items first
        out = ranked(users, k, candidates)
        for row, u in enumerate(users):
            seen = train[u].indices[:k]
            out[row, :len(seen)] = torch.from_numpy(seen.astype(np.int64))
        return out

    assert evaluate_ranked(cheating, train, test, ks=(10,), candidate_items=cand)["recall@10"] \
        < ref["recall@10"]
