"""The container engine for tests: Podman (or Docker) under the project's containers.conf, and
the image that `make image` builds (reused when its inputs are unchanged). Shared by
tests/container (the image) and tests/helm/test_play.py (the chart, played by Podman)."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from testkit.container_engine import ENGINE, ENV, IMAGE, REPO, EngineError
from testkit.container_engine import engine as _engine


def engine(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """testkit.container_engine.engine; a non-zero exit (``check``) fails the test with its output."""
    try:
        return _engine(*args, timeout=timeout, check=check)
    except EngineError as e:
        raise AssertionError(str(e)) from None


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


__all__ = ["ENGINE", "ENV", "IMAGE", "REPO", "engine", "require_engine", "build_image"]
