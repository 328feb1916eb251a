"""Archive/serving configuration without starting TorchServe."""
from __future__ import annotations

import pytest
import yaml

from archives import build as B
from archives import server as S
from archives.properties import CONFIGS, properties_dict, render_config
from archives.store import MAR_RE, mar_name
from core.validation import MAX_BODY_BYTES


def test_ports_from_env(monkeypatch):
    for env in S.PORT_ENV.values():
        monkeypatch.delenv(env, raising=False)
    assert S.ports_from_env() == {"inference": 8080, "management": 8081, "metrics": 8082}
    monkeypatch.setenv("TS_INFERENCE_PORT", "9080")
    monkeypatch.setenv("TS_METRICS_PORT", "9082")
    assert S.ports_from_env() == {"inference": 9080, "management": 8081, "metrics": 9082}
    assert S.ports_from_env({"management": 9999})["management"] == 9999


def test_configs(tmp_path):
    dev = properties_dict(CONFIGS["dev"])
    prod = properties_dict(CONFIGS["prod"])
    assert dev["disable_token_authorization"] == "true"
    assert prod["disable_token_authorization"] == "false"
    for p in (dev, prod):
        assert p["enable_model_api"] == "true" and p["metrics_mode"] == "prometheus"
        # the handler's own limit (a JSON 413) stays under the frontend's (an empty 413)
        assert int(p["max_request_size"]) == 6 * 2**20 > MAX_BODY_BYTES
    assert "amazonaws" in prod["allowed_urls"] and "allowed_urls" not in dev
    assert dev["inference_address"].startswith("http://127.0.0.1")

    out = tmp_path / "config.properties"
    eff = render_config(CONFIGS["prod"], out, ports={"inference": 1, "management": 2, "metrics": 3},
                          host="127.0.0.1", metrics_yaml=tmp_path / "m.yaml", store=tmp_path / "store")
    text = out.read_text()
    assert "inference_address=http://127.0.0.1:1\n" in text
    assert "metrics_address=http://127.0.0.1:3\n" in text
    assert f"metrics_config={tmp_path / 'm.yaml'}\n" in text
    assert f"model_store={tmp_path / 'store'}\n" in text
    # escapes of other values are copied verbatim (Java properties: \\. is a regex \.)
    assert r"allowed_urls=https://recsys-model-store\\.s3\\.amazonaws\\.com" in text
    assert eff["disable_token_authorization"] == "false"


def test_metrics_yaml_declares_handler_metrics():
    from handlers.recommender import METRIC_DEFS

    y = yaml.safe_load(S.METRICS_YAML.read_text())
    declared = {m["name"]: (kind, m) for kind, ms in y["model_metrics"].items() for m in ms}
    for name, (unit, extra, mtype) in METRIC_DEFS.items():
        kind, m = declared[name]
        assert kind == mtype.name.lower()
        assert m["dimensions"] == ["ModelName", "ModelVersion", "Level"] + ([extra] if extra else [])
        assert m["unit"] == unit
    # TorchServe's own defaults stay
    assert "HandlerTime" in declared and "ts_inference_latency_microseconds" in str(y["ts_metrics"])


def test_model_config_yaml():
    d = B.model_config_yaml(B.ArchiveConfig(batch_size=8, max_batch_delay_ms=200, min_workers=1, max_workers=1))
    assert d["batchSize"] == 8 and d["maxBatchDelay"] == 200 and d["minWorkers"] == 1
    assert d["responseTimeout"] > 0 and d["handler"]["artifact_dir"] == "artifact"
    with pytest.raises(ValueError, match="100 ms"):
        B.model_config_yaml(B.ArchiveConfig(batch_size=8, max_batch_delay_ms=0))
    assert B.model_config_yaml(B.ArchiveConfig(batch_size=1, max_batch_delay_ms=0))["batchSize"] == 1
    with pytest.raises(ValueError):
        B.model_config_yaml(B.ArchiveConfig(min_workers=3, max_workers=2))


def test_import_closure_is_small_and_self_contained():
    files = {f.relative_to(B.REPO).as_posix() for f in B.import_closure([B.HANDLER_ENTRY])}
    assert {"handlers/__init__.py", "handlers/recommender.py", "core/engine.py",
            "core/validation.py"} <= files
    # nothing from the ETL/Spark or training loop side
    assert not any(f.startswith(("etl/", "benchmarks/", "archives/")) for f in files)
    assert "training/train.py" not in files and "training/tracking.py" not in files


def test_archive_names():
    assert mar_name("recsys", 3) == "recsys-v3.mar"
    assert MAR_RE.match("recsys-v3.mar").group("version") == "3"


def test_default_registered_model_is_trainings():
    registry = pytest.importorskip("common.registry")
    assert B.DEFAULT_REGISTERED_MODEL == registry.MODEL_NAME
