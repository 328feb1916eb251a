"""gateway/intake.py and gateway/recent.py without a server: a batch is applied whole or not at
all, per-index answers, reservations in the write queues, a store that fails, reads that
never fail an answer. The HTTP path on both stores: tests/gateway/test_realtime.py."""
from __future__ import annotations

import asyncio
import json
import time

import orjson
import pytest

from common.net import free_ports
from gateway.intake import Intake
from gateway.logs import JsonlLog, open_private, read_jsonl
from gateway.metrics import Metrics
from gateway.recent import RecentEvents
from gateway.records import TrainingEvent, training_event_dict
from realtime.config import RealtimeConfig
from realtime.store import Event, MemoryStore, RedisStore


def make(tmp_path, *, store=None, queue_size=1000, cfg=None, catalog=None):
    cfg = cfg or RealtimeConfig()
    m = Metrics()
    rt = RecentEvents(cfg, m, store if store is not None else MemoryStore(cfg))
    rt.catalog = catalog
    events = JsonlLog(tmp_path / "events", "events", lambda r: {"item": r.item_id,
                                                               "user": r.user},
                      queue_size=queue_size)
    training = JsonlLog(tmp_path / "training", "training-events", training_event_dict,
                        queue_size=queue_size, opener=open_private)
    return Intake(rt, events, training, m), rt, events, training, m


def post(intake, body) -> tuple[int, dict]:
    r = asyncio.run(intake.handle(orjson.dumps(body)))
    return r.status, orjson.loads(r.body)


def close(*logs):
    for lg in logs:
        lg.close(10)


def test_a_batch_is_answered_per_index_and_logged_once(tmp_path):
    intake, rt, events, training, m = make(tmp_path, catalog=frozenset({"1", "2", "3"}))
    rt.remember("rid-1", "u9")
    status, body = post(intake, [
        {"type": "click", "item_id": "1", "user_id": "u1", "event_id": "e1"},
        {"type": "click", "item_id": "1", "user_id": "u1", "event_id": "e1"},   # retry in batch
        {"type": "view", "item_id": "2", "request_id": "rid-1"},                # joined: u9
        {"type": "click", "item_id": "3", "request_id": "rid-unknown"},
        {"type": "click", "item_id": "404", "user_id": "u1"},                   # not in catalog
        {"type": "dismiss", "item_id": "2", "user_id": "u1"},
        {"type": "click", "item_id": "2", "user_id": "u1", "ts": time.time() - 30 * 86400}])
    assert status == 202
    assert body["results"] == [
        {"status": "stored"}, {"status": "duplicate"}, {"status": "stored"},
        {"status": "logged", "reason": "unknown_request_id"},
        {"status": "logged", "reason": "unknown_item"},
        {"status": "logged", "reason": "not_an_interaction"},
        {"status": "logged", "reason": "expired"}]
    assert (body["accepted"], body["stored"], body["duplicates"], body["logged"]) == (6, 2, 1, 4)
    assert rt.store.recent_now("u1").items == ("1",) and rt.store.recent_now("u9").items == ("2",)
    close(events, training)
    assert len(list(read_jsonl([tmp_path / "events"]))) == 6
    rows = list(read_jsonl([tmp_path / "training"]))
    # interactions of known users, the unknown item and the expired one included (raw data)
    assert sorted((r["user_id"], r["item_id"], r["event_type"]) for r in rows) == [
        ("u1", "1", "click"), ("u1", "2", "click"), ("u1", "404", "click"), ("u9", "2", "view")]
    assert m.events.labels("stored", "")._value.get() == 2


def test_a_malformed_event_refuses_the_whole_batch(tmp_path):
    intake, rt, events, training, _ = make(tmp_path)
    status, body = post(intake, [{"type": "click", "item_id": "1", "user_id": "u1"},
                                 {"type": "click", "user_id": "u1"},
                                 {"type": "Click!", "item_id": "1", "user_id": "u1"},
                                 {"type": "click", "item_id": "1", "user_id": "u1",
                                  "ts": time.time() + 3600}])
    assert status == 400
    assert [(e["index"], e["reason"]) for e in body["errors"]] == [
        (1, "bad_item_id"), (2, "bad_type"), (3, "bad_ts")]
    assert "nothing was applied" in body["message"]
    assert len(rt.store) == 0
    close(events, training)
    assert events.submitted == training.submitted == 0
    for bad, reason in (([], "empty"), ([{}] * 1001, "too_many"), ({"type": "click"},
                                                                 "bad_item_id")):
        assert post(make(tmp_path / reason)[0], bad)[1]["reason"] == reason
    r = asyncio.run(make(tmp_path / "nj")[0].handle(b"{not json"))
    assert r.status == 400 and orjson.loads(r.body)["reason"] == "not_json"


