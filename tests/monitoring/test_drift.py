"""Drift: PSI math, the reference from the ETL split and from the serving artifact, and the
claim of the issue: a stream of only the newest items crosses the 0.2 threshold, a stream
sampled like the training data does not. Also the daemon, as a real process, exporting gauges."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from common.net import free_port, http_status, wait_until
from common.promtext import samples
from monitoring.__main__ import main as cli
from monitoring.config import DriftConfig
from monitoring.drift import compute, popularity_bins, psi
from monitoring.drift_exporter import build_reference, run_once
from monitoring.drift_sources import LogRead, read_log, reference_from_etl
from testkit.archives import make_random_artifact
from tests.monitoring.conftest import exposure, write_jsonl

ALL = DriftConfig(window="all")


def test_psi_math():
    assert psi([1, 1, 1, 1], [5, 5, 5, 5]) == 0.0
    # by hand: (0.4-0.5) ln(0.4/0.5) + (0.6-0.5) ln(0.6/0.5)
    assert math.isclose(psi([1, 1], [4, 6]), -0.1 * math.log(0.8) + 0.1 * math.log(1.2))
    assert psi([1, 0], [1, 1]) > 1.0  # an empty expected bin is floored, not a division by 0
    with pytest.raises(ValueError):
        psi([1, 1], [0, 0])


def test_popularity_bins_hold_equal_training_mass():
    pop = np.array([50, 30, 10, 5, 3, 2, 0, 0], dtype=float)
    bins, expected = popularity_bins(pop, 4)
    assert bins.tolist() == [0, 2, 3, 3, 3, 3, 4, 4]  # 50% head item alone; never-seen items last
    assert expected.tolist() == [0.5, 0.0, 0.3, 0.2, 0.0]
    bins, expected = popularity_bins(np.ones(100), 10)
    assert np.allclose(expected[:10], 0.1) and expected[10] == 0


def _history_records(pairs: list[tuple[str, str]], start: int = 0) -> list[dict]:
    by_user: dict[str, list[str]] = {}
    for u, i in pairs:
        by_user.setdefault(u, []).append(i)
    return [exposure(start + n, user=f"p-{u}", history=items) for n, (u, items) in enumerate(by_user.items())]


def test_training_like_stream_is_stable_and_newest_items_cross(etl_out):
    ref = reference_from_etl(etl_out.out)
    rng = np.random.default_rng(1)
    # 4,000 training interactions drawn at random: a live stream that looks like training
    pick = rng.choice(len(etl_out.train_pairs), 4000, replace=False)
    like = compute(LogRead(_history_records([etl_out.train_pairs[k] for k in pick])), LogRead(), ref, ALL)
    assert like.samples["item_popularity"] == 4000
    assert like.psi["item_popularity"] < 0.05, like.psi

    # a stream of only the newest 5% of items: users discover what was just released
    users = [f"visitor-{k}" for k in range(400)]
    shifted = [(u, etl_out.newest_items[int(rng.integers(len(etl_out.newest_items)))]) for u in users
               for _ in range(3)]
    rep = compute(LogRead(_history_records(shifted)), LogRead(), ref, ALL)
    assert rep.psi["item_popularity"] > 0.2, rep.psi
    assert rep.above == ["item_popularity"]

    # half and half: the threshold is crossed gradually (monotone in the share of new items)
    mixed = compute(LogRead(_history_records([etl_out.train_pairs[k] for k in pick[:1000]])
                            + _history_records(shifted, 10_000)), LogRead(), ref, ALL)
    assert like.psi["item_popularity"] < mixed.psi["item_popularity"] < rep.psi["item_popularity"]


def test_drift_cli_writes_report_and_flags_threshold(etl_out, capsys):
    gw = etl_out.out / "gateway"
    rows = [exposure(k, user=f"p{k}", history=[etl_out.newest_items[k % 20], etl_out.newest_items[(k + 7) % 20]])
            for k in range(300)]
    write_jsonl(gw / "exposures", rows)
    write_jsonl(gw / "events", [{"ts": 1_700_000_500.0, "request_id": "r1", "user": "p1",
                                 "item_id": etl_out.newest_items[0], "type": "click"},
                                {"ts": 1_700_000_501.0, "request_id": "r2", "user": "p2",
                                 "item_id": "never-heard-of", "type": "click"}])
    assert cli(["drift", "--out", str(etl_out.out), "--reference", "etl", "--window", "all"]) == 0
    text = capsys.readouterr().out
    assert "PSI above 0.2: item_popularity" in text
    report = json.loads((etl_out.out / "monitoring" / "drift.json").read_text())
    assert report["above_threshold"] == ["item_popularity"] and report["exposures"] == 300
    assert report["unknown_share"]["event_item"] == 0.5 and report["unknown_counts"]["event_item"] == [1, 2]
    assert "no serving artifact" in report["reference"]["score_note"]


def test_window_ends_at_newest_record(etl_out):
    gw = etl_out.out / "gateway"
    old = [exposure(k, user=f"a{k}", history=[etl_out.newest_items[0]], ts=1_000.0 + k) for k in range(5)]
    new = [exposure(k, user=f"b{k}", history=[etl_out.item_ids[0]], ts=1_000_000.0 + k) for k in range(7)]
    write_jsonl(gw / "exposures", old + new)
    ref = reference_from_etl(etl_out.out)
    rep = run_once(etl_out.out, ref, DriftConfig(window="1h", min_samples=1), 0.2)
    assert rep.exposures == 7 and rep.samples["item_popularity"] == 7


def test_unknown_shares_and_bad_lines(etl_out, tmp_path):
    known = etl_out.item_ids[:3]
    recs = [exposure(0, user="p0", strategy="personalized", history=known),
            exposure(1, user="p1", strategy="history", history=known + ["x1"], unknown_history=1),
            exposure(2, user="p2", strategy="popular", history=["x2", "x3"], unknown_history=2),
            exposure(3, user="p3", strategy="personalized", fallback=True),  # a fallback: left out
            exposure(4, user=None, strategy="popular")]                      # no user: not counted
    path = write_jsonl(tmp_path / "exp", recs)
    with open(path, "a") as f:
        f.write("{not json\n[1, 2]\n")
    read = read_log(tmp_path / "exp")
    assert len(read.records) == 5 and read.bad_lines == 2
    rep = compute(read, LogRead(), reference_from_etl(etl_out.out), DriftConfig(window="all", min_samples=1))
    assert rep.unknown_share["user"] == pytest.approx(2 / 3)            # history + popular of 3
    assert rep.unknown_share["history_item"] == pytest.approx(3 / 9)    # 1 + 2 unknown of 3 + 4 + 2
    assert rep.unknown_share["event_item"] is None and rep.bad_lines == 2


@pytest.fixture(scope="module")
def artifact_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("art") / "out"
    make_random_artifact(out / "model" / "serving_artifact", n_users=300, n_items=500, seed=0)
    return out


def test_score_psi_against_the_models_reference(artifact_out):
    """Live personalized scores computed by the same engine for other known users look like the
    reference; the same answers with scores inflated by half (e.g. a model exported with another
    calibration under the same version) cross the threshold."""
    from core.artifact_adapter import load_recommender
    from core.validation import RecRequest

    cfg = DriftConfig(window="all", reference_users=150, seed=0)
    ref = build_reference(artifact_out, cfg)
    assert ref.model_version == "1" and len(ref.scores) == 150 * 10
    assert "core.engine.Recommender" in ref.score_note
    rec = load_recommender(artifact_out / "model" / "serving_artifact", scoring="fp32")
    outs = rec.recommend([RecRequest(user_id=str(u), k=10) for u in range(1, 301)])
    live = [exposure(n, user=f"p{n}", strategy=o.strategy, items=[i["item_id"] for i in o.body["items"]],
                     scores=[i["score"] for i in o.body["items"]]) for n, o in enumerate(outs)]
    same = compute(LogRead(live), LogRead(), ref, cfg)
    assert same.samples["score_personalized"] == 3000 and same.psi["score_personalized"] < 0.1, same.psi
    inflated = [dict(r, scores=[s * 1.5 for s in r["scores"]]) for r in live]
    shifted = compute(LogRead(inflated), LogRead(), ref, cfg)
    assert shifted.psi["score_personalized"] > 0.2, shifted.psi
    other_version = [dict(r, model_version="2") for r in inflated]   # not this reference's model
    assert compute(LogRead(other_version), LogRead(), ref, cfg).psi["score_personalized"] is None


def test_daemon_exports_gauges(etl_out):
    """``drift --daemon`` as a real process: Prometheus-format gauges on its port."""
    rows = [exposure(k, user=f"p{k}", history=[etl_out.newest_items[k % 20]], ts=time.time() - 60)
            for k in range(300)]
    write_jsonl(etl_out.out / "gateway" / "exposures", rows)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "monitoring", "drift", "--out", str(etl_out.out),
                             "--reference", "etl", "--daemon", "--port", str(port), "--interval-s", "1",
                             "--window", "1h"], cwd=Path(__file__).resolve().parents[2],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def scraped() -> str | None:
            r = http_status(f"http://127.0.0.1:{port}/metrics")
            return r.text if r is not None and 'recsys_drift_psi{feature="item_popularity"}' in r.text \
                else None

        text = wait_until(scraped, timeout=60, interval=0.5, proc=proc,
                          log=lambda: proc.stdout.read().decode(), what="drift --daemon")
        values = {(x.name, *x.labels.values()): x.value for x in samples(text)
                  if x.name.startswith("recsys_drift")}
        assert values["recsys_drift_psi", "item_popularity"] > 0.2
        assert values["recsys_drift_samples", "item_popularity"] == 300
        assert values["recsys_drift_unknown_share", "history_item"] == 0.0
        assert ("recsys_drift_runs_total", "ok") in values
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
