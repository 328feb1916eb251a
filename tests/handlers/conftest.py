"""The handler's test archive, unpacked as a worker sees it (``model_dir``, for the in-process
tests), and one real TorchServe for the serving tests (session scope: start-up takes seconds).

Two archives of random test artifacts are built: v1 (served at start; batchSize 8,
maxBatchDelay 200 ms, one worker, so that 8 concurrent requests form one batch) and v2
(registered by the version tests). The server runs the prod configuration (token
authorization on) on free loopback ports and is always stopped. Tests that change which
versions are registered take a server of their own (``own_served``), so that the shared one
stays as it started and each test also runs alone.
"""
from __future__ import annotations

import contextlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from archives.client import TorchServeClient
from archives.server import ServerState
from testkit.archives import build_random_versions, running_server

MODEL = "recsys"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A real (shipped: no faults) archive of a random artifact, unpacked as TorchServe unpacks
    it for a worker (read only: tests build their own to change it)."""
    root = tmp_path_factory.mktemp("isolation")
    out = build_random_versions(root, versions=(("1", 0),))
    target = root / "model"
    with zipfile.ZipFile(out / "model-store" / "recsys-v1.mar") as z:
        z.extractall(target)
        assert "faults" not in yaml.safe_load(z.read("model-config.yaml"))["handler"]
    return target


@dataclass
class Served:
    out: Path
    state: ServerState
    client: TorchServeClient
    model: str = MODEL


@contextlib.contextmanager
def serving(root: Path) -> Iterator[Served]:
    """v1 and v2 built under ``root``; TorchServe (prod config) serving v1 until the end."""
    out = build_random_versions(root, model_name=MODEL, delay_ms={"1": 200, "2": 5})
    with running_server(out, config="prod", models={MODEL: f"{MODEL}-v1.mar"}) as state:
        yield Served(out=out, state=state, client=TorchServeClient(state))


@pytest.fixture(scope="session")
def served(java, tmp_path_factory) -> Iterator[Served]:
    """The shared server: tests leave it with the versions, default and workers it started with."""
    with serving(tmp_path_factory.mktemp("serving")) as s:
        yield s


@pytest.fixture
def own_served(java, tmp_path) -> Iterator[Served]:
    """A server of the test's own, for a test that registers, switches or retires versions."""
    with serving(tmp_path) as s:
        yield s
