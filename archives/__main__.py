"""python -m archives {build,serve,stop,status,demo-requests,register,set-default,retire,versions}

Everything lives under ``--out OUT``: archives in ``OUT/model-store``, the running TorchServe's
folder (config, key_file.json, logs) in ``OUT/torchserve``. See docs/serving.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from archives import build as B
from archives import server as S
from archives.client import TorchServeClient, curl_lines
from archives.demo import demo_requests
from archives.store import find_archive, list_archives, model_store
from common.cli import run_cli
from core.retrieval import VARIANTS


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------

def _faults(text: str | None) -> dict | None:
    """--faults JSON -> the validated settings (ValueError: a clear one-line error)."""
    if text is None:
        return None
    from core.faults import parse_faults

    return parse_faults(text).to_dict()


def cmd_build(a) -> int:
    cfg = B.ArchiveConfig(batch_size=a.batch_size, max_batch_delay_ms=a.max_batch_delay,
                        min_workers=a.min_workers, max_workers=a.max_workers or a.min_workers,
                        response_timeout_s=a.response_timeout, torch_threads=a.torch_threads,
                        scoring=a.scoring, faults=_faults(a.faults))
    if a.artifact:
        if not a.version:
            print("error: --artifact needs --version (the registry version it corresponds to)",
                  file=sys.stderr)
            return 2
        info = B.build_from_folder(a.artifact, a.out, version=a.version, model_name=a.model_name,
                                   config=cfg, force=a.force, archive_format=a.archive_format)
    else:
        ref = a.model_uri or a.version
        if not ref:
            print(f"error: give --model-uri models:/{B.DEFAULT_REGISTERED_MODEL}@champion (any "
                  "models:/<name>@<alias> or models:/<name>/<v>), --version N (of "
                  "--registered-model) or --artifact DIR --version V", file=sys.stderr)
            return 2
        info = B.build_from_registry(ref, a.out, registered_model=a.registered_model,
                                     tracking_uri=a.tracking_uri, model_name=a.model_name,
                                     config=cfg, force=a.force, archive_format=a.archive_format)
    size = info.path.stat().st_size
    print(f"{'up to date' if info.reused else 'built'}: {info.path} (model {info.model_name}, "
          f"version {info.version}, {size / 2**20:.1f} MiB)")
    return 0


# --------------------------------------------------------------------------------------------
# serve / stop / status
# --------------------------------------------------------------------------------------------

def cmd_serve(a) -> int:
    models = None
    if a.models:
        models = dict(m.split("=", 1) for m in a.models)
    ports = {"inference": a.inference_port, "management": a.management_port,
             "metrics": a.metrics_port}
    try:
        state = S.start(a.out, config=a.config, host=a.host, ports=ports, models=models,
                        timeout=a.timeout)
    except S.ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    _print_started(state)
    return 0


def _print_started(state: S.ServerState) -> None:
    print(f"TorchServe is up (pid {state.pid}, config {state.config}, token auth "
          f"{'on' if state.token_auth else 'off'})")
    print(f"  inference  {state.inference_url}\n  management {state.management_url}\n"
          f"  metrics    {state.metrics_url}/metrics\n  run folder {state.run_dir}")
    for name, mar in state.models.items():
        print(f"  model {name} <- {mar}")
    model = next(iter(state.models), B.DEFAULT_MODEL_NAME)
    example = {"user_id": "1", "k": 5}
    try:
        for a in list_archives(state.out):
            if a.model_name == model:
                users = B.build_info(state.out, a.model_name, a.version).get("artifact", {}) \
                    .get("example_users") or []
                if users:
                    example = {"user_id": users[0], "k": 5}
    except (OSError, ValueError):
        pass
    print("\nTry:")
    for line in curl_lines(state, model, example):
        print("  " + line)
    print(f"\nStop with: python -m archives stop --out {state.out}")


def cmd_stop(a) -> int:
    stopped = S.stop(a.out)
    print("TorchServe stopped" if stopped else f"no TorchServe running under {a.out}")
    return 0


def cmd_status(a) -> int:
    try:
        state = S.ServerState.load(a.out)
    except S.ServerError as e:
        print(str(e))
        return 1
    if not state.alive():
        print(f"TorchServe (pid {state.pid}) is not running")
        return 1
    c = TorchServeClient(state)
    out = {"pid": state.pid, "inference": state.inference_url, "management": state.management_url,
           "ping": c.ping().json(), "models": {}}
    for m in c.models():
        out["models"][m["modelName"]] = {
            "default": c.default_version(m["modelName"]),
            "versions": {v: [w["status"] for w in d.get("workers", [])]
                         for v, d in c.versions(m["modelName"]).items()}}
    _print(out)
    return 0


# --------------------------------------------------------------------------------------------
# demo requests
# --------------------------------------------------------------------------------------------

def demo_bodies(out, model: str) -> list[tuple[str, dict]]:
    """The demo's requests for the default version of ``model`` in the running TorchServe."""
    state = S.ServerState.load(out)
    version = TorchServeClient(state).default_version(model)
    return demo_requests(B.build_info(out, model, version).get("artifact", {}) if version else {})


