"""The container engine for tests: Podman (or Docker) under the project's containers.conf, and
the image that `make image` builds (reused when its inputs are unchanged). Shared by
tests/container (the image) and tests/helm/test_play.py (the chart, played by Podman)."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENGINE = os.environ.get("CONTAINER_ENGINE", "podman")
IMAGE = "localhost/recsys:latest"
ENV = {**os.environ, "CONTAINERS_CONF": str(REPO / "container" / "containers.conf")} \
    if ENGINE == "podman" else dict(os.environ)


def engine(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run the engine; with ``check``, a non-zero exit fails the test with its output."""
    r = subprocess.run([ENGINE, *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{ENGINE} {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def require_engine(name: str = ENGINE) -> None:
    """Skip when the engine is missing (a failure under CI, which installs it: .ci/run)."""
    if shutil.which(name) is None:
        msg = f"{name} is not installed (.ci/run installs podman on Debian)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def build_image() -> str:
    """`make image` (a no-op when the image's inputs are unchanged); returns the image name."""
    require_engine()
    t0 = time.monotonic()
    r = subprocess.run(["make", "image"], cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f"make image: {time.monotonic() - t0:.0f} s: {r.stdout.strip().splitlines()[-1]}")
    return IMAGE
