"""Keys, the body splice, fallback answers, the log writer (no server needed)."""
from __future__ import annotations

import json
import time

import orjson
import pytest

from gateway import auth
from gateway.app import _splice
from gateway.config import GatewayConfig, GatewayPaths
from gateway.fallback import BadRequest, Popularity, view_of
from gateway.logs import JsonlLog, Pseudonymizer, read_jsonl
from gateway.upstream import _expiry, classify


def test_keys_are_stored_as_hashes_only(tmp_path):
    paths = GatewayPaths.under(tmp_path)
    made = auth.init_keys(paths)
    assert len(made) == 3
    client, admin = auth.read_key(paths.client_key), auth.read_key(paths.admin_key)
    for p in (paths.client_key, paths.admin_key, paths.key_hashes, paths.pseudonym_secret):
        assert p.stat().st_mode & 0o777 == 0o600, p
    stored = paths.key_hashes.read_text()
    assert client not in stored and admin not in stored
    assert auth.key_hash(client) in stored
    store = auth.KeyStore.load(paths.key_hashes)
    assert store.identify(client).rights == auth.CLIENT_RIGHTS
    assert "admin" in store.identify(admin).rights
    assert store.identify("nope") is None and store.identify("") is None
    assert auth.init_keys(paths) == []  # idempotent: keys stay
    assert auth.read_key(paths.client_key) == client


def test_bearer_parsing():
    assert auth.bearer("Bearer abc") == "abc" and auth.bearer("bearer  abc ") == "abc"
    assert auth.bearer("Basic abc") is None and auth.bearer(None) is None
    assert auth.bearer("Bearer ") is None


def test_token_bucket():
    b = auth.TokenBucket(rate=2.0, burst=2.0, stamp=100.0)
    assert b.take(100.0) == 0 and b.take(100.0) == 0
    wait = b.take(100.0)
    assert wait == pytest.approx(0.5)
    assert b.take(100.6) == 0


def test_splice_appends_fields_without_reencoding():
    body = b'{"user_id": "1", "model_version": "2", "items": [{"item_id": "x", "score": 1.5}]}'
    out = _splice(body, "exp", "treatment", False, "rid1")
    assert out.startswith(body[:-1])
    d = json.loads(out)
    assert d["experiment"] == "exp" and d["variant"] == "treatment" and d["fallback"] is False
    assert d["request_id"] == "rid1" and d["items"] == [{"item_id": "x", "score": 1.5}]
    assert json.loads(_splice(b"{}\n", "e", "v", True, "r")) == {
        "experiment": "e", "variant": "v", "fallback": True, "request_id": "r"}


def test_view_of_modes_and_bad_user():
    assert view_of({"user_id": "007"}).user == "7"
    assert view_of({"user_id": "Jürgen"}).user == "Jürgen"
    v = view_of({"similar_to": "10", "k": 3})
    assert v.mode == "similar" and v.user is None and v.k == 3
    assert view_of({"user_id": 1, "candidates": ["1"]}).mode == "rerank"
    with pytest.raises(BadRequest) as e:
        view_of({"user_id": "a\nb"})
    assert e.value.reason == "bad_user_id"


def _popularity(tmp_path, with_categories=True) -> Popularity:
    p = Popularity(tmp_path / "popularity.json")
    cats = {"10": ["Comedy"], "20": ["Drama"], "30": ["Horror"], "40": ["Comedy"],
            "50": ["Drama", "Comedy"]}
    items = [{"item_id": i, "score": 100.0 - n, "title": f"Item {i}",
              **({"categories": c} if with_categories else {})}
             for n, (i, c) in enumerate(cats.items())]
    p.set({"strategy": "popular", "items": items}, "3")
    return p


