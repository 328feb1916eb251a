"""The fault-injection settings (core/faults.py) and ``python -m archives build --faults``."""
from __future__ import annotations

import zipfile

import pytest
import yaml

from archives import build as B
from archives.__main__ import main as cli
from archives.store import list_archives, model_store
from core.faults import Faults, parse_faults
from testkit.archives import make_random_artifact


def test_absent_means_no_faults():
    assert parse_faults(None) is None
    assert "faults" not in B.model_config_yaml(B.ArchiveConfig())["handler"]


@pytest.mark.parametrize("text,normalized", [
    ('{"error_user_prefix": "fault-"}', {"error_user_prefix": "fault-"}),
    ('{"latency_ms": 25, "error_rate": 0.1, "seed": 3, "allow_header": true}',
     {"latency_ms": 25.0, "error_rate": 0.1, "seed": 3, "allow_header": True}),
])
def test_valid_settings(text, normalized):
    f = parse_faults(text)
    assert isinstance(f, Faults) and f.to_dict() == normalized
    assert parse_faults(f.to_dict()) == f  # what the yaml holds reads back the same
    cfg = B.model_config_yaml(B.ArchiveConfig(faults=normalized))
    assert cfg["handler"]["faults"] == normalized


@pytest.mark.parametrize("text,words", [
    ("not json", "JSON object"), ("[1]", "JSON object"), ("{}", "empty"),
    ('{"error_rat": 0.1}', "unknown fault setting"), ('{"error_rate": 2}', "error_rate"),
    ('{"latency_ms": -1}', "latency_ms"), ('{"latency_ms": "50"}', "latency_ms"),
    ('{"error_user_prefix": ""}', "error_user_prefix"), ('{"seed": 1.5}', "seed"),
    ('{"allow_header": "yes"}', "allow_header"),
])
def test_invalid_settings_fail_clearly(text, words):
    with pytest.raises(ValueError, match=words):
        parse_faults(text)


def test_header_values():
    f = Faults(allow_header=True)
    assert f.doomed("u", "error") and f.doomed("u", "latency=5, ERROR")
    assert not f.doomed("u", "latency=5") and not f.doomed("u", None)
    assert f.extra_latency_s("latency=250") == 0.25 and f.extra_latency_s("latency=x") == 0.0
    assert Faults().extra_latency_s("latency=250") == 0.0 and not Faults().doomed("u", "error")
    assert Faults(error_user_prefix="fault-").doomed("fault-9", None)
    assert not Faults(error_user_prefix="fault-").doomed("9", None)


def test_build_cli_writes_and_validates_faults(tmp_path, capsys):
    art = make_random_artifact(tmp_path / "artifact", n_users=10, n_items=50)
    out = tmp_path / "out"
    base = ["build", "--out", str(out), "--artifact", str(art), "--version", "3",
            "--min-workers", "1"]
    assert cli(base + ["--faults", '{"error_rate": 1.5}']) == 1
    assert "faults.error_rate must be a number from 0 to 1" in capsys.readouterr().err
    assert cli(base + ["--faults", "{error_rate: 1}"]) == 1
    assert "faults must be a JSON object" in capsys.readouterr().err
    assert not list_archives(out)  # nothing built
    assert cli(base + ["--faults", '{"error_user_prefix": "fault-", "latency_ms": 5}']) == 0
    with zipfile.ZipFile(model_store(out) / "recsys-v3.mar") as z:
        cfg = yaml.safe_load(z.read("model-config.yaml"))
        assert "core/faults.py" in z.namelist()
    assert cfg["handler"]["faults"] == {"latency_ms": 5.0, "error_user_prefix": "fault-"}
    assert B.build_info(out, "recsys", "3")["model_config"]["handler"]["faults"] == \
        cfg["handler"]["faults"]
