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

TorchServe is started with its own launcher (``python -m ts.model_server --start --ts-config
... --model-store ... --ncs --models ...``), which forks the Java frontend and returns.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import psutil
import requests

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "config"
METRICS_YAML = PACKAGE_DIR / "metrics.yaml"
CONFIGS = {"dev": CONFIG_DIR / "dev.properties", "prod": CONFIG_DIR / "prod.properties"}
PORT_ENV = {"inference": "TS_INFERENCE_PORT", "management": "TS_MANAGEMENT_PORT",
            "metrics": "TS_METRICS_PORT"}
DEFAULT_PORTS = {"inference": 8080, "management": 8081, "metrics": 8082}
ADDRESS_KEYS = {"inference": "inference_address", "management": "management_address",
                "metrics": "metrics_address"}
MAR_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*?)-v(?P<version>[A-Za-z0-9_.]+)\.mar$")


class ServerError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------

def model_store(out: str | Path) -> Path:
    return Path(out).expanduser().resolve() / "model-store"


def run_dir(out: str | Path) -> Path:
    return Path(out).expanduser().resolve() / "torchserve"


def state_file(out: str | Path) -> Path:
    return run_dir(out) / "server.json"


def mar_name(model_name: str, version: str | int) -> str:
    return f"{model_name}-v{version}.mar"


# --------------------------------------------------------------------------------------------
# Archives in the store
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArchiveInfo:
    path: Path
    model_name: str
    version: str
    reused: bool = False  # build found the same archive already built

    @property
    def file_name(self) -> str:
        return self.path.name


def _version_key(v: str):
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[._]", v))


def read_manifest(mar: Path) -> dict:
    with zipfile.ZipFile(mar) as z:
        return json.loads(z.read("MAR-INF/MANIFEST.json"))


def list_archives(out: str | Path) -> list[ArchiveInfo]:
    """Archives in ``OUT/model-store`` (name and version from each MANIFEST), oldest first."""
    return archives_in(model_store(out))


def archives_in(folder: Path, recursive: bool = False) -> list[ArchiveInfo]:
    """The readable ``.mar`` files in ``folder`` (name and version from each MANIFEST), oldest
    version first per model name; files that are not archives are skipped."""
    found = []
    pattern = "**/*.mar" if recursive else "*.mar"
    for p in sorted(folder.glob(pattern)) if folder.is_dir() else []:
        try:
            m = read_manifest(p)["model"]
        except (KeyError, zipfile.BadZipFile, json.JSONDecodeError):
            continue
        found.append(ArchiveInfo(p, m["modelName"], str(m["modelVersion"])))
    return sorted(found, key=lambda a: (a.model_name, _version_key(a.version)))


def latest_archives(out: str | Path) -> dict[str, ArchiveInfo]:
    """The newest archive of each model name."""
    latest: dict[str, ArchiveInfo] = {}
    for a in list_archives(out):
        latest[a.model_name] = a  # sorted ascending: the last one wins
    return latest


def find_archive(out: str | Path, model_name: str, version: str | int) -> ArchiveInfo:
    for a in list_archives(out):
        if a.model_name == model_name and a.version == str(version):
            return a
    raise ServerError(f"no archive of {model_name} version {version} in {model_store(out)} "
                      f"(build it with: python -m archives build --out {out} ...)")


# --------------------------------------------------------------------------------------------
# Ports and config
# --------------------------------------------------------------------------------------------

def ports_from_env(overrides: dict[str, int | None] | None = None) -> dict[str, int]:
    """Ports: explicit overrides > TS_INFERENCE_PORT / TS_MANAGEMENT_PORT / TS_METRICS_PORT >
    8080 / 8081 / 8082."""
    out = {}
    for kind, env in PORT_ENV.items():
        value = (overrides or {}).get(kind) or os.environ.get(env) or DEFAULT_PORTS[kind]
        try:
            port = int(value)
        except ValueError:
            raise ServerError(f"{env}={value!r} is not a port number") from None
        if not 1 <= port <= 65535:
            raise ServerError(f"port {port} for {kind} is out of range")
        out[kind] = port
    if len(set(out.values())) != 3:
        raise ServerError(f"inference, management and metrics ports must differ: {out}")
    return out


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n: int = 3, host: str = "127.0.0.1") -> list[int]:
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
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def read_properties(path: Path) -> list[tuple[str, str] | str]:
    """Lines of a Java properties file: (key, raw value) pairs, other lines kept verbatim."""
    out: list[tuple[str, str] | str] = []
    for line in path.read_text().splitlines():
        s = line.strip()
        if s and not s.startswith(("#", "!")) and "=" in s:
            k, v = s.split("=", 1)
            out.append((k.strip(), v.strip()))
        else:
            out.append(line)
    return out


