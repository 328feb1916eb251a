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

from archives import build as B
from archives.client import TorchServeClient
from archives.server import ServerState
from archives.testing import make_random_artifact, running_server

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
    out = root / "out"
    for version, seed in (("1", 0), ("2", 1)):
        art = make_random_artifact(root / f"artifact-v{version}", n_users=60, n_items=500,
                                   seed=seed, model_version=version)
        B.build_from_folder(art, out, version=version, model_name=MODEL,
                            config=B.ArchiveConfig(batch_size=8, max_batch_delay_ms=200 if
                                                 version == "1" else 5,
                                                 min_workers=1, max_workers=1),
                            archive_format="zip-store")
    with running_server(out, config="prod", models={MODEL: f"{MODEL}-v1.mar"}) as state:
        yield Served(out=out, state=state, client=TorchServeClient(state))
