"""Build a versioned TorchServe archive (.mar) of the recommender with torch-model-archiver.

Sources: a registered MLflow model (``models:/<name>@<alias>``, ``models:/<name>/<version>`` or a
version number with ``--registered-model``) via ``common.registry.download_serving_artifact``,
or a local serving-artifact folder. The archive version is the registry version (for a local
folder: ``--version``).

Archive layout (unpacked by TorchServe into the worker's ``model_dir``, which is on its
PYTHONPATH)::

    recommender.py            the handler entry (handlers/recommender.py)
    handlers/                 the TorchServe adapter: recommender (entry), faults
    core/                     the served core the handler imports (import closure only): engine,
                              validation and its request schema, encoder, artifact, retrieval
    artifact/                 the serving artifact folder, unchanged
    serving/                  derived at build time (core/artifact_adapter.py: write_pack):
                              pack.safetensors (titles, user/item id tables), the index of the
                              serving variant (``--scoring``, core/retrieval.py) and
                              serving.json; memory-mapped by every worker where the library allows
    model-config.yaml         batchSize, maxBatchDelay, min/maxWorkers, responseTimeout, handler:
                              (handler.faults only in test archives built with --faults)
    build_info.json           name, version, source, sha256 of the artifact files, build time
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from core.jsonio import write_json
from core.config import ArchiveConfig
from core.storage import file_sha256

from archives.store import ArchiveInfo, mar_name, model_store, read_manifest

REPO = Path(__file__).resolve().parents[1]
CORE_DIR = REPO / "core"
HANDLER_ENTRY = REPO / "handlers" / "recommender.py"
# the packages an archive may carry; the import closure of the handler decides which files
LOCAL_PACKAGES = ("handlers", "core")
CORE_DATA_FILES = ("request.schema.json",)
DEFAULT_MODEL_NAME = "recsys"
# The registered MLflow model of the training stage (common/registry.py MODEL_NAME; a test keeps
# them equal: importing the registry here would load MLflow for every archives command).
DEFAULT_REGISTERED_MODEL = "hybrid-recommender"
ARTIFACT_DIR_IN_ARCHIVE = "artifact"
PACK_IN_ARCHIVE = "serving/pack.safetensors"


def model_config_yaml(cfg: ArchiveConfig) -> dict[str, Any]:
    """The model-config.yaml mapping of ``cfg``, refusing settings that misbehave."""
    if cfg.batch_size < 1 or cfg.max_batch_delay_ms < 0:
        raise ValueError("batch_size must be >= 1 and max_batch_delay >= 0")
    if cfg.batch_size > 1 and cfg.max_batch_delay_ms == 0:
        # measured with TorchServe 0.12: maxBatchDelay 0 with batchSize > 1 gave ~110 ms per
        # lone request (1 ms: ~9 ms); refuse the trap
        raise ValueError("max_batch_delay 0 with batch_size > 1 makes TorchServe answer a lone "
                         "request after ~100 ms; use >= 1 ms (or batch_size 1)")
    if not 1 <= cfg.min_workers <= cfg.max_workers:
        raise ValueError("need 1 <= min_workers <= max_workers")
    handler = {"torch_threads": cfg.torch_threads, "scoring": cfg.scoring,
               "artifact_dir": ARTIFACT_DIR_IN_ARCHIVE, "pack": PACK_IN_ARCHIVE}
    if cfg.faults is not None:  # a test archive: validated here, so a typo fails the build
        from core.faults import parse_faults

        settings = parse_faults(cfg.faults).to_dict()
        if not settings:  # only defaults (e.g. latency_ms 0): nothing to inject
            raise ValueError(f"faults {cfg.faults} inject nothing (every setting is its "
                             "default): leave --faults out for an archive without faults")
        handler["faults"] = settings
    return {
        "minWorkers": cfg.min_workers,
        "maxWorkers": cfg.max_workers,
        "batchSize": cfg.batch_size,
        "maxBatchDelay": cfg.max_batch_delay_ms,
        "responseTimeout": cfg.response_timeout_s,
        "startupTimeout": cfg.startup_timeout_s,
        "handler": handler,
    }


# --------------------------------------------------------------------------------------------
# What goes into the archive
# --------------------------------------------------------------------------------------------

def _module_file(module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] not in LOCAL_PACKAGES:
        return None
    base = REPO.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if pkg else []
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # "from pkg import module"
    return found


def import_closure(entry_files: list[Path]) -> list[Path]:
    """Repository files (handlers/, core/) the entry files import, transitively,
    plus the ``__init__.py`` of every package on the way."""
    todo, seen = list(entry_files), set()
    while todo:
        f = todo.pop().resolve()
        if f in seen:
            continue
        seen.add(f)
        rel = f.relative_to(REPO)
        for i in range(1, len(rel.parts)):  # parent packages
            init = REPO.joinpath(*rel.parts[:i], "__init__.py")
            if init.is_file() and init not in seen:
                todo.append(init)
        for mod in _imports(f):
            mf = _module_file(mod)
            if mf is not None and mf.resolve() not in seen:
                todo.append(mf)
    return sorted(seen)


def _sha256_tree(root: Path) -> tuple[str, int]:
    """(sha256 over each file's relative path and sha256, in path order; total bytes)."""
    h, total = hashlib.sha256(), 0
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(bytes.fromhex(file_sha256(f)))
        total += f.stat().st_size
    return h.hexdigest(), total


def _git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                           timeout=10)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def check_artifact(artifact_dir: Path, pack: Path | None = None) -> dict[str, Any]:
    """Load the artifact the way the handler does (fails early on a broken folder) and return a
    summary with a few example ids for demo requests."""
    from core.artifact_adapter import load_recommender
    from core.validation import RecRequest

    rec = load_recommender(artifact_dir, pack_path=pack)
    summary = rec.describe()
    users = summary["example_users"][:1]
    items = summary["popular_items"][:1]
    outs = rec.recommend([RecRequest(user_id=u, k=3) for u in users] + [RecRequest(user_id="?", k=3)]
                         + [RecRequest(None, k=3, similar_to=i, diversity=0.5) for i in items]
                         + [RecRequest(u, candidates=tuple(items)) for u in users])
    bad = [o.error.message for o in outs if o.error is not None]
    if bad:
        raise ValueError(f"the engine refused the archive's check requests: {bad}")
    return summary


