"""The serving benchmark: its stored results against its own summary functions, the summary
rules on hand-built runs, and a smoke run at tiny sizes (a real TorchServe, every stage once).

The figures of a smoke run mean nothing (tiny catalog, few requests); what is checked is that
`make bench` produces the documented result schema, plots and tables end to end. The stored
``benchmarks/results/serving.json`` is checked the other way: its headline, knob summary,
``serving.md`` and the generated blocks of docs/performance.md and docs/results.md must be what the
code computes from its runs, so a hand-edited or stale summary fails here.
"""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from benchmarks import serving_analysis, serving_bench, serving_report
from benchmarks.common import RESULTS
from benchmarks.config import ServingBenchConfig
from common import loadgen

RUN_KEYS = {"catalog_items", "users", "variant", "batch_size", "workers", "rate_rps", "p50_ms",
            "p95_ms", "p99_ms", "throughput_rps", "errors", "late_sends", "n", "recall@10",
            "rss_mb_per_worker"}
STORED = RESULTS / "serving.json"


# ------------------------------------------------------------------ the stored results

@pytest.fixture(scope="module")
def stored():
    return json.loads(STORED.read_text())


def test_stored_summaries_are_recomputed_from_the_runs(stored):
    again = serving_analysis.summaries(stored)
    assert again["headline"] == stored["headline"]
    assert again["knobs"] == stored["knobs"]
    assert (RESULTS / "serving.md").read_text() == serving_analysis.markdown(stored)


def test_a_hand_edited_summary_is_caught(stored):
    edited = json.loads(json.dumps(stored))
    edited["headline"]["p99_reduction"] = 0.9
    edited["knobs"]["configs"][-1]["max_rate_within_budget"] = 500
    again = serving_analysis.summaries(edited)
    assert again["headline"] != edited["headline"] and again["knobs"] != edited["knobs"]


def test_docs_blocks_match_the_stored_results():
    root = serving_report.ROOT
    stale = serving_report.update(STORED, {root / "docs" / "performance.md": serving_report.DOC_BLOCKS,
                                           root / "docs" / "results.md": serving_report.RESULTS_BLOCKS}, check=True)
    assert stale == [], "run: python -m benchmarks.serving_report"


def test_check_reports_a_stale_block(tmp_path, stored):
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- serving:knobs -->\n| typed by hand |\n<!-- /serving:knobs -->\n")
    assert serving_report.update(STORED, {doc: {"serving:knobs": serving_report.knobs_block}},
                                 check=True) == [doc]
    assert "typed by hand" in doc.read_text()       # --check changes nothing
    serving_report.update(STORED, {doc: {"serving:knobs": serving_report.knobs_block}})
    assert serving_report.update(STORED, {doc: {"serving:knobs": serving_report.knobs_block}},
                                 check=True) == []


def test_resummarize_cli_is_idempotent_on_the_stored_file(tmp_path):
    copy = tmp_path / "serving.json"
    shutil.copy(STORED, copy)
    assert serving_bench.main(["--resummarize", str(copy)]) == 0
    assert json.loads(copy.read_text()) == json.loads(STORED.read_text())


# ------------------------------------------------------------------ the summary rules

def _row(variant: str, rate: int, p99: float, *, p50: float = 5.0, achieved: float | None = None,
         errors: int = 0, **knobs) -> dict:
    return {"variant": variant, "rate_rps": rate, "p50_ms": p50, "p99_ms": p99, "errors": errors,
            "throughput_rps": rate if achieved is None else achieved, "n": 100, "late_sends": 3,
            "recall@10": 1.0, "handler_p99_ms": p99 / 2, "batch_size": 8, "max_batch_delay_ms": 2,
            "workers": 2, "threads": 1, **knobs}


