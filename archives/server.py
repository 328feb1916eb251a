"""Start, watch and stop a local TorchServe on the archives under ``OUT/model-store``.

Layout (everything under ``OUT``)::

    OUT/model-store/<name>-v<version>.mar   archives (python -m archives build)
    OUT/torchserve/                        the run folder = TorchServe's working directory
        config.properties                  rendered from archives/config/{dev,prod}.properties
        metrics.yaml                       copy of archives/metrics.yaml
        key_file.json                      written by TorchServe when token auth is on
        server.json                        what `serve` started (pid, ports, config)
        logs/                              TorchServe logs (LOG_LOCATION / METRICS_LOCATION)
        tmp/                               TMPDIR/TEMP of this instance: TorchServe's pid file,
                                           worker sockets and unpacked archives live here, so
                                           several instances never collide on /tmp/.model_server.pid

The archives in the store are read by :mod:`archives.store`; config.properties is rendered by
:mod:`archives.properties`; this module holds the lifecycle (run folder, ports, start, wait, stop).

TorchServe is started with its own launcher (``python -m ts.model_server --start --ts-config
... --model-store ... --ncs --models ...``), which forks the Java frontend and returns.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import psutil

from archives import probe
from archives.properties import CONFIGS, address_host, properties_dict, render_config
from archives.store import latest_archives, model_store
from core.jsonio import write_json
from common.net import free_port, log_tail, parse_port, port_in_use, wait_until

PACKAGE_DIR = Path(__file__).resolve().parent
METRICS_YAML = PACKAGE_DIR / "metrics.yaml"
PORT_ENV = {"inference": "TS_INFERENCE_PORT", "management": "TS_MANAGEMENT_PORT",
            "metrics": "TS_METRICS_PORT"}
DEFAULT_PORTS = {"inference": 8080, "management": 8081, "metrics": 8082}


class ServerError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# The run folder
# --------------------------------------------------------------------------------------------

def run_dir(out: str | Path) -> Path:
    return Path(out).expanduser().resolve() / "torchserve"


def state_file(out: str | Path) -> Path:
    return run_dir(out) / "server.json"


# --------------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------------

def ports_from_env(overrides: dict[str, int | None] | None = None) -> dict[str, int]:
    """Ports: explicit overrides > TS_INFERENCE_PORT / TS_MANAGEMENT_PORT / TS_METRICS_PORT >
    8080 / 8081 / 8082."""
    out = {}
    for kind, env in PORT_ENV.items():
        value = (overrides or {}).get(kind) or os.environ.get(env) or DEFAULT_PORTS[kind]
        try:
            out[kind] = parse_port(value, env)
        except ValueError as e:
            raise ServerError(str(e)) from None
    if len(set(out.values())) != 3:
        raise ServerError(f"inference, management and metrics ports must differ: {out}")
    return out


# --------------------------------------------------------------------------------------------
# State of a started server
# --------------------------------------------------------------------------------------------

@dataclass
class ServerState:
    out: str
    pid: int
    host: str
    ports: dict[str, int]
    token_auth: bool
    config: str
    models: dict[str, str] = field(default_factory=dict)  # name -> archive file loaded at start
    started_at: float = 0.0
    grpc_ports: dict[str, int] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return run_dir(self.out)

    @property
    def client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "[::]") else self.host

    def url(self, kind: str) -> str:
        return f"http://{self.client_host}:{self.ports[kind]}"

    @property
    def inference_url(self) -> str:
        return self.url("inference")

    @property
    def management_url(self) -> str:
        return self.url("management")

    @property
    def metrics_url(self) -> str:
        return self.url("metrics")

    @property
    def key_file(self) -> Path:
        return self.run_dir / "key_file.json"

    def keys(self) -> dict[str, str]:
        """{"inference": ..., "management": ..., "API": ...}; empty without token auth."""
        if not self.token_auth:
            return {}
        data = json.loads(self.key_file.read_text())
        return {k: v["key"] for k, v in data.items() if isinstance(v, dict) and "key" in v}

    def alive(self) -> bool:
        try:
            p = psutil.Process(self.pid)
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE and \
                "org.pytorch.serve.ModelServer" in " ".join(p.cmdline())
        except psutil.Error:
            return False

    def save(self) -> None:
        write_json(state_file(self.out), asdict(self))

    @classmethod
    def load(cls, out: str | Path) -> "ServerState":
        p = state_file(out)
        if not p.exists():
            raise ServerError(f"no TorchServe started under {Path(out)} ({p} is missing); start "
                              f"one with: python -m archives serve --out {out}")
        return cls(**json.loads(p.read_text()))


def _log_tail(rd: Path, n: int = 40) -> str:
    """The end of each of TorchServe's logs under the run folder ``rd`` that exists."""
    return "\n".join(f"--- {p} (last {n} lines)\n" + log_tail(p, n)
                     for p in (rd / "logs/ts_log.log", rd / "logs/model_log.log", rd / "console.log")
                     if p.exists())


