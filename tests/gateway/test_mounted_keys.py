"""Keys and the pseudonym secret from files outside OUT (Kubernetes mounts them from a Secret,
read-only, shared by every replica): --keys-file / --pseudonym-secret-file."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import auth
from gateway.app import Gateway
from gateway.config import GatewayConfig, GatewayPaths
from gateway.logs import Pseudonymizer

REPO = Path(__file__).resolve().parents[2]


def _secret_folder(tmp_path: Path) -> tuple[Path, str]:
    """keys.json + pseudonym_secret in a read-only folder, as a mounted Secret is."""
    made = GatewayPaths.under(tmp_path / "keys")
    auth.init_keys(made)
    folder = tmp_path / "mounted"
    folder.mkdir()
    for name in ("keys.json", "pseudonym_secret"):
        (folder / name).write_bytes((made.root / name).read_bytes())
        (folder / name).chmod(0o444)
    folder.chmod(0o555)
    return folder, auth.read_key(made.client_key)


def test_gateway_reads_keys_and_secret_from_mounted_files(tmp_path):
    folder, client_key = _secret_folder(tmp_path)
    out = tmp_path / "out"
    cfg = GatewayConfig.from_env(out, upstream_url="http://127.0.0.1:9",
                                 keys_file=folder / "keys.json",
                                 pseudonym_secret_file=folder / "pseudonym_secret")
    gw = Gateway(cfg)
    assert gw.keys.identify(client_key) is not None
    assert gw.keys.identify("not-a-key") is None
    secret = (folder / "pseudonym_secret").read_text().strip().encode()
    assert gw.pseudo("42") == Pseudonymizer(secret)("42")
    # nothing was invented under OUT: every replica uses the one mounted secret
    assert not (out / "gateway" / "pseudonym_secret").exists()
    assert not (out / "gateway" / "keys.json").exists()


def test_a_named_pseudonym_secret_must_exist(tmp_path):
    folder, _ = _secret_folder(tmp_path)
    cfg = GatewayConfig.from_env(tmp_path / "out", upstream_url="http://127.0.0.1:9",
                                 keys_file=folder / "keys.json",
                                 pseudonym_secret_file=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="pseudonym secret .*missing"):
        Gateway(cfg)


def test_serve_refuses_a_missing_keys_file_with_its_path(tmp_path):
    missing = tmp_path / "nowhere" / "keys.json"
    r = subprocess.run([sys.executable, "-m", "gateway", "serve", "--out", str(tmp_path / "out"),
                        "--keys-file", str(missing), "--upstream-url", "http://127.0.0.1:9"],
                       cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 1 and str(missing) in r.stderr
