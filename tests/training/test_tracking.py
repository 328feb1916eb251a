"""MLflow runs (training/tracking.py), registry and promotion gate (common/registry.py) on a
temporary SQLite store.

One store for the whole module (MLflow's import and schema creation are the slow part); each
promotion scenario uses its own registered model so the tests stay independent.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import mlflow

from common import registry
from common.registry import (CHALLENGER, CHAMPION, PREVIOUS_CHAMPION, download_serving_artifact,
                             get_client, promote, register_version)
from training.tracking import (log_curves_png, log_epoch_metrics, log_eval_table,
                               log_serving_artifact, start_run)

HISTORY = [
    {"epoch": 1, "loss": 7.9, "val_loss": 8.1, "val_ndcg@10": 0.041, "val_recall@10": 0.050},
    {"epoch": 2, "loss": 7.1, "val_loss": 7.6, "val_ndcg@10": 0.072, "val_recall@10": 0.081},
    {"epoch": 3, "loss": 6.8, "val_loss": 7.5, "val_ndcg@10": 0.090, "val_recall@10": 0.097},
    {"epoch": 4, "loss": 6.6, "val_loss": 7.6, "val_ndcg@10": 0.088, "val_recall@10": 0.099,
     "note": "not a number", "lr": None},
]
EVAL = {
    "split_hash": "a" * 64,
    "hybrid": {"recall@10": 0.112, "ndcg@10": 0.100, "users": 603, "cold": {"recall@10": 0.02}},
    "popularity": {"recall@10": 0.068, "ndcg@10": 0.064},
}
PARAMS = {"train": {"lr": 1e-3, "epochs": 100, "dims": [256, 64]}, "seed": 42, "model": "hybrid"}
SERVING_FILES = {"manifest.json": '{"format": 1}', "weights/items.bin": "0123456789",
                 "vocab.json": '["a", "b"]'}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A temporary store, with $MLFLOW_TRACKING_URI unset and the cwd moved away from the repo
    so that anything falling back to MLflow's implicit default would be caught."""
    base = tmp_path_factory.mktemp("mlflow")
    out_dir, cwd = base / "out", base / "cwd"
    cwd.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        mp.setattr(registry, "_configured_uri", None)
        mp.chdir(cwd)
        uri = registry.tracking_uri(out_dir)
        yield {"out": out_dir, "cwd": cwd, "uri": uri, "client": get_client(uri)}
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri("")
    assert not list(cwd.iterdir()), "something wrote to the working directory"


@pytest.fixture(scope="module")
def run(store):
    """One training-like run: params, per-epoch metrics, curves, evaluation, serving artifact."""
    serving = store["out"] / "serving"
    for rel, text in SERVING_FILES.items():
        (serving / rel).parent.mkdir(parents=True, exist_ok=True)
        (serving / rel).write_text(text)
    with start_run("recsys-test", store["out"], run_name="hybrid", params=PARAMS) as active:
        n_points = log_epoch_metrics(HISTORY)
        png = log_curves_png(HISTORY, store["out"] / "curves.png")
        flat = log_eval_table(EVAL, primary="hybrid")
        source = log_serving_artifact(serving)
    return {"run_id": active.info.run_id, "n_points": n_points, "png": png, "flat": flat,
            "source": source, "serving": serving}


def test_tracking_uri_default_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert registry.tracking_uri(tmp_path / "o") == f"sqlite:///{(tmp_path / 'o').resolve()}/mlflow.db"
    assert registry.artifact_root(tmp_path / "o") == (tmp_path / "o").resolve() / "mlartifacts"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/m.db")
    assert registry.tracking_uri(tmp_path / "o") == "sqlite:////elsewhere/m.db"


def test_metric_key_makes_mlflow_valid_names():
    assert registry.metric_key("val_ndcg@10") == "val_ndcg_at_10"
    assert registry.metric_key("hybrid.recall@10") == "hybrid.recall_at_10"
    assert registry.metric_key("a(b)") == "a_b_"