def properties_dict(path: Path) -> dict[str, str]:
    return {x[0]: x[1] for x in read_properties(path) if isinstance(x, tuple)}


def _address_host(value: str) -> str:
    m = re.match(r"^https?://(\[[^\]]+\]|[^:/]+)", value)
    return m.group(1) if m else "127.0.0.1"


def render_config(base: Path, dest: Path, *, ports: dict[str, int], host: str | None,
                  metrics_yaml: Path, store: Path, extra: dict[str, str] | None = None) -> dict:
    """Write ``dest`` from ``base`` with ports/host/metrics_config/model_store replaced (values
    of other keys are copied verbatim, escapes included). Returns the effective key/values."""
    lines = read_properties(base)
    props = {x[0]: x[1] for x in lines if isinstance(x, tuple)}
    repl: dict[str, str] = {}
    for kind, key in ADDRESS_KEYS.items():
        h = host or _address_host(props.get(key, "http://127.0.0.1"))
        repl[key] = f"http://{h}:{ports[kind]}"
    repl["metrics_config"] = str(metrics_yaml)
    repl["model_store"] = str(store)
    repl.update(extra or {})
    text, seen = [], set()
    for x in lines:
        if isinstance(x, tuple) and x[0] in repl:
            text.append(f"{x[0]}={repl[x[0]]}")
            seen.add(x[0])
        else:
            text.append(x if isinstance(x, str) else f"{x[0]}={x[1]}")
    for k, v in repl.items():
        if k not in seen:
            text.append(f"{k}={v}")
    dest.write_text("\n".join(text) + "\n")
    return {**props, **repl}


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
        state_file(self.out).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, out: str | Path) -> "ServerState":
        p = state_file(out)
        if not p.exists():
            raise ServerError(f"no TorchServe started under {Path(out)} ({p} is missing); start "
                              f"one with: python -m archives serve --out {out}")
        return cls(**json.loads(p.read_text()))


def _log_tail(rd: Path, n: int = 40) -> str:
    parts = []
    for name in ("logs/ts_log.log", "logs/model_log.log", "console.log"):
        p = rd / name
        if p.exists():
            lines = p.read_text(errors="replace").splitlines()[-n:]
            parts.append(f"--- {p} (last {len(lines)} lines)\n" + "\n".join(lines))
    return "\n".join(parts)


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
    bind_host = host or _address_host(props0.get("inference_address", "http://127.0.0.1"))
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


def _get(url: str, headers: dict | None = None, timeout: float = 5.0) -> requests.Response | None:
    try:
        return requests.get(url, headers=headers or {}, timeout=timeout)
    except requests.RequestException:
        return None


def wait_ready(state: ServerState, timeout: float = 240.0, models: Iterable[str] = ()) -> None:
    """Until /ping says Healthy and each of ``models`` has all its workers READY."""
    deadline = time.monotonic() + timeout
    models = list(models)
    while True:
        if not state.alive():
            raise ServerError(f"TorchServe (pid {state.pid}) exited during start-up\n"
                              f"{_log_tail(state.run_dir)}")
        ok = False
        if not state.token_auth or state.key_file.exists():
            try:
                keys = state.keys()
            except (OSError, ValueError, KeyError):
                keys = None
            if keys is not None:
                h = {"Authorization": f"Bearer {keys['inference']}"} if state.token_auth else {}
                r = _get(f"{state.inference_url}/ping", h)
                ok = r is not None and r.status_code == 200 and r.json().get("status") == "Healthy"
                if ok and models:
                    mh = {"Authorization": f"Bearer {keys['management']}"} if state.token_auth else {}
                    for name in models:
                        r = _get(f"{state.management_url}/models/{name}", mh)
                        if r is None or r.status_code != 200:
                            ok = False
                            break
                        desc = r.json()[0]
                        workers = desc.get("workers", [])
                        ready = [w for w in workers if w.get("status") == "READY"]
                        if len(ready) < max(1, int(desc.get("minWorkers", 1))):
                            ok = False
                            break
        if ok:
            return
        if time.monotonic() > deadline:
            raise ServerError(f"TorchServe did not become healthy within {timeout:.0f} s\n"
                              f"{_log_tail(state.run_dir)}")
        time.sleep(0.5)


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


__all__ = ["ServerError", "ServerState", "ArchiveInfo", "model_store", "run_dir", "mar_name",
           "list_archives", "archives_in", "latest_archives", "find_archive", "read_manifest", "ports_from_env",
           "free_ports", "render_config", "prepare_run_dir", "launcher_env", "start", "stop", "wait_ready", "worker_processes"]
