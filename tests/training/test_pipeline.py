"""The training stage end to end on generated data: eval.json, MLflow run and registry, the
serving artifact, and the claim that content carries signal (the hybrid beats popularity)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.artifact import load_artifact
from core.config import ArchiveConfig
from common import registry
from common.registry import MODEL_NAME


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
    # the docs/results.md blocks render from them
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
    client = registry.get_client(out_dir=out)
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
    from common.splits import load_split

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
    from testkit.archives import running_server
    from training.__main__ import main as train_main

    out, ev = pipeline_run
    assert train_main(["popularity", "--out", str(out)]) == 0
    client = registry.get_client(out_dir=out)
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


def test_add_items_without_retraining(pipeline_run, tmp_path):
    """A catalog update becomes the next registry version and archive, registered in the running
    TorchServe; new items are scored from content; bad rows are refused with reasons; an update
    with nothing usable creates nothing."""
    from archives import build as B
    from archives.add_items import add_items
    from archives.client import TorchServeClient
    from archives.store import list_archives
    from common.splits import load_split
    from testkit.archives import running_server

    out, ev = pipeline_run
    data = load_split(out)
    cat = data.categories[0]
    catalog = tmp_path / "new.csv"
    catalog.write_text("item_id,title,description,categories,tags,created_at\n"
                       f"new-1,Brand new thing,{data.vocabulary[0]} {data.vocabulary[1]},{cat},,2024-01-01\n"
                       f"Ju\u0308rgens Pick,Another new one,,{cat},,2024-01-02\n"
                       f"{data.item_ids[0]},Known already,,,,2024-01-03\n"
                       ",No id,,,,2024-01-04\n")
    client = registry.get_client(out_dir=out)
    before = {int(v.version) for v in client.search_model_versions(f"name='{MODEL_NAME}'")}
    hybrid = B.build_from_registry(ev["mlflow"]["version"], out, config=B.ArchiveConfig(
        min_workers=1, max_workers=1), archive_format="zip-store")
    with running_server(out, config="dev", models={"recsys": hybrid.file_name}) as state:
        summary = add_items(out, catalog, model_uri=f"models:/{MODEL_NAME}/{ev['mlflow']['version']}",
                            config=B.ArchiveConfig(min_workers=1, max_workers=1))
        version = summary["version"]
        assert int(version) == max(before) + 1 and sorted(summary["added"]) == ["Jürgens Pick", "new-1"]
        assert sorted(r["reason"] for r in summary["refused"]) == ["known_item", "missing_item_id"]
        assert summary["torchserve"]["version"] == version
        ts = TorchServeClient(state)
        assert set(ts.versions("recsys")) == {hybrid.version, version}
        r = ts.predict("recsys", {"similar_to": "new-1", "k": 5}, version)
        assert r.status_code == 200 and "new-1" not in [i["item_id"] for i in r.json()["items"]]
        assert ts.predict("recsys", {"similar_to": "new-1"}, hybrid.version).status_code == 404
    art = load_artifact(registry.download_serving_artifact(f"models:/{MODEL_NAME}/{version}",
                                                           tmp_path / "art"))
    base = load_artifact(out / "model" / "serving_artifact")
    assert art.n_items == base.n_items + 2 and art.n_users == base.n_users
    assert torch.equal(art.tensors["user_vectors"], base.tensors["user_vectors"])  # no retraining
    assert art.tensors["item_warm"][-2:].tolist() == [0, 0]
    assert torch.count_nonzero(art.item_vectors[-2:]) > 0  # scored from content
    # nothing usable: nothing created
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,title,description,categories,tags,created_at\n"
                   f"{data.item_ids[1]},Known,,,,2024-01-01\n")
    with pytest.raises(ValueError, match="no new items"):
        add_items(out, bad, register=False)
    after = {int(v.version) for v in client.search_model_versions(f"name='{MODEL_NAME}'")}
    assert after == before | {int(version)}
    assert {a.version for a in list_archives(out)} >= {hybrid.version, version}


def test_added_items_study(pipeline_run):
    """The newest items held out, a model trained without them, the items added by the code
    `archives add-items` runs, and all three scored on the same users (eval.json)."""
    from dataclasses import replace as dc_replace

    from training.config import TrainConfig
    from training.added_items import held_out_items, study
    from common.splits import load_split
    from common.schema import EtlLayout

    out, _ = pipeline_run
    data = load_split(out)
    held, info = held_out_items(EtlLayout.under(out), data)
    assert 0 < held.sum() == info["items"] < data.n_items
    reduced = data.keep_items(~held)
    assert reduced.n_items == data.n_items - held.sum() and reduced.train_full.shape[1] == reduced.n_items
    assert set(reduced.item_ids) == set(data.item_ids[~held])
    res = study(out, dc_replace(TrainConfig(progress=False), max_epochs=10, dim=32, num_threads=1))
    ev = json.loads((out / "eval.json").read_text())
    assert set(ev["slices"]["added_items"]) == {"added", "retrained", "popularity"}
    users = {m["users"] for m in ev["slices"]["added_items"].values()}
    assert len(users) == 1 and users.pop() > 0
    assert ev["added_items"]["added"] == held.sum() == res["info"]["items"]
