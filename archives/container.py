"""python -m archives.container {serve,torchserve,gateway,fetch-models,healthcheck}

The container image's one entry point (Dockerfile: ``tini -- python -m archives.container``):

* ``serve``        SageMaker: TorchServe on ``SAGEMAKER_BIND_TO_PORT`` (default 8080), ``GET /ping``
                   and ``POST /invocations``; every ``.mar`` under ``/opt/ml/model`` registered,
                   the highest version of each model the default; workers per version from
                   ``SAGEMAKER_MODEL_SERVER_WORKERS``, else the CPUs the container may use; token
                   auth off, management API closed (loopback only, no model registration).
* ``torchserve``   EKS: the config.properties the chart mounts, a model store that is a mounted
                   folder or an ``s3://`` prefix synced at start.
* ``gateway``      ``python -m gateway serve ARGS`` (the gateway package, gateway/).
* ``fetch-models`` download ``s3://...mar=<sha256>`` archives into a folder, verified, all or
                   nothing (the chart's init step).
* ``healthcheck``  exit 0 when what this container runs answers (the image's HEALTHCHECK).

Ports, variables and files: docs/contracts.md ("Container"). TorchServe runs in the foreground
behind a small supervisor that drains in-flight requests on SIGTERM (archives/supervisor.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from archives import s3fetch
from archives import server as S
from archives import supervisor as SV
from archives.properties import ADDRESS_KEYS, CONFIG_DIR, properties_dict
from archives.store import ArchiveInfo, archives_in, model_store, version_key
from common.cli import UsageError, run_cli, setup_logging
from core.jsonio import write_json
from common.net import free_port, parse_port

log = logging.getLogger("recsys.container")

SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
SAGEMAKER_CONFIG = CONFIG_DIR / "sagemaker.properties"
HEALTH_FILE = "health.json"


@dataclass(frozen=True)
class ContainerConfig:
    """Settings of the entry point, from the environment (one place; docs/contracts.md)."""

    run_root: Path = Path("/tmp/recsys")        # RECSYS_RUN_ROOT: model-store/, torchserve/
    model_dir: Path = SAGEMAKER_MODEL_DIR        # SAGEMAKER_MODEL_DIR (serve)
    bind_port: int = 8080                        # SAGEMAKER_BIND_TO_PORT (serve)
    safe_port_range: tuple[int, int] | None = None  # SAGEMAKER_SAFE_PORT_RANGE "lo-hi"
    workers: int | None = None                   # SAGEMAKER_MODEL_SERVER_WORKERS / RECSYS_WORKERS
    drain_timeout: float = 15.0                  # RECSYS_DRAIN_TIMEOUT_S
    stop_timeout: float = 10.0                   # RECSYS_STOP_TIMEOUT_S
    ready_timeout: float = 600.0                 # RECSYS_READY_TIMEOUT_S

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "ContainerConfig":
        env = dict(os.environ if env is None else env)

        def num(var: str, typ, default):
            raw = env.get(var, "").strip()
            if not raw:
                return default
            try:
                value = typ(raw)
            except ValueError:
                raise ValueError(f"{var}={raw!r} is not a {typ.__name__}") from None
            if value <= 0:
                raise ValueError(f"{var}={raw!r} must be > 0")
            return value

        rng = None
        if env.get("SAGEMAKER_SAFE_PORT_RANGE", "").strip():
            raw = env["SAGEMAKER_SAFE_PORT_RANGE"].strip()
            try:
                lo, hi = (int(x) for x in raw.split("-"))
            except ValueError:
                raise ValueError(f"SAGEMAKER_SAFE_PORT_RANGE={raw!r}: expected LOW-HIGH") from None
            if not 1 <= lo <= hi <= 65535:
                raise ValueError(f"SAGEMAKER_SAFE_PORT_RANGE={raw!r} is not a port range")
            rng = (lo, hi)
        return cls(
            run_root=Path(env.get("RECSYS_RUN_ROOT") or cls.run_root),
            model_dir=Path(env.get("SAGEMAKER_MODEL_DIR") or cls.model_dir),
            bind_port=parse_port(env.get("SAGEMAKER_BIND_TO_PORT", "").strip() or cls.bind_port,
                                 "SAGEMAKER_BIND_TO_PORT"),
            safe_port_range=rng,
            workers=num("SAGEMAKER_MODEL_SERVER_WORKERS", int, None) or num("RECSYS_WORKERS", int, None),
            drain_timeout=num("RECSYS_DRAIN_TIMEOUT_S", float, cls.drain_timeout),
            stop_timeout=num("RECSYS_STOP_TIMEOUT_S", float, cls.stop_timeout),
            ready_timeout=num("RECSYS_READY_TIMEOUT_S", float, cls.ready_timeout),
        )


# --------------------------------------------------------------------------------------------
# Ports, CPUs, models
# --------------------------------------------------------------------------------------------

def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def serve_ports(cfg: ContainerConfig, env: dict[str, str] | None = None
                ) -> tuple[dict[str, int], dict[str, int]]:
    """(HTTP ports, gRPC ports) of ``serve``: inference on the bind port; each other port from
    its TS_* variable, else the first free port of SAGEMAKER_SAFE_PORT_RANGE, else 8081 / 8082
    (HTTP) or a free port (gRPC)."""
    env = dict(os.environ if env is None else env)
    wanted = {"management": "TS_MANAGEMENT_PORT", "metrics": "TS_METRICS_PORT",
              "grpc_inference": "TS_GRPC_INFERENCE_PORT", "grpc_management": "TS_GRPC_MANAGEMENT_PORT"}
    got: dict[str, int] = {}
    for kind, var in wanted.items():
        if env.get(var, "").strip():
            got[kind] = parse_port(env[var], var)
    taken = {cfg.bind_port, *got.values()}
    fallback = {"management": 8081, "metrics": 8082}
    for kind in wanted:
        if kind in got:
            continue
        if cfg.safe_port_range:
            lo, hi = cfg.safe_port_range
            port = next((p for p in range(lo, hi + 1) if p not in taken and _port_free(p)), None)
            if port is None:
                raise ValueError(f"no free port left in SAGEMAKER_SAFE_PORT_RANGE {lo}-{hi} for {kind}")
        else:
            port = fallback.get(kind) or free_port()
        got[kind] = port
        taken.add(port)
    if len(taken) != 5:
        raise ValueError(f"TorchServe's five ports must differ: inference {cfg.bind_port}, {got}")
    return ({"inference": cfg.bind_port, "management": got["management"], "metrics": got["metrics"]},
            {"inference": got["grpc_inference"], "management": got["grpc_management"]})


def usable_cpus() -> int:
    """CPUs this container may use: its affinity, capped by a cgroup CPU quota (Kubernetes
    limits, ``--cpus``); at least 1."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = None
    try:  # cgroup v2
        q, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if q != "max":
            quota = int(q) / int(period)
    except (OSError, ValueError):
        try:  # cgroup v1
            q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            quota = q / period if q > 0 else None
        except (OSError, ValueError):
            pass
    if quota:
        n = min(n, max(1, int(quota)))
    return max(1, n)