def launcher_env(rd: Path) -> dict[str, str]:
    env = dict(os.environ)
    tmp = rd / "tmp"
    env.update(TMPDIR=str(tmp), TEMP=str(tmp), LOG_LOCATION=str(rd / "logs"),
               METRICS_LOCATION=str(rd / "logs"))
    # The archive must be self-contained: never let a caller's PYTHONPATH (e.g. the repository)
    # shadow the modules packed into it.
    env.pop("PYTHONPATH", None)
    env.pop("TS_CONFIG_FILE", None)
    return env


def prepare_run_dir(out: Path, base: Path, *, ports: dict[str, int], host: str | None,
                    extra_properties: dict[str, str] | None = None,
                    grpc_ports: dict[str, int] | None = None) -> tuple[Path, dict, dict[str, int]]:
    """Make ``OUT/torchserve`` (tmp/, logs/, metrics.yaml) and render its config.properties from
    ``base``. Shared by :func:`start` and the container entry point (archives/container.py).
    Returns (config path, effective properties, gRPC ports)."""
    rd = run_dir(out)
    (rd / "tmp").mkdir(parents=True, exist_ok=True)
    (rd / "logs").mkdir(parents=True, exist_ok=True)
    for stale in ("key_file.json", "server.json"):
        (rd / stale).unlink(missing_ok=True)
    shutil.copyfile(METRICS_YAML, rd / "metrics.yaml")
    cfg_path = rd / "config.properties"
    # TorchServe always starts gRPC servers too (7070/7071 by default, no switch to turn them
    # off): give them free ports unless TS_GRPC_*_PORT says otherwise, so that instances coexist.
    grpc = {kind: int((grpc_ports or {}).get(kind) or os.environ.get(f"TS_GRPC_{kind.upper()}_PORT")
                      or free_port())
            for kind in ("inference", "management")}
    extra = {"grpc_inference_port": str(grpc["inference"]),
             "grpc_management_port": str(grpc["management"]), **(extra_properties or {})}
    props = render_config(base, cfg_path, ports=ports, host=host, metrics_yaml=rd / "metrics.yaml",
                          store=model_store(out), extra=extra)
    return cfg_path, props, grpc


def start(out: str | Path, *, config: str | Path = "dev", host: str | None = None,
          ports: dict[str, int | None] | None = None, models: dict[str, str] | None = None,
          timeout: float = 240.0, extra_properties: dict[str, str] | None = None,
          wait_workers: bool = True) -> ServerState:
    """Start TorchServe on ``OUT/model-store`` and wait until it is healthy.

    ``config``: "dev", "prod" or a properties file. ``models``: {name: archive file in the
    store}; default: the newest archive of each model name; ``{}``: none (register later). Returns the saved
    :class:`ServerState`. Raises :class:`ServerError` (with the log tail) when it does not come up.
    """
    out = Path(out).expanduser().resolve()
    store = model_store(out)
    if models != {} and (not store.is_dir() or not any(store.glob("*.mar"))):
        raise ServerError(f"no archives in {store}; build one first: python -m archives build "
                          f"--out {out} ...")
    rd = run_dir(out)
    try:
        old = ServerState.load(out)
    except ServerError:
        old = None
    if old is not None and old.alive():
        raise ServerError(f"TorchServe is already running for {out} (pid {old.pid}, inference "
                          f"{old.inference_url}); stop it first: python -m archives stop --out {out}")
    base = CONFIGS.get(str(config), Path(config))
    if not Path(base).is_file():
        raise ServerError(f"config {config!r} is neither dev, prod nor a properties file")
    p = ports_from_env(ports)
    props0 = properties_dict(Path(base))
    bind_host = host or address_host(props0.get("inference_address", "http://127.0.0.1"))
    for kind, port in p.items():
        if port_in_use(bind_host, port):
            raise ServerError(f"{kind} port {port} is in use; choose others with "
                              f"{PORT_ENV[kind]}=<port>")

    cfg_path, props, grpc = prepare_run_dir(out, Path(base), ports=p, host=host,
                                            extra_properties=extra_properties)
    token_auth = props.get("disable_token_authorization", "false").strip().lower() != "true"

    if models is None:
        models = {name: a.file_name for name, a in latest_archives(out).items()}
    for name, fname in models.items():
        if not (store / fname).is_file():
            raise ServerError(f"archive {fname} for model {name} is not in {store}")
    cmd = [sys.executable, "-m", "ts.model_server", "--start", "--ts-config", str(cfg_path),
           "--model-store", str(store), "--ncs"]
    if models:  # none: start empty and register through the management API
        cmd += ["--models", *[f"{n}={f}" for n, f in models.items()]]
    with open(rd / "console.log", "ab") as log:
        launcher = subprocess.run(cmd, cwd=rd, env=launcher_env(rd), stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True, timeout=120)
    pid_file = rd / "tmp" / ".model_server.pid"
    if launcher.returncode != 0 or not pid_file.exists():
        raise ServerError(f"torchserve --start failed (exit {launcher.returncode})\n{_log_tail(rd)}")
    state = ServerState(out=str(out), pid=int(pid_file.read_text().strip()), host=bind_host,
                        ports=p, token_auth=token_auth, config=str(base), models=dict(models),
                        started_at=time.time(), grpc_ports=grpc)
    state.save()
    try:
        wait_ready(state, timeout=timeout, models=list(models) if wait_workers else [])
    except BaseException:
        stop(out)
        raise
    return state


