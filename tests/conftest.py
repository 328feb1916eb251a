"""Fixtures shared by all stages' tests: one real local SparkSession for the whole session."""
from __future__ import annotations

from pathlib import Path

import pytest

from common.config import SparkConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def spark():
    from etl.spark import get_spark

    session = get_spark(SparkConfig(shuffle_partitions=4, driver_memory="2g"))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def ml_latest_small() -> Path:
    path = SHARED_DATA / "ml-latest-small"
    if not (path / "ratings.csv").exists():
        pytest.fail(f"MovieLens sample not found at {path} (tests read ../shared/data)")
    return path
