"""Every panel is queried: a real Prometheus (Debian package) with the committed scrape config
and the generated rules (1 s scrape and evaluation, 10 s windows) scrapes a real TorchServe
(two model versions of our handler) and the drift exporter (a real process) while the load
generator runs; then every query of the committed dashboard JSON goes to Prometheus's HTTP API
and must return at least one series with a finite value. The fault a panel needs is injected
first: invalid requests and unknown history ids in the load, a worker killed (worker starts).

The gateway's panels are queried by test_panels_gateway.py (a real gateway in front of the same
kind of TorchServe); here, without a gateway, they are left out by name.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from archives import server as S
from archives.client import TorchServeClient
from common.net import free_ports
from monitoring.dashboard import panels
from monitoring.monitor import known_ids, torchserve_load
from monitoring.promql import contract_exports, handler_exports, raw_metrics, recordings_of
from monitoring.promserver import PrometheusServer, render_config
from monitoring.render import expand, render_panels
from monitoring.rules import rule_groups
from testkit.archives import build_random_versions, running_server
from tests.monitoring.conftest import (LIVE_PROM as PROM, PANEL_VARIABLES as VARIABLES,
                                       committed_queries, exposure, needs_gateway,
                                       panels_without_data, write_jsonl)

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parents[2]

@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """TorchServe (v1 + v2), the drift daemon and Prometheus, all on free loopback ports."""
    if shutil.which("java") is None:
        pytest.fail("Java 17 is required for TorchServe (see README)")
    root = tmp_path_factory.mktemp("panels")
    out = build_random_versions(root, model_name="recsys", delay_ms=10)
    shutil.copytree(root / "artifact-v1", out / "model" / "serving_artifact")
    # exposures as the gateway writes them (docs/contracts.md), for the drift exporter
    users, items = known_ids(out / "model" / "serving_artifact")
    now = time.time()
    write_jsonl(out / "gateway" / "exposures",
                [exposure(k, user=f"p{k}", history=items[k % 40: k % 40 + 5], ts=now - 30, strategy="history",
                          unknown_history=k % 2) for k in range(300)])
    with running_server(out, config="prod", models={"recsys": "recsys-v1.mar"}) as state:
        client = TorchServeClient(state)
        assert client.register("recsys-v2.mar", "recsys", initial_workers=1).status_code == 200
        drift_port, prom_port = free_ports(2)
        drift = subprocess.Popen([sys.executable, "-m", "monitoring", "drift", "--out", str(out), "--daemon",
                                  "--port", str(drift_port), "--interval-s", "2", "--window", "1h",
                                  "--min-samples", "50"], cwd=REPO, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            config = render_config(root / "prometheus", {"torchserve": f"127.0.0.1:{state.ports['metrics']}",
                                                         "recsys-drift": f"127.0.0.1:{drift_port}"}, PROM)
            with PrometheusServer(config, root / "prometheus" / "data", prom_port, PROM) as prom:
                yield {"out": out, "state": state, "client": client, "prom": prom, "users": users,
                       "items": items, "root": root}
        finally:
            drift.terminate()
            drift.wait(timeout=30)


@pytest.fixture(scope="module")
def loaded(stack):
    """Load for ~40 s over both versions (1 request in 10 invalid or with unknown history ids:
    monitor.SPECIAL_BODIES); the v1 worker is killed
    5 s in. Yields once Prometheus shows the restart, while the load still runs."""
    state, prom = stack["state"], stack["prom"]
    prom.wait_for('up{job="torchserve"} == 1 and on() up{job="recsys-drift"} == 1', timeout=60)
    results: dict = {}

    def load():
        results["load"] = torchserve_load(state, "recsys", ["1", "2"], stack["users"], stack["items"],
                                          duration_s=40, rate=20, special_every=10)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    time.sleep(5)
    pids_before = sorted(p.pid for p in S.worker_processes(state))
    victim = _worker_of_version(state, "1")
    victim.kill()
    prom.wait_for('model_version:RecWorkerStarts:increase{model_version="1"} > 0', timeout=60)
    time.sleep(3)  # a few evaluations with the restarted worker serving again
    yield {"victim": victim.pid, "pids_before": pids_before, "results": results, "thread": t}
    t.join(timeout=120)


def _worker_of_version(state, version: str) -> psutil.Process:
    """The worker process serving ``version`` (TorchServe names its socket after the model)."""
    c = TorchServeClient(state)
    pid = c.versions("recsys")[version]["workers"][0]["pid"]
    return psutil.Process(int(pid))


def test_every_handler_panel_query_returns_data(stack, loaded):
    queries = [q for q in committed_queries() if not needs_gateway(q[2])]
    assert len(queries) >= 14
    empty = panels_without_data(stack["prom"], queries)
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_panels_show_the_injected_faults_and_both_versions(stack, loaded):
    prom = stack["prom"]

    def labels(expr, key):
        return {r["metric"].get(key) for r in prom.query(expr)}

    q = "model_version:RecHandlerLatencySeconds:histogram_quantile"
    assert labels(q, "model_version") == {"1", "2"} and labels(q, "quantile") == {"0.5", "0.95", "0.99"}
    assert {"personalized", "history", "popular"} <= labels("model_version_strategy:RecRequests:share", "strategy")
    assert {"bad_k", "missing_user_id", "bad_history"} <= labels("model_version_reason:RecInvalidRequests:rate",
                                                                  "reason")
    starts = {r["metric"]["model_version"]: float(r["value"][1])
              for r in prom.query("model_version:RecWorkerStarts:increase")}
    assert starts["1"] > 0 and starts["2"] == 0, starts
    # the restarted worker reports its own RSS under its new pid
    pids = labels("RecWorkerRssBytes", "Worker")
    new = {str(p.pid) for p in S.worker_processes(stack["state"])}
    assert new <= pids, (new, pids)
    assert labels("recsys_drift_psi", "feature") == {"item_popularity"}
    assert labels("recsys_drift_unknown_share", "kind") >= {"user", "history_item"}


def test_dead_workers_rss_is_kept_by_torchserve_and_left_out_of_the_alert(stack, loaded):
    """TorchServe keeps exporting the killed worker's last RSS; the recording rule the memory
    alert reads drops it once it stops moving (3 x the 10 s window here)."""
    prom, victim = stack["prom"], str(loaded["victim"])
    assert victim in {r["metric"]["Worker"] for r in prom.query("RecWorkerRssBytes")}
    prom.wait_for(f'absent(model_version_worker:RecWorkerRssBytes:live{{worker="{victim}"}})', timeout=60)
    live = {r["metric"]["worker"] for r in prom.query("model_version_worker:RecWorkerRssBytes:live")}
    assert victim not in live


def test_no_panel_reads_a_metric_nobody_exports(stack, loaded):
    """Statically: every raw metric behind a panel is declared by our TorchServe metrics yaml or
    listed in docs/contracts.md (gateway, drift exporter); live: the TorchServe and drift ones
    are in Prometheus (test_panels_gateway.py checks the gateway's live)."""
    rec = recordings_of(rule_groups())
    handler = handler_exports(REPO / "archives" / "metrics.yaml")
    contract = contract_exports(REPO / "docs" / "contracts.md")
    assert {"recsys_drift_psi", "recsys_gateway_variant_weight",
            "recsys_gateway_request_duration_seconds_bucket"} <= contract
    seen = stack["prom"].metric_names()
    for _, title, expr in committed_queries():
        stack["prom"].query(expand(expr, VARIABLES))  # valid PromQL (gateway ones too), or raises
        for m in raw_metrics(expand(expr, VARIABLES), rec):
            assert m in handler | contract, f"{title}: {m} is exported by nobody"
            if not m.startswith("recsys_gateway_") and m != "Requests5XX":  # no 5xx: never created
                assert m in seen, f"{title}: {m} not scraped"


def test_latency_panels_render_to_png(stack, loaded, tmp_path):
    latency = [p for p in panels() if "latency" in p.title.lower() and not any(
        needs_gateway(q.expr) for q in p.queries)]
    now = time.time()
    drawn = render_panels(stack["prom"], latency, now - 60, now, tmp_path, VARIABLES, step=1)
    assert drawn and all(n >= 6 for n in drawn.values()), drawn  # 2 versions x 3 quantiles
    for name in drawn:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_was_served(loaded):
    loaded["thread"].join(timeout=120)
    for r in loaded["results"]["load"]:
        # 3 in 40 are invalid on purpose (4xx), and v1 loses the requests in flight at the kill
        assert r.ok >= 0.7 * r.sent and r.error_kinds.get("http_400", 0) >= 3 * (r.sent // 40), r
