"""One real TorchServe for the serving tests (session scope: start-up takes seconds).

Two archives of random test artifacts are built: v1 (served at start; batchSize 8,
maxBatchDelay 200 ms, one worker, so that 8 concurrent requests form one batch) and v2
(registered by the version tests). The server runs the prod configuration (token
authorization on) on free loopback ports and is always stopped.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from archives.client import TorchServeClient
from archives.server import ServerState
from testkit.archives import build_random_versions, running_server

MODEL = "recsys"


@dataclass
class Served:
    out: Path
    state: ServerState
    client: TorchServeClient
    model: str = MODEL


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> Served:
    if shutil.which("java") is None:
        pytest.fail("Java 17 is required for TorchServe (see README)")
    root = tmp_path_factory.mktemp("serving")
    out = build_random_versions(root, model_name=MODEL, delay_ms={"1": 200, "2": 5})
    with running_server(out, config="prod", models={MODEL: f"{MODEL}-v1.mar"}) as state:
        yield Served(out=out, state=state, client=TorchServeClient(state))
