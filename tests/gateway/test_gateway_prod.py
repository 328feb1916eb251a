"""The gateway in front of a TorchServe with token authorization on (prod config).

TorchServe's keys expire and change at every start; the gateway holds them for its clients.
Order matters: the last test kills TorchServe.
"""
from __future__ import annotations

import json
import threading
import time

import psutil
import pytest

from archives import server as S
from archives.client import TorchServeClient
from common.promtext import metric_value
from gateway.config import GatewayPaths
from gateway.fallback import Popularity
from testkit.archives import running_server
from tests.gateway.conftest import (MODEL, GatewayProc, build_versions, load,
                                    need_java, register, setup_keys, write_experiment)

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def prod(tmp_path_factory):
    need_java()
    root = tmp_path_factory.mktemp("gateway-prod")
    out = build_versions(root)
    keys = setup_keys(out)
    write_experiment(out)
    with running_server(out, config="prod", models={MODEL: f"{MODEL}-v1.mar"}) as ts:
        register(ts, "2")
        yield out, ts, keys


def _rec(gw, key, body):
    import requests
    return requests.post(gw.url + "/v1/recommendations", data=json.dumps(body),
                         headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_gateway_renews_the_key_before_it_expires(prod):
    out, ts, keys = prod
    first = ts.keys()["inference"]
    # renew as soon as less than 3599 s are left: i.e. right away, every second
    gw = GatewayProc(out, ["--token-renew-margin-s", "3599", "--token-check-interval-s",
                           "1"]).start()
    try:
        end = time.time() + 30
        while time.time() < end and ts.keys()["inference"] == first:
            time.sleep(0.5)
        assert ts.keys()["inference"] != first  # renewed through GET /token
        for u in ("1", "2", "3", "4"):
            d = _rec(gw, keys["client"], {"user_id": u}).json()
            assert d["fallback"] is False and d["strategy"] == "personalized", d
        text = gw.metrics()
        assert metric_value(text, "recsys_gateway_token_renewals_total", trigger="expiry",
                            result="renewed") >= 1
    finally:
        assert gw.stop() == 0


def test_keys_change_when_torchserve_restarts(prod):
    out, ts, keys = prod
    # a generous deadline: this test is about keys, not about a busy machine's latency
    gw = GatewayProc(out, ["--deadline-ms", "3000"]).start()
    try:
        assert _rec(gw, keys["client"], {"user_id": "1"}).json()["fallback"] is False
        old = ts.keys()["inference"]
        S.stop(out)
        new_ts = S.start(out, config="prod", host="127.0.0.1", ports=dict(ts.ports),
                         models={MODEL: f"{MODEL}-v1.mar"})
        register(new_ts, "2")
        assert new_ts.keys()["inference"] != old
        # first answers of fresh workers can exceed the 300 ms deadline on a busy machine:
        # warm them directly (this test is about keys, not cold starts)
        direct = TorchServeClient(new_ts)
        for v in ("1", "2"):
            for _ in range(3):
                assert direct.predict(MODEL, {"user_id": "1"}, v).status_code == 200
        # the gateway still holds the old key: TorchServe says InvalidKeyException, the gateway
        # takes the new key from key_file.json and retries once: no fallback needed
        for u in map(str, range(1, 21)):
            r = _rec(gw, keys["client"], {"user_id": u, "k": 3})
            d = r.json()
            assert r.status_code == 200 and d["fallback"] is False, d
        assert metric_value(gw.metrics(), "recsys_gateway_token_renewals_total",
                            trigger="invalid_key") >= 1
    finally:
        assert gw.stop() == 0


class _Hung:
    """A management API that accepts connections and never answers (counts them)."""

    def __init__(self):
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def test_key_renewal_is_bounded_backs_off_and_holds_no_slot(prod, tmp_path):
    """Issue 18, defect 6. The gateway holds a key TorchServe refuses and GET /token hangs:
    every request is still answered within its deadline (the renewal's 5 s timeout is not the
    request's), failed renewals back off instead of one GET /token per request, and a request
    waiting on a renewal holds no concurrency slot (per-version concurrency 2: before, two
    requests waiting on the renewal held both slots, and the rest were refused as overload)."""
    import requests
    out, ts, keys = prod
    stale = json.loads((out / "torchserve" / "key_file.json").read_text())
    stale["inference"]["key"] = "not-the-key"
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps(stale))
    popularity = GatewayPaths.under(out).popularity
    if not popularity.exists():  # the gateway's saved list (when run alone: fetch one directly)
        d = TorchServeClient(ts).predict(MODEL, {"user_id": "__popular__", "k": 20}, "1").json()
        Popularity(popularity).set(d, "1")
    hung = _Hung()
    gw = GatewayProc(out, ["--key-file", str(key_file), "--management-url",
                           f"http://127.0.0.1:{hung.port}", "--per-version-concurrency", "2",
                           "--token-check-interval-s", "3600"]).start()
    try:
        before_burst = len(hung.conns)
        results = []

        def one(u):
            t0 = time.perf_counter()
            try:
                r = _rec(gw, keys["client"], {"user_id": str(u), "k": 3})
                results.append((r.status_code, r.json().get("fallback"),
                                time.perf_counter() - t0))
            except requests.RequestException as e:
                results.append((0, repr(e), time.perf_counter() - t0))
        threads = [threading.Thread(target=one, args=(u,)) for u in range(1, 25)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join()
        assert all(code == 200 and fb is True for code, fb, _ in results), results
        # deadline 300 ms (+ the fallback): far below the renewal's own 5 s timeout
        assert max(s for _, _, s in results) < 2.5, results
        # back-off: at most one new GET /token for the 24 requests
        assert len(hung.conns) - before_burst <= 1
        text = gw.metrics()
        assert metric_value(text, "recsys_gateway_upstream_errors_total", kind="overload") == 0
        assert metric_value(text, "recsys_gateway_token_renewals_total", result="backoff") >= 1
    finally:
        assert gw.stop() == 0
        hung.close()


def test_torchserve_killed_during_a_run_is_answered_by_popularity(prod):
    out, _, keys = prod
    ts = S.ServerState.load(out)
    gw = GatewayProc(out).start()
    try:
        bodies = [{"user_id": str(i % 60 + 1), "k": 5} for i in range(1200)]
        result: list = []
        t = threading.Thread(target=lambda: result.extend(
            load(gw.url, keys["client"], bodies, concurrency=8)))
        t.start()
        time.sleep(1.5)
        procs = [psutil.Process(ts.pid), *psutil.Process(ts.pid).children(recursive=True)]
        for p in procs:
            p.kill()
        psutil.wait_procs(procs, timeout=30)
        t.join()
        codes = [s for s, _ in result]
        assert len(codes) == 1200 and set(codes) == {200}, {c: codes.count(c) for c in set(codes)}
        tail = [d for _, d in result[-100:]]
        assert all(d["fallback"] and d["strategy"] == "popular" for d in tail)
        assert [i["item_id"] for i in tail[-1]["items"]][:3] == ["10", "20", "30"]
        text = gw.metrics()
        assert metric_value(text, "recsys_gateway_fallbacks_total", cause="connect") > 0
        assert metric_value(text, "recsys_gateway_request_duration_seconds_count",
                            status_class="5xx") == 0
    finally:
        assert gw.stop() == 0
    # a gateway started while TorchServe is down serves the saved popularity list
    gw = GatewayProc(out).start()
    try:
        d = _rec(gw, keys["client"], {"user_id": "1", "k": 2}).json()
        assert d["fallback"] is True and [i["item_id"] for i in d["items"]] == ["10", "20"]
    finally:
        assert gw.stop() == 0
