"""Smoke run of the serving benchmark at tiny sizes: a real TorchServe, every stage once.

The figures of a smoke run mean nothing (tiny catalog, few requests); what is checked is that
`make bench` produces the documented result schema, plots and tables end to end.
"""
from __future__ import annotations

import json

import pytest

from benchmarks import serving_bench

RUN_KEYS = {"catalog_items", "users", "variant", "batch_size", "workers", "rate_rps", "p50_ms",
            "p95_ms", "p99_ms", "throughput_rps", "errors", "recall@10", "rss_mb_per_worker"}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
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
    assert variants == set(serving_bench._names(serving_bench.QUICK.variants))
    h = res["headline"]
    assert h["baseline"] == "fp32" and h["best"] in variants - {"fp32"}
    assert {"p99_reduction", "recall@10_relative_loss", "catalog_items", "rate_rps"} <= set(h)
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
