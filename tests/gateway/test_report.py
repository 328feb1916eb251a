"""The experiment report on synthetic logs with a known answer."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from gateway import report
from gateway.__main__ import main as cli


def _logs(n_c=1000, n_t=1000, conv_c=100, conv_t=150, t0=1000.0):
    """Exposures and click events: users c0.. in control, t0.. in treatment; the first
    ``conv_*`` users of each arm click once (half by request id, half by user)."""
    exposures, events = [], []
    for arm, n, conv in (("control", n_c, conv_c), ("treatment", n_t, conv_t)):
        for i in range(n):
            user = f"{arm[0]}{i:05d}"
            for rep in range(2 if i % 3 == 0 else 1):   # some users come back
                rid = f"{user}-{rep}"
                exposures.append({"ts": t0 + i + rep, "request_id": rid, "experiment": "exp1",
                                  "variant": arm, "model_version": "1" if arm == "control" else "2",
                                  "user": user, "mode": "user", "strategy": "personalized",
                                  "items": ["a"], "scores": [1.0], "fallback": i % 10 == 0,
                                  "fallback_cause": None, "status": 200})
            if i < conv:
                ev = {"ts": t0 + i + 0.5, "item_id": "a", "type": "click"}
                ev.update({"request_id": f"{user}-0", "user": None} if i % 2 else
                          {"request_id": None, "user": user})
                events.append(ev)
    # noise the report must leave out
    exposures.append({**exposures[0], "user": None, "request_id": "anon"})      # no user
    exposures.append({**exposures[0], "variant": "treatment", "override": True,
                      "request_id": "qa"})                                        # QA override
    exposures.append({**exposures[0], "status": 400, "request_id": "bad"})        # client error
    exposures.append({**exposures[0], "experiment": "older", "request_id": "old"})
    events.append({"ts": t0 - 10, "user": "c00999", "item_id": "a", "type": "click"})  # too early
    events.append({"ts": t0, "user": "stranger", "item_id": "a", "type": "click"})     # unmatched
    events.append({"ts": t0 + 5000, "user": "c00999", "item_id": "a", "type": "view"})  # other type
    return exposures, events


def test_known_answer():
    exposures, events = _logs()
    rep = report.analyze(exposures, events, name="exp1", weights={"control": 0.5, "treatment": 0.5},
                    control="control")
    c, t = rep["variants"]["control"], rep["variants"]["treatment"]
    assert (c["users"], t["users"]) == (1000, 1000)
    assert c["exposures"] == 1000 + 334 and t["exposures"] == 1334
    assert c["rate"] == pytest.approx(0.10) and t["rate"] == pytest.approx(0.15)
    assert c["fallback_rate"] == pytest.approx(134 / 1334)
    # 95% CI of a proportion from per-user 0/1 values (sample variance, n - 1)
    half = 1.959964 * math.sqrt(0.1 * 0.9 / 999)
    assert c["ci95"] == pytest.approx([0.1 - half, 0.1 + half], abs=1e-6)
    lift = rep["lift"]["treatment"]
    assert lift["relative"] == pytest.approx(0.5)
    vt, vc = 0.15 * 0.85 / 999, 0.1 * 0.9 / 999
    h = 1.959964 * math.sqrt(vt / 0.01 + 0.0225 * vc / 0.0001)
    assert lift["ci95"] == pytest.approx([0.5 - h, 0.5 + h], abs=1e-5)
    assert lift["significant"] and lift["ci95"][0] > 0 and lift["p_value"] < 0.01
    assert rep["winners"] == ["treatment"] and "beats control" in rep["verdict"]
    assert rep["srm"]["flagged"] is False and rep["srm"]["p_value"] == pytest.approx(1.0)
    ex = rep["excluded"]
    assert ex == {"requests_without_user": 1, "override_exposures": 1,
                  "users_in_several_variants": 0, "events_unmatched": 1,
                  "events_before_exposure": 1}
    # outcomes per exposure: 150 clicks over 1334 exposures
    assert t["outcomes_per_exposure"] == pytest.approx(150 / 1334)


def test_delta_method_interval_agrees_with_a_bootstrap():
    rng = np.random.default_rng(0)
    c = (rng.random(1000) < 0.10).astype(float)
    t = (rng.random(1000) < 0.15).astype(float)
    exposures, events = [], []
    for arm, ys in (("control", c), ("treatment", t)):
        for i, y in enumerate(ys):
            u = f"{arm}{i}"
            exposures.append({"ts": 1.0, "request_id": u, "experiment": "e", "variant": arm,
                              "user": u, "status": 200, "fallback": False})
            if y:
                events.append({"ts": 2.0, "user": u, "item_id": "a", "type": "click"})
    rep = report.analyze(exposures, events, weights={"control": 0.5, "treatment": 0.5})
    boots = np.array([rng.choice(t, 1000).mean() / rng.choice(c, 1000).mean() - 1
                      for _ in range(4000)])
    got = rep["lift"]["treatment"]
    assert got["relative"] == pytest.approx(t.mean() / c.mean() - 1)
    # the delta method approximates the standard error of the ratio (its interval is symmetric,
    # the bootstrap's percentile interval follows the ratio's right skew)
    delta_se = (got["ci95"][1] - got["ci95"][0]) / (2 * 1.959964)
    assert delta_se == pytest.approx(boots.std(), rel=0.1)


def test_sample_ratio_mismatch_is_flagged():
    exposures, events = _logs(n_c=1000, n_t=800, conv_c=100, conv_t=120)
    rep = report.analyze(exposures, events, name="exp1", weights={"control": 0.5, "treatment": 0.5})
    chi2 = 2 * 100 ** 2 / 900
    assert rep["srm"]["chi2"] == pytest.approx(chi2)
    assert rep["srm"]["p_value"] == pytest.approx(stats.chi2.sf(chi2, 1))
    assert rep["srm"]["flagged"] is True and "Do not trust" in rep["verdict"]
    assert "MISMATCH" in report.markdown(rep)
    # the same counts are fine when the weights were 5:4
    ok = report.analyze(exposures, events, name="exp1", weights={"control": 5 / 9, "treatment": 4 / 9})
    assert ok["srm"]["flagged"] is False


def test_no_difference_is_reported_as_such():
    exposures, events = _logs(conv_c=100, conv_t=102)
    rep = report.analyze(exposures, events, name="exp1", weights={"control": 0.5, "treatment": 0.5})
    lift = rep["lift"]["treatment"]
    assert lift["ci95"][0] < 0 < lift["ci95"][1] and not lift["significant"]
    assert rep["winners"] == [] and "No significant difference" in rep["verdict"]


def test_cli_writes_markdown_json_png(tmp_path, capsys):
    exposures, events = _logs()
    (tmp_path / "exposures").mkdir()
    (tmp_path / "events").mkdir()
    (tmp_path / "exposures" / "exposures-1.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in exposures))
    (tmp_path / "events" / "events-1.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in events))
    (tmp_path / "experiment.yaml").write_text(
        "name: exp1\nsalt: s\ncontrol: control\nvariants:\n"
        "  - {name: control, model_version: '1', weight: 50}\n"
        "  - {name: treatment, model_version: '2', weight: 50}\n")
    out = tmp_path / "report"
    assert cli(["report", "--exposures", str(tmp_path / "exposures"), "--events",
                str(tmp_path / "events"), "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    for key in ("experiment", "control", "variants", "lift", "srm"):
        assert key in rep
    assert set(rep["variants"]["control"]) >= {"users", "exposures", "rate", "ci95"}
    assert set(rep["lift"]["treatment"]) >= {"relative", "ci95"}
    assert set(rep["srm"]) >= {"p_value", "flagged"}
    assert rep["srm"]["weights_from"] == "experiment file"
    md = (out / "report.md").read_text()
    assert "| treatment | 1000 |" in md and "beats control" in md
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "wrote" in capsys.readouterr().out
