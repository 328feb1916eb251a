"""Fixtures shared by all stages' tests: one real local SparkSession for the whole session, and
the MovieLens sample from ``../shared/data`` (skipped when absent, unless CI asks for it).

Test lanes (docs/development.md): a test whose fixture closure holds one of
``INTEGRATION_FIXTURES`` starts a real component (Java, TorchServe, Spark, Podman, Prometheus)
and gets the ``integration`` marker; ``make test-fast`` runs the rest (``-m "not integration"``).
A test that starts such a component in its own body asks for the fixture of what it needs
(``java``, ``promtool``), so that the rule stays this one table.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from etl.config import SparkConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# .ci/run sets this: there a missing ../shared/data is a failure, so CI runs every test
REQUIRE_SHARED_DATA = "RECSYS_REQUIRE_SHARED_DATA"

# fixture name -> the real component it starts or needs. Every fixture of that name in tests/
# starts it; a fixture or test that starts TorchServe or Spark without one of these names asks
# for ``java``.
INTEGRATION_FIXTURES: dict[str, str] = {
    "java": "Java 17: a TorchServe or Spark the test or one of its fixtures starts",
    "spark": "Spark: one local SparkSession for the session (Java)",
    "served": "TorchServe over test archives (tests/handlers, tests/helm); the serving image "
              "under Podman (tests/container)",
    "prod": "TorchServe with token authorization on, behind the gateway (tests/gateway)",
    "stack": "TorchServe and the gateway process (tests/gateway); with the drift daemon and "
             "Prometheus (tests/monitoring)",
    "image": "the recsys image, built by `make image` and run by Podman",
    "release": "the chart played by `podman kube play` (tests/helm)",
    "promtool": "promtool, Prometheus' rule and config checker",
}


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``integration`` every test whose fixtures (the whole closure) start a component."""
    for item in items:
        components = [name for name in getattr(item, "fixturenames", ())
                      if name in INTEGRATION_FIXTURES]
        if components:
            item.add_marker(pytest.mark.integration(*components))


@pytest.fixture(scope="session")
def java() -> str:
    """The ``java`` executable, which TorchServe and Spark run on (a failure when missing)."""
    exe = shutil.which("java")
    if exe is None:
        pytest.fail("Java 17 is required for TorchServe and Spark (see README)")
    return exe


@pytest.fixture(scope="session")
def promtool() -> Callable[..., subprocess.CompletedProcess]:
    """``promtool(*args)``: Prometheus' checker run with ``args`` (a failure when missing)."""
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: apt-get install prometheus (.ci/run installs it)")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)

    return run


@pytest.fixture(scope="session")
def redis_bin() -> str:
    """``redis-server`` (the recent-event store's production backend; a failure when missing,
    so CI cannot pass by skipping the real-time suite)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed: apt-get install redis-server (.ci/run "
                    "installs it)")
    return exe


@pytest.fixture(scope="session")
def redis_url(redis_bin, tmp_path_factory) -> str:
    """One real Redis on a free loopback port for the session (``realtime.redis_server``)."""
    from realtime import redis_server

    run = tmp_path_factory.mktemp("redis")
    inst = redis_server.start(run, 0)
    yield inst.url
    redis_server.stop(run)


@pytest.fixture(scope="session")
def spark(java):
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
