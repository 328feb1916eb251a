"""The dependency files agree: every pin of requirements*.txt is in requirements.lock at the
same version (a pin added on a branch without `make lock` fails here, not in CI's install), the
serving image's list is a subset of the runtime list, and the Dockerfile is clean under hadolint."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = PIN.match(line.strip())
        if m:
            out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
        elif line.strip() and not line.strip().startswith("#"):
            raise AssertionError(f"{path.name}: not an exact pin: {line!r}")
    return out


def public(version: str) -> str:
    return version.split("+", 1)[0]  # torch==2.13.0+cpu is torch 2.13.0


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-test.txt", "requirements-serving.txt"])
def test_every_pin_is_locked_at_its_version(name):
    lock = pins(REPO / "requirements.lock")
    missing = {k: v for k, v in pins(REPO / name).items() if public(lock.get(k, "")) != v}
    assert not missing, f"{name} pins {missing} but requirements.lock has " \
                        f"{ {k: lock.get(k) for k in missing} }: run `make lock`"


def test_serving_is_a_subset_of_runtime():
    runtime, serving = pins(REPO / "requirements.txt"), pins(REPO / "requirements-serving.txt")
    assert {k: v for k, v in serving.items() if runtime.get(k) != v} == {}


def test_lock_takes_the_cpu_torch_build():
    assert pins(REPO / "requirements.lock")["torch"] == "2.13.0+cpu"
    assert not any(k.startswith("nvidia-") for k in pins(REPO / "requirements.lock"))


def test_dockerfile_is_clean_under_hadolint():
    hadolint = Path(sys.executable).with_name("hadolint")
    r = subprocess.run([str(hadolint), str(REPO / "Dockerfile")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
