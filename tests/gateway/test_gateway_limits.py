"""The gateway's own limits, with TorchServe down (the popularity fallback answers):

* requests are checked against the handler's own validation (issue 18, defect 2): what the
  model refuses, the gateway refuses, with the same status and reason, even with no model up;
* ids beyond 2^64 keep their digits (the same assignment and pseudonym as their string form);
* nesting deeper than the schema allows is refused without a deep parse;
* the in-flight budget sheds load (defect 1): 503 + Retry-After, status_class="shed";
* exposure records hold canonical ids only (defect 3);
* a key with rate 0 is suspended (defect 8).

A real gateway process on free loopback ports; its upstream is a closed port.
"""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import requests

from common.promtext import metric_value
from core.validation import InvalidRequest, parse_request
from gateway import auth
from gateway import experiment as E
from gateway.config import GatewayPaths
from gateway.logs import Pseudonymizer, read_jsonl
from testkit.gateway import GatewayProc

pytestmark = pytest.mark.timeout(300)
POPULAR = [{"item_id": str(i), "score": float(100 - i), "title": f"t{i}", "categories": ["A"]}
           for i in range(10, 40)]


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def make_out(root: Path) -> tuple[Path, dict[str, str], E.Experiment]:
    """OUT with keys (one suspended), an experiment and a saved popularity list."""
    out = root / "out"
    paths = GatewayPaths.under(out)
    auth.init_keys(paths)
    auth.add_key(paths.key_hashes, paths.root / "suspended_key", "suspended", ("recommend",),
                 0.0, 1.0)
    exp = E.simple("limits-exp", ["1", "2"], [5000, 5000], salt="s1")
    E.write(paths.experiment, exp)
    paths.popularity.write_text(json.dumps({"version": "1", "fetched_at": time.time(),
                                            "items": POPULAR}))
    keys = {n: auth.read_key(paths.root / f"{n}_key") for n in ("client", "admin", "suspended")}
    return out, keys, exp


@pytest.fixture(scope="module")
def down(tmp_path_factory):
    out, keys, exp = make_out(tmp_path_factory.mktemp("gateway-limits"))
    gw = GatewayProc(out, ["--upstream-url", f"http://127.0.0.1:{_closed_port()}",
                           "--inflight-bytes-budget", str(8 * 2**20)]).start()
    try:
        yield gw, keys, exp
    finally:
        gw.stop()


def _post(gw, key, data: bytes, timeout=30) -> requests.Response:
    return requests.post(gw.url + "/v1/recommendations", data=data, timeout=timeout,
                         headers={"Authorization": f"Bearer {key}",
                                  "Content-Type": "application/json"})


INVALID = [
    b'{"user_id": "1", "k": "ten"}',
    b'{"user_id": "1", "k": 0}',
    b'{"user_id": "1", "k": 1001}',
    b'{"user_id": "1", "k": 2.5}',
    b'{"user_id": "1", "k": true}',
    b'{"k": 10}',
    b'{"user_id": null}',
    b'{"user_id": ""}',
    b'{"user_id": -1}',
    b'{"user_id": 1.5}',
    b'{"user_id": true}',
    b'{"user_id": "a\\u0000b"}',
    b'{"user_id": "   "}',
    b'{"user_id": "' + b"x" * 257 + b'"}',
    b'{"user_id": ["1"]}',
    b'{"user_id": "1", "history": "1,2"}',
    b'{"user_id": "1", "history": [1, null]}',
    b'{"user_id": "1", "history": [{"id": 1}]}',
    b'{"user_id": "1", "history": [' + b",".join([b'"1"'] * 5001) + b"]}",
    b'{"user_id": "1", "exclude_seen": "yes"}',
    b'{"user_id": "1", "filters": []}',
    b'{"user_id": "1", "filters": {"genre": ["A"]}}',
    b'{"user_id": "1", "filters": {"include_categories": "A"}}',
    b'{"user_id": "1", "filters": {"include_categories": [""]}}',
    b'{"user_id": "1", "exclude": [-3]}',
    b'{"similar_to": "1", "candidates": ["2"]}',
    b'{"similar_to": 1.5}',
    b'{"user_id": "1", "candidates": []}',
    b'{"user_id": "1", "diversity": 2}',
    b'{"user_id": "1", "unknown": 1}',
    b'{"user_id": "1", "k": NaN}',
    b'[{"user_id": "1"}]',
    b'"user_id"',
    b"",
    b"   ",
    b"{not json",
    b'{"user_id": "1"',
    b"\xff\xfe{}",
]