def test_popularity_fallback_per_mode(tmp_path):
    p = _popularity(tmp_path)
    body, strategy = p.answer(view_of({"user_id": "u", "k": 3, "history": ["10"]}))
    assert strategy == "popular" and [i["item_id"] for i in body["items"]] == ["20", "30", "40"]
    assert body["model_version"] == "3" and body["user_id"] == "u"
    body, _ = p.answer(view_of({"user_id": "u", "k": 3, "history": ["10"], "exclude_seen": False,
                                "exclude": ["20"]}))
    assert [i["item_id"] for i in body["items"]] == ["10", "30", "40"]
    body, _ = p.answer(view_of({"user_id": "u", "filters": {"include_categories": ["Comedy"]}}))
    assert [i["item_id"] for i in body["items"]] == ["10", "40", "50"]
    # similar_to: same categories by popularity, never the item itself
    body, _ = p.answer(view_of({"similar_to": "40", "k": 5}))
    assert [i["item_id"] for i in body["items"]] == ["10", "50"]
    # unknown categories of the item -> plain popularity
    body, _ = p.answer(view_of({"similar_to": "999", "k": 2}))
    assert [i["item_id"] for i in body["items"]] == ["10", "20"]
    # candidates: in the order sent, exclusions applied
    body, strategy = p.answer(view_of({"user_id": "u", "candidates": ["50", "x", 30, "50"],
                                       "exclude": ["x"]}))
    assert strategy == "as_sent" and [i["item_id"] for i in body["items"]] == ["50", "30"]
    # the list survives a restart (saved next to the logs)
    again = Popularity(tmp_path / "popularity.json")
    assert again.load() and again.version == "3" and len(again) == 5
    # no list: nothing can answer (the gateway then says 503), except candidates
    empty = Popularity()
    assert empty.answer(view_of({"user_id": "u"})) is None
    assert empty.answer(view_of({"user_id": "u", "candidates": ["1"]}))[0]["items"][0]["item_id"] == "1"


def test_fallback_answers_have_the_handlers_shape_and_defaults(tmp_path):
    p = _popularity(tmp_path)
    # candidates: all of them by default (k 1000), seen items kept unless exclude_seen is true
    many = [str(i) for i in range(100, 130)] + ["10"]
    body, _ = p.answer(view_of({"user_id": "u", "candidates": many, "history": ["10"]}))
    assert [i["item_id"] for i in body["items"]] == many and body["ignored_candidates"] == []
    assert body["items"][-1] == {"item_id": "10", "score": 0.0, "title": "Item 10",
                                 "categories": ["Comedy"]}
    body, _ = p.answer(view_of({"user_id": "u", "candidates": many, "history": ["10"],
                                "exclude_seen": True, "k": 3}))
    assert [i["item_id"] for i in body["items"]] == ["100", "101", "102"]
    # filters drop the candidates whose categories the list knows to be out
    body, _ = p.answer(view_of({"user_id": "u", "candidates": ["20", "10", "999"],
                                "filters": {"exclude_categories": ["Comedy"]}}))
    assert [i["item_id"] for i in body["items"]] == ["20", "999"]
    # similar_to is echoed, as the handler does; most shared categories first
    body, _ = p.answer(view_of({"similar_to": 40, "k": 1}))
    assert body["similar_to"] == "40" and body["user_id"] is None
    body, _ = p.answer(view_of({"similar_to": "50", "k": 3}))
    assert [i["item_id"] for i in body["items"]] == ["10", "20", "40"]  # one each, by popularity
    p.set({"items": [*p.items, {"item_id": "60", "score": 1.0, "title": "Item 60",
                                "categories": ["Comedy", "Drama"]}]}, "3")
    body, _ = p.answer(view_of({"similar_to": "50", "k": 2}))
    assert [i["item_id"] for i in body["items"]] == ["60", "10"]


def test_popularity_without_categories_ignores_filters(tmp_path):
    p = _popularity(tmp_path, with_categories=False)
    body, _ = p.answer(view_of({"similar_to": "40", "k": 2}))
    assert [i["item_id"] for i in body["items"]] == ["10", "20"]
    assert "categories" not in body["items"][0]


def test_classify_upstream_answers():
    assert classify(200, b"{}").kind == "ok"
    assert classify(400, b'{"code": 400, "reason": "bad_k"}').kind == "client_error"
    assert classify(404, b'{"code": 404, "reason": "unknown_item", "message": "m"}').kind == \
        "client_error"
    assert classify(404, b'{"code": 404, "type": "ModelVersionNotFoundException"}').kind == "http_404"
    assert classify(400, b'{"type": "InvalidKeyException"}').kind == "invalid_key"
    assert classify(413, b"").kind == "too_large"
    assert classify(507, b"").kind == "http_507" and classify(503, b"x").failed


