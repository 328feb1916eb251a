"""`make serve` / `make stop` / `make ab-demo` as a user runs them (dev config, ports from env).

The ETL output the replay reads is written here in the ETL's layout (the columns
``common.splits.load_split`` reads) for the random test artifacts' users and items, so the
whole flow runs in seconds without Spark.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import requests

from archives import server as S
from common.net import free_ports, port_in_use
from common.schema import EtlLayout
from gateway.config import GatewayPaths
from tests.gateway.conftest import REPO, build_versions, write_experiment

pytestmark = pytest.mark.timeout(600)


def write_etl(out: Path, n_users: int = 60, n_items: int = 500, seed: int = 0) -> dict:
    """A temporal split for users "1".."n" and items "10", "20", ...: 8 train + 3 test each."""
    lay = EtlLayout.under(out)
    rng = np.random.default_rng(seed)
    users = pd.DataFrame({"user_id": [str(u + 1) for u in range(n_users)],
                          "user_idx": np.arange(n_users)})
    items = pd.DataFrame({"item_id": [str(10 * (i + 1)) for i in range(n_items)],
                          "item_idx": np.arange(n_items)})
    rows, test = [], {}
    for u in range(n_users):
        picks = rng.choice(n_items, 11, replace=False)
        for j, i in enumerate(picks):
            rows.append((u, int(i), 1.0, 1_700_000_000 + j, "train" if j < 8 else "test"))
        test[str(u + 1)] = {str(10 * (int(i) + 1)) for i in picks[8:]}
    split = pd.DataFrame(rows, columns=["user_idx", "item_idx", "weight", "timestamp", "split"])
    for path, df in ((lay.user_map, users), (lay.item_map, items), (lay.split("temporal"), split)):
        Path(path).mkdir(parents=True, exist_ok=True)
        df.to_parquet(Path(path) / "part-0.parquet", index=False)
    Path(lay.vectorizer).parent.mkdir(parents=True, exist_ok=True)
    Path(lay.vectorizer).write_text(json.dumps({"vocabulary": [], "categories": ["Comedy"]}))
    feats = pd.DataFrame({"item_idx": np.arange(n_items),
                          "text_indices": [[] for _ in range(n_items)],
                          "text_values": [[] for _ in range(n_items)],
                          "category_indices": [[0] for _ in range(n_items)]})
    catalog = pd.DataFrame({"item_idx": np.arange(n_items),
                            "title": [f"Item {i}" for i in items["item_id"]],
                            "categories": [["Comedy"] for _ in range(n_items)]})
    for path, df in ((lay.item_features, feats), (lay.items, catalog)):
        Path(path).mkdir(parents=True, exist_ok=True)
        df.to_parquet(Path(path) / "part-0.parquet", index=False)
    return test


def make(target: str, out: Path, env: dict, timeout: float = 500) -> subprocess.CompletedProcess:
    # -o: never reinstall the virtualenv from inside a test (make test already did)
    return subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed", target,
                           f"OUT={out}"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _ports_env() -> dict:
    inf, mgt, met, gw, gwm = free_ports(5)
    return {**os.environ, "TS_INFERENCE_PORT": str(inf), "TS_MANAGEMENT_PORT": str(mgt),
            "TS_METRICS_PORT": str(met), "GATEWAY_PORT": str(gw), "GATEWAY_METRICS_PORT": str(gwm)}


def test_ab_demo_serves_both_versions_replays_and_reports(java, tmp_path):
    out = build_versions(tmp_path)
    test_items = write_etl(out)
    env = _ports_env()
    r = make("ab-demo", out, env)
    text = r.stdout + r.stderr
    try:
        assert r.returncode == 0, text[-5000:]
        # make serve printed both services' URLs and the key files, never a key
        assert f"http://127.0.0.1:{env['TS_INFERENCE_PORT']}" in text
        assert f"api      http://127.0.0.1:{env['GATEWAY_PORT']}" in text
        assert f"metrics  http://127.0.0.1:{env['GATEWAY_METRICS_PORT']}/metrics" in text
        paths = GatewayPaths.under(out)
        assert str(paths.client_key) in text and str(paths.admin_key) in text
        for key_file in (paths.client_key, paths.admin_key):
            assert key_file.read_text().strip() not in text
        assert "registered recsys-v1.mar" in text or "registered recsys-v2.mar" in text
        assert "real-time off" in text  # ab-demo keeps its figures comparable
        # replay: every held-out user answered, both variants used
        replay = json.loads((out / "experiment" / "replay.json").read_text())
        assert replay["requests"] == len(test_items) == replay["ok"]
        assert set(replay["variants"]) == {"control", "treatment"}
        # versions are warmed before traffic and ab-demo's deadline is 2 s
        assert all(v["fallbacks"] == 0 for v in replay["variants"].values()), replay
        # the report
        rep = json.loads((out / "experiment" / "report.json").read_text())
        assert rep["experiment"] == "ab-demo" and rep["control"] == "control"
        assert sum(v["users"] for v in rep["variants"].values()) == len(test_items)
        clicks = sum(v.get("clicks", 0) for v in replay["variants"].values())
        assert sum(v["outcomes"] for v in rep["variants"].values()) == clicks
        assert (out / "experiment" / "report.md").stat().st_size > 500
        assert (out / "experiment" / "report.png").stat().st_size > 10_000
        assert "gateway stopped" in text and "TorchServe stopped" in text
    finally:
        make("stop", out, env)
    for port in ("TS_INFERENCE_PORT", "GATEWAY_PORT", "GATEWAY_METRICS_PORT"):
        assert not port_in_use("127.0.0.1", int(env[port])), port


def test_make_stop_cleans_up_after_a_partial_start(java, tmp_path):
    out = build_versions(tmp_path, versions=(("1", 0),))
    env = _ports_env()
    # TorchServe came up, the gateway never did (e.g. its port was taken)
    r = subprocess.run([sys.executable, "-m", "archives", "serve", "--out", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    pid = S.ServerState.load(out).pid
    r = make("stop", out, env)
    assert r.returncode == 0, r.stderr
    assert "no gateway running" in r.stdout and "TorchServe stopped" in r.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not port_in_use("127.0.0.1", int(env["TS_INFERENCE_PORT"]))


def test_make_serve_uses_a_local_redis_when_one_is_installed(java, redis_bin, tmp_path):
    out = build_versions(tmp_path, versions=(("1", 0),))
    write_experiment(out, versions=("1",), weights=(10000,))
    env = _ports_env()
    env.pop("REDIS_URL", None)
    redis_port = free_ports(1)[0]
    env["REDIS_PORT"] = str(redis_port)
    r = make("serve", out, env)
    text = r.stdout + r.stderr
    try:
        assert r.returncode == 0, text[-5000:]
        assert "real-time on (redis store)" in text
        assert port_in_use("127.0.0.1", redis_port)
        key = GatewayPaths.under(out).client_key.read_text().strip()
        url = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
        auth = {"Authorization": f"Bearer {key}"}
        e = requests.post(f"{url}/v1/events", headers=auth, timeout=10,
                          json={"type": "click", "item_id": "10", "user_id": "new-1"})
        assert e.status_code == 202 and e.json()["results"] == [{"status": "stored"}], e.text
        a = requests.post(f"{url}/v1/recommendations", headers=auth, timeout=10,
                          json={"user_id": "new-1", "k": 5}).json()
        assert "10" not in {i["item_id"] for i in a["items"]}
    finally:
        make("stop", out, env)
    assert not port_in_use("127.0.0.1", redis_port)