def cmd_demo(a) -> int:
    try:
        c = TorchServeClient.for_out(a.out)
    except S.ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    ok = True
    for title, body in demo_bodies(a.out, a.model_name):
        r = c.predict(a.model_name, body)
        print(f"== {title}: POST /predictions/{a.model_name} {json.dumps(body)}")
        if r.status_code != 200:
            ok = False
            print(f"   HTTP {r.status_code}: {r.text[:500]}")
            continue
        d = r.json()
        print(f"   strategy={d['strategy']} model_version={d['model_version']}"
              + (f" ignored_history={d['ignored_history']}" if d.get("ignored_history") else "")
              + (f" ignored_candidates={d['ignored_candidates']}" if d.get("ignored_candidates") else ""))
        for rank, it in enumerate(d["items"], 1):
            print(f"   {rank:2d}. {it['item_id']:>10}  {it['score']:9.4f}  {it['title']}  "
                  f"[{', '.join(it.get('categories') or [])}]")
    return 0 if ok else 1


def cmd_add_items(a) -> int:
    from archives.add_items import add_items

    cfg = B.ArchiveConfig(scoring=a.scoring)
    summary = add_items(a.out, a.catalog, model_uri=a.model_uri, model_name=a.model_name,
                        config=cfg, register=not a.no_register)
    _print({k: (v if k != "added" else f"{len(v)} items") for k, v in summary.items()})
    return 0


