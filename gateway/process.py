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
from pathlib import Path

import psutil

from common.net import wait_for_http
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


def launch(paths: GatewayPaths, argv: list[str], *, log: Path, env: dict[str, str] | None = None,
           new_session: bool = True, timeout: float = 60.0,
           repo: Path = REPO) -> tuple[subprocess.Popen, dict]:
    """Start ``python -m gateway serve <argv>`` (the repository on PYTHONPATH, ``env`` added,
    output appended to ``log``) and wait until it has written ``gateway.json`` for its own pid
    and its /readyz answers 200. Returns (the child, gateway.json). A child that exits first
    raises at once with the end of ``log``; one not ready in ``timeout`` is stopped and raises.
    ``repo``: the checkout whose gateway runs (a benchmark may compare another one).
    The one launcher of the gateway: ``serve --detach``, the test kit's GatewayProc and the
    benchmarks."""
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.state.unlink(missing_ok=True)
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(
        [str(repo)] + ([child_env["PYTHONPATH"]] if child_env.get("PYTHONPATH") else []))
    with open(log, "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", *argv], cwd=repo,
                                env=child_env, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=new_session)

    def url() -> str | None:
        st = state(paths)
        return st["url"] + "/readyz" if st and st.get("pid") == proc.pid and "url" in st else None

    try:
        wait_for_http(url, timeout=timeout, proc=proc, log=log, what="the gateway",
                      error=ProcessError)
    except ProcessError:
        if proc.poll() is None:
            terminate(proc)
        raise
    return proc, state(paths)


def terminate(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM (the gateway drains and flushes its logs), then SIGKILL after ``timeout``."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def start_detached(paths: GatewayPaths, argv: list[str], timeout: float = 60.0) -> dict:
    """``python -m gateway serve <argv>`` in a new session; returns gateway.json once ready."""
    st = running(paths)
    if st:
        raise ProcessError(f"a gateway is already running for {paths.out} (pid {st['pid']}, "
                           f"{st['url']}); stop it first: python -m gateway stop --out {paths.out}")
    return launch(paths, argv, log=paths.log, timeout=timeout)[1]


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


__all__ = ["launch", "terminate", "start_detached", "stop", "running", "state", "ProcessError"]
