"""Ports and start-up waits of our local servers: one implementation for every stage.

* :func:`parse_port` reads a port from a variable, a flag or a config value and checks its range
  (every ``*_PORT`` variable of docs/contracts.md goes through it);
* :func:`free_port` / :func:`free_ports` / :func:`port_in_use` pick and check loopback ports;
* :func:`wait_until` / :func:`wait_for_http` poll until a server answers, failing fast with the
  end of its log when the process that should answer has died.

Used by TorchServe's lifecycle (archives/server.py), the container entry point, the gateway's
launcher, the local Prometheus and the test kit. Standard library plus ``requests`` only.
"""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, TypeVar

import requests

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------------

def parse_port(value: str | int, name: str, *, allow_zero: bool = False) -> int:
    """``value`` as a port number; ValueError naming ``name`` (e.g. the variable) when it is not
    an integer in 1..65535 (0..65535 with ``allow_zero``: "any free port")."""
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a port number") from None
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ValueError(f"{name}={port} is out of range")
    return port


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS's choice); a race with other processes remains."""
    return free_ports(1, host)[0]


def free_ports(n: int = 3, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports (all held open together while choosing, so they differ)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def port_in_use(host: str, port: int) -> bool:
    """Whether binding ``host:port`` fails now (SO_REUSEADDR on: TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


# --------------------------------------------------------------------------------------------
# Waiting for a server
# --------------------------------------------------------------------------------------------

class WaitError(RuntimeError):
    """The awaited condition did not hold in time, or the process behind it exited."""


Alive = Callable[[], bool] | subprocess.Popen | None
Log = Path | Callable[[], str] | None


def log_tail(path: Path, n: int = 30) -> str:
    """The last ``n`` lines of a log file ("(no log)" when it cannot be read)."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _alive(proc: Alive) -> tuple[bool, str]:
    if proc is None:
        return True, ""
    if isinstance(proc, subprocess.Popen):
        code = proc.poll()
        return code is None, f" (exit code {code})"
    return bool(proc()), ""


def _log(log: Log) -> str:
    if log is None:
        return ""
    text = log_tail(log) if isinstance(log, Path) else log()
    return f"\n{text}" if text else ""


def wait_until(probe: Callable[[], T | None], *, timeout: float, interval: float = 0.2,
               proc: Alive = None, log: Log = None, what: str = "the server",
               error: type[Exception] = WaitError) -> T:
    """Call ``probe`` every ``interval`` s until it returns something other than None/False and
    return that. ``proc`` (a Popen, or a callable saying whether it still runs) is checked before
    each try: a dead process raises at once instead of after ``timeout``. Both failures raise
    ``error`` with the end of ``log`` (a file, or a callable returning text)."""
    deadline = time.monotonic() + timeout
    while True:
        running, detail = _alive(proc)
        if not running:
            raise error(f"{what} exited during start-up{detail}{_log(log)}")
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise error(f"{what} was not ready within {timeout:.0f} s{_log(log)}")
        time.sleep(interval)


def http_status(url: str, *, headers: dict[str, str] | None = None,
                timeout: float = 2.0) -> requests.Response | None:
    """GET ``url``; None when no HTTP answer came (refused, reset, timed out)."""
    try:
        return requests.get(url, headers=headers or {}, timeout=timeout)
    except requests.RequestException:
        return None


def wait_for_http(url: str | Callable[[], str | None], *, timeout: float, status: int = 200,
                  headers: dict[str, str] | None = None, request_timeout: float = 2.0,
                  interval: float = 0.2, proc: Alive = None, log: Log = None,
                  what: str = "the server", error: type[Exception] = WaitError
                  ) -> requests.Response:
    """Poll ``url`` until a GET answers ``status``; return that response. ``url`` may be a
    callable giving the URL once it is known (e.g. from a state file the server writes), or
    None before. ``proc``, ``log``, ``what`` and ``error``: as in :func:`wait_until`."""
    def probe() -> requests.Response | None:
        u = url() if callable(url) else url
        r = http_status(u, headers=headers, timeout=request_timeout) if u else None
        return r if r is not None and r.status_code == status else None

    return wait_until(probe, timeout=timeout, interval=interval, proc=proc, log=log, what=what,
                      error=error)


__all__ = ["parse_port", "free_port", "free_ports", "port_in_use", "WaitError", "log_tail",
           "wait_until", "http_status", "wait_for_http"]