def test_a_full_queue_refuses_the_whole_batch_and_applies_nothing(tmp_path):
    intake, rt, events, training, _ = make(tmp_path, queue_size=3)
    assert post(intake, [{"type": "click", "item_id": str(i), "user_id": "u1"}
                         for i in range(2)])[0] == 202
    status, body = post(intake, [{"type": "click", "item_id": str(i), "user_id": "u2"}
                                 for i in range(2)])
    assert status == 503 and body["reason"] == "log_full"
    assert rt.store.recent_now("u2").items == ()
    close(events, training)
    assert events.written == 2 and events.dropped == 0


def test_a_store_that_fails_refuses_the_batch_and_logs_nothing(tmp_path):
    port = free_ports(1)[0]  # nothing listens there
    cfg = RealtimeConfig(redis_url=f"redis://127.0.0.1:{port}/0", down_backoff_s=60)
    intake, rt, events, training, m = make(tmp_path, store=RedisStore(cfg, connect_timeout_s=0.5),
                                           cfg=cfg)
    status, body = post(intake, {"type": "click", "item_id": "1", "user_id": "u1"})
    assert status == 503 and body["reason"] == "store_unavailable"
    assert m.rt_store_errors.labels("write")._value.get() == 1
    # marked down: the next read is skipped without a call, and answers without recent events
    assert asyncio.run(rt.read("u1")).items == ()
    assert m.rt_reads.labels("skipped")._value.get() == 1
    assert m.rt_store_up._value.get() == 0
    # a batch of events the store does not keep is still accepted and logged
    status, body = post(intake, {"type": "dismiss", "item_id": "1", "user_id": "u1"})
    assert status == 202 and body["results"][0]["reason"] == "not_an_interaction"
    close(events, training)
    assert events.written == 1


def test_reads_never_fail_an_answer_and_recover(tmp_path):
    port = free_ports(1)[0]
    cfg = RealtimeConfig(redis_url=f"redis://127.0.0.1:{port}/0", down_backoff_s=0.2)
    m = Metrics()
    rt = RecentEvents(cfg, m, RedisStore(cfg, connect_timeout_s=0.5))

    async def scenario():
        assert (await rt.read("u")).items == ()          # error: counted, marked down
        assert (await rt.read("u")).items == ()          # skipped
        await asyncio.sleep(0.25)
        assert (await rt.read("u")).items == ()          # tried again (still down)
        await rt.close()
    asyncio.run(scenario())
    assert m.rt_reads.labels("error")._value.get() == 2
    assert m.rt_reads.labels("skipped")._value.get() == 1
    assert m.rt_store_errors.labels("read")._value.get() == 2


def test_reads_of_the_embedded_store_are_observed(tmp_path):
    m = Metrics()
    rt = RecentEvents(RealtimeConfig(), m)
    asyncio.run(rt.write([Event("u", "5", time.time())]))
    rec = asyncio.run(rt.read("u"))
    assert rec.items == ("5",)
    assert m.rt_reads.labels("hit")._value.get() == 1
    assert m.rt_read._sum.get() >= 0 and m.rt_freshness._sum.get() >= 0
    assert asyncio.run(rt.read("u")).items == ("5",)
    # freshness is observed once per new event on this replica
    assert sum(b.get() for b in m.rt_freshness._buckets) == 1


def test_training_event_files_are_private(tmp_path):
    _, _, events, training, _ = make(tmp_path)
    training.submit(TrainingEvent("u1", "1", "click", 1.0))
    close(events, training)
    (f,) = (tmp_path / "training").glob("*.jsonl")
    assert f.stat().st_mode & 0o777 == 0o600
    assert json.loads(f.read_text()) == {"user_id": "u1", "item_id": "1", "event_type": "click",
                                         "rating": None, "timestamp": 1}


@pytest.mark.parametrize("n", [1, 3])
def test_reserve_holds_room_until_filled_or_released(tmp_path, n):
    lg = JsonlLog(tmp_path, "x", lambda r: {"r": r}, queue_size=3)
    assert lg.reserve(n, 10)
    assert lg.reserve(3 - n, 10) and not lg.reserve(1, 1) and not lg.submit("other")
    lg.release(3 - n, 10)
    for i in range(n):
        lg.submit_reserved(i, 10)
    lg.close(10)
    assert lg.written == n and lg.submitted == n + 1 and lg.dropped == 1