def cmd_parity(a) -> int:
    from archives.parity import check

    summary = check(a.out, model_name=a.model_name, version=a.version, max_users=a.max_users,
                    threshold=a.threshold)
    _print(summary)
    if summary["user_id_embedding"]:
        print("note: this artifact adds a user id embedding: the two vectors differ by design",
              file=sys.stderr)
    if not summary["passed"]:
        print(f"error: parity below {a.threshold}: mean top-{summary['k']} overlap "
              f"{summary['mean_overlap']:.4f} over {summary['users']} users", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# versions through the management API
# --------------------------------------------------------------------------------------------

def _mgmt_result(r) -> int:
    try:
        body = r.json()
    except ValueError:
        body = r.text
    print(f"HTTP {r.status_code}: {json.dumps(body) if not isinstance(body, str) else body}")
    return 0 if r.status_code < 300 else 1


def cmd_register(a) -> int:
    c = TorchServeClient.for_out(a.out)
    if a.archive:
        fname = Path(a.archive).name
        if not (model_store(a.out) / fname).is_file():
            print(f"error: {fname} is not in {model_store(a.out)} (TorchServe registers archives "
                  "from its model store)", file=sys.stderr)
            return 1
    else:
        fname = find_archive(a.out, a.model_name, a.version).file_name
    r = c.register(fname, a.model_name, initial_workers=a.workers)
    code = _mgmt_result(r)
    if code == 0:
        print(f"default version of {a.model_name}: {c.default_version(a.model_name)} "
              f"(switch with: python -m archives set-default --out {a.out} --version <v>)")
    return code


def cmd_set_default(a) -> int:
    return _mgmt_result(TorchServeClient.for_out(a.out).set_default(a.model_name, a.version))


def cmd_retire(a) -> int:
    c = TorchServeClient.for_out(a.out)
    if c.default_version(a.model_name) == str(a.version):
        print(f"error: version {a.version} is the default of {a.model_name}; set another default "
              "first (TorchServe refuses to remove the default version)", file=sys.stderr)
        return 1
    return _mgmt_result(c.unregister(a.model_name, a.version))


def cmd_versions(a) -> int:
    c = TorchServeClient.for_out(a.out)
    default = c.default_version(a.model_name)
    _print({v: {"default": v == default, "url": d.get("modelUrl"),
                "workers": [w["status"] for w in d.get("workers", [])],
                "batchSize": d.get("batchSize"), "maxBatchDelay": d.get("maxBatchDelay")}
            for v, d in c.versions(a.model_name).items()})
    return 0


# --------------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m archives", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, model=True):
        sp.add_argument("--out", required=True, help="run folder (model-store/, torchserve/ under it)")
        if model:
            sp.add_argument("--model-name", default=B.DEFAULT_MODEL_NAME,
                            help=f"TorchServe model name (default {B.DEFAULT_MODEL_NAME})")

    b = sub.add_parser("build", help="build OUT/model-store/<name>-v<version>.mar")
    common(b)
    src = b.add_argument_group("source (one of)")
    src.add_argument("--model-uri", help="models:/<registered>@<alias> or models:/<registered>/<v>")
    src.add_argument("--version", help="registry version number (with --registered-model), or the "
                                       "version of a local --artifact")
    src.add_argument("--artifact", help="local serving-artifact folder (needs --version)")
    b.add_argument("--registered-model", default=B.DEFAULT_REGISTERED_MODEL,
                   help=f"MLflow registered model for --version (default {B.DEFAULT_REGISTERED_MODEL})")
    b.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else "
                                          "sqlite:///OUT/mlflow.db)")
    defaults = B.ArchiveConfig()  # one place for the serving defaults (core/config.py)
    b.add_argument("--batch-size", type=int, default=defaults.batch_size)
    b.add_argument("--max-batch-delay", type=int, default=defaults.max_batch_delay_ms,
                   help=f"ms (default {defaults.max_batch_delay_ms})")
    b.add_argument("--min-workers", type=int, default=defaults.min_workers)
    b.add_argument("--max-workers", type=int, default=None)
    b.add_argument("--response-timeout", type=int, default=defaults.response_timeout_s, help="s")
    b.add_argument("--torch-threads", type=int, default=defaults.torch_threads,
                   help="intra-op threads per worker (torch, FAISS, ONNX Runtime)")
    b.add_argument("--scoring", default=defaults.scoring, choices=list(VARIANTS),
                   help=f"serving variant built into the archive (default {defaults.scoring}, the "
                        "serving benchmark's winner; see docs/performance.md)")
    b.add_argument("--archive-format", default="default", choices=["default", "zip-store"],
                   help="zip-store: no compression (large catalogs: faster build and load)")
    b.add_argument("--force", action="store_true", help="overwrite an existing archive file")
    b.add_argument("--faults", metavar="JSON",
                   help='TEST ARCHIVES ONLY: inject faults, e.g. \'{"error_user_prefix": "fault-", '
                        '"latency_ms": 50, "error_rate": 0.1, "seed": 1, "allow_header": true}\' '
                        "(core/faults.py, docs/serving.md); absent: no faults")
    b.set_defaults(fn=cmd_build)

    s = sub.add_parser("serve", help="start TorchServe on OUT/model-store and wait for /ping")
    common(s, model=False)
    s.add_argument("--config", default="dev", help="dev | prod | path to a config.properties")
    s.add_argument("--host", help="bind address (default: the config's)")
    s.add_argument("--inference-port", type=int, help="default $TS_INFERENCE_PORT or 8080")
    s.add_argument("--management-port", type=int, help="default $TS_MANAGEMENT_PORT or 8081")
    s.add_argument("--metrics-port", type=int, help="default $TS_METRICS_PORT or 8082")
    s.add_argument("--models", nargs="*", help="NAME=FILE.mar (default: newest archive per name)")
    s.add_argument("--timeout", type=float, default=300, help="seconds to wait for health")
    s.set_defaults(fn=cmd_serve)

    st = sub.add_parser("stop", help="stop the TorchServe started under OUT")
    common(st, model=False)
    st.set_defaults(fn=cmd_stop)

    ss = sub.add_parser("status", help="health, models, versions and workers")
    common(ss, model=False)
    ss.set_defaults(fn=cmd_status)

    d = sub.add_parser("demo-requests", help="recommendations for a known, a history-only and an "
                                             "unknown user through the inference API")
    common(d)
    d.set_defaults(fn=cmd_demo)

    ai = sub.add_parser("add-items", help="new catalog items without retraining: the next "
                                          "registry version and its archive, registered in the "
                                          "running TorchServe")
    common(ai)
    ai.add_argument("--catalog", required=True, help="new items in the ETL's raw catalog format "
                                                     "(CSV with header, JSON lines, Parquet)")
    ai.add_argument("--model-uri", default="models:/hybrid-recommender@challenger",
                    help="the version to extend (default: the challenger)")
    ai.add_argument("--scoring", default=B.ArchiveConfig().scoring, choices=list(VARIANTS),
                    help="serving variant of the new archive (its index is rebuilt)")
    ai.add_argument("--no-register", action="store_true", help="do not register the archive in "
                                                              "the running TorchServe")
    ai.set_defaults(fn=cmd_add_items)

    pa = sub.add_parser("parity", help="known users vs their history sent by a new id, through "
                                       "the running TorchServe; writes OUT/parity.json, exit 1 "
                                       "below the threshold")
    common(pa)
    pa.add_argument("--version", help="served version to check (default: the default version)")
    pa.add_argument("--max-users", type=int, default=1000, help="sample size (default 1000)")
    pa.add_argument("--threshold", type=float, default=0.99, help="minimum mean top-10 overlap")
    pa.set_defaults(fn=cmd_parity)

    r = sub.add_parser("register", help="register an archive as another version (POST /models)")
    common(r)
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--version", help="version of an archive in OUT/model-store")
    g.add_argument("--archive", help="archive file name in OUT/model-store")
    r.add_argument("--workers", type=int, default=None, help="initial workers (default: the "
                                                             "archive's minWorkers)")
    r.set_defaults(fn=cmd_register)

    sd = sub.add_parser("set-default", help="route /predictions/<name> to a version")
    common(sd)
    sd.add_argument("--version", required=True)
    sd.set_defaults(fn=cmd_set_default)

    rt = sub.add_parser("retire", help="unregister a (non-default) version (DELETE /models/...)")
    common(rt)
    rt.add_argument("--version", required=True)
    rt.set_defaults(fn=cmd_retire)

    v = sub.add_parser("versions", help="registered versions, default, workers")
    common(v)
    v.set_defaults(fn=cmd_versions)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(parser(), argv, (S.ServerError, FileExistsError, FileNotFoundError,
                                    LookupError, ValueError), logs=False)


if __name__ == "__main__":
    sys.exit(main())
