"""realtime/merge.py: the one history merge rule (gateway and offline replay)."""
from __future__ import annotations

import json

from core.validation import MAX_HISTORY, validate_request as validate
from gateway.routes import with_recent
from realtime.merge import merge_history, newest_distinct


def test_client_history_first_then_recent_oldest_first():
    assert merge_history(["a", "b"], ["c", "d"]) == ["a", "b", "c", "d"]


def test_a_repeated_item_counts_once_at_its_latest_position():
    assert merge_history(["a", "b", "c"], ["b", "d", "a"]) == ["c", "b", "d", "a"]
    assert newest_distinct(["x", "y", "x", "x"], 10) == ["y", "x"]


def test_without_recent_events_the_client_history_is_unchanged():
    assert merge_history(["a", "a", "b"], []) == ["a", "a", "b"]


def test_the_merged_history_is_cut_oldest_first_to_the_handler_limit():
    client = [f"c{i}" for i in range(MAX_HISTORY)]
    recent = [f"r{i}" for i in range(10)]
    merged = merge_history(client, recent)
    assert len(merged) == MAX_HISTORY
    assert merged[-10:] == recent and merged[0] == "c10"
    # the handler accepts it: the merge never causes a bad_history
    validate(json.loads(json.dumps({"user_id": "u", "history": merged})))


def test_the_gateway_rewrites_the_body_with_the_merged_history():
    doc = {"user_id": 7, "k": 3, "history": ["1", "2"]}
    req = validate(doc)
    new_doc, new_req, body = with_recent(doc, req, ("2", "9"), MAX_HISTORY)
    assert json.loads(body) == {"user_id": 7, "k": 3, "history": ["1", "2", "9"]}
    assert new_req.history == ("1", "2", "9") and new_req.k == 3
    assert doc["history"] == ["1", "2"]  # the caller's parse is not changed
    # an id beyond 64 bits (orjson cannot write it) keeps its exact digits
    big = {"user_id": 2 ** 70, "k": 3}
    _, _, body = with_recent(big, validate(big), ("5",), MAX_HISTORY)
    assert json.loads(body)["user_id"] == 2 ** 70
