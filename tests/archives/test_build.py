"""Building .mar archives from a local artifact folder and from the MLflow registry."""
from __future__ import annotations

import json
import zipfile

import pytest
import yaml

from archives import build as B
from archives.__main__ import main as cli
from archives.store import latest_archives, list_archives, model_store
from testkit.archives import make_random_artifact


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return make_random_artifact(tmp_path_factory.mktemp("a") / "artifact", n_users=20, n_items=100)


def test_build_from_folder(artifact, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(["build", "--out", str(out), "--artifact", str(artifact), "--version", "7",
                "--batch-size", "4", "--max-batch-delay", "50", "--min-workers", "1"]) == 0
    assert "recsys-v7.mar" in capsys.readouterr().out
    mar = model_store(out) / "recsys-v7.mar"
    with zipfile.ZipFile(mar) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        cfg = yaml.safe_load(z.read("model-config.yaml"))
        info = json.loads(z.read("build_info.json"))
    assert manifest["model"]["modelName"] == "recsys" and manifest["model"]["modelVersion"] == "7"
    assert manifest["model"]["handler"] == "recommender.py"
    assert cfg["batchSize"] == 4 and cfg["maxBatchDelay"] == 50 and cfg["minWorkers"] == 1 \
        and cfg["maxWorkers"] == 1 and cfg["responseTimeout"] == 30
    for f in ("recommender.py", "core/validation.py", "core/engine.py",
              "core/request.schema.json", "core/artifact.py", "core/__init__.py",
              "core/retrieval.py", "core/idtable.py", "artifact/config.json",
              "artifact/model.safetensors", "serving/pack.safetensors", "serving/serving.json",
              f"serving/{B.ArchiveConfig().scoring}.json"):
        assert f in names, f
    # the handler adapter and the served core only: no stage package rides along
    assert not any(n.startswith(("etl/", "archives/", "tests/", "common/", "training/", "gateway/"))
                   for n in names)
    assert info["version"] == "7" and info["artifact"]["example_users"]
    # the default variant (ArchiveConfig().scoring, ivf) and its quality against exact scoring, checked at build time
    default = B.ArchiveConfig().scoring
    assert info["artifact"]["variant"] == default and cfg["handler"]["scoring"] == default
    assert info["artifact"]["quality"]["recall_vs_exact"] >= 0.95
    assert [(a.model_name, a.version) for a in list_archives(out)] == [("recsys", "7")]
    assert B.build_info(out, "recsys", "7")["archive"] == str(mar)

    # a version is built once: the same inputs again are up to date, other inputs are refused
    mtime = mar.stat().st_mtime_ns
    assert cli(["build", "--out", str(out), "--artifact", str(artifact), "--version", "7",
                "--batch-size", "4", "--max-batch-delay", "50", "--min-workers", "1"]) == 0
    assert "up to date" in capsys.readouterr().out and mar.stat().st_mtime_ns == mtime
    assert cli(["build", "--out", str(out), "--artifact", str(artifact), "--version", "7"]) == 1
    assert "exists" in capsys.readouterr().err
    assert cli(["build", "--out", str(out), "--artifact", str(artifact), "--version", "7",
                "--force"]) == 0
    # --artifact needs --version; no source at all is an error
    assert cli(["build", "--out", str(out), "--artifact", str(artifact)]) == 2
    assert cli(["build", "--out", str(out)]) == 2


def test_latest_archive_per_model(artifact, tmp_path):
    out = tmp_path / "out"
    for v in ("2", "10", "9"):
        B.build_from_folder(artifact, out, version=v, archive_format="zip-store")
    assert latest_archives(out)["recsys"].version == "10"  # numeric, not lexical


def test_build_from_registry(artifact, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from common import registry
    from training import tracking

    out = tmp_path / "out"
    versions = []
    for _ in range(2):
        with tracking.start_run("recsys-test", out, run_name="serving") as run:
            tracking.log_serving_artifact(artifact)
        versions.append(registry.register_version(run.info.run_id, "recsys-hybrid",
                                                  eval_metrics={"recall@10": 0.1}, split_hash="h"))
    assert "recsys-hybrid" != B.DEFAULT_REGISTERED_MODEL  # so --registered-model is honoured
    assert versions == [1, 2]  # the second one holds alias "challenger"
    assert cli(["build", "--out", str(out), "--model-uri", "models:/recsys-hybrid@challenger"]) == 0
    assert cli(["build", "--out", str(out), "--version", "1", "--registered-model",
                "recsys-hybrid"]) == 0
    capsys.readouterr()
    got = {(a.model_name, a.version) for a in list_archives(out)}
    assert got == {("recsys", "1"), ("recsys", "2")}  # archive version = registry version
    info = B.build_info(out, "recsys", "2")
    assert info["source"] == "models:/recsys-hybrid/2"
    assert info["registry"]["requested"] == "models:/recsys-hybrid@challenger"
    assert info["registry"]["registered_model"] == "recsys-hybrid"
    # the downloaded artifact is byte-identical to the logged one
    assert info["artifact_sha256"] == B.build_info(out, "recsys", "1")["artifact_sha256"]
    assert cli(["build", "--out", str(out), "--model-uri", "models:/recsys-hybrid@nope"]) == 1