def test_run_params_and_epoch_metrics(store, run):
    client = store["client"]
    data = client.get_run(run["run_id"]).data
    assert data.params["train.lr"] == "0.001" and data.params["train.epochs"] == "100"
    assert data.params["train.dims"] == "[256, 64]" and data.params["model"] == "hybrid"
    assert run["n_points"] == 4 * 4  # four numeric metrics per epoch; the rest skipped
    hist = client.get_metric_history(run["run_id"], "val_ndcg_at_10")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == \
        [(r["epoch"], r["val_ndcg@10"]) for r in HISTORY]
    assert len(client.get_metric_history(run["run_id"], "loss")) == 4
    assert client.get_run(run["run_id"]).info.status == "FINISHED"
    # The environment is left as the user had it (mlflow.set_tracking_uri would export it).
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_run_artifacts_live_under_out_dir(store, run):
    client = store["client"]
    info = client.get_run(run["run_id"]).info
    root = registry.artifact_root(store["out"])
    assert info.artifact_uri.startswith(root.as_uri())
    local = Path(info.artifact_uri.removeprefix("file://"))
    png = local / "plots" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert json.loads((local / "evaluation.json").read_text()) == EVAL
    for rel, text in SERVING_FILES.items():
        assert (local / "serving_artifact" / rel).read_text() == text
    assert run["source"] == info.artifact_uri + "/serving_artifact"
    exp = client.get_experiment(info.experiment_id)
    assert exp.artifact_location == (root / "recsys-test").as_uri()


def test_eval_table_metrics_and_tags(store, run):
    data = store["client"].get_run(run["run_id"]).data
    assert data.metrics["hybrid.recall_at_10"] == pytest.approx(0.112)
    assert data.metrics["hybrid.cold.recall_at_10"] == pytest.approx(0.02)
    assert data.metrics["popularity.ndcg_at_10"] == pytest.approx(0.064)
    assert "split_hash" not in data.metrics
    assert data.tags["eval.split_hash"] == EVAL["split_hash"]
    assert data.tags["eval.primary"] == "hybrid"
    assert run["flat"]["hybrid.users"] == 603


def test_log_functions_need_a_run(store):
    with pytest.raises(RuntimeError, match="no active MLflow run"):
        log_epoch_metrics(HISTORY)


def test_register_version_tags_and_alias(store, run):
    client = store["client"]
    v = register_version(run["run_id"], "reg-model", tracking_uri=store["uri"])
    assert v == 1
    mv = client.get_model_version("reg-model", "1")
    assert mv.source == run["source"] and mv.run_id == run["run_id"]
    assert float(mv.tags["eval.recall_at_10"]) == pytest.approx(0.112)
    assert float(mv.tags["eval.ndcg_at_10"]) == pytest.approx(0.100)
    assert float(mv.tags["eval.cold.recall_at_10"]) == pytest.approx(0.02)
    assert mv.tags["eval.split_hash"] == EVAL["split_hash"]
    assert "eval.popularity.recall_at_10" not in mv.tags  # only this run's model (primary)
    assert client.get_registered_model("reg-model").aliases == {CHALLENGER: 1}
    assert register_version(run["run_id"], "reg-model", tracking_uri=store["uri"]) == 2
    assert client.get_registered_model("reg-model").aliases == {CHALLENGER: 2}
    with pytest.raises(FileNotFoundError):
        register_version(run["run_id"], "reg-model", artifact_path="nope", tracking_uri=store["uri"])


def _version(store, run, model: str, recall: float | None, split: str = "s1") -> int:
    """Register the run's serving artifact with explicit evaluation values (a new challenger)."""
    metrics = {} if recall is None else {"recall@10": recall, "ndcg@10": recall * 0.9}
    return register_version(run["run_id"], model, tracking_uri=store["uri"],
                            eval_metrics=metrics, split_hash=split)


def _aliases(store, model: str) -> dict[str, int]:
    return dict(store["client"].get_registered_model(model).aliases)


def test_first_version_is_promoted(store, run):
    _version(store, run, "gate-first", 0.10)
    d = promote("gate-first", tracking_uri=store["uri"])
    assert d.promoted and "no champion yet" in d.reason
    assert (d.challenger_version, d.champion_version, d.challenger_value) == (1, None, 0.10)
    assert _aliases(store, "gate-first") == {CHAMPION: 1}
    mv = store["client"].get_model_version("gate-first", "1")
    assert mv.tags["promotion.decision"] == "promoted"
    again = promote("gate-first", tracking_uri=store["uri"])  # nothing pending any more
    assert not again.promoted and "no 'challenger'" in again.reason


