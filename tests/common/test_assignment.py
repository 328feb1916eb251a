"""Sticky assignment (common/assignment.py): the contract's hash, ranges, ramps, ratios."""
from __future__ import annotations

import hashlib

import pytest
from scipy.stats import chisquare

from common.assignment import N_BUCKETS, Split, bucket, changed_buckets, normalize_weights


def test_bucket_is_the_contract_hash():
    d = hashlib.sha256(b"s1:anna@example.com").digest()
    assert bucket("s1", "anna@example.com") == int.from_bytes(d[:8], "big") % 10000
    assert bucket("s1", "u") == bucket("s1", "u")
    assert 0 <= bucket("other", "Jürgen") < N_BUCKETS


def test_weights_integers_or_fractions():
    assert normalize_weights([9000, 1000]) == [9000, 1000]
    assert normalize_weights([0.9, 0.1]) == [9000, 1000]
    assert normalize_weights([1, 1, 1]) == [3334, 3333, 3333]
    assert sum(normalize_weights([0.3333, 0.3333, 0.3334])) == N_BUCKETS
    for bad in ([], [0, 0], [-1, 2], [float("nan"), 1]):
        with pytest.raises(ValueError):
            normalize_weights(bad)


def test_control_lowest_treatments_in_file_order():
    s = Split.of([("t1", 0.1), ("control", 0.8), ("t2", 0.1)], control="control")
    assert s.ranges == {"control": (0, 8000), "t1": (8000, 9000), "t2": (9000, 10000)}
    assert s.owner(0) == "control" and s.owner(8000) == "t1" and s.owner(9999) == "t2"


def test_ramping_the_treatment_next_to_control_keeps_everyone_in_it():
    users = [f"user-{i}" for i in range(20000)]
    before = Split.of([("control", 0.9), ("treatment", 0.1)], "control")
    after = Split.of([("control", 0.5), ("treatment", 0.5)], "control")
    in_before = {u for u in users if before.assign("salt", u)[0] == "treatment"}
    in_after = {u for u in users if after.assign("salt", u)[0] == "treatment"}
    assert in_before and in_before <= in_after
    assert changed_buckets(before, after) == 4000


def test_counts_match_weights_chi_square():
    split = Split.of([("control", 0.5), ("a", 0.3), ("b", 0.2)], "control")
    n = 100_000
    counts = dict.fromkeys(split.order, 0)
    for i in range(n):
        counts[split.assign("exp-1", str(i))[0]] += 1
    observed = [counts[v] for v in split.order]
    expected = [n * split.counts[v] / N_BUCKETS for v in split.order]
    assert chisquare(observed, expected).pvalue > 0.001


def test_salt_decorrelates_experiments():
    a = Split.of([("c", 0.5), ("t", 0.5)], "c")
    same = sum(a.assign("x", str(i))[0] == a.assign("y", str(i))[0] for i in range(4000))
    assert 1800 < same < 2200  # independent halves agree about half the time


def test_bad_splits_are_refused():
    with pytest.raises(ValueError, match="control"):
        Split.of([("a", 1)], "b")
    with pytest.raises(ValueError, match="unique"):
        Split.of([("a", 1), ("a", 1)], "a")