def wait_ready(state: ServerState, timeout: float = 240.0, models: Iterable[str] = ()) -> None:
    """Until /ping says Healthy and each of ``models`` has all its workers READY (the rule of
    the chart's probe, :mod:`archives.probe`)."""
    models = list(models)

    def ready() -> bool:
        if state.token_auth and not state.key_file.exists():
            return False
        try:
            keys = state.keys()
        except (OSError, ValueError, KeyError):  # TorchServe may be writing the key file
            return False

        def auth(kind: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {keys[kind]}"} if state.token_auth else {}

        try:
            probe.ping_healthy(state.inference_url, 5.0, auth("inference"))
            for name in models:
                probe.workers_ready(state.management_url, name, 5.0, headers=auth("management"))
        except probe.NotReady:
            return False
        return True

    wait_until(ready, timeout=timeout, interval=0.5, proc=state.alive,
               log=lambda: _log_tail(state.run_dir), what=f"TorchServe (pid {state.pid})",
               error=ServerError)


def stop(out: str | Path, timeout: float = 60.0) -> bool:
    """Stop the TorchServe started under ``out`` (and its workers). False if none was running."""
    out = Path(out).expanduser().resolve()
    rd = run_dir(out)
    try:
        state = ServerState.load(out)
    except ServerError:
        state = None
    pid_file = rd / "tmp" / ".model_server.pid"
    if state is None and pid_file.exists():  # server.json lost: fall back to TorchServe's pid file
        try:
            state = ServerState(out=str(out), pid=int(pid_file.read_text().strip()), host="127.0.0.1",
                                ports={}, token_auth=False, config="")
        except ValueError:
            state = None
    if state is None or not state.alive():
        state_file(out).unlink(missing_ok=True)
        (rd / "key_file.json").unlink(missing_ok=True)
        return False
    try:
        children = psutil.Process(state.pid).children(recursive=True)
    except psutil.Error:
        children = []
    if rd.is_dir():
        subprocess.run([sys.executable, "-m", "ts.model_server", "--stop"], cwd=rd,
                       env=launcher_env(rd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=60)
    procs = [p for p in [_proc(state.pid)] + children if p is not None]
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:  # only processes this server started
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)
    state_file(out).unlink(missing_ok=True)
    (rd / "key_file.json").unlink(missing_ok=True)
    pid_file.unlink(missing_ok=True)
    return True


def _proc(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def worker_processes(state: ServerState) -> list[psutil.Process]:
    """The Python worker processes of this TorchServe."""
    try:
        kids = psutil.Process(state.pid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for p in kids:
        try:
            if "model_service_worker" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


__all__ = ["ServerError", "ServerState", "PORT_ENV", "DEFAULT_PORTS", "run_dir", "ports_from_env",
           "prepare_run_dir", "launcher_env", "start", "stop", "wait_ready", "worker_processes"]
