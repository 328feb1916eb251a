"""common/net.py: the one port parser and the one wait-until-HTTP loop."""
from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time

import pytest

from common.net import (WaitError, free_ports, parse_port, port_in_use, wait_for_http,
                        wait_until)


def test_parse_port_checks_type_and_range():
    assert parse_port("8080", "X_PORT") == 8080 and parse_port(1, "p") == 1
    assert parse_port("0", "GATEWAY_PORT", allow_zero=True) == 0
    with pytest.raises(ValueError, match=r"X_PORT='x' is not a port number"):
        parse_port("x", "X_PORT")
    for bad in ("0", "65536", "-1"):
        with pytest.raises(ValueError, match="X_PORT=.* is out of range"):
            parse_port(bad, "X_PORT")


def test_free_ports_differ_and_are_free():
    ports = free_ports(4)
    assert len(set(ports)) == 4 and not any(port_in_use("127.0.0.1", p) for p in ports)


class _Handler(http.server.BaseHTTPRequestHandler):
    ready_at = 0.0

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200 if time.monotonic() >= self.ready_at else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_wait_for_http_returns_the_first_expected_answer():
    _Handler.ready_at = time.monotonic() + 0.5
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/ready"
        t0 = time.monotonic()
        assert wait_for_http(url, timeout=10, interval=0.05).status_code == 200
        assert time.monotonic() - t0 >= 0.4  # the 503s were not taken for readiness
        # the URL may come later (e.g. from a state file the server writes)
        calls = iter([None, None, url])
        assert wait_for_http(lambda: next(calls), timeout=10, interval=0.01).status_code == 200
    finally:
        server.shutdown()


def test_a_dead_process_fails_fast_with_its_log(tmp_path):
    log = tmp_path / "child.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-c", "print('boom: bad config')"], stdout=f)
    proc.wait()
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"(?s)child exited during start-up \(exit code 0\).*boom"):
        wait_for_http(f"http://127.0.0.1:{free_ports(1)[0]}/", timeout=60, proc=proc, log=log,
                      what="child", error=RuntimeError)
    assert time.monotonic() - t0 < 5


def test_wait_until_times_out_with_its_error_type():
    with pytest.raises(WaitError, match="was not ready within 0 s"):
        wait_until(lambda: None, timeout=0.2, interval=0.05)
    assert wait_until(iter([False, None, "done"]).__next__, timeout=5, interval=0.01) == "done"
