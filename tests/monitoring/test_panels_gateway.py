"""Every panel is queried, gateway included: a real gateway (``python -m gateway serve``) in front
of a real TorchServe holding v1 (control) and v2 (treatment) of our handler, a 50/50 experiment,
the drift daemon reading the exposure logs the gateway writes, and a real Prometheus scraping all
three with the committed scrape config and rules (1 s scrape, 10 s windows). The load generator
sends user requests through the gateway; 5 s in, the treatment version loses its worker
(TorchServe answers 503, the gateway falls back to control: fallbacks by cause, upstream errors),
and gets it back 10 s later. Then every query of the committed dashboard must return a finite
value, and each metric a panel reads must be one Prometheus scraped.
"""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from archives.client import TorchServeClient
from common import loadgen
from common.net import free_ports
from monitoring.monitor import SPECIAL_BODIES, known_ids
from monitoring.promql import raw_metrics, recordings_of
from monitoring.promserver import PrometheusServer, render_config
from monitoring.render import expand
from monitoring.rules import rule_groups
from testkit.archives import running_server
from tests.gateway.conftest import (MODEL, GatewayProc, build_versions, need_java,
                                    register, setup_keys, write_experiment)
from tests.monitoring.conftest import (LIVE_PROM, PANEL_VARIABLES, committed_queries,
                                       needs_gateway, panels_without_data)

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    need_java()
    root = tmp_path_factory.mktemp("gw-panels")
    out = build_versions(root)  # v1 (seed 0), v2 (seed 1): random artifacts, batch 8
    shutil.copytree(root / "artifact-v1", out / "model" / "serving_artifact")  # drift's reference
    keys = setup_keys(out)
    write_experiment(out, versions=("1", "2"), weights=(5000, 5000), name="homepage")
    with running_server(out, config="dev", models={MODEL: f"{MODEL}-v1.mar"}) as ts:
        register(ts, "2")
        drift_port, prom_port = free_ports(2)
        drift = subprocess.Popen([sys.executable, "-m", "monitoring", "drift", "--out", str(out), "--daemon",
                                  "--port", str(drift_port), "--interval-s", "2", "--window", "1h",
                                  "--min-samples", "50"], cwd=REPO, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        gw = GatewayProc(out).start()
        try:
            targets = {"torchserve": f"127.0.0.1:{ts.ports['metrics']}",
                       "recsys-gateway": urlparse(gw.metrics_url).netloc,
                       "recsys-drift": f"127.0.0.1:{drift_port}"}
            config = render_config(root / "prometheus", targets, LIVE_PROM)
            with PrometheusServer(config, root / "prometheus" / "data", prom_port, LIVE_PROM) as prom:
                yield {"out": out, "ts": ts, "gw": gw, "keys": keys, "prom": prom}
        finally:
            gw.stop()
            drift.terminate()
            drift.wait(timeout=30)


@pytest.fixture(scope="module")
def loaded(stack):
    """40 s of load through the gateway; the treatment's version is down from 5 s to 15 s."""
    prom, ts = stack["prom"], stack["ts"]
    prom.wait_for('count(up == 1) == 3', timeout=60)
    users, items = known_ids(stack["out"] / "model" / "serving_artifact")
    specs = loadgen.request_mix(users, items, 800, seed=3)
    for j in range(0, len(specs), 20):
        specs[j] = loadgen.RequestSpec("", SPECIAL_BODIES[(j // 20) % len(SPECIAL_BODIES)], "special")
    result = {}

    def load():
        result["run"] = asyncio.run(loadgen.run_open_loop(
            stack["gw"].url, specs, 20.0, warmup=0, path="/v1/recommendations",
            headers={"Authorization": f"Bearer {stack['keys']['client']}"}))

    t = threading.Thread(target=load, daemon=True)
    t.start()
    client = TorchServeClient(ts)
    time.sleep(5)
    assert client.scale(MODEL, "2", 0).status_code == 200  # v2 has no worker: TorchServe says 503
    prom.wait_for('experiment_variant_cause:recsys_gateway_fallbacks:rate{variant="treatment"} > 0', timeout=30)
    time.sleep(5)
    assert client.scale(MODEL, "2", 1).status_code == 200
    # the gateway refuses invalid requests itself (the handler's own validation, issue 18):
    # the handler's invalid-request metric counts clients that reach TorchServe directly
    for body in SPECIAL_BODIES:
        client.predict(MODEL, body, "1")
    prom.wait_for('model_version:RecHandlerLatencySeconds:histogram_quantile{model_version="2"} > 0', timeout=60)
    time.sleep(3)
    yield result
    t.join(timeout=120)


def test_every_panel_query_returns_data_gateway_included(stack, loaded):
    queries = committed_queries()
    assert sum(needs_gateway(e) for _, _, e in queries) >= 10
    empty = panels_without_data(stack["prom"], queries)
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_gateway_panels_show_the_experiment_and_the_fault(stack, loaded):
    prom = stack["prom"]

    def by(expr, *keys):
        return {tuple(r["metric"].get(k) for k in keys): float(r["value"][1]) for r in prom.query(expr)}

    lat = by("experiment_variant:recsys_gateway_request_duration_seconds:histogram_quantile", "variant", "quantile")
    assert {v for v, _ in lat} == {"control", "treatment"} and {q for _, q in lat} == {"0.5", "0.95", "0.99"}
    assert {v for (v,) in by("model_version:recsys_gateway_request_duration_seconds:histogram_quantile",
                             "model_version")} >= {"1", "2"}
    weights = by("experiment_variant:recsys_gateway_variant_weight:share", "experiment", "variant")
    assert weights == {("homepage", "control"): 0.5, ("homepage", "treatment"): 0.5}
    shares = by("experiment_variant:recsys_gateway_assignments:share", "variant")
    assert set(shares) == {("control",), ("treatment",)} and abs(sum(shares.values()) - 1) < 1e-9
    causes = by("sum by (variant, cause) (increase(recsys_gateway_fallbacks_total[5m]))", "variant", "cause")
    assert any(v == "treatment" and n > 0 for (v, _), n in causes.items()), causes
    assert by('experiment:recsys_gateway_assignments:srm_critical', "experiment")[("homepage",)] == \
        pytest.approx(11.1556, abs=1e-3)
    # the drift daemon read the exposures the gateway wrote
    assert {f for (f,) in by("recsys_drift_psi", "feature")} == {"item_popularity", "score_personalized"}


def test_every_metric_a_panel_reads_is_scraped(stack, loaded):
    rec = recordings_of(rule_groups())
    seen = stack["prom"].metric_names()
    for _, title, expr in committed_queries():
        for m in raw_metrics(expand(expr, PANEL_VARIABLES), rec):
            assert m in seen or m == "Requests5XX", f"{title}: {m} is not exported"