def stage_models(found: list[ArchiveInfo], run_root: Path) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Link ``found`` into ``RUN_ROOT/model-store`` (TorchServe registers archives by file name
    from its store; the source folder may be read-only or nested) and return the registration
    order (each model's highest version first, so it becomes the default) and the defaults."""
    if not found:
        raise S.ServerError("no archives")
    store = model_store(run_root)
    store.mkdir(parents=True, exist_ok=True)
    for old in store.glob("*.mar"):
        if old.is_symlink():
            old.unlink()
    by_name: dict[str, list[ArchiveInfo]] = {}
    for a in found:
        by_name.setdefault(a.model_name, []).append(a)
    order, defaults = [], {}
    for name, versions in sorted(by_name.items()):
        versions.sort(key=lambda a: version_key(a.version), reverse=True)
        seen = set()
        for a in versions:
            if a.version in seen:
                raise S.ServerError(f"two archives of {name} version {a.version}: "
                                    f"{[str(x.path) for x in versions if x.version == a.version]}")
            seen.add(a.version)
            link = store / a.file_name
            if link.resolve() != a.path.resolve():
                if link.exists() or link.is_symlink():
                    raise S.ServerError(f"two archives named {a.file_name}")
                link.symlink_to(a.path.resolve())
            order.append((name, a.file_name))
        defaults[name] = versions[0].version
    return order, defaults


def write_health(run_root: Path, url: str, key_file: Path | None = None) -> None:
    """Where ``healthcheck`` looks (and, with token auth on, TorchServe's key file)."""
    run_root.mkdir(parents=True, exist_ok=True)
    write_json(run_root / HEALTH_FILE, {"url": url, "key_file": key_file and str(key_file)})


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------

def cmd_serve(a) -> int:
    cfg = ContainerConfig.from_env()
    found = archives_in(cfg.model_dir, recursive=True)
    if not found:
        log.error("no TorchServe archive (.mar) under %s: SageMaker unpacks the model's "
                  "model.tar.gz there (python -m recsys_sagemaker package builds one)", cfg.model_dir)
        return 1
    ports, grpc = serve_ports(cfg)
    if not _port_free(cfg.bind_port):
        log.error("port %d (SAGEMAKER_BIND_TO_PORT) is in use", cfg.bind_port)
        return 1
    models, defaults = stage_models(found, cfg.run_root)
    workers = cfg.workers or usable_cpus()
    log.info("serve: %s; %d worker(s) per version; ports %s, gRPC %s",
             ", ".join(f"{n}={f}" for n, f in models), workers, ports, grpc)
    write_health(cfg.run_root, f"http://127.0.0.1:{ports['inference']}/ping")
    return SV.run(SV.Launch(out=cfg.run_root, base_config=SAGEMAKER_CONFIG, ports=ports,
                            grpc_ports=grpc, models=models, defaults=defaults, workers=workers,
                            ready_timeout=cfg.ready_timeout, drain_timeout=cfg.drain_timeout,
                            stop_timeout=cfg.stop_timeout))


def _config_ports(props: dict[str, str]) -> dict[str, int]:
    """TS_*_PORT variables, else the port in the config's address, else 8080/8081/8082."""
    out = {}
    for kind, key in ADDRESS_KEYS.items():
        env = os.environ.get(S.PORT_ENV[kind], "").strip()
        tail = props.get(key, "").rsplit(":", 1)[-1]
        out[kind] = parse_port(env, S.PORT_ENV[kind]) if env else \
            int(tail) if tail.isdigit() else S.DEFAULT_PORTS[kind]
    return out


def cmd_torchserve(a) -> int:
    cfg = ContainerConfig.from_env()
    config = Path(a.config)
    if not config.is_file():
        log.error("config %s does not exist (mount the chart's config.properties there, or pass "
                  "--config)", config)
        return 1
    src = a.model_store
    if src.startswith("s3://"):
        try:
            refs = s3fetch.list_prefix(src)
            s3fetch.fetch(refs, cfg.run_root / "s3-models")
        except (s3fetch.FetchError, ValueError) as e:
            log.error("model store %s: %s", src, e)
            return 1
        folder = cfg.run_root / "s3-models"
    else:
        folder = Path(src)
    found = archives_in(folder)
    if not found:
        log.error("no TorchServe archive (.mar) in %s", folder)
        return 1
    props = properties_dict(config)
    ports = _config_ports(props)
    models, defaults = stage_models(found, cfg.run_root)
    if props.get("load_models") or props.get("models"):
        models = []  # the config names what to load
    write_health(cfg.run_root, f"http://127.0.0.1:{ports['inference']}/ping",
                 S.run_dir(cfg.run_root) / "key_file.json")
    return SV.run(SV.Launch(out=cfg.run_root, base_config=config, ports=ports, models=models,
                            defaults=defaults if models else {}, workers=cfg.workers,
                            ready_timeout=cfg.ready_timeout, drain_timeout=cfg.drain_timeout,
                            stop_timeout=cfg.stop_timeout))


def gateway_available() -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec("gateway.__main__") is not None
    except ModuleNotFoundError:
        return False


def cmd_gateway(a) -> int:
    if not gateway_available():
        log.error("the gateway package (gateway/) is not in this image; rebuild it from a "
                  "checkout that has it (make image)")
        return 2
    cfg = ContainerConfig.from_env()
    port = os.environ.get("GATEWAY_PORT", "8090")
    args = list(a.args)
    if "--port" in args:
        port = args[args.index("--port") + 1]
    write_health(cfg.run_root, f"http://127.0.0.1:{port}/healthz")
    argv = [sys.executable, "-m", "gateway", "serve", *args]
    sys.stdout.flush()
    os.execv(sys.executable, argv)  # the gateway becomes this process: tini's signals reach it
    return 0  # not reached


def cmd_fetch(a) -> int:
    if not (a.models or a.manifest):
        raise UsageError("fetch-models: give s3://...mar=SHA256 arguments or --manifest")
    try:
        refs = [s3fetch.parse_ref(x) for x in a.models]
        if a.manifest:
            refs += s3fetch.read_manifest(a.manifest)
        paths = s3fetch.fetch(refs, a.dest)
    except (ValueError, OSError, s3fetch.FetchError) as e:
        log.error("%s", e)
        return 1
    for p in paths:
        print(f"{p}  sha256 {s3fetch.file_sha256(p)}")
    return 0


def cmd_healthcheck(a) -> int:
    import urllib.request
    cfg = ContainerConfig.from_env()
    try:
        health = json.loads((cfg.run_root / HEALTH_FILE).read_text())
        req = urllib.request.Request(health["url"])
        key_file = Path(health["key_file"]) if health.get("key_file") else None
        if key_file and key_file.exists():  # TorchServe with token auth: /ping needs the key
            req.add_header("Authorization", f"Bearer {json.loads(key_file.read_text())['inference']['key']}")
        with urllib.request.urlopen(req, timeout=a.timeout) as r:  # a loopback URL we wrote
            return 0 if r.status == 200 else 1
    except Exception as e:  # noqa: BLE001 - any failure is "unhealthy"; say why for `podman healthcheck run`
        print(f"unhealthy: {e}", file=sys.stderr)
        return 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m archives.container", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="SageMaker: every .mar under /opt/ml/model on "
                                     "SAGEMAKER_BIND_TO_PORT (variables: docs/contracts.md)")
    s.set_defaults(fn=cmd_serve)

    t = sub.add_parser("torchserve", help="EKS: a mounted config.properties and model store")
    t.add_argument("--config", default=os.environ.get("TS_CONFIG_PATH", "/etc/recsys/config.properties"),
                   help="config.properties (default $TS_CONFIG_PATH or /etc/recsys/config.properties)")
    t.add_argument("--model-store", default=os.environ.get("RECSYS_MODEL_STORE", "/models"),
                   help="folder of .mar files, or s3://bucket/prefix/ synced at start (a "
                        "<key>.sha256 object beside an archive is checked) (default "
                        "$RECSYS_MODEL_STORE or /models)")
    t.set_defaults(fn=cmd_torchserve)

    g = sub.add_parser("gateway", help="python -m gateway serve ARGS (gateway/): every argument "
                                       "after `gateway` is passed on")
    g.add_argument("args", nargs=argparse.REMAINDER, help="passed to python -m gateway serve")
    g.set_defaults(fn=cmd_gateway)

    f = sub.add_parser("fetch-models", help="download s3:// archives into --dest, each checked "
                                            "against its sha256; exit 1 and install nothing on "
                                            "any mismatch or error")
    f.add_argument("models", nargs="*", metavar="s3://BUCKET/KEY.mar=SHA256")
    f.add_argument("--manifest", help="JSON/YAML list of {uri, sha256}")
    f.add_argument("--dest", required=True, help="model store folder (e.g. the pod's emptyDir)")
    f.set_defaults(fn=cmd_fetch)

    h = sub.add_parser("healthcheck", help="exit 0 when the running command answers")
    h.add_argument("--timeout", type=float, default=3.0)
    h.set_defaults(fn=cmd_healthcheck)
    return p


def main(argv: list[str] | None = None) -> int:
    setup_logging(server=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["gateway"] and argv[1:2] not in (["-h"], ["--help"]):
        # everything after `gateway` belongs to `python -m gateway serve` (argparse would try
        # to read its --options as ours)
        return cmd_gateway(argparse.Namespace(args=argv[1:]))
    return run_cli(parser(), argv, (S.ServerError, ValueError), logs=False)


if __name__ == "__main__":
    sys.exit(main())
