"""python -m gateway {serve,stop,status,keys,experiment,prepare,report,replay}

Everything lives under ``--out OUT``: ``OUT/gateway/`` (experiment.yaml, keys, logs) next to
the TorchServe run folder ``OUT/torchserve/`` that ``python -m archives serve`` wrote.
See docs/gateway.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path

from common.cli import run_cli, setup_logging
from gateway import experiment as E
from gateway.config import SERVE_OPTIONS, GatewayConfig, GatewayPaths


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


# --------------------------------------------------------------------------------------------
# serve / stop / status
# --------------------------------------------------------------------------------------------

def _serve_overrides(a) -> dict:
    return {name: getattr(a, name) for name in SERVE_OPTIONS}


def _realtime_overrides(a) -> dict:
    """RealtimeConfig fields from ``--realtime on|off`` and ``--redis-url`` (None: env/default)."""
    return {"enabled": None if a.realtime is None else a.realtime == "on",
            "redis_url": a.redis_url}


def cmd_serve(a) -> int:
    from gateway import process
    paths = GatewayPaths.under(a.out)
    if a.detach:
        argv = ["--out", str(Path(a.out).resolve())]
        for name, value in (("port", a.port), ("metrics_port", a.metrics_port),
                            ("realtime", a.realtime), ("redis_url", a.redis_url),
                            *_serve_overrides(a).items()):
            if value is not None:
                argv += ["--" + name.replace("_", "-"), str(value)]
        try:
            st = process.start_detached(paths, argv, timeout=a.timeout)
        except process.ProcessError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print_started(st, paths)
        return 0
    cfg = GatewayConfig.from_env(a.out, port=a.port, metrics_port=a.metrics_port,
                                 realtime=_realtime_overrides(a), **_serve_overrides(a))
    setup_logging(server=True)
    from gateway.app import run
    if not cfg.keys_path.exists():
        print(f"error: {cfg.keys_path} is missing; create keys first: python -m gateway "
              f"keys init --out {a.out}", file=sys.stderr)
        return 1
    run(cfg)
    return 0


def print_started(st: dict, paths: GatewayPaths) -> None:
    rt = st.get("realtime") or {}
    realtime = f"on ({rt.get('store')} store)" if rt.get("enabled") else "off"
    print(f"Gateway is up (pid {st['pid']}, experiment {st['experiment']!r}, upstream "
          f"{st['upstream']}, TorchServe token auth {'on' if st['token_auth'] else 'off'}, "
          f"real-time {realtime})")
    print(f"  api      {st['url']}\n  metrics  {st['metrics_url']}\n  log      {paths.log}")
    print(f"  client key file {paths.client_key}\n  admin key file  {paths.admin_key}")
    print("\nTry:")
    print(f"  curl -s -H \"Authorization: Bearer $(cat {paths.client_key})\" -H 'Content-Type: "
          f"application/json' -d '{{\"user_id\": \"1\", \"k\": 5}}' {st['url']}/v1/recommendations")
    print(f"  curl -s -H \"Authorization: Bearer $(cat {paths.admin_key})\" "
          f"{st['url']}/v1/admin/experiment")


def cmd_stop(a) -> int:
    from gateway import process
    stopped = process.stop(GatewayPaths.under(a.out))
    print("gateway stopped" if stopped else f"no gateway running under {a.out}")
    return 0


def cmd_status(a) -> int:
    from gateway import process
    st = process.running(GatewayPaths.under(a.out))
    if not st:
        print(f"no gateway running under {a.out}")
        return 1
    _print(st)
    return 0


# --------------------------------------------------------------------------------------------
# keys
# --------------------------------------------------------------------------------------------

def cmd_keys(a) -> int:
    from gateway import auth
    paths = GatewayPaths.under(a.out)
    if a.keys_cmd == "init":
        made = auth.init_keys(paths, a.rate, a.burst)
        for p in made:
            print(f"created {p} (mode 0600)")
        if not made:
            print(f"keys already exist: {paths.client_key}, {paths.admin_key}")
        return 0
    rights = tuple(r for r in a.rights.split(",") if r)
    path = Path(a.file) if a.file else paths.root / f"{a.name}_key"
    if not auth.add_key(paths.key_hashes, path, a.name, rights, a.rate, a.burst):
        print(f"{path} already holds a registered key")
        return 0
    print(f"created {path} (mode 0600) with rights {','.join(rights)}")
    return 0


# --------------------------------------------------------------------------------------------
# experiment / prepare
# --------------------------------------------------------------------------------------------

def _archive_versions(out, model: str) -> list[str]:
    from archives.store import list_archives
    return [x.version for x in list_archives(out) if x.model_name == model]


def cmd_experiment(a) -> int:
    paths = GatewayPaths.under(a.out)
    path = Path(a.file) if a.file else paths.experiment
    if a.exp_cmd == "show":
        exp = E.load(path)
        _print({**exp.to_dict(), "buckets": exp.split.ranges})
        return 0
    if a.exp_cmd == "versions":
        print("\n".join(E.load(path).versions))
        return 0
    # write
    versions = list(a.versions or [])
    if a.newest:
        have = _archive_versions(a.out, a.model_name)
        if len(have) < a.newest:
            print(f"error: {a.newest} archives of {a.model_name} wanted in {a.out}/model-store, "
                  f"found {have}", file=sys.stderr)
            return 1
        versions = have[-a.newest:]  # oldest of them is control: the incumbent
    if not versions:
        print("error: give --versions V [V ...] or --newest N", file=sys.stderr)
        return 2
    weights = [float(w) for w in a.weights.split(",")] if a.weights else None
    names = a.names.split(",") if a.names else None
    exp = E.simple(a.name, versions, weights, names, a.salt)
    if path.exists() and not a.force:
        old = E.load(path)
        if old.digest == exp.digest:
            print(f"up to date: {path}")
            return 0
        print(f"error: {path} exists (experiment {old.name!r}); --force replaces it",
              file=sys.stderr)
        return 1
    E.write(path, exp)
    print(f"wrote {path}: " + ", ".join(f"{v.name}=v{v.model_version} "
                                       f"({exp.split.counts[v.name] / 100:g}%)"
                                       for v in exp.variants) + f"; control {exp.control}")
    return 0


def cmd_prepare(a) -> int:
    """Make the running TorchServe hold every version the experiment names (default experiment:
    the newest archive alone)."""
    from archives import server as S
    from archives.client import TorchServeClient
    from archives.store import find_archive, model_store
    paths = GatewayPaths.under(a.out)
    if not paths.experiment.exists():
        have = _archive_versions(a.out, a.model_name)
        if not have:
            print(f"error: no archives of {a.model_name} in {model_store(a.out)}", file=sys.stderr)
            return 1
        exp = E.simple("default", [have[-1]], names=["control"], salt="default")
        E.write(paths.experiment, exp)
        print(f"wrote {paths.experiment}: version {have[-1]} alone (no experiment)")
    exp = E.load(paths.experiment)
    client = TorchServeClient(S.ServerState.load(a.out))
    registered = set(client.versions(a.model_name)) if any(
        m["modelName"] == a.model_name for m in client.models()) else set()
    for v in exp.versions:
        if v in registered:
            continue
        fname = find_archive(a.out, a.model_name, v).file_name
        r = client.register(fname, a.model_name, initial_workers=a.workers)
        if r.status_code >= 300:
            print(f"error: registering {fname}: HTTP {r.status_code} {r.text[:300]}",
                  file=sys.stderr)
            return 1
        print(f"registered {fname} in TorchServe")
    print(f"TorchServe serves {a.model_name} versions {sorted(set(client.versions(a.model_name)))}"
          f"; experiment {exp.name!r} uses {exp.versions}")
    return 0


# --------------------------------------------------------------------------------------------

def _add_serve_options(sp) -> None:
    hints = typing.get_type_hints(GatewayConfig)
    g = sp.add_argument_group("gateway settings (gateway/config.py)")
    defaults = GatewayConfig()
    for name, help_text in SERVE_OPTIONS.items():
        typ = hints[name]
        conv = {int: int, float: float, str: str}.get(typ, str)
        if "Path" in str(typ):
            conv = Path
        g.add_argument("--" + name.replace("_", "-"), dest=name, type=conv, default=None,
                       help=f"{help_text} (default {getattr(defaults, name)!s})")
    r = sp.add_argument_group("real-time events (realtime/config.py, docs/realtime.md)")
    r.add_argument("--realtime", choices=("on", "off"), default=None,
                   help="read each user's recent events from the store on every request "
                        "(default $GATEWAY_REALTIME or on)")
    r.add_argument("--redis-url", default=None,
                   help="the store: redis://host:port/db (default $REDIS_URL; unset: the "
                        "embedded in-process store)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gateway", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def out(sp):
        sp.add_argument("--out", required=True, help="run folder (OUT/gateway, OUT/torchserve)")

    s = sub.add_parser("serve", help="run the gateway (foreground; --detach: background)")
    out(s)
    s.add_argument("--port", type=int, default=None, help="API port (default $GATEWAY_PORT or 8090)")
    s.add_argument("--metrics-port", type=int, default=None,
                   help="metrics port (default $GATEWAY_METRICS_PORT or 8091)")
    s.add_argument("--detach", action="store_true", help="start in the background, wait until "
                                                        "ready, print the URLs")
    s.add_argument("--timeout", type=float, default=90.0, help="--detach: seconds to wait")
    _add_serve_options(s)
    s.set_defaults(fn=cmd_serve)

    st = sub.add_parser("stop", help="stop the gateway started with serve --detach")
    out(st)
    st.set_defaults(fn=cmd_stop)

    ss = sub.add_parser("status", help="pid, ports and URLs of the running gateway")
    out(ss)
    ss.set_defaults(fn=cmd_status)

    k = sub.add_parser("keys", help="API keys (stored by the gateway as hashes only)")
    ksub = k.add_subparsers(dest="keys_cmd", required=True)
    ki = ksub.add_parser("init", help="client_key and admin_key (0600) under OUT/gateway")
    out(ki)
    ki.add_argument("--rate", type=float, default=None, help="requests/s per key")
    ki.add_argument("--burst", type=float, default=None)
    kc = ksub.add_parser("create", help="another key with chosen rights")
    out(kc)
    kc.add_argument("--name", required=True, help="key id (its metrics/log name)")
    kc.add_argument("--rights", default="recommend,events", help="recommend,events,admin")
    kc.add_argument("--file", help="where to write the key (default OUT/gateway/<name>_key)")
    kc.add_argument("--rate", type=float, default=None)
    kc.add_argument("--burst", type=float, default=None)
    k.set_defaults(fn=cmd_keys)

    e = sub.add_parser("experiment", help="write / show the experiment file")
    esub = e.add_subparsers(dest="exp_cmd", required=True)
    ew = esub.add_parser("write", help="write OUT/gateway/experiment.yaml (first version = control)")
    out(ew)
    ew.add_argument("--versions", nargs="+", help="model versions, control first")
    ew.add_argument("--newest", type=int, help="the N newest archives in OUT/model-store "
                                              "(oldest of them is control)")
    ew.add_argument("--weights", help="comma separated (default equal)")
    ew.add_argument("--names", help="comma separated variant names (default control,treatment)")
    ew.add_argument("--name", default="ab", help="experiment name")
    ew.add_argument("--salt", help="hash salt (default: the name)")
    ew.add_argument("--model-name", default="recsys")
    ew.add_argument("--file", help="another path than OUT/gateway/experiment.yaml")
    ew.add_argument("--force", action="store_true", help="replace an existing file")
    for name, help_text in (("show", "the experiment and its bucket ranges"),
                            ("versions", "model versions named, one per line")):
        es = esub.add_parser(name, help=help_text)
        out(es)
        es.add_argument("--file")
    e.set_defaults(fn=cmd_experiment)

    pr = sub.add_parser("prepare", help="register in the running TorchServe every version the "
                                        "experiment names (writes a one-version experiment "
                                        "when there is none)")
    out(pr)
    pr.add_argument("--model-name", default="recsys")
    pr.add_argument("--workers", type=int, default=None)
    pr.set_defaults(fn=cmd_prepare)

    from gateway import replay, report
    report.add_parser(sub)
    replay.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(parser(), argv, (E.ExperimentError, FileNotFoundError, ValueError,
                                    LookupError, RuntimeError), logs=False)


if __name__ == "__main__":
    sys.exit(main())
