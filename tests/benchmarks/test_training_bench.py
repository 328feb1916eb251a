"""The training benchmark's report and docs/results.md's seed-study block, from a stored result
(the benchmark itself trains for minutes: `make bench-training`)."""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks import training_bench
from training.experiments import _mean_rows, goal_check
from training.report import update_results

STORED = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "training.json"


def _result() -> dict:
    runs = [{"variant": "hybrid", "seed": s, "recall@10": r, "ndcg@10": r, "cold_recall@10": 0.03,
             "train_s": t, "train_cpu_s": t - 1, "best_epoch": 40} for s, r, t in ((1, 0.12, 80.0),
                                                                                  (2, 0.14, 90.0))]
    rows = [_mean_rows(runs),
            {"variant": "ease", "recall@10": 0.1, "ndcg@10": 0.1, "cold_recall@10": 0.01},
            {"variant": "popularity", "recall@10": 0.05, "ndcg@10": 0.05, "cold_recall@10": 0.01},
            {"variant": "content", "recall@10": 0.02, "ndcg@10": 0.01, "cold_recall@10": 0.02}]
    study = {"rows": rows, "goal": goal_check(rows), "seeds": [1, 2]}
    return {"machine": {"cpus": 2, "load_avg_at_start": [0.5, 0.5, 0.5]}, "study": study,
            "max_train_s": 90.0, "max_train_cpu_s": 89.0, "budget_s": 600.0, "within_budget": True}


def test_markdown_has_per_seed_times_and_the_study():
    md = training_bench.markdown(_result())
    assert "Slowest training: 90 s wall (within the 600 s budget)" in md
    assert "0.1300 ± 0.0100" in md and "Met: recall yes" in md


def test_results_block_is_generated_from_the_json(tmp_path):
    path = tmp_path / "training.json"
    path.write_text(json.dumps(_result()))
    doc = tmp_path / "results.md"
    doc.write_text("x\n<!-- study:seeds -->\nold\n<!-- /study:seeds -->\ny\n")
    assert update_results(None, doc, path) == ["study:seeds"]
    text = doc.read_text()
    assert "\nold\n" not in text and "0.1300 ± 0.0100" in text and "Slowest of the 2 trainings: 90 s" in text


def test_committed_results_doc_matches_the_committed_result(tmp_path):
    doc = Path(__file__).resolve().parents[2] / "docs" / "results.md"
    copy = tmp_path / "results.md"
    copy.write_text(doc.read_text())
    update_results(None, copy, STORED)
    assert copy.read_text() == doc.read_text(), \
        "docs/results.md's study:seeds block is stale: run `python -m training results --study " \
        "benchmarks/results/training.json`"