def build_from_folder(artifact_dir: str | Path, out: str | Path, *, version: str | int,
                      model_name: str = DEFAULT_MODEL_NAME, config: ArchiveConfig | None = None,
                      source: str | None = None, force: bool = False,
                      archive_format: str = "default", extra_info: dict | None = None) -> ArchiveInfo:
    """Build ``OUT/model-store/<model_name>-v<version>.mar`` from a serving-artifact folder."""
    artifact_dir = Path(artifact_dir).expanduser().resolve()
    if not artifact_dir.is_dir():
        raise FileNotFoundError(f"serving artifact folder {artifact_dir} does not exist")
    version = str(version)
    if not version or not all(c.isalnum() or c in "._" for c in version):
        raise ValueError(f"version {version!r} must be alphanumeric (dots/underscores allowed)")
    config = config or ArchiveConfig()
    store = model_store(out)
    store.mkdir(parents=True, exist_ok=True)
    dest = store / mar_name(model_name, version)
    digest, nbytes = _sha256_tree(artifact_dir)
    if dest.exists() and not force:
        old = build_info(out, model_name, version)
        if old.get("artifact_sha256") == digest and old.get("model_config") == model_config_yaml(config):
            return ArchiveInfo(dest, model_name, version, reused=True)  # same inputs: up to date
        raise FileExistsError(f"{dest} exists and was built from another artifact or model "
                              "config; a version is built once (use --force to rebuild one that "
                              "is not registered in a running TorchServe)")

    work_root = Path(out).expanduser().resolve() / "archives"
    work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{model_name}-v{version}-", dir=work_root))
    try:
        payload = work / "payload"
        payload.mkdir()
        for f in import_closure([HANDLER_ENTRY]):
            target = payload / f.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
        for name in CORE_DATA_FILES:
            shutil.copy2(CORE_DIR / name, payload / "core" / name)
        shutil.copytree(artifact_dir, payload / ARTIFACT_DIR_IN_ARCHIVE)
        from core.artifact_adapter import write_pack

        pack = payload / PACK_IN_ARCHIVE
        pack_info = write_pack(artifact_dir, pack, variant=config.scoring,
                               threads=max(1, os.cpu_count() or 1))
        summary = {**check_artifact(artifact_dir, pack), **pack_info}
        info = {
            "model_name": model_name, "version": version, "source": source or str(artifact_dir),
            "artifact_sha256": digest, "artifact_bytes": nbytes, "built_at": time.time(),
            "git_commit": _git_commit(), "model_config": model_config_yaml(config),
            "artifact": summary, **(extra_info or {}),
        }
        write_json(payload / "build_info.json", info)
        cfg = work / "model-config.yaml"
        cfg.write_text(yaml.safe_dump(model_config_yaml(config), sort_keys=False))
        export = work / "export"
        export.mkdir()
        tmp = work / "tmp"  # the archiver stages in $TMPDIR/<model_name>: keep builds apart
        tmp.mkdir()
        cmd = [str(Path(sys.executable).with_name("torch-model-archiver")), "--model-name", model_name,
               "--version", version, "--handler", str(HANDLER_ENTRY), "--extra-files", str(payload),
               "--config-file", str(cfg), "--export-path", str(export),
               "--archive-format", archive_format, "--force"]
        if not Path(cmd[0]).exists():
            cmd[0:1] = [sys.executable, "-m", "model_archiver.model_packaging"]
        env = {**os.environ, "TMPDIR": str(tmp), "TEMP": str(tmp)}
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        built = export / f"{model_name}.mar"
        manifest = read_manifest(built)
        assert manifest["model"]["modelVersion"] == version, manifest
        os.replace(built, dest) if built.stat().st_dev == store.stat().st_dev else \
            shutil.move(str(built), dest)
        write_json(work_root / f"{model_name}-v{version}.json", {**info, "archive": str(dest)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ArchiveInfo(dest, model_name, version)


def build_from_registry(model_uri_or_version: str | int, out: str | Path, *,
                        registered_model: str | None = None, tracking_uri: str | None = None,
                        model_name: str = DEFAULT_MODEL_NAME, config: ArchiveConfig | None = None,
                        force: bool = False, archive_format: str = "default") -> ArchiveInfo:
    """Build the archive of a registered MLflow model version (archive version = registry version)."""
    from common import registry

    uri = tracking_uri or registry.tracking_uri(out)
    mv = registry.resolve_version(model_uri_or_version, registered_model or DEFAULT_REGISTERED_MODEL,
                                  tracking_uri=uri)
    work_root = Path(out).expanduser().resolve() / "archives"
    work_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=work_root))
    try:
        local = registry.download_serving_artifact(f"models:/{mv.name}/{mv.version}", tmp / "artifact",
                                                   tracking_uri=uri)
        return build_from_folder(local, out, version=str(mv.version), model_name=model_name,
                                 config=config, force=force, archive_format=archive_format,
                                 source=f"models:/{mv.name}/{mv.version}",
                                 extra_info={"registry": {
                                     "registered_model": mv.name, "version": str(mv.version),
                                     "requested": str(model_uri_or_version),
                                     "aliases": list(getattr(mv, "aliases", []) or []),
                                     "run_id": mv.run_id, "tracking_uri": uri}})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_info(out: str | Path, model_name: str, version: str | int) -> dict:
    p = Path(out).expanduser().resolve() / "archives" / f"{model_name}-v{version}.json"
    return json.loads(p.read_text()) if p.exists() else {}


__all__ = ["ArchiveConfig", "model_config_yaml", "build_from_folder", "build_from_registry", "import_closure",
           "check_artifact", "build_info", "DEFAULT_MODEL_NAME", "DEFAULT_REGISTERED_MODEL"]
