"""The training stage end to end on generated data: eval.json, MLflow run and registry, the
serving artifact, and the claim that content carries signal (the hybrid beats popularity)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.artifact import load_artifact
from common.config import ArchiveConfig
from training import tracking
from training.pipeline import MODEL_NAME


@pytest.fixture(scope="module")
def pipeline_run(spark, tmp_path_factory):
    from etl.__main__ import main as etl_main
    from training.__main__ import main as train_main

    out = tmp_path_factory.mktemp("pipeline")
    assert etl_main(["run", "--out", str(out), "--gen-users", "400", "--gen-items", "2000",
                     "--gen-events", "30000", "--spark-shuffle-partitions", "4"]) == 0
    assert train_main(["run", "--out", str(out), "--no-als", "--max-epochs", "30",
                       "--no-progress"]) == 0
    return out, json.loads((out / "eval.json").read_text())


def test_eval_json_layout(pipeline_run):
    _, ev = pipeline_run
    assert ev["protocol"]["name"] == "P1" and ev["protocol"]["split_hash"]
    shipped = f"served_{ArchiveConfig.scoring}"
    assert ev["served"]["row"] == shipped and ev["served"]["variant"] == ArchiveConfig.scoring
    for model in ("hybrid", shipped, "hybrid_int8_int8", "hybrid_int8_sq8", "popularity", "ease",
                  "content"):
        m = ev["models"][model]
        assert {"recall@10", "ndcg@10", "hit@10", "coverage@10", "users"} <= set(m)
        assert ("mrr" in m) == (model in ("hybrid", "popularity", "ease", "content"))
        assert 0.0 <= m["recall@10"] <= 1.0
        assert m["users"] == ev["models"]["hybrid"]["users"] > 0
        for name in ("cold_items", "few_interactions", "long_history"):
            assert model in ev["slices"][name]


def test_eval_json_mode_tables(pipeline_run):
    """related_items, rerank and diversity: top-level tables through the shipped engine."""
    _, ev = pipeline_run
    shipped = f"served_{ArchiveConfig.scoring}"
    users = ev["models"]["hybrid"]["users"]
    related = ev["related_items"]
    assert set(related["models"]) == {shipped, "item_knn", "popularity"}
    for m in related["models"].values():
        assert {"hit@10", "recall@10", "ndcg@10", "users"} <= set(m) and 0 < m["users"] <= users
        assert 0.0 <= m["recall@10"] <= m["hit@10"] <= 1.0
    assert related["goal_hit_vs_item_knn"] == pytest.approx(
        related["models"][shipped]["hit@10"] - related["models"]["item_knn"]["hit@10"])
    rerank = ev["rerank"]
    assert set(rerank["models"]) == {shipped, "popularity"} and rerank["answered_all"] is True
    assert rerank["negatives"] == 100 and rerank["mean_candidates"] > 100
    # a candidate list holds every test item: every user's test items are reachable
    assert all(m["users"] == users for m in rerank["models"].values())
    assert rerank["models"][shipped]["ndcg@10"] > rerank["models"]["popularity"]["ndcg@10"]
    levels = ev["diversity"]["levels"]
    assert list(levels) == ["0.0", "0.3", "0.7"]
    assert levels["0.7"]["ild@10"] > levels["0.0"]["ild@10"]
    assert levels["0.7"]["categories@10"] > levels["0.0"]["categories@10"]
    assert 0.0 <= levels["0.7"]["more_categories_than_0"] <= 1.0
    for level in levels.values():
        assert level["users"] == users and 0 <= level["recall@10"] <= 1
    # the README blocks render from them
    from training.report import TABLES

    for name in ("eval:related_items", "eval:rerank", "eval:diversity"):
        assert "|" in TABLES[name](ev)


def test_hybrid_beats_popularity_on_generated_data(pipeline_run):
    _, ev = pipeline_run
    models, cold = ev["models"], ev["slices"]["cold_items"]
    assert models["hybrid"]["ndcg@10"] > models["popularity"]["ndcg@10"]
    assert models["hybrid"]["recall@10"] > models["popularity"]["recall@10"]
    # Content is the only signal for items without training interactions.
    assert cold["hybrid"]["users"] > 0
    assert cold["hybrid"]["recall@10"] > cold["popularity"]["recall@10"]


def test_shipped_variant_keeps_recall(pipeline_run):
    """The engine over the shipped pack (an approximate index + exact re-rank) is evaluated on
    the same users and keeps the fp32 model's quality; so do the exact INT8 scans."""
    _, ev = pipeline_run
    fp32 = ev["models"]["hybrid"]["recall@10"]
    for row in (ev["served"]["row"], "hybrid_int8_int8", "hybrid_int8_sq8"):
        assert ev["models"][row]["recall@10"] >= 0.97 * fp32, row
    assert ev["served"]["recall@10_relative_loss"] == pytest.approx(
        1 - ev["models"][ev["served"]["row"]]["recall@10"] / fp32)