def test_the_gateway_refuses_what_the_handler_refuses(down):
    """With TorchServe down, {"user_id": "1", "k": "ten"} was a 200 popularity answer."""
    gw, keys, _ = down
    for body in INVALID:
        with pytest.raises(InvalidRequest) as handler:
            parse_request(body)
        r = _post(gw, keys["client"], body)
        got = r.json()
        assert (r.status_code, got.get("reason")) == (handler.value.status,
                                                      handler.value.reason), (body[:80], got)
    # and what the handler accepts is answered (here by the fallback)
    for body in (b'{"user_id": "1", "k": 3.0}', b'{"user_id": 7, "history": ["007", 42]}',
                 b'{"similar_to": "12", "k": 2}', b'\xef\xbb\xbf{"user_id": "x"}'):
        parse_request(body)
        r = _post(gw, keys["client"], body)
        assert r.status_code == 200 and r.json()["fallback"] is True, r.text


def test_ids_beyond_64_bits_keep_their_digits(down):
    gw, keys, exp = down
    for n in (2**64, 2**64 + 1, 2**70, 2**70 + 1, 10**30 + 7):
        canonical = parse_request(b'{"user_id": %d}' % n).user_id
        assert canonical == str(n)
        as_int = _post(gw, keys["client"], b'{"user_id": %d, "k": 2}' % n).json()
        as_str = _post(gw, keys["client"], b'{"user_id": "%d", "k": 2}' % n).json()
        assert as_int["user_id"] == as_str["user_id"] == canonical
        assert as_int["variant"] == as_str["variant"] == exp.assign(canonical).name, n
        similar = _post(gw, keys["client"], b'{"similar_to": %d, "k": 1}' % n).json()
        assert similar["similar_to"] == canonical