def test_knob_summary_counts_a_rate_only_when_every_lower_rate_passed():
    cfg = dataclasses.replace(ServingBenchConfig(), p99_budget_ms=100.0)
    rows = [_row("ivf", 100, 40), _row("ivf", 200, 130), _row("ivf", 300, 35), _row("ivf", 400, 30),
            _row("ivf", 100, 10, workers=1, threads=2), _row("ivf", 200, 20, workers=1, threads=2),
            _row("ivf", 300, 50, workers=1, threads=2, achieved=250)]
    c1, c2 = serving_analysis.knob_summary(rows, cfg, "ivf")["configs"]
    assert (c1["max_rate_within_budget"], c1["first_failing_rate"]) == (100, 200)
    assert c1["first_failure"] == "P99 130.0 ms > 100 ms" and c1["throughput_rps"] == 100
    assert (c2["max_rate_within_budget"], c2["first_failing_rate"]) == (200, 300)
    assert "achieved 250/s" in c2["first_failure"] and c2["max_late_share"] == 0.03
    none = serving_analysis.knob_summary([_row("fp32", 100, 500)], cfg, "ivf")["configs"][0]
    assert (none["max_rate_within_budget"], none["first_failing_rate"]) == (0, 100)


def test_headline_rate_needs_every_lower_baseline_rate():
    cfg = ServingBenchConfig()
    rows = [_row("fp32", 100, 80, p50=30), _row("fp32", 200, 90, p50=90),   # 200: P50 > 2 x 30
            _row("fp32", 300, 95, p50=40), _row("ivf", 100, 10), _row("ivf", 200, 12),
            _row("ivf", 300, 14)]
    h = serving_analysis.headline(rows, cfg)
    assert h["rate_rps"] == 100 and h["baseline_first_failing_rate"] == 200
    assert h["best"] == "ivf" and h["p99_reduction"] == round(1 - 10 / 80, 3)


def test_round_trip_and_handler_percentiles_use_one_method():
    values = [float(x) for x in range(1, 101)] + [1000.0]
    for q, key in ((50, "p50_ms"), (99, "p99_ms")):
        assert serving_bench._pct(values, q) == round(loadgen.percentiles(values)[key], 3)
    assert serving_bench._pct(values, 99) in values   # an observed value, not an interpolated one


# ------------------------------------------------------------------ smoke run


@pytest.fixture(scope="module")
def result(java, tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    assert serving_bench.main(["--quick", "--work", str(work)]) == 0
    return work, json.loads((work / "results" / "serving.json").read_text())


def test_schema_and_headline(result):
    work, res = result
    assert {"cpus", "memory_gb"} <= set(res["machine"])
    parts = {r["part"] for r in res["runs"]}
    assert parts == {"variants", "knobs", "scale"}
    for r in res["runs"]:
        assert RUN_KEYS <= set(r), set(RUN_KEYS) - set(r)
        assert r["errors"] == 0 and r["throughput_rps"] > 0 and r["p50_ms"] <= r["p99_ms"]
        assert r["rss_mb_per_worker"] > 0
    variants = {r["variant"] for r in res["runs"] if r["part"] == "variants"}
    assert variants == set(serving_analysis.parse_names(serving_bench.QUICK.variants))
    h = res["headline"]
    assert h["baseline"] == "fp32" and h["best"] in variants - {"fp32"}
    assert {"p99_reduction", "recall@10_relative_loss", "catalog_items", "rate_rps"} <= set(h)
    assert res["percentile_method"] == serving_bench.PERCENTILE_METHOD
    again = serving_analysis.summaries(res)
    assert again["headline"] == h and again["knobs"] == res["knobs"]
    # the handler/frontend split comes from every answer's X-Handler-Ms header
    assert all(r["handler_p99_ms"] is not None for r in res["runs"])


def test_recall_is_measured_on_served_answers(result):
    _, res = result
    exact = [r for r in res["runs"] if r["part"] == "variants" and r["variant"] in ("fp32", "sq8")]
    assert exact and all(r["recall@10"] == 1.0 for r in exact)  # re-ranked exact scans


def test_knobs_scale_floor_and_outputs(result):
    work, res = result
    assert {c["batch_size"] for c in res["knobs"]["configs"]} == {1, 8}
    scale = [r for r in res["runs"] if r["part"] == "scale"]
    assert all(r["archive_bytes"] > 0 and r["load_s"] > 0 and r["memory_first_worker"] for r in scale)
    assert res["floor"]["catalog"]["read_bandwidth_gb_s"] > 0 and res["floor"]["scale"]["catalogs"]
    for f in res["plots"]:
        assert (work / "results" / f).stat().st_size > 1000
    md = (work / "results" / "serving.md").read_text()
    assert "## Headline" in md and "| fp32" in md
