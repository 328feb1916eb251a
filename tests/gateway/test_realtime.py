"""Real-time events end to end: gateway + TorchServe, on both stores (embedded and a real Redis).

One TorchServe serves an archive with planted category structure
(``make_random_artifact(category_signal=...)``: a history of one category's items ranks that
category first), and one gateway per store sits in front of it. What a user of the product
sees: clicks change the next answer (the clicked category's share of the top 10 rises, the
clicked items are excluded), events are idempotent and honest per index, the training-event log
holds every accepted interaction, and a Redis that dies costs recent events, never an answer.
"""
from __future__ import annotations

import json
import shutil
import stat
import threading
import time
from pathlib import Path

import orjson
import pytest
import requests

from archives import build as B
from common.net import wait_until
from common.promtext import metric_value
from common.schema import RAW_EVENT_COLUMNS
from testkit.archives import CATEGORIES, make_random_artifact, running_server
from testkit.gateway import GatewayProc
from tests.gateway.conftest import MODEL, Client, setup_keys, write_experiment

CATEGORY = CATEGORIES[1]
N_ITEMS = 500


def item_ids(category_index: int) -> list[str]:
    """The artifact's items whose primary category is ``CATEGORIES[category_index]``."""
    return [str(10 * (i + 1)) for i in range(N_ITEMS) if i % len(CATEGORIES) == category_index]


def share(answer: dict, category: str) -> float:
    items = answer["items"]
    return sum(category in it["categories"] for it in items) / max(1, len(items))


@pytest.fixture(scope="module")
def served_signal(tmp_path_factory, java):
    """TorchServe over one archive (version 1) with planted category structure."""
    root = tmp_path_factory.mktemp("realtime")
    art = make_random_artifact(root / "artifact", n_items=N_ITEMS, seed=3, model_version="1",
                               category_signal=3.0)
    out = root / "out"
    B.build_from_folder(art, out, version="1", model_name=MODEL,
                        config=B.ArchiveConfig(batch_size=8, max_batch_delay_ms=5,
                                             min_workers=1, max_workers=1),
                        archive_format="zip-store")
    with running_server(out, config="dev", models={MODEL: f"{MODEL}-v1.mar"}) as ts:
        yield root, ts


class RT:
    """One gateway over the shared TorchServe, with its own OUT (keys, logs, training log)."""

    def __init__(self, root: Path, ts, name: str, args: list[str]):
        self.out = root / f"gw-{name}"
        self.out.mkdir()
        self.keys = setup_keys(self.out)
        write_experiment(self.out, versions=("1",), weights=(10000,))
        self.gw = GatewayProc(self.out, ["--upstream-url", ts.url("inference"),
                                         "--model-name", MODEL, *args]).start()
        self.c = Client(self.gw, self.keys["client"])
        self.accepted_interactions: list[tuple[str, str, str]] = []

    def post(self, events) -> requests.Response:
        r = self.c.event(events)
        if r.status_code == 202:
            docs = events if isinstance(events, list) else [events]
            for d, res in zip(docs, r.json()["results"]):
                if res["status"] != "duplicate" and d.get("user_id") is not None:
                    self.accepted_interactions.append((str(d["user_id"]), str(d["item_id"]),
                                                       d["type"]))
        return r

    def rec(self, user: str, **kw) -> dict:
        r = self.c.rec({"user_id": user, "k": 10, **kw})
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module", params=["memory", "redis"])
def rt(request, served_signal):
    root, ts = served_signal
    args = ["--realtime", "on"]
    if request.param == "redis":
        args += ["--redis-url", request.getfixturevalue("redis_url")]
    g = RT(root, ts, request.param, args)
    g.store = request.param
    try:
        yield g
    finally:
        g.gw.stop()


# ---- the loop a user sees ---------------------------------------------------------------------