def test_nesting_deeper_than_the_schema_is_refused_before_parsing(down):
    gw, keys, _ = down
    deep = [b'{"user_id": "1", "filters": {"include_categories": [["A"]]}}',
            b'{"user_id": "1", "history": [[["1"]]]}',
            b"[" * 200_000 + b"]" * 200_000,
            b'{"user_id": "1", "history": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"]
    for body in deep:
        with pytest.raises(InvalidRequest):
            parse_request(body)  # the handler refuses them too (400)
        r = _post(gw, keys["client"], body)
        assert (r.status_code, r.json()["reason"]) == (400, "too_deep"), body[:60]
    # brackets inside strings are not nesting
    ok = b'{"user_id": "[[[[{{{{", "history": ["[[[", "{{{{"]}'
    assert _post(gw, keys["client"], ok).status_code == 200


def test_exposure_records_hold_canonical_ids_only(tmp_path):
    out, keys, _ = make_out(tmp_path)
    gw = GatewayProc(out, ["--upstream-url", f"http://127.0.0.1:{_closed_port()}"]).start()
    try:
        r = _post(gw, keys["client"], b'{"user_id": 42, "history": ["007", 12, "caf\\u0065\\u0301", '
                                      b'"9"], "k": 2}')
        assert r.status_code == 200, r.text
        assert _post(gw, keys["client"], b'{"user_id": "1", "history": [{"x": 1}]}'
                     ).status_code == 400
    finally:
        assert gw.stop() == 0
    records = list(read_jsonl([GatewayPaths.under(out).exposures]))
    assert len(records) == 1  # the gateway's own 400 is not an exposure
    rec = records[0]
    assert rec["history_items"] == ["7", "12", "caf\u00e9", "9"] and rec["history_len"] == 4
    secret = GatewayPaths.under(out).pseudonym_secret.read_text().strip().encode()
    assert rec["user"] == Pseudonymizer(secret)("42")


def test_a_suspended_key_gets_403(down):
    gw, keys, _ = down
    for _ in range(3):
        r = _post(gw, keys["suspended"], b'{"user_id": "1"}')
        assert (r.status_code, r.json()["reason"]) == (403, "suspended")
    assert _post(gw, keys["client"], b'{"user_id": "1"}').status_code == 200


def test_rates_are_checked_when_keys_load(tmp_path):
    paths = GatewayPaths.under(tmp_path)
    for bad in (-1.0, float("nan"), float("inf"), "fast"):
        paths.root.mkdir(parents=True, exist_ok=True)
        paths.key_hashes.write_text(json.dumps({"keys": [
            {"id": "k", "sha256": "0" * 64, "rights": ["recommend"], "rate_per_s": bad}]}))
        with pytest.raises(ValueError, match="rate_per_s"):
            auth.KeyStore.load(paths.key_hashes)
    paths.key_hashes.write_text(json.dumps({"keys": [
        {"id": "k", "sha256": "0" * 64, "rights": ["recommend"], "rate_per_s": 0}]}))
    assert auth.KeyStore.load(paths.key_hashes).entries[0].suspended


def _hold(url: str, key: str, nbytes: int) -> socket.socket:
    """A request whose headers and first KiB are sent, the rest of its body held back."""
    host, port = url.split("//")[1].split(":")
    s = socket.create_connection((host, int(port)), timeout=30)
    s.sendall(f"POST /v1/recommendations HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer "
              f"{key}\r\nContent-Type: application/json\r\nContent-Length: {nbytes}\r\n\r\n"
              .encode() + b" " * 1024)
    return s


def _answer(s: socket.socket) -> tuple[int, dict, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    n = int(headers.get("Content-Length", 0))
    while len(body) < n:
        body += s.recv(65536)
    return int(lines[0].split()[1]), headers, body


def test_bodies_beyond_the_budget_are_shed(down):
    """Budget 8 MiB: of 32 concurrent 4 MiB bodies, 2 are admitted (their bytes reserved
    before they are read) and 30 get 503 + Retry-After at once, without being read."""
    gw, keys, _ = down
    before = gw.metrics()
    size = 4 * 2**20
    body = b'{"user_id": "1", "history": [' + b",".join([b'"1"'] * 5000) + b"]}"
    body += b" " * (size - 1024 - len(body))
    socks = [_hold(gw.url, keys["client"], size) for _ in range(32)]
    time.sleep(1.0)
    shed, admitted = [], []
    for s in socks:
        s.setblocking(False)
        try:
            peek = s.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            peek = b""
        s.setblocking(True)
        (shed if peek else admitted).append(s)
    assert len(admitted) == 2 and len(shed) == 30
    for s in shed:
        status, headers, payload = _answer(s)
        assert status == 503 and headers.get("Retry-After") == "1"
        assert json.loads(payload)["reason"] == "shed"
    for s in admitted:
        s.sendall(body)
        status, _, payload = _answer(s)
        assert status == 200 and json.loads(payload)["fallback"] is True
    for s in socks:
        s.close()
    after = gw.metrics()

    def delta(name, **labels):
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)
    assert delta("recsys_gateway_shed_total") == 30
    assert delta("recsys_gateway_request_duration_seconds_count", status_class="shed") == 30
    assert delta("recsys_gateway_request_duration_seconds_count", status_class="5xx") == 0
    assert metric_value(after, "recsys_gateway_inflight_bytes") == 0
    # after the burst the budget is free again
    assert _post(gw, keys["client"], b'{"user_id": "1"}').status_code == 200


def test_a_request_without_a_key_never_holds_the_budget(down):
    """Keyless bodies are refused (401) from their headers, before admission: 32 of them,
    each declaring 4 MiB and sending 1 KiB, hold nothing; a keyed request still goes through
    (before the gate: 2 admitted for the body timeout, 30 shed, the budget spent)."""
    gw, keys, _ = down
    socks = [_hold(gw.url, "not-a-key", 4 * 2**20) for _ in range(32)]
    for s in socks:
        status, headers, payload = _answer(s)
        assert status == 401 and json.loads(payload)["reason"] == "unauthorized"
    assert metric_value(gw.metrics(), "recsys_gateway_inflight_bytes") == 0
    assert _post(gw, keys["client"], b'{"user_id": "1"}').status_code == 200
    for s in socks:
        s.close()


def test_expect_100_continue_is_answered_once_admitted(down):
    """curl sends ``Expect: 100-continue`` above 1 MiB: the gateway says go once the body is
    admitted (a refusal would come instead, before any byte of the body)."""
    gw, keys, _ = down
    body = b'{"user_id": "1", "k": 2}'
    host, port = gw.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"POST /v1/recommendations HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer "
                  f"{keys['client']}\r\nContent-Type: application/json\r\nContent-Length: "
                  f"{len(body)}\r\nExpect: 100-continue\r\n\r\n".encode())
        assert s.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(body)
        status, _, payload = _answer(s)
    assert status == 200 and json.loads(payload)["fallback"] is True
