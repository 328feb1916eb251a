"""The fault suite (benchmarks/faults.py): its short run through a real TorchServe and the real
gateway, judged by issue 18's "Done when" rules, and the client-side classification it rests on.

The short run (``--quick``) is the same code as ``make faults`` with small random archives, fewer
requests and lower rates; it must pass every rule, so a fault the stack mishandles fails here.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks import faults

REPO = Path(__file__).resolve().parents[2]


def _answer(rid="r", status=200, **kw) -> faults.Answer:
    return faults.Answer(rid, t_send=0.0, t_done=0.01, status=status, **kw)


def test_a_shed_answer_is_neither_an_error_nor_an_exposure():
    shed = _answer(status=503, retry_after=True, reason="shed")
    down = _answer(status=503, retry_after=True, reason="unavailable")
    assert shed.shed and not shed.expects_exposure
    s = faults.stats([shed, down])
    assert (s["shed"], s["client_5xx"], s["answered"]) == (1, 1, 2)
    assert down.expects_exposure   # an answered request the gateway logs like any other


def test_refusals_log_nothing_and_handler_answers_log_one():
    for status in (400, 401, 403, 413, 429):
        assert not _answer(status=status, reason="x").expects_exposure
    for status in (200, 500, 503):
        assert _answer(status=status).expects_exposure
    lost = faults.Answer("t", error="timeout")
    assert not lost.expects_exposure
    s = faults.stats([lost, _answer(fallback=True), _answer(fallback=False)])
    assert (s["sent"], s["answered"], s["transport_errors"], s["fallback"]) == (3, 2, 1, 1)


def test_a_failed_rule_is_reported():
    suite = faults.Suite(Path("."), faults.QUICK, quick=True, log=lambda *_: None)
    suite.faults = {name: {**dict.fromkeys(faults.STATS_KEYS, 0), "statuses": {}} for name in faults.FAULTS}
    suite.faults["upstream_hang"]["client_5xx"] = 3
    suite.faults["bad_experiment"]["reload_errors"] = 1
    suite.faults["version_added"].update(fallback_rate_new=0.0, fallback_rate_control=0.0,
                                         switch_after_s=1.2)
    suite.top = {"inflight_at_sigterm": 25, "inflight_answered": 24}
    failed = {r["rule"] for r in suite.rules() if not r["ok"]}
    assert failed == {"upstream_hang: client_5xx == 0 and transport_errors == 0",
                      "gateway_sigterm: >= 20 in flight, every one answered"}


def test_fallback_rates_per_variant_count_only_what_was_sent_after_the_write():
    answers = [_answer("a", variant="control", fallback=True),             # sent at 0.0
               faults.Answer("b", t_send=1.0, t_done=1.25, status=200, variant="control",
                        fallback=False),
               faults.Answer("c", t_send=1.0, t_done=1.5, status=200, variant="control", fallback=True),
               faults.Answer("d", t_send=1.5, t_done=1.6, status=200, variant="added", fallback=False),
               faults.Answer("e", t_send=1.5, status=503, variant="added"),
               faults.Answer("f", t_send=2.0, error="timeout")]
    per = faults.variant_fallbacks(answers, since=0.5)
    assert per == {"control": {"answered": 2, "fallback": 1, "rate": 0.5, "max_ms": 500.0},
                   "added": {"answered": 1, "fallback": 0, "rate": 0.0, "max_ms": 100.0}}


def test_a_new_version_falling_back_more_than_control_fails_its_rule():
    entry = {"fallback_rate_new": 0.0, "fallback_rate_control": 0.0, "switch_after_s": 1.0}
    assert faults.added_rule(entry)[0]
    assert faults.added_rule({**entry, "fallback_rate_control": 0.02})[0]
    assert not faults.added_rule({**entry, "fallback_rate_new": 0.01})[0]        # control had none
    assert not faults.added_rule({**entry, "fallback_rate_new": None})[0]        # never answered
    assert not faults.added_rule({**entry, "switch_after_s": None})[0]           # never switched


def test_quick_fault_suite_passes_done_when(java, tmp_path):
    """`python -m benchmarks.faults --quick`: every fault injected for real, faults.json complete,
    and every rule of issue 18's "Done when" holds (the CLI exits 0 only then)."""
    r = subprocess.run([sys.executable, "-m", "benchmarks.faults", "--out", str(tmp_path),
                        "--quick"], cwd=REPO, capture_output=True, text=True, timeout=600)
    path = tmp_path / "faults.json"
    assert path.exists(), f"no faults.json (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    result = json.loads(path.read_text())
    for key in faults.result_keys():
        assert result[key] is not None, key
    assert set(result["faults"]) == set(faults.FAULTS)
    for name, f in result["faults"].items():
        if "skipped" not in f:
            assert set(faults.STATS_KEYS) <= set(f) and f["sent"] > 0, name
    failed = [f"{x['rule']}: {x['detail']}" for x in result["rules"] if not x["ok"]]
    assert not failed and r.returncode == 0, "\n".join(failed) + "\n" + r.stdout[-2000:]
