"""Submit the ETL ``prepare`` job to Amazon EMR (existing cluster or a transient one).

The job that runs locally as ``python -m etl prepare --events E --catalog C --out O [...]``
runs on EMR as::

    spark-submit --deploy-mode cluster --master yarn \\
        --py-files s3://BUCKET/PREFIX/code/recsys-etl-<sha12>.zip \\
        s3://BUCKET/PREFIX/code/emr_entry.py \\
        prepare --events E --catalog C --out O [...] --spark-master yarn

See docs/emr.md for the command lines, IAM assumptions and the S3 layout.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tempfile
import uuid
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from common.dataclass_args import add_dataclass_args, from_args, to_dict

from etl.config import EmrConfig

STEP_NAME = "recsys-prepare"
ENTRY_NAME = "emr_entry.py"
CODE_PACKAGES = ("core", "common", "etl")  # etl imports core and common
ZIP_PREFIX = "recsys-etl-"
# Fixed metadata so the same sources always give the same zip bytes (and sha256).
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_ZIP_MODE = 0o644 << 16
# Arguments the step itself sets; passing them again in prepare_args would silently win
# (argparse keeps the last value), so they are rejected instead.
_RESERVED_PREPARE_ARGS = ("--events", "--catalog", "--out", "--spark-master")

DEFAULT_SERVICE_ROLE = "EMR_DefaultRole"
DEFAULT_JOB_FLOW_ROLE = "EMR_EC2_DefaultRole"

_REPO_ROOT = Path(__file__).resolve().parent.parent
_ENTRY_SCRIPT = Path(__file__).resolve().parent / ENTRY_NAME


# --------------------------------------------------------------------------- packaging

def _code_files(repo_root: Path) -> list[tuple[str, Path]]:
    """(archive name, path) of every .py file of the shipped packages, sorted by name."""
    files: list[tuple[str, Path]] = []
    for package in CODE_PACKAGES:
        pkg_dir = repo_root / package
        if not pkg_dir.is_dir():
            raise FileNotFoundError(f"package directory {pkg_dir} not found")
        for path in pkg_dir.rglob("*.py"):
            rel = path.relative_to(repo_root)
            if not path.is_file() or any(p == "__pycache__" or p.startswith(".") for p in rel.parts):
                continue
            files.append((rel.as_posix(), path))
    files.sort(key=lambda item: item[0])
    return files


def build_code_zip(repo_root: Path = _REPO_ROOT) -> bytes:
    """The deterministic zip of ``core/``, ``common/`` and ``etl/`` (.py files only) as bytes."""
    files = _code_files(repo_root)
    # Explicit directory entries: zipimport (Python <= 3.11, e.g. EMR's 3.9) only sees a
    # package without __init__.py (a namespace package) when its "dir/" entry exists.
    dirs = {"/".join(name.split("/")[:i]) + "/"
            for name, _ in files for i in range(1, name.count("/") + 1)}
    entries: list[tuple[str, Optional[Path]]] = sorted(
        [(d, None) for d in dirs] + files, key=lambda item: item[0])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for arcname, path in entries:
            info = zipfile.ZipInfo(arcname, date_time=_ZIP_DATE)
            info.create_system = 3  # unix, regardless of the building OS
            if path is None:
                info.external_attr = (0o40755 << 16) | 0x10  # unix dir mode + MS-DOS dir flag
                zf.writestr(info, b"")
                continue
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = _ZIP_MODE
            zf.writestr(info, path.read_bytes(), compresslevel=9)
    return buf.getvalue()


def package_code(dest_dir: Path) -> Path:
    """Write ``recsys-etl-<sha12>.zip`` of ``core/``, ``common/`` and ``etl/`` into ``dest_dir``.

    Only ``.py`` files are included, in sorted order with fixed timestamps and modes, so the
    same code always produces the same bytes and therefore the same file name.
    """
    data = build_code_zip(_REPO_ROOT)
    sha12 = hashlib.sha256(data).hexdigest()[:12]
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / f"{ZIP_PREFIX}{sha12}.zip"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


# --------------------------------------------------------------------------- helpers

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _require_s3_uri(name: str, uri: str) -> str:
    if not isinstance(uri, str) or not uri.startswith("s3://") or len(uri) <= len("s3://") \
            or uri[len("s3://"):].startswith("/"):
        raise ValueError(f"{name} must be an s3://bucket/key URI, got {uri!r}")
    return uri


RELEASE_LABEL_NEEDED = ("a transient cluster needs --emr-release-label: an EMR release whose Spark "
                        "is 4.x (the prepare job uses Spark 4 APIs; emr-7.x ships Spark 3.5 and "
                        "will not run it; see docs/emr.md)")


def _validate(cfg: EmrConfig, transient: bool) -> None:
    if not cfg.bucket or not cfg.bucket.strip():
        raise ValueError("EmrConfig.bucket is required (--emr-bucket): the S3 bucket that "
                         "receives the code zip, the entry script and the job arguments")
    if "/" in cfg.bucket or cfg.bucket.startswith("s3:"):
        raise ValueError(f"EmrConfig.bucket must be a bare bucket name, got {cfg.bucket!r}")
    if not transient and not cfg.cluster_id:
        raise ValueError("EmrConfig.cluster_id is required (--emr-cluster-id j-XXXX) unless "
                         "transient=True (--transient) starts a new cluster for the job")
    if transient and not cfg.release_label:
        raise ValueError(RELEASE_LABEL_NEEDED)
    if cfg.core_instances < 0:
        raise ValueError(f"EmrConfig.core_instances must be >= 0, got {cfg.core_instances}")
    if cfg.log_uri:
        _require_s3_uri("EmrConfig.log_uri", cfg.log_uri)


def _check_prepare_args(prepare_args: list[str]) -> list[str]:
    args = list(prepare_args)
    for arg in args:
        if not isinstance(arg, str):
            raise ValueError(f"prepare_args must be strings, got {arg!r}")
        flag = arg.split("=", 1)[0]
        # argparse also accepts unambiguous prefixes (--out -> --ou), so reject those too.
        if len(flag) > 2 and flag.startswith("--") and \
                any(r.startswith(flag) for r in _RESERVED_PREPARE_ARGS):
            raise ValueError(f"{flag} is set by the EMR step itself and must not appear in "
                             f"prepare_args (got {args!r})")
    return args


def _key(prefix: str, *parts: str) -> str:
    return "/".join(p for p in (prefix.strip("/"), *parts) if p)


def new_job_id() -> str:
    now = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"prepare-{now}-{uuid.uuid4().hex[:8]}"


def step_args(code_uri: str, entry_uri: str, events_uri: str, catalog_uri: str,
              output_uri: str, prepare_args: list[str]) -> list[str]:
    """The ``command-runner.jar`` arguments of the prepare step."""
    return ["spark-submit", "--deploy-mode", "cluster", "--master", "yarn",
            "--py-files", code_uri, entry_uri,
            "prepare", "--events", events_uri, "--catalog", catalog_uri, "--out", output_uri,
            *prepare_args, "--spark-master", "yarn"]


def prepare_step(args: list[str], *, transient: bool) -> dict[str, Any]:
    return {
        "Name": STEP_NAME,
        "ActionOnFailure": "TERMINATE_CLUSTER" if transient else "CONTINUE",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": list(args)},
    }


def job_flow_request(cfg: EmrConfig, step: dict[str, Any], job_id: str) -> dict[str, Any]:
    """``run_job_flow`` keyword arguments for a transient cluster that runs ``step`` and ends."""
    if not cfg.release_label:
        raise ValueError(RELEASE_LABEL_NEEDED)
    groups = [{"Name": "master", "InstanceRole": "MASTER", "Market": "ON_DEMAND",
               "InstanceType": cfg.instance_type, "InstanceCount": 1}]
    if cfg.core_instances > 0:
        groups.append({"Name": "core", "InstanceRole": "CORE", "Market": "ON_DEMAND",
                       "InstanceType": cfg.instance_type, "InstanceCount": cfg.core_instances})
    request: dict[str, Any] = {
        "Name": f"recsys-etl-{job_id}",
        "ReleaseLabel": cfg.release_label,
        "Applications": [{"Name": "Spark"}],
        "Instances": {
            "InstanceGroups": groups,
            "KeepJobFlowAliveWhenNoSteps": False,
            "TerminationProtected": False,
        },
        "Steps": [step],
        "JobFlowRole": DEFAULT_JOB_FLOW_ROLE,
        "ServiceRole": DEFAULT_SERVICE_ROLE,
        "VisibleToAllUsers": True,
        "Tags": [{"Key": "app", "Value": "recsys-etl"}, {"Key": "recsys-job-id", "Value": job_id}],
    }
    if cfg.log_uri:
        request["LogUri"] = cfg.log_uri
    return request


def _client_error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _check_bucket(s3, bucket: str) -> None:
    """Fail early with a clear message when the bucket does not exist.

    Only "not found" is fatal: a 403 may just mean the caller lacks s3:ListBucket while
    s3:PutObject (all the upload needs) is allowed, so it is left to the upload to decide.
    """
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if _client_error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
            raise ValueError(f"S3 bucket {bucket!r} does not exist (EmrConfig.bucket / "
                             f"--emr-bucket)") from exc


_DEAD_STATES = ("TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS")


def _check_cluster(emr, cluster_id: str) -> None:
    """Fail before uploading anything when the target cluster is unknown or shutting down."""
    from botocore.exceptions import ClientError

    try:
        state = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"]
    except ClientError as exc:
        if _client_error_code(exc) in ("InvalidRequestException", "ValidationException",
                                       "ResourceNotFoundException"):
            raise ValueError(f"EMR cluster {cluster_id!r} not found: "
                             f"{exc.response['Error'].get('Message', exc)}") from exc
        raise
    if state in _DEAD_STATES:
        raise ValueError(f"EMR cluster {cluster_id!r} is {state}; pass a running cluster id "
                         f"or use --transient")


def _find_step_id(emr, cluster_id: str) -> Optional[str]:
    """The id of the (single) prepare step of a freshly started transient cluster."""
    ids = []
    for page in emr.get_paginator("list_steps").paginate(ClusterId=cluster_id):
        ids.extend(s["Id"] for s in page["Steps"] if s.get("Name") == STEP_NAME)
    return ids[0] if len(ids) == 1 else None


# --------------------------------------------------------------------------- submission

def submit_prepare(cfg: EmrConfig, events_uri: str, catalog_uri: str, output_uri: str,
                   prepare_args: list[str], *, transient: bool = False, s3=None,
                   emr=None) -> dict:
    """Upload the code and submit the prepare job; return the ids and S3 URIs involved.

    With ``transient=False`` the step is added to ``cfg.cluster_id`` (ActionOnFailure
    CONTINUE); with ``transient=True`` a new cluster is started that runs only this step and
    terminates afterwards (ActionOnFailure TERMINATE_CLUSTER).

    Returns ``{"cluster_id", "step_id", "code_uri", "entry_uri", "args_uri", "job_id",
    "transient"}``. ``step_id`` can be ``None`` for a transient cluster when the step could not
    be identified through ``list_steps``.
    """
    _validate(cfg, transient)
    events_uri = _require_s3_uri("events_uri", events_uri)
    catalog_uri = _require_s3_uri("catalog_uri", catalog_uri)
    output_uri = _require_s3_uri("output_uri", output_uri)
    prepare_args = _check_prepare_args(prepare_args)

    if s3 is None or emr is None:
        import boto3

        s3 = s3 if s3 is not None else boto3.client("s3", region_name=cfg.region)
        emr = emr if emr is not None else boto3.client("emr", region_name=cfg.region)

    bucket = cfg.bucket.strip()
    _check_bucket(s3, bucket)
    if not transient:
        _check_cluster(emr, cfg.cluster_id)
    job_id = new_job_id()
    with tempfile.TemporaryDirectory(prefix="recsys-emr-") as tmp:
        zip_path = package_code(Path(tmp))
        code_key = _key(cfg.prefix, "code", zip_path.name)
        entry_key = _key(cfg.prefix, "code", ENTRY_NAME)
        code_sha256 = _sha256(zip_path)
        s3.upload_file(str(zip_path), bucket, code_key)
    s3.upload_file(str(_ENTRY_SCRIPT), bucket, entry_key)
    code_uri = f"s3://{bucket}/{code_key}"
    entry_uri = f"s3://{bucket}/{entry_key}"

    args = step_args(code_uri, entry_uri, events_uri, catalog_uri, output_uri, prepare_args)
    step = prepare_step(args, transient=transient)

    args_key = _key(cfg.prefix, "jobs", job_id, "args.json")
    args_uri = f"s3://{bucket}/{args_key}"
    record = {
        "job_id": job_id,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "transient": transient,
        "events_uri": events_uri,
        "catalog_uri": catalog_uri,
        "output_uri": output_uri,
        "prepare_args": prepare_args,
        "code_uri": code_uri,
        "code_sha256": code_sha256,
        "entry_uri": entry_uri,
        "step": step,
        "emr": to_dict(cfg),
    }
    s3.put_object(Bucket=bucket, Key=args_key, ContentType="application/json",
                  Body=json.dumps(record, indent=2, sort_keys=True).encode("utf-8"))

    if transient:
        response = emr.run_job_flow(**job_flow_request(cfg, step, job_id))
        cluster_id = response["JobFlowId"]
        step_id = _find_step_id(emr, cluster_id)
    else:
        cluster_id = cfg.cluster_id
        response = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[step])
        step_id = response["StepIds"][0]

    return {"cluster_id": cluster_id, "step_id": step_id, "code_uri": code_uri,
            "entry_uri": entry_uri, "args_uri": args_uri, "job_id": job_id,
            "transient": transient}


# --------------------------------------------------------------------------- CLI

def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register the ``emr-submit`` subcommand on an ``add_subparsers()`` object."""
    parser = subparsers.add_parser(
        "emr-submit",
        help="run the prepare job on EMR (upload code, add a step or start a transient cluster)",
        description="Upload core/ + common/ + etl/ to S3 and run `prepare` on EMR via spark-submit. "
                    "Extra prepare options go after `--`, e.g. "
                    "`emr-submit --events s3://... --catalog s3://... --out s3://... "
                    "--emr-bucket B --emr-cluster-id j-XXX -- --seed 7`.")
    parser.add_argument("--events", required=True, help="s3:// URI of the raw event log")
    parser.add_argument("--catalog", required=True, help="s3:// URI of the raw item catalog")
    parser.add_argument("--out", required=True, help="s3:// URI of the output root")
    parser.add_argument("--transient", action="store_true",
                        help="start a new cluster that runs only this job, then terminates")
    add_dataclass_args(parser, EmrConfig, prefix="emr-")
    parser.add_argument("prepare_args", nargs=argparse.REMAINDER,
                        help="after `--`: extra options passed to `prepare` unchanged")
    # etl/__main__.py dispatches on ``fn``; ``func`` is the common argparse idiom.
    parser.set_defaults(fn=cmd_emr_submit, func=cmd_emr_submit)
    return parser


def cmd_emr_submit(args: argparse.Namespace) -> int:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    cfg = from_args(EmrConfig, args, prefix="emr-")
    prepare_args = list(args.prepare_args or [])
    if prepare_args and prepare_args[0] == "--":
        prepare_args = prepare_args[1:]
    try:
        result = submit_prepare(cfg, args.events, args.catalog, args.out, prepare_args,
                                transient=args.transient)
    except ValueError as exc:
        print(f"emr-submit: error: {exc}", file=sys.stderr)
        return 2
    except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
        print(f"emr-submit: AWS error: {exc}", file=sys.stderr)
        return 1
    # stdout carries only the JSON (machine readable); the human summary goes to stderr.
    print(json.dumps(result, indent=2, sort_keys=True))
    where = "new transient cluster" if result["transient"] else "cluster"
    print(f"submitted step {result['step_id']} to {where} {result['cluster_id']} "
          f"(region {cfg.region}); code {result['code_uri']}; args {result['args_uri']}",
          file=sys.stderr)
    return 0


__all__ = ["package_code", "build_code_zip", "submit_prepare", "step_args", "prepare_step",
           "job_flow_request", "add_cli", "cmd_emr_submit", "STEP_NAME", "ENTRY_NAME"]
