"""The seed-study plumbing of training/experiments.py (no training): variants are valid
configurations, per-seed rows become mean ± std, the goal is judged on the means, and the CLI
takes every TrainConfig field as a flag."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from training.config import TrainConfig
from training import experiments


def test_every_variant_is_a_valid_config():
    for name, fields in experiments.VARIANTS.items():
        dataclasses.replace(TrainConfig(), **fields)  # an unknown field raises TypeError
        assert ";" not in name  # the CLI separates names with semicolons


def test_mean_rows_give_mean_and_std_per_metric():
    runs = [{"variant": "hybrid", "seed": s, "recall@10": r, "ndcg@10": r / 2,
             "val_cold_recall@10": math.nan} for s, r in ((1, 0.1), (2, 0.2), (3, 0.3))]
    row = experiments._mean_rows(runs)
    assert row["recall@10"] == pytest.approx(0.2) and row["ndcg@10"] == pytest.approx(0.1)
    assert row["recall@10_std"] == pytest.approx((2 / 3) ** 0.5 * 0.1)
    assert row["seeds"] == [1, 2, 3] and row["runs"] == runs
    assert "val_cold_recall@10" not in row and "cold_recall@10" not in row  # unmeasured: absent


def _rows(hybrid_recall, hybrid_ndcg, cold, served=None):
    h = {"variant": "hybrid", "recall@10": hybrid_recall, "ndcg@10": hybrid_ndcg,
         "cold_recall@10": cold}
    if served is not None:
        h |= {"served_recall@10": served, "served_ndcg@10": hybrid_ndcg}
    return [h, {"variant": "ease", "recall@10": 0.10, "ndcg@10": 0.10, "cold_recall@10": 0.01},
            {"variant": "popularity", "recall@10": 0.05, "ndcg@10": 0.05, "cold_recall@10": 0.01},
            {"variant": "content", "recall@10": 0.02, "ndcg@10": 0.01, "cold_recall@10": 0.02}]


def test_goal_is_judged_on_the_means():
    g = experiments.goal_check(_rows(0.121, 0.119, 0.025, served=0.1205))
    assert g["recall_vs_ease"] == pytest.approx(1.21) and g["ndcg_vs_ease"] == pytest.approx(1.19)
    assert g["met"] == {"recall": True, "ndcg": False, "cold": True, "served": True}
    assert g["targets"]["cold_recall@10"] == pytest.approx(0.025)  # max(2.5 x pop, content)
    # cold above 2.5x popularity but not above content-only: not met
    assert experiments.goal_check(_rows(0.13, 0.13, 0.019))["met"]["cold"] is False
    # the shipped variant more than 1% below fp32: not met
    assert experiments.goal_check(_rows(0.13, 0.13, 0.03, served=0.128))["met"]["served"] is False
    assert experiments.goal_check(_rows(0.13, 0.13, 0.03)[:2]) is None  # references missing


def test_markdown_table_and_goal_line():
    runs = [{"variant": "hybrid", "seed": s, "recall@10": r, "ndcg@10": r, "cold_recall@10": 0.03,
             "train_s": 10.0} for s, r in ((1, 0.12), (2, 0.14))]
    rows = [experiments._mean_rows(runs)] + _rows(0.13, 0.13, 0.03)[1:]
    md = experiments.markdown({"rows": rows, "goal": experiments.goal_check(rows)})
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "| 1,2 " in lines["hybrid"].replace("  ", " ") and "0.1300 ± 0.0100" in lines["hybrid"]
    assert "0.1000" in lines["ease"] and "±" not in lines["ease"]
    assert "Recall@10 1.300x EASE" in md and "Met: recall yes, ndcg yes, cold yes" in md


def test_cli_takes_train_config_flags(monkeypatch, tmp_path):
    seen = {}

    def fake_study(data, variants, seeds, base, *, test, baselines):
        seen.update(variants=variants, seeds=seeds, base=base, test=test, baselines=baselines)
        return {"rows": [], "goal": None, "seeds": seeds}

    monkeypatch.setattr(experiments, "load_split", lambda etl, scheme: type(
        "D", (), {"n_users": 1, "n_items": 1, "train": type("M", (), {"nnz": 0})(),
                  "valid": type("M", (), {"nnz": 0})(), "test": type("M", (), {"nnz": 0})(),
                  "warm_items": lambda self: np.array([True])})())
    monkeypatch.setattr(experiments, "study", fake_study)
    out = tmp_path / "s.json"
    assert experiments.main(["--etl", str(tmp_path), "--seeds", "4,5", "--dim", "64", "--no-refit-full",
                             "--no-test", "--variants", "hybrid; hybrid, no EMA", "--json", str(out)]) == 0
    assert seen["variants"] == ["hybrid", "hybrid, no EMA"] and seen["seeds"] == [4, 5]
    assert seen["base"].dim == 64 and seen["base"].refit_full is False and seen["test"] is False
    assert out.exists()
    assert experiments.main(["--etl", str(tmp_path), "--variants", "nope"]) == 2   # a usage error
