"""A local ``redis-server`` (Debian's package) for ``make serve``, the tests and the benchmarks.

Loopback only, nothing on disk (no RDB, no AOF: the store is a cache of recent events, the
durable copy is the training-event log), daemonized with a pid file in its run folder
(``OUT/redis`` for ``make serve``), where ``redis.json`` records its URL. ``python -m realtime
redis start|stop|status --out OUT``; ``start`` reuses a Redis already running for that folder.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from common.net import free_ports, log_tail, parse_port, port_in_use, wait_until

DEFAULT_PORT = 6379
STATE = "redis.json"


@dataclass(frozen=True)
class RedisInstance:
    url: str
    port: int
    pid: int
    run_dir: str


def available() -> bool:
    """Is ``redis-server`` on the PATH?"""
    return shutil.which("redis-server") is not None


def _ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def status(run_dir: str | Path) -> RedisInstance | None:
    """The Redis running for ``run_dir``, or None."""
    path = Path(run_dir) / STATE
    try:
        inst = RedisInstance(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return inst if _alive(inst.pid) and _ping(inst.port) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start(run_dir: str | Path, port: int = 0, *, timeout_s: float = 20.0) -> RedisInstance:
    """Start ``redis-server`` on 127.0.0.1:``port`` (0: a free port), or return the one already
    running for ``run_dir``. Raises RuntimeError (with the server's log) when it does not come
    up, FileNotFoundError when it is not installed."""
    run = Path(run_dir).resolve()
    running = status(run)
    if running is not None:
        return running
    if not available():
        raise FileNotFoundError("redis-server is not installed (Debian: apt-get install "
                                "redis-server)")
    port = port or free_ports(1)[0]
    if port_in_use("127.0.0.1", port):
        raise RuntimeError(f"port {port} is taken; choose another (REDIS_PORT / --port)")
    run.mkdir(parents=True, exist_ok=True)
    pidfile, logfile = run / "redis.pid", run / "redis.log"
    pidfile.unlink(missing_ok=True)
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", str(run), "--daemonize", "yes",
           "--pidfile", str(pidfile), "--logfile", str(logfile)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if r.returncode != 0:
        raise RuntimeError(f"redis-server did not start: {r.stderr.strip() or r.stdout.strip()}"
                           f"\n{log_tail(logfile)}")

    def up() -> int | None:
        if not _ping(port):
            return None
        try:
            return int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
    pid = wait_until(up, timeout=timeout_s, interval=0.05, log=logfile,
                     what=f"redis-server on port {port}", error=RuntimeError)
    inst = RedisInstance(f"redis://127.0.0.1:{port}/0", port, pid, str(run))
    (run / STATE).write_text(json.dumps(asdict(inst), indent=2) + "\n")
    return inst


def stop(run_dir: str | Path, timeout_s: float = 10.0) -> bool:
    """Stop the Redis of ``run_dir`` (``SHUTDOWN NOSAVE``, then SIGTERM/SIGKILL); True when one
    was running. Idempotent."""
    path = Path(run_dir) / STATE
    try:
        inst = RedisInstance(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return False
    was = _alive(inst.pid)
    if was:
        try:
            with socket.create_connection(("127.0.0.1", inst.port), timeout=1.0) as s:
                s.sendall(b"SHUTDOWN NOSAVE\r\n")
                s.recv(64)
        except OSError:
            pass
        deadline = time.monotonic() + timeout_s
        sent_term = False
        while _alive(inst.pid) and time.monotonic() < deadline:
            if not sent_term and time.monotonic() > deadline - timeout_s / 2:
                _signal(inst.pid, signal.SIGTERM)
                sent_term = True
            time.sleep(0.05)
        if _alive(inst.pid):
            _signal(inst.pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return was


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# ---- CLI --------------------------------------------------------------------------------------

def _default_port() -> int:
    value = os.environ.get("REDIS_PORT")
    return parse_port(value, "REDIS_PORT") if value else DEFAULT_PORT


def cmd_redis(a) -> int:
    run = Path(a.out) / "redis"
    if a.redis_cmd == "start":
        inst = start(run, a.port if a.port is not None else _default_port())
        print(inst.url if a.url_only else f"Redis is up (pid {inst.pid}): {inst.url}")
        return 0
    if a.redis_cmd == "stop":
        print("Redis stopped" if stop(run) else f"no Redis running under {run}")
        return 0
    inst = status(run)
    if inst is None:
        print(f"no Redis running under {run}")
        return 1
    print(json.dumps(asdict(inst), indent=2))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("redis", help="a local redis-server for make serve and the tests "
                                     "(OUT/redis)")
    rsub = p.add_subparsers(dest="redis_cmd", required=True)
    for name, text in (("start", "start one (or reuse the one running for OUT)"),
                       ("stop", "stop it (idempotent)"), ("status", "its pid, port and URL")):
        sp = rsub.add_parser(name, help=text)
        sp.add_argument("--out", required=True, help="run folder (OUT/redis)")
        if name == "start":
            sp.add_argument("--port", type=int, default=None,
                            help=f"port (default $REDIS_PORT or {DEFAULT_PORT}; 0: a free one)")
            sp.add_argument("--url-only", action="store_true", help="print only the URL")
        sp.set_defaults(fn=cmd_redis)


__all__ = ["RedisInstance", "available", "start", "stop", "status", "DEFAULT_PORT"]
