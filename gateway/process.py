"""Start the gateway in the background (``serve --detach``), wait for it, stop it.

The serving process itself writes ``OUT/gateway/gateway.json`` (pid, bound ports, URLs) once it
listens; ``stop`` sends SIGTERM (the gateway drains in-flight requests and flushes its logs),
waits, and kills only that pid if it does not exit.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

from gateway.config import GatewayPaths

REPO = Path(__file__).resolve().parents[1]


class ProcessError(RuntimeError):
    pass


def state(paths: GatewayPaths) -> dict | None:
    try:
        return json.loads(paths.state.read_text())
    except (OSError, ValueError):
        return None


def _is_gateway(pid: int) -> bool:
    try:
        p = psutil.Process(pid)
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE and \
            "gateway" in " ".join(p.cmdline())
    except psutil.Error:
        return False


def running(paths: GatewayPaths) -> dict | None:
    st = state(paths)
    return st if st and _is_gateway(int(st["pid"])) else None


def start_detached(paths: GatewayPaths, argv: list[str], timeout: float = 60.0) -> dict:
    """``python -m gateway serve <argv>`` in a new session; returns gateway.json once ready."""
    st = running(paths)
    if st:
        raise ProcessError(f"a gateway is already running for {paths.out} (pid {st['pid']}, "
                           f"{st['url']}); stop it first: python -m gateway stop --out {paths.out}")
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.state.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    with open(paths.log, "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", *argv], cwd=REPO,
                                env=env, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ProcessError(f"the gateway exited during start-up (code {proc.returncode}); "
                               f"last lines of {paths.log}:\n{tail(paths.log)}")
        st = state(paths)
        if st and st.get("pid") == proc.pid:
            try:
                r = requests.get(st["url"] + "/readyz", timeout=2)
                if r.status_code == 200:
                    return st
            except requests.RequestException:
                pass
        time.sleep(0.2)
    stop(paths)
    raise ProcessError(f"the gateway did not become ready within {timeout:.0f} s\n{tail(paths.log)}")


def stop(paths: GatewayPaths, timeout: float = 30.0) -> bool:
    """SIGTERM the gateway of ``paths``; False when none was running."""
    st = state(paths)
    if not st or not _is_gateway(int(st["pid"])):
        paths.state.unlink(missing_ok=True)
        return False
    pid = int(st["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
        psutil.Process(pid).wait(timeout)
    except psutil.TimeoutExpired:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass
    paths.state.unlink(missing_ok=True)
    return True


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


__all__ = ["start_detached", "stop", "running", "state", "ProcessError"]
