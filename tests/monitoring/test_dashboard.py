"""The dashboard: committed JSON = generator output, the rows and variables the issue asks for,
provisioning files that Grafana can read, and where the Helm chart's copy is compared."""
from __future__ import annotations

import json

import yaml

from monitoring import config
from monitoring.dashboard import UID, build, dashboard_queries, render_dashboard

ROWS = ["Traffic and errors per variant", "Latency", "Handler internals", "Workers and memory",
        "Experiment health", "Drift"]


def test_committed_json_is_the_generators_output():
    assert config.DASHBOARD_FILE.read_text() == render_dashboard()


def test_rows_panels_and_variables():
    d = json.loads(config.DASHBOARD_FILE.read_text())
    assert d["uid"] == UID and d == build()
    assert [p["title"] for p in d["panels"] if p["type"] == "row"] == ROWS
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert set(variables) == {"datasource", "experiment", "model_version"}
    for name in ("experiment", "model_version"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    for p in d["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
            assert all(t["refId"] and t["expr"] for t in p["targets"])
    titles = {t for _, t, _ in dashboard_queries(d)}
    for needed in ("Request latency per variant (gateway)", "Request latency per model version (gateway)",
                   "Handler latency per model version", "Scoring latency per model version", "Batch size",
                   "Strategy mix", "Invalid requests by reason", "Worker resident memory", "Worker starts",
                   "Assignment share vs weight", "Fallback ratio per variant", "Population stability index"):
        assert needed in titles, needed
    # gateway panels follow the experiment variable, version panels the model version variable
    for _, title, expr in dashboard_queries(d):
        if "variant" in title:
            assert '$experiment' in expr, title


def test_provisioning_files():
    ds = yaml.safe_load((config.GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert ds["apiVersion"] == 1 and ds["datasources"][0]["type"] == "prometheus"
    prov = yaml.safe_load((config.GRAFANA_DIR / "provisioning" / "dashboards" / "recsys.yaml").read_text())
    assert prov["providers"][0]["type"] == "file" and prov["providers"][0]["options"]["path"]


def test_scrape_config_names_every_exporter():
    doc = yaml.safe_load(config.SCRAPE_CONFIG.read_text())
    jobs = {j["job_name"]: j["static_configs"][0]["targets"][0] for j in doc["scrape_configs"]}
    assert jobs == {"torchserve": "127.0.0.1:8082", "recsys-gateway": "127.0.0.1:8091",
                    "recsys-drift": "127.0.0.1:8092"}
    assert doc["rule_files"] == ["rules/recsys.rules.yaml"]
    assert (config.SCRAPE_CONFIG.parent / doc["rule_files"][0]).exists()