def test_gate_refuses_worse_and_accepts_equal_or_better(store, run):
    m = "gate-compare"
    _version(store, run, m, 0.100)
    assert promote(m, tracking_uri=store["uri"]).promoted

    _version(store, run, m, 0.095)  # 5% worse, tolerance 1%
    d = promote(m, tolerance=0.01, tracking_uri=store["uri"])
    assert not d.promoted
    assert (d.challenger_version, d.champion_version) == (2, 1)
    assert d.challenger_value == pytest.approx(0.095) and d.champion_value == pytest.approx(0.100)
    assert "worse than champion v1" in d.reason and "5.0%" in d.reason and "1.0%" in d.reason
    assert _aliases(store, m) == {CHAMPION: 1, CHALLENGER: 2}
    mv = store["client"].get_model_version(m, "2")
    assert mv.tags["promotion.decision"] == "rejected" and mv.tags["promotion.reason"] == d.reason

    _version(store, run, m, 0.100)  # equal
    d = promote(m, tolerance=0.01, tracking_uri=store["uri"])
    assert d.promoted and "equal to champion v1" in d.reason
    assert _aliases(store, m) == {CHAMPION: 3, PREVIOUS_CHAMPION: 1}

    _version(store, run, m, 0.0995)  # 0.5% worse: inside the tolerance
    d = promote(m, tolerance=0.01, tracking_uri=store["uri"])
    assert d.promoted and "within 1.0%" in d.reason

    _version(store, run, m, 0.120)  # better
    d = promote(m, tolerance=0.0, tracking_uri=store["uri"])
    assert d.promoted and "better than champion v4" in d.reason
    assert _aliases(store, m) == {CHAMPION: 5, PREVIOUS_CHAMPION: 4}


def test_gate_refuses_mismatched_split_hashes(store, run):
    m = "gate-split"
    _version(store, run, m, 0.10, split="s1")
    assert promote(m, tracking_uri=store["uri"]).promoted
    _version(store, run, m, 0.50, split="s2")  # far better, but on another split
    d = promote(m, tracking_uri=store["uri"])
    assert not d.promoted and "not comparable" in d.reason and "same split" in d.reason
    assert (d.challenger_split_hash, d.champion_split_hash) == ("s2", "s1")
    assert _aliases(store, m) == {CHAMPION: 1, CHALLENGER: 2}


def test_gate_refuses_unevaluated_challenger(store, run):
    m = "gate-noeval"
    _version(store, run, m, None)
    d = promote(m, tracking_uri=store["uri"])
    assert not d.promoted and "eval.recall_at_10" in d.reason
    assert _aliases(store, m) == {CHALLENGER: 1}


def test_download_serving_artifact(store, run, tmp_path):
    m = "dl-model"
    _version(store, run, m, 0.1)
    promote(m, tracking_uri=store["uri"])
    _version(store, run, m, 0.2)
    for i, ref in enumerate([f"models:/{m}@{CHAMPION}", f"models:/{m}/2", 1, "2"]):
        dest = download_serving_artifact(ref, tmp_path / f"d{i}", model_name=m,
                                         tracking_uri=store["uri"])
        files = {p.relative_to(dest).as_posix(): p.read_text() for p in dest.rglob("*") if p.is_file()}
        assert files == SERVING_FILES
    assert registry.resolve_version(f"models:/{m}@{CHALLENGER}", tracking_uri=store["uri"]).version == 2
    with pytest.raises(FileExistsError):
        download_serving_artifact(1, tmp_path / "d0", model_name=m, tracking_uri=store["uri"])
    with pytest.raises(LookupError):
        download_serving_artifact(f"models:/{m}@nobody", tmp_path / "x", tracking_uri=store["uri"])
    with pytest.raises(ValueError, match="model_name"):
        download_serving_artifact(1, tmp_path / "y", tracking_uri=store["uri"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d0", "d1", "d2", "d3"]  # no leftovers
