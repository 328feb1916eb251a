"""One ``model.tar.gz`` per model version, holding its TorchServe archive, uploaded to S3.

SageMaker unpacks a Model's ``model.tar.gz`` into ``/opt/ml/model``; the image's ``serve``
command registers every ``.mar`` it finds there. The tarball is deterministic (sorted, mtime 0,
no owner), so packaging the same archive twice gives the same sha256, and an upload whose object
already carries that sha256 (object metadata) is skipped.

The archive comes from ``OUT/model-store/<name>-v<version>.mar`` (``python -m archives build``),
or is built first from an MLflow registry version (``archives.build.build_from_registry``).
"""
from __future__ import annotations

import gzip
import io
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path

from core.storage import file_sha256

log = logging.getLogger(__name__)
DEFAULT_MODEL_NAME = "recsys"


@dataclass(frozen=True)
class Package:
    version: str
    mar: Path
    tarball: Path
    sha256: str
    s3_uri: str = ""


def find_mar(out: str | Path, version: str, model_name: str = DEFAULT_MODEL_NAME) -> Path:
    path = Path(out) / "model-store" / f"{model_name}-v{version}.mar"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; build it with: python -m archives build "
                                f"--out {out} --version {version} (or pass --from-mlflow)")
    return path


def build_from_mlflow(out: str | Path, version: str, *, registered_model: str | None = None,
                      tracking_uri: str | None = None, model_name: str = DEFAULT_MODEL_NAME) -> Path:
    """Build (or reuse) ``OUT/model-store/<name>-v<version>.mar`` from the MLflow registry."""
    from archives import build as B  # heavy (torch, MLflow): only on this path
    info = B.build_from_registry(version, out, registered_model=registered_model,
                                 tracking_uri=tracking_uri, model_name=model_name)
    return info.path


def make_tarball(mar: Path, dest: Path) -> str:
    """Write ``dest`` (model.tar.gz with ``mar`` at its root) and return its sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(mar.name)
        info.size = mar.stat().st_size
        info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, 0, "", ""
        with open(mar, "rb") as f:
            tar.addfile(info, f)
    with open(dest, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(buf.getvalue())
    return file_sha256(dest)


def package(out: str | Path, version: str, *, model_name: str = DEFAULT_MODEL_NAME,
            from_mlflow: bool = False, registered_model: str | None = None,
            tracking_uri: str | None = None) -> Package:
    """``OUT/sagemaker/v<version>/model.tar.gz`` for one version (built locally, not uploaded)."""
    version = str(version)
    mar = (build_from_mlflow(out, version, registered_model=registered_model,
                             tracking_uri=tracking_uri, model_name=model_name)
           if from_mlflow else find_mar(out, version, model_name))
    tarball = Path(out) / "sagemaker" / f"v{version}" / "model.tar.gz"
    digest = make_tarball(mar, tarball)
    return Package(version, mar, tarball, digest)


def s3_key(prefix: str, endpoint: str, pkg: Package) -> str:
    """Content-addressed: a changed archive never overwrites what a live Model points to."""
    return "/".join(p for p in (prefix.strip("/"), endpoint, f"v{pkg.version}", pkg.sha256[:16],
                                "model.tar.gz") if p)


def upload(pkg: Package, s3, bucket: str, key: str) -> Package:
    """Put the tarball at ``s3://bucket/key`` unless an object with the same sha256 is there."""
    from botocore.exceptions import ClientError
    uri = f"s3://{bucket}/{key}"
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
        if head.get("Metadata", {}).get("sha256") == pkg.sha256:
            log.info("%s already uploaded (sha256 %s)", uri, pkg.sha256[:12])
            return Package(pkg.version, pkg.mar, pkg.tarball, pkg.sha256, uri)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise
    s3.upload_file(str(pkg.tarball), bucket, key, ExtraArgs={"Metadata": {"sha256": pkg.sha256}})
    log.info("uploaded %s (%d bytes, sha256 %s)", uri, pkg.tarball.stat().st_size, pkg.sha256[:12])
    return Package(pkg.version, pkg.mar, pkg.tarball, pkg.sha256, uri)


__all__ = ["Package", "find_mar", "build_from_mlflow", "make_tarball", "package", "s3_key", "upload"]
