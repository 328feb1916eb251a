"""The chart's config.properties and its probes against a real TorchServe on loopback.

TorchServe starts from the rendered config.properties the way the image's entry point starts
it (model store and ports rewritten, no --models: TorchServe restores the config's
model_snapshot), so this checks, before any container exists, that the chart's settings win
over the archives' own model-config.yaml and that `python -m archives.probe` says ready only
when every listed version has its workers."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
import requests
from common.net import free_port
from testkit.archives import running_server
from tests.gateway.conftest import build_versions
from tests.helm.chart import REPO, render


CLOSED_PORT = free_port()  # nothing listens: an allowed URL fails to download, not to match


def probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archives.probe", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if shutil.which("java") is None:
        pytest.fail("Java 17 is required for TorchServe (see README)")
    root = tmp_path_factory.mktemp("ts")
    out = build_versions(root, n_users=20, n_items=100)  # archives say batchSize 8, 1 worker
    values = {"modelStore": {"source": "volume", "volume": {"hostPath": {"path": str(out)}}},
              "models": [{"version": "1"}, {"version": "2"}],
              "experiment": {"variants": [{"name": "control", "model_version": "1", "weight": 1},
                                          {"name": "b", "model_version": "2", "weight": 1}]},
              "torchserve": {"workersPerVersion": 1, "batchSize": 3, "maxBatchDelayMs": 9,
                             "responseTimeoutSeconds": 33,
                             # the model API on, fetching only from the model volume and this
                             # (closed) loopback port; the regex's escapes must survive the
                             # properties format (`\d` read as `d` would match nothing)
                             "enableModelApi": True,
                             "allowedUrls": [rf"http://127\.0\.0\.1:{CLOSED_PORT}/allowed/recsys-v\d+\.mar"]}}
    text = render(values).get("ConfigMap", "recsys-torchserve")["data"]["config.properties"]
    config = root / "config.properties"
    config.write_text(text)
    with running_server(out, config=str(config), models={}) as state:
        yield state


def _ready_args(state, *versions):
    return ("torchserve-ready", "--inference-url", state.inference_url, "--management-url",
            state.management_url, "--model", "recsys", "--versions", *versions)


def _wait_ready(state, timeout=240.0):
    deadline = time.monotonic() + timeout
    while True:
        r = probe(*_ready_args(state, "1", "2"))
        if r.returncode == 0 or time.monotonic() > deadline:
            return r
        time.sleep(1)


def test_every_listed_version_is_served_with_the_charts_settings(served):
    r = _wait_ready(served)
    assert r.returncode == 0, r.stderr
    assert "v1 1/1" in r.stdout and "v2 1/1" in r.stdout
    for version in ("1", "2"):
        d = requests.get(f"{served.management_url}/models/recsys/{version}", timeout=10).json()[0]
        assert (d["batchSize"], d["maxBatchDelay"], d["minWorkers"]) == (3, 9, 1), d
        a = requests.post(f"{served.inference_url}/predictions/recsys/{version}",
                          json={"user_id": "1", "k": 3}, timeout=30)
        assert a.status_code == 200 and a.json()["model_version"] == version
    # the control's version is the default; no token is needed (auth off behind NetworkPolicy)
    assert requests.get(f"{served.management_url}/models/recsys", timeout=10).json()[0]["modelVersion"] == "1"
    assert not served.token_auth


def test_readiness_says_no_for_a_missing_version_or_missing_workers(served):
    assert _wait_ready(served).returncode == 0
    r = probe(*_ready_args(served, "1", "2", "3"))
    assert r.returncode == 1 and "recsys v3 is not registered" in r.stderr
    # a version whose workers are gone (scaled to 0 here; a crash loop looks the same)
    s = requests.put(f"{served.management_url}/models/recsys/2?min_worker=0&max_worker=0&synchronous=true",
                     timeout=60)
    assert s.status_code == 200, s.text
    try:
        r = probe(*_ready_args(served, "1", "2"))
        assert r.returncode == 1 and "recsys v2: 0/1 workers READY" in r.stderr
        # ...while liveness still says alive: the frontend answers (no restart for busy workers)
        alive = probe("alive", "--url", served.inference_url + "/ping")
        assert alive.returncode == 0, alive.stderr
    finally:
        requests.put(f"{served.management_url}/models/recsys/2?min_worker=1&max_worker=1&synchronous=true",
                     timeout=120)
    assert _wait_ready(served).returncode == 0


def test_alive_and_http_probes(served):
    assert probe("http", "--url", served.management_url + "/models").returncode == 0
    r = probe("http", "--url", served.management_url + "/models/nothing")
    assert r.returncode == 1 and "404" in r.stderr
    port = free_port()
    r = probe("alive", "--url", f"http://127.0.0.1:{port}/ping", "--timeout", "2")
    assert r.returncode == 1 and "no answer" in r.stderr


def _register(state, url: str) -> requests.Response:
    return requests.post(f"{state.management_url}/models", params={"url": url, "model_name": "x"},
                         timeout=60)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:{port}/elsewhere/recsys-v9.mar",   # a host:port allowed, another path
    "https://evil.example.com/recsys-v9.mar",
    "file:///etc/passwd",
    "file:///models/sub%2Frecsys-v9.mar",                 # no %-escapes
    "file:///models/sub/recsys-v9.mar",                   # no folders below the volume
])
def test_model_api_refuses_urls_outside_allowed_urls(served, url):
    """Issue 18, defect 10: with the model API on, TorchServe's default allowed_urls would fetch
    any file or http(s) URL; the chart's fetches only from the model volume and the values."""
    r = _register(served, url.format(port=CLOSED_PORT))
    assert r.status_code >= 400 and "does not match any allowed URL" in r.text, (r.status_code, r.text)


def test_model_api_follows_an_allowed_url(served):
    """The values' pattern (its `\\d` and `\\.` escapes included) reached TorchServe intact: the
    URL passes the check and fails only at the download (nothing listens there)."""
    r = _register(served, f"http://127.0.0.1:{CLOSED_PORT}/allowed/recsys-v9.mar")
    assert r.status_code >= 400 and "does not match" not in r.text, (r.status_code, r.text)
    assert "recsys" in requests.get(f"{served.management_url}/models", timeout=10).text
