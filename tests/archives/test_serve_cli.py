"""`python -m archives serve / stop`, the TorchServe-only commands (dev config, ports from env).

`make serve` runs `archives serve` first and then the gateway; its output (both services' URLs,
the key files) and `make stop` are pinned in tests/gateway/test_make_serve.py.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import psutil
import pytest

from archives import build as B
from archives import server as S
from common.net import free_ports, port_in_use
from testkit.archives import make_random_artifact

pytestmark = pytest.mark.timeout(300)


def run(args, env, timeout=300):
    return subprocess.run([sys.executable, "-m", "archives", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=B.REPO)


def test_serve_prints_working_curl_lines_and_stop_cleans_up(tmp_path):
    art = make_random_artifact(tmp_path / "artifact", n_users=10, n_items=50)
    out = tmp_path / "out"
    B.build_from_folder(art, out, version="3", archive_format="zip-store",
                        config=B.ArchiveConfig(min_workers=1, max_workers=1))
    inf, mgt, met = free_ports(3)
    env = {**os.environ, "TS_INFERENCE_PORT": str(inf), "TS_MANAGEMENT_PORT": str(mgt),
           "TS_METRICS_PORT": str(met)}
    r = run(["serve", "--out", str(out)], env)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"http://127.0.0.1:{inf}" in r.stdout and "token auth off" in r.stdout
        state = S.ServerState.load(out)
        assert state.ports == {"inference": inf, "management": mgt, "metrics": met}
        assert (out / "torchserve" / "config.properties").read_text().count(f":{met}") == 1
        curls = [ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith("curl ")]
        assert len(curls) == 5
        for line in curls:
            res = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=30)
            assert res.returncode == 0 and res.stdout.strip(), line
        predict = next(ln for ln in curls if "/predictions/recsys" in ln)
        body = subprocess.run(predict, shell=True, capture_output=True, text=True).stdout
        assert '"strategy": "personalized"' in body and '"model_version": "3"' in body
        # a second serve on the same OUT refuses
        again = run(["serve", "--out", str(out)], env)
        assert again.returncode == 1 and "already running" in again.stderr
        status = run(["status", "--out", str(out)], env)
        assert status.returncode == 0 and '"Healthy"' in status.stdout
        pids = [state.pid] + [p.pid for p in S.worker_processes(state)]
        assert len(pids) == 2
    finally:
        stopped = run(["stop", "--out", str(out)], env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not port_in_use("127.0.0.1", inf)
    assert not (out / "torchserve" / "server.json").exists()
    assert re.search("no TorchServe running", run(["stop", "--out", str(out)], env).stdout)


def test_serve_without_archives_fails_cleanly(tmp_path):
    r = run(["serve", "--out", str(tmp_path)], dict(os.environ))
    assert r.returncode == 1 and "no archives" in r.stderr
