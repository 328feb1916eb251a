"""Fixtures shared by all stages' tests: one real local SparkSession for the whole session, and
the MovieLens sample from ``../shared/data`` (skipped when absent, unless CI asks for it)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from etl.config import SparkConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# .ci/run sets this: there a missing ../shared/data is a failure, so CI runs every test
REQUIRE_SHARED_DATA = "RECSYS_REQUIRE_SHARED_DATA"


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
        message = (f"needs the MovieLens sample at {path} (ratings.csv): the folder "
                   f"../shared/data/ml-latest-small beside the repository")
        if os.environ.get(REQUIRE_SHARED_DATA) == "1":
            pytest.fail(message + f" ({REQUIRE_SHARED_DATA}=1)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def ml_latest_small_out(spark, ml_latest_small, tmp_path_factory) -> Path:
    """One ETL run of ml-latest-small (protocol P1) for the whole session: ``OUT`` with
    ``OUT/etl``. Tests that need more (a model, archives) build it under their own folder."""
    from etl.__main__ import main

    out = tmp_path_factory.mktemp("mls")
    assert main(["run", "--dataset", str(ml_latest_small), "--out", str(out),
                 "--spark-shuffle-partitions", "4"]) == 0
    return out


@pytest.fixture
def moto_aws(monkeypatch):
    """moto's stand-in for every AWS control plane, with fake credentials and no endpoint
    override left from the environment (boto3 would otherwise send requests elsewhere)."""
    from moto import mock_aws

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    with mock_aws():
        yield
