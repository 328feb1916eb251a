"""Test and benchmark helper: the real gateway as a child process on free loopback ports.

    gw = GatewayProc(out, ["--deadline-ms", "300"]).start()   # `python -m gateway serve`
    ... gw.url, gw.metrics(), gw.signal(signal.SIGHUP) ...
    gw.stop()                                                # SIGTERM: drains, flushes logs

Started by the gateway's own launcher (gateway.process.launch, as ``serve --detach`` is), but
as a child of this process in its session, so tests can signal it and read its exit code.
Metrics text: common.promtext.metric_value.
"""
from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from gateway import process
from gateway.config import GatewayPaths


@dataclass
class GatewayProc:
    """`python -m gateway serve` as a child process (so tests can signal it)."""

    out: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    """Variables added to the child's environment (e.g. GATEWAY_SHUTDOWN_GRACE_S)."""
    proc: subprocess.Popen | None = None
    state: dict | None = None
    log_path: Path | None = None

    @property
    def paths(self) -> GatewayPaths:
        return GatewayPaths.under(self.out)

    @property
    def url(self) -> str:
        return self.state["url"]

    @property
    def metrics_url(self) -> str:
        return self.state["metrics_url"]

    def start(self, timeout: float = 90.0) -> "GatewayProc":
        self.log_path = self.paths.root / f"test-gateway-{time.time():.0f}.log"
        # --port 0 / --metrics-port 0 are the flags; variables of the caller's shell must not win
        env = {**self.env, "GATEWAY_PORT": "", "GATEWAY_METRICS_PORT": ""}
        self.proc, self.state = process.launch(
            self.paths, ["--out", str(self.out), "--port", "0", "--metrics-port", "0", *self.args],
            log=self.log_path, env=env, new_session=False, timeout=timeout)
        return self

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        return process.terminate(self.proc, timeout)

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def metrics(self) -> str:
        return requests.get(self.metrics_url, timeout=10).text


__all__ = ["GatewayProc"]
