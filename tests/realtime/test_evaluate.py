"""realtime/evaluate.py: the offline replay with and without recent events (engine in process)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from common.stats import paired_bootstrap
from core.artifact_adapter import load_recommender
from core.validation import RecRequest
from realtime.config import RealtimeConfig
from realtime.evaluate import Walk, _gain, replay, requests_of, period_walks
from realtime.results import merge_into
from testkit.archives import make_random_artifact
from tests.gateway.test_make_serve import write_etl


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    art = make_random_artifact(tmp_path_factory.mktemp("rt-eval") / "a", category_signal=3.0,
                               seed=4)
    return load_recommender(art)


WALK = Walk("1", ("10", "20", "30", "40"), (100.0, 200.0, 200.0, 300.0))


def test_each_request_holds_exactly_the_earlier_test_events():
    reqs = requests_of(WALK, RealtimeConfig(), k=10)
    assert [r.history for r in reqs] == [(), ("10",), ("10", "20"), ("10", "20", "30")]
    assert all(r.user_id == "1" and r.k == 10 for r in reqs)


def test_the_store_rules_apply_cap_and_ttl():
    capped = requests_of(WALK, RealtimeConfig(history_cap=2), k=5)
    assert capped[-1].history == ("20", "30")
    ttl = requests_of(WALK, RealtimeConfig(ttl_s=150), k=5)
    assert ttl[-1].history == ("20", "30")       # "10" (t=100) is older than 300 - 150


def test_walks_come_in_time_order_ties_by_item_id(tmp_path):
    test = write_etl(tmp_path)
    walks = period_walks(tmp_path)
    assert {w.user: set(w.items) for w in walks} == test
    for w in walks:
        assert list(w.ts) == sorted(w.ts)


def test_gains():
    assert _gain(["a", "b", "c"], "b", 10) == (1.0, pytest.approx(1 / np.log2(3)))
    assert _gain(["a", "b", "c"], "c", 2) == (0.0, 0.0)


def test_replay_scores_both_arms_through_the_engine(engine):
    walks = [Walk("1", ("10", "60", "110"), (1.0, 2.0, 3.0)),
             Walk("new-user", ("20", "70"), (5.0, 6.0))]
    per_user = replay(engine, walks, RealtimeConfig(), k=10)
    # training only: one answer per user, the next positive looked up in it
    top = [it["item_id"] for it in engine.recommend([RecRequest("1", k=10)])[0].body["items"]]
    assert per_user["recall_a"][0] == np.mean([i in top for i in walks[0].items])
    # with real-time: the second positive of the new user is scored with the first as history
    seen = engine.recommend([RecRequest("new-user", k=10, history=("20",))])[0].body["items"]
    hit = "70" in [it["item_id"] for it in seen]
    first = [it["item_id"] for it in engine.recommend([RecRequest("new-user", k=10)])[0]
             .body["items"]]
    assert per_user["recall_b"][1] == np.mean(["20" in first, hit])
    assert set(per_user) == {"recall_a", "ndcg_a", "recall_b", "ndcg_b"}


def test_paired_bootstrap():
    assert paired_bootstrap([0.5] * 20) == [0.5, 0.5]
    lo, hi = paired_bootstrap(np.r_[np.zeros(50), np.ones(50)], 4000, seed=1)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(2 * 1.96 * 0.05, rel=0.15)
    assert all(np.isnan(paired_bootstrap([])))


def test_the_two_writers_keep_each_others_keys(tmp_path):
    path = tmp_path / "realtime.json"
    merge_into(path, {"freshness_ms": {"p50": 3.0}})
    merge_into(path, {"training_only": {"recall@10": 0.1}})
    merge_into(path, {"freshness_ms": {"p50": 4.0}})
    assert json.loads(path.read_text()) == {"freshness_ms": {"p50": 4.0},
                                            "training_only": {"recall@10": 0.1}}
