"""Running our image with Podman (or Docker) from Python: the tests, the container benchmark and
the chart's play test share these helpers.

Podman runs under the project's ``container/containers.conf`` (runc, cgroupfs, no default
ulimits: ../shared/NOTES.md); ``CONTAINER_ENGINE=docker`` uses Docker instead. Containers use
``--network=host``: their ports are the host's loopback ports, so every TorchServe port comes
from a variable and a container clashes with nothing.
"""
from __future__ import annotations

import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from common.net import free_ports, wait_for_http

REPO = Path(__file__).resolve().parents[1]
ENGINE = os.environ.get("CONTAINER_ENGINE", "podman")
IMAGE = "localhost/recsys:latest"
ENV = {**os.environ, "CONTAINERS_CONF": str(REPO / "container" / "containers.conf")} \
    if ENGINE == "podman" else dict(os.environ)


class EngineError(RuntimeError):
    pass


def engine(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run the engine; with ``check``, a non-zero exit raises with its output."""
    r = subprocess.run([ENGINE, *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise EngineError(f"{ENGINE} {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


@dataclass
class ServeContainer:
    """A running ``serve`` (SageMaker mode) container and its loopback ports."""

    name: str
    inference: int
    management: int
    metrics: int
    cold_start_s: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.inference}"

    def remove(self) -> None:
        engine("rm", "-f", self.name, check=False)


def wait_for_container(name: str, url: str, timeout: float, interval: float = 0.05) -> None:
    """Poll ``url`` until it answers 200 (common.net.wait_for_http); raise :class:`EngineError`
    with the end of container ``name``'s log when the container stops running or ``timeout``
    seconds pass first."""
    def running() -> bool:
        return engine("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true"

    def logs() -> str:
        r = engine("logs", name, check=False)
        return (r.stdout + r.stderr)[-4000:]

    wait_for_http(url, timeout=timeout, interval=interval, proc=running, log=logs,
                  what=f"container {name}", error=EngineError)


def run_serve(image: str, model_dir: Path, *, workers: int = 1, timeout: float = 240,
              prefix: str = "recsys") -> ServeContainer:
    """Start ``image serve`` with ``model_dir`` mounted at /opt/ml/model (read-only) on free
    loopback ports and wait for the first ``/ping`` 200 (the cold start it returns). A container
    that exits or does not answer in ``timeout`` is removed and raises with its log."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    inf, mgt, met, g1, g2 = free_ports(5)
    t0 = time.monotonic()
    engine("run", "-d", "--name", name, "--network=host", "-v", f"{model_dir}:/opt/ml/model:ro",
           "-e", f"SAGEMAKER_BIND_TO_PORT={inf}", "-e", f"TS_MANAGEMENT_PORT={mgt}",
           "-e", f"TS_METRICS_PORT={met}", "-e", f"TS_GRPC_INFERENCE_PORT={g1}",
           "-e", f"TS_GRPC_MANAGEMENT_PORT={g2}", "-e", f"SAGEMAKER_MODEL_SERVER_WORKERS={workers}",
           image, "serve")
    box = ServeContainer(name, inf, mgt, met, 0.0)
    try:
        wait_for_container(name, f"{box.url}/ping", timeout - (time.monotonic() - t0))
    except BaseException:
        box.remove()
        raise
    box.cold_start_s = time.monotonic() - t0
    return box


__all__ = ["ENGINE", "ENV", "IMAGE", "REPO", "EngineError", "ServeContainer", "engine", "run_serve",
           "wait_for_container"]