def test_key_expiry_parsing():
    t = _expiry("2026-12-01T15:05:14.451523343Z")
    assert t is not None and time.gmtime(t).tm_hour == 15
    assert _expiry(None) is None and _expiry("garbage") is None


def test_log_writer_flushes_everything_on_close_and_counts_drops(tmp_path):
    log = JsonlLog(tmp_path / "x", "x", lambda t: {"n": t}, queue_size=100_000, rotate_bytes=2000)
    for i in range(5000):
        assert log.submit(i)
    log.close()
    rows = list(read_jsonl([tmp_path / "x"]))
    assert sorted(r["n"] for r in rows) == list(range(5000))
    assert len(list((tmp_path / "x").glob("*.jsonl"))) > 1  # rotated by size
    # a full queue drops and counts instead of blocking
    dropped = []
    tiny = JsonlLog(tmp_path / "y", "y", lambda t: (time.sleep(0.2), {"n": t})[1], queue_size=1,
                    on_drop=lambda: dropped.append(1))
    results = [tiny.submit(i) for i in range(50)]
    tiny.close()
    assert not all(results) and len(dropped) == results.count(False) == tiny.dropped
    assert len(list(read_jsonl([tmp_path / "y"]))) == results.count(True)


def test_pseudonym_is_keyed_and_stable():
    a, b = Pseudonymizer(b"k" * 32), Pseudonymizer(b"j" * 32)
    assert a("42") == a("42") != b("42") and len(a("42")) == 32 and a(None) is None


def test_config_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GATEWAY_PORT", "18090")
    monkeypatch.setenv("GATEWAY_METRICS_PORT", "18091")
    cfg = GatewayConfig.from_env(tmp_path, deadline_ms=250.0)
    assert (cfg.port, cfg.metrics_port, cfg.deadline_ms) == (18090, 18091, 250.0)
    monkeypatch.setenv("GATEWAY_PORT", "x")
    with pytest.raises(ValueError, match="GATEWAY_PORT"):
        GatewayConfig.from_env(tmp_path)
    monkeypatch.delenv("GATEWAY_PORT")
    with pytest.raises(ValueError, match="fallback_reserve_ms"):
        GatewayConfig.from_env(tmp_path, deadline_ms=50.0)


def test_orjson_round_trip_of_unicode_ids():
    assert orjson.loads(orjson.dumps({"user_id": "用户42"}))["user_id"] == "用户42"


def test_the_gate_identifies_the_key_once_and_the_route_reuses_it(tmp_path):
    """The server's gate hashes the key before admitting the body; the route's auth takes the
    entry from the request it is handed instead of hashing again. A request that was not
    gated is identified by the route."""
    from gateway.http import Request
    from gateway.metrics import Metrics
    from gateway.middleware import check_key, key_gate

    paths = GatewayPaths.under(tmp_path)
    auth.init_keys(paths)
    store = auth.KeyStore.load(paths.key_hashes)
    calls = []
    identify = store.identify
    store.identify = lambda key: calls.append(key) or identify(key)
    m = Metrics()
    headers = {"authorization": f"Bearer {auth.read_key(paths.client_key)}"}
    req = Request("POST", "/v1/recommendations", headers)
    assert key_gate(store, m)(req) is None and req.key.id == "client"
    assert check_key(store, m, req, "recommend") is req.key and len(calls) == 1
    fresh = Request("POST", "/v1/recommendations", headers)
    assert check_key(store, m, fresh, "recommend").id == "client" and len(calls) == 2
    refused = Request("POST", "/v1/recommendations", {"authorization": "Bearer nope"})
    assert key_gate(store, m)(refused).status == 401 and refused.key is None


def test_an_idle_log_sleeps_until_a_record_arrives_and_writes_it_at_once(tmp_path):
    """An idle events log does not tick 20 times a second: after one empty tick the writer
    sleeps until submit wakes it, then writes the record."""
    log = JsonlLog(tmp_path, "events", lambda r: r, batch_s=0.05)
    try:
        deadline = time.monotonic() + 5
        while not log._idle and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log._idle  # one empty tick, then no more ticking
        t0 = time.monotonic()
        assert log.submit({"n": 1})
        while log.written < 1 and time.monotonic() - t0 < 5:
            time.sleep(0.002)
        assert log.written == 1
    finally:
        assert log.close(5)
    assert [r["n"] for r in read_jsonl([tmp_path])] == [1]
