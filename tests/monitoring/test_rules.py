"""The rules: committed files equal the generator's output, promtool accepts them, and promtool's
unit tests (tests/monitoring/promtool/*.yaml) fire and do not fire every alert."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

from monitoring import config
from monitoring.__main__ import main as cli
from monitoring.rules import alert_names, prometheus_rule, render_rules, rule_groups

REPO = Path(__file__).resolve().parents[2]
PROMTOOL_TESTS = sorted((Path(__file__).parent / "promtool").glob("*.test.yaml"))


def test_committed_files_are_the_generators_output():
    assert config.RULES_FILE.read_text() == render_rules(config.RuleConfig())
    assert cli(["generate", "--check"]) == 0


def test_promtool_check_rules_committed_and_short_windows(promtool, tmp_path):
    r = promtool("check", "rules", str(config.RULES_FILE))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in rule_groups())} rules found" in r.stdout
    short = tmp_path / "short.rules.yaml"
    short.write_text(render_rules(dataclasses.replace(config.RuleConfig(), rate_window="10s", srm_window="1m")))
    r = promtool("check", "rules", str(short))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[10s]" in short.read_text() and "[5m]" not in short.read_text()


def test_promtool_unit_tests_fire_and_do_not_fire_every_alert(promtool):
    r = promtool("test", "rules", *map(str, PROMTOOL_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr
    text = "".join(p.read_text() for p in PROMTOOL_TESTS)
    for alert in alert_names():
        cases = re.findall(rf"alertname: {alert}\n\s+exp_alerts:(.*?)(?=\n\s+- eval_time|\n\n|\Z)", text, re.S)
        # promtool fails on any alert not listed, so series left out of exp_alerts (the healthy
        # variant, the dead worker, ...) are checked not to fire as well
        assert any(c.strip() == "[]" for c in cases), f"{alert}: no case where it does not fire"
        assert any("exp_labels" in c for c in cases), f"{alert}: no case where it fires"


def test_alerts_follow_the_mixin_conventions():
    doc = (REPO / "docs" / "monitoring.md").read_text()
    headings = {h.strip().lower() for h in re.findall(r"^### (.+)$", doc, re.M)}
    alerts = [r for g in rule_groups() for r in g["rules"] if "alert" in r]
    assert len(alerts) == len(set(a["alert"] for a in alerts)) == 14
    for a in alerts:
        assert re.fullmatch(r"Recsys[A-Z][A-Za-z0-9]+", a["alert"])
        assert a["labels"]["severity"] in ("warning", "critical")
        ann = a["annotations"]
        assert ann["summary"].endswith(".") and ann["description"]
        anchor = ann["runbook_url"].split("#", 1)[1]
        assert ann["runbook_url"].startswith("docs/monitoring.md#") and anchor in headings, anchor


def test_prometheusrule_wraps_the_same_groups():
    doc = yaml.safe_load(prometheus_rule(labels={"release": "kps"}))
    assert doc["kind"] == "PrometheusRule" and doc["metadata"]["labels"] == {"release": "kps"}
    assert doc["spec"]["groups"] == yaml.safe_load(config.RULES_FILE.read_text())["groups"]


def test_rules_cli_renders_a_window(capsys):
    assert cli(["rules", "--rate-window", "30s"]) == 0
    out = capsys.readouterr().out
    assert "[30s]" in out and yaml.safe_load(out)["groups"]


def test_promtool_check_config_of_committed_scrape_config(promtool):
    r = promtool("check", "config", str(config.SCRAPE_CONFIG))
    assert r.returncode == 0 and "SUCCESS: 1 rule files found" in r.stdout, r.stdout + r.stderr