def test_clicks_move_the_next_answer_towards_their_category(rt):
    user = f"new-{rt.store}"
    before = rt.rec(user)
    assert before["strategy"] == "popular"
    clicks = item_ids(1)[:5]
    now = time.time()
    r = rt.post([{"type": "click", "item_id": i, "user_id": user, "ts": now + n * 0.001,
                  "event_id": f"{user}-{n}"} for n, i in enumerate(clicks)])
    assert r.status_code == 202, r.text
    assert [x["status"] for x in r.json()["results"]] == ["stored"] * 5
    after = rt.rec(user)
    assert after["strategy"] != "popular"
    assert share(after, CATEGORY) > share(before, CATEGORY)
    assert share(after, CATEGORY) >= 0.8
    assert not set(clicks) & {it["item_id"] for it in after["items"]}   # exclude_seen
    # a client history goes first, the recent events after it: still one valid request
    mixed = rt.rec(user, history=item_ids(2)[:3])
    assert not set(clicks + item_ids(2)[:3]) & {it["item_id"] for it in mixed["items"]}
    m = rt.gw.metrics()
    assert metric_value(m, "recsys_gateway_realtime_reads_total", result="hit") >= 2
    assert metric_value(m, "recsys_gateway_realtime_freshness_seconds_count") >= 1
    assert metric_value(m, "recsys_gateway_events_total", result="stored", reason="") >= 5


def test_an_event_with_only_the_request_id_is_joined_to_its_user(rt):
    user = f"joined-{rt.store}"
    first = rt.rec(user)
    item = first["items"][0]["item_id"]
    r = rt.post({"type": "click", "item_id": item, "request_id": first["request_id"]})
    assert r.json()["results"] == [{"status": "stored"}]
    assert item not in {it["item_id"] for it in rt.rec(user)["items"]}
    r = rt.post({"type": "click", "item_id": item, "request_id": "never-answered"})
    assert r.status_code == 202
    assert r.json()["results"] == [{"status": "logged", "reason": "unknown_request_id"}]


def test_events_are_idempotent_and_answered_per_index(rt):
    user = f"dedup-{rt.store}"
    ev = {"type": "click", "item_id": item_ids(3)[0], "user_id": user, "event_id": f"e-{user}"}
    assert rt.post(ev).json()["results"] == [{"status": "stored"}]
    again = rt.post([ev, {"type": "view", "item_id": item_ids(3)[1], "user_id": user},
                     {"type": "dismiss", "item_id": item_ids(3)[2], "user_id": user}])
    assert again.status_code == 202
    assert again.json()["results"] == [{"status": "duplicate"}, {"status": "stored"},
                                       {"status": "logged", "reason": "not_an_interaction"}]
    assert again.json()["accepted"] == 2 and again.json()["duplicates"] == 1
    # a malformed event refuses the whole batch: nothing applied, every bad index named
    before = rt.rec(user)
    bad = rt.post([{"type": "click", "item_id": item_ids(3)[3], "user_id": user},
                   {"type": "click", "user_id": user},
                   {"type": "click", "item_id": "1", "user_id": user, "ts": time.time() + 3600}])
    assert bad.status_code == 400
    assert [(e["index"], e["reason"]) for e in bad.json()["errors"]] == [(1, "bad_item_id"),
                                                                         (2, "bad_ts")]
    assert rt.rec(user)["items"] == before["items"]
    single = rt.post({"type": "click", "item_id": "1"})
    assert single.status_code == 400 and single.json()["reason"] == "missing_subject"


def test_items_no_served_version_knows_are_logged_not_stored(rt):
    user = f"unknown-{rt.store}"
    wait_until(lambda: metric_value(rt.gw.metrics(), "recsys_gateway_realtime_catalog_items")
               == N_ITEMS, timeout=30, what="the gateway's catalog")
    r = rt.post([{"type": "click", "item_id": "not-in-the-catalog", "user_id": user},
                 {"type": "click", "item_id": item_ids(4)[0], "user_id": user}])
    assert r.json()["results"] == [{"status": "logged", "reason": "unknown_item"},
                                   {"status": "stored"}]


# ---- Redis down and back ----------------------------------------------------------------------