def test_mlflow_run_and_registry(pipeline_run):
    out, ev = pipeline_run
    client = tracking.get_client(out_dir=out)
    info = ev["mlflow"]
    run = client.get_run(info["run_id"])
    assert run.data.params["train.loss"] == ev["train"]["config"]["loss"]
    assert "models.hybrid.recall_at_10" in run.data.metrics
    assert f"models.served_{ArchiveConfig.scoring}.recall_at_10" in run.data.metrics
    assert "slices.cold_items.hybrid.recall_at_10" in run.data.metrics
    assert len(client.get_metric_history(info["run_id"], "loss")) >= 2  # one per epoch
    names = {a.path for a in client.list_artifacts(info["run_id"])}
    assert {"serving_artifact", "evaluation.json", "eval.json", "plots"} <= names
    version = client.get_model_version_by_alias(MODEL_NAME, "challenger")
    assert int(version.version) == info["version"] == 1
    assert version.tags["eval.split_hash"] == ev["protocol"]["split_hash"]


def test_serving_artifact_matches_the_evaluated_model(pipeline_run):
    out, ev = pipeline_run
    art = load_artifact(out / "model" / "serving_artifact")
    assert art.version == str(ev["mlflow"]["version"])
    # Known users' precomputed vectors score exactly like the model did in evaluation:
    # reproduce the hybrid's recall@10 from the artifact alone.
    from training.compare import evaluate_slices
    from training.data import load_split

    data = load_split(out)
    res = evaluate_slices(lambda u: art.user_vector(torch.as_tensor(u)) @ art.item_vectors.T
                          + art.item_bias, data)
    assert res["main"]["recall@10"] == pytest.approx(ev["models"]["hybrid"]["recall@10"], abs=1e-6)
    assert np.isfinite(art.item_vectors.numpy()).all()


def test_popularity_version_and_parity_through_torchserve(pipeline_run):
    """The demo's path on generated data: the popularity model becomes the next registry version
    (alias baseline); the hybrid's archive is served by a real TorchServe, and every known user's
    answer equals the answer to a new id sending that user's ETL history (OUT/parity.json)."""
    from archives import build as B
    from archives.__main__ import main as archives_main
    from archives.testing import running_server
    from training.__main__ import main as train_main

    out, ev = pipeline_run
    assert train_main(["popularity", "--out", str(out)]) == 0
    client = tracking.get_client(out_dir=out)
    baseline = client.get_model_version_by_alias(MODEL_NAME, "baseline")
    assert int(baseline.version) == ev["mlflow"]["version"] + 1
    pop = load_artifact(out / "model" / "popularity_artifact")
    assert pop.config["model_type"] == "popularity" and not pop.item_vectors.any()

    hybrid = B.build_from_registry(ev["mlflow"]["version"], out, config=B.ArchiveConfig(
        min_workers=1, max_workers=1), archive_format="zip-store")
    with running_server(out, config="dev", models={"recsys": hybrid.file_name}):
        assert archives_main(["parity", "--out", str(out), "--max-users", "150"]) == 0
    parity = json.loads((out / "parity.json").read_text())
    assert parity["users"] == 150 and parity["mean_overlap"] >= 0.99 and parity["passed"]
    assert parity["user_id_embedding"] is False and parity["history_source"] == "train_full"
    assert parity["strategies"] == {"personalized/history": 150}
