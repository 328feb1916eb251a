"""Test and benchmark helper: the real gateway as a child process on free loopback ports.

    gw = GatewayProc(out, ["--deadline-ms", "300"]).start()   # `python -m gateway serve`
    ... gw.url, gw.metrics(), gw.signal(signal.SIGHUP) ...
    gw.stop()                                                # SIGTERM: drains, flushes logs
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from gateway.config import GatewayPaths

REPO = Path(__file__).resolve().parents[1]


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
        self.paths.state.unlink(missing_ok=True)
        self.log_path = self.paths.root / f"test-gateway-{time.time():.0f}.log"
        env = {**os.environ, **self.env, "PYTHONPATH": str(REPO)}
        env.pop("GATEWAY_PORT", None)
        env.pop("GATEWAY_METRICS_PORT", None)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--out", str(self.out), "--port", "0",
             "--metrics-port", "0", *self.args], cwd=REPO, env=env, stdout=self._log,
            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited ({self.proc.returncode}):\n{self.log()}")
            try:
                st = json.loads(self.paths.state.read_text())
                if st["pid"] == self.proc.pid and \
                        requests.get(st["url"] + "/readyz", timeout=2).status_code == 200:
                    self.state = st
                    return self
            except (OSError, ValueError, KeyError, requests.RequestException):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"gateway not ready within {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)
        finally:
            self._log.close()

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def metrics(self) -> str:
        return requests.get(self.metrics_url, timeout=10).text


def metric_value(text: str, name: str, **labels) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total




__all__ = ["GatewayProc", "metric_value"]