def test_redis_killed_mid_run_costs_recent_events_not_answers(served_signal, redis_bin,
                                                              tmp_path):
    from realtime import redis_server

    root, ts = served_signal
    run = tmp_path / "redis"
    inst = redis_server.start(run, 0)
    url, port = inst.url, inst.port
    g = RT(root, ts, "redis-kill", ["--realtime", "on", "--redis-url", url])
    statuses: list[int] = []
    stop = threading.Event()

    def load():
        c = Client(g.gw, g.keys["client"])
        n = 0
        while not stop.is_set():
            statuses.append(c.rec({"user_id": f"load-{n % 20}", "k": 5}).status_code)
            n += 1

    try:
        user = "survivor"
        assert g.post({"type": "click", "item_id": item_ids(1)[0], "user_id": user}) \
            .json()["results"] == [{"status": "stored"}]
        worker = threading.Thread(target=load)
        worker.start()
        time.sleep(0.5)
        redis_server.stop(run)
        time.sleep(1.5)
        m = g.gw.metrics()
        failed = sum(metric_value(m, "recsys_gateway_realtime_reads_total", result=r) or 0
                     for r in ("error", "skipped", "timeout"))
        assert failed > 0
        assert metric_value(m, "recsys_gateway_realtime_store_errors_total", op="read") >= 1
        assert metric_value(m, "recsys_gateway_realtime_store_up") == 0
        down = g.post({"type": "click", "item_id": item_ids(1)[1], "user_id": user})
        assert down.status_code == 503 and down.json()["reason"] == "store_unavailable"
        assert down.headers["Retry-After"] == "1"
        # back on the same port: used again without a gateway restart
        redis_server.start(run, port)
        wait_until(lambda: g.post({"type": "click", "item_id": item_ids(1)[2],
                                   "user_id": user}).status_code == 202, timeout=10,
                   what="events accepted again")
        answer = g.rec(user)
        assert item_ids(1)[2] not in {it["item_id"] for it in answer["items"]}
        assert metric_value(g.gw.metrics(), "recsys_gateway_realtime_store_up") == 1
    finally:
        stop.set()
        worker.join(timeout=30)
        g.gw.stop()
        redis_server.stop(run)
    assert statuses and set(statuses) == {200}, sorted(set(statuses))


# ---- the training-event log -------------------------------------------------------------------

def test_the_training_event_log_holds_every_accepted_interaction(served_signal, tmp_path):
    root, ts = served_signal
    g = RT(root, ts, "trainlog", ["--realtime", "on"])
    try:
        users = [f"t{u}" for u in range(5)]
        for n in range(40):
            u = users[n % 5]
            assert g.post({"type": ("view", "click", "purchase")[n % 3],
                           "item_id": item_ids(n % 5)[n // 5], "user_id": u,
                           "event_id": f"ev-{n}"}).status_code == 202
        assert g.post({"type": "click", "item_id": item_ids(0)[0], "user_id": "t0",
                       "event_id": "ev-0"}).json()["results"] == [{"status": "duplicate"}]
        first = g.rec("t1")
        g.post({"type": "add_to_cart", "item_id": first["items"][0]["item_id"],
                "request_id": first["request_id"]})
        g.accepted_interactions.append(("t1", first["items"][0]["item_id"], "add_to_cart"))
    finally:
        assert g.gw.stop(timeout=60) == 0
    folder = g.out / "training-events"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = sorted(folder.glob("*.jsonl"))
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    rows = [orjson.loads(line) for f in files for line in f.read_bytes().splitlines()]
    assert all(set(r) == set(RAW_EVENT_COLUMNS) and r["rating"] is None for r in rows)
    assert sorted((r["user_id"], r["item_id"], r["event_type"]) for r in rows) == \
        sorted(g.accepted_interactions)
    # the experiment log holds pseudonyms only
    logged = [json.loads(line) for f in sorted(g.gw.paths.events.glob("*.jsonl"))
              for line in f.read_text().splitlines()]
    assert len(logged) == len(rows) and not {r["user"] for r in logged} & set(
        [f"t{u}" for u in range(5)])
    shutil.rmtree(folder)


def test_the_live_measurement_sees_every_click_and_every_read(rt):
    from realtime.live import measure

    figures = measure(rt.out, trials=5, rate=50, n=100)
    fresh, reads = figures["freshness_ms"], figures["store_read_ms"]
    assert fresh["failed"] == 0 and fresh["trials"] == 5 and 0 < fresh["p50"] <= fresh["p99"] < 1000
    assert reads["reads"] == 100 and reads["store"] == rt.store
    assert 0 < reads["p50"] <= reads["p99"] <= 5.0   # under the read deadline
    assert figures["live"]["load"]["errors"] == 0
