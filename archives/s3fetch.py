"""Archives from S3 into a local model store, each checked against its sha256 before use.

The container's ``fetch-models`` command (the Helm chart's init step) and the ``torchserve``
command's ``--model-store s3://...`` both land here. Nothing half-checked reaches the store:
every file is downloaded beside it under a temporary name, hashed, and only renamed into place
when *all* of them match; on any mismatch or S3 error nothing is renamed and the caller exits
non-zero, so a pod never starts on an archive other than the one its values name.

An archive is named ``s3://bucket/key.mar=<sha256 hex>`` (split at the last ``=``) or listed in
a manifest file (JSON or YAML: ``[{"uri": ..., "sha256": ...}, ...]`` or ``{"models": [...]}``).
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` point boto3 at another S3 (moto in the tests).
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from core.storage import file_sha256

log = logging.getLogger(__name__)
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")


class FetchError(RuntimeError):
    """A model could not be fetched or verified (the message says which and why)."""


@dataclass(frozen=True)
class ModelRef:
    uri: str                 # s3://bucket/key.mar
    sha256: str | None       # expected hex digest (lower case); None only when syncing a prefix

    @property
    def bucket(self) -> str:
        return self.uri[5:].split("/", 1)[0]

    @property
    def key(self) -> str:
        return self.uri[5:].split("/", 1)[1]

    @property
    def file_name(self) -> str:
        return PurePosixPath(self.key).name


def parse_ref(text: str) -> ModelRef:
    """``s3://bucket/key.mar=<sha256>`` -> :class:`ModelRef` (ValueError with the reason)."""
    uri, sep, digest = text.strip().rpartition("=")
    if not sep or not SHA256_RE.match(digest):
        raise ValueError(f"{text!r}: expected s3://bucket/key.mar=<64 hex characters of sha256>")
    return _ref(uri, digest)


def _ref(uri: str, digest: str | None) -> ModelRef:
    if not uri.startswith("s3://") or "/" not in uri[5:] or not uri[5:].split("/", 1)[1]:
        raise ValueError(f"{uri!r} is not an s3://bucket/key URI")
    if not uri.endswith(".mar"):
        raise ValueError(f"{uri!r} is not a TorchServe archive (.mar)")
    if digest is not None and not SHA256_RE.match(digest):
        raise ValueError(f"{uri!r}: sha256 {digest!r} is not 64 hex characters")
    return ModelRef(uri, digest.lower() if digest else None)


def read_manifest(path: str | Path) -> list[ModelRef]:
    """Refs listed in a JSON or YAML manifest file."""
    text = Path(path).read_text()
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError:
        import yaml
        data = yaml.safe_load(text)
    if isinstance(data, dict):
        data = data.get("models")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of {{uri, sha256}} (or {{models: [...]}})")
    refs = []
    for i, row in enumerate(data):
        if not isinstance(row, dict) or "uri" not in row or "sha256" not in row:
            raise ValueError(f"{path}: entry {i} needs 'uri' and 'sha256', got {row!r}")
        refs.append(_ref(str(row["uri"]), str(row["sha256"])))
    return refs


def s3_client():
    """boto3's S3 client (region and endpoint from the usual AWS_* variables)."""
    import boto3
    return boto3.client("s3")


def _describe(e: Exception, ref: ModelRef) -> str:
    from botocore.exceptions import ClientError, NoCredentialsError
    if isinstance(e, NoCredentialsError):
        return f"{ref.uri}: no AWS credentials (the pod's service account / instance role)"
    if isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound"):
            return f"{ref.uri}: no such object"
        if code in ("NoSuchBucket",):
            return f"{ref.uri}: no such bucket {ref.bucket!r}"
        if code in ("403", "AccessDenied"):
            return f"{ref.uri}: access denied (the role needs s3:GetObject on it)"
        return f"{ref.uri}: S3 error {code}: {e}"
    return f"{ref.uri}: {type(e).__name__}: {e}"


def fetch(refs: Iterable[ModelRef], dest: str | Path, *, client=None) -> list[Path]:
    """Download every ref into ``dest`` and verify it; all or nothing (see module doc).

    A file already in ``dest`` with the expected digest is kept (a restarted pod does not
    download again). Returns the final paths in the order given.
    """
    refs = list(refs)
    if not refs:
        raise FetchError("no models to fetch")
    names = [r.file_name for r in refs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise FetchError(f"two models would land on the same file name: {dupes}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    client = client or s3_client()
    parts: dict[Path, Path] = {}
    errors: list[str] = []
    try:
        for ref in refs:
            final = dest / ref.file_name
            if ref.sha256 and final.is_file() and file_sha256(final) == ref.sha256:
                log.info("%s: up to date (%s)", final, ref.sha256[:12])
                continue
            part = dest / f".{ref.file_name}.part-{os.getpid()}"
            try:
                with open(part, "wb") as f:
                    client.download_fileobj(ref.bucket, ref.key, f)
            except Exception as e:  # noqa: BLE001 - botocore raises many types; each becomes one clear line
                part.unlink(missing_ok=True)
                errors.append(_describe(e, ref))
                continue
            got = file_sha256(part)
            if ref.sha256 and got != ref.sha256:
                part.unlink(missing_ok=True)
                errors.append(f"{ref.uri}: sha256 mismatch: expected {ref.sha256}, got {got}")
                continue
            parts[part] = final
            log.info("%s: %d bytes, sha256 %s", ref.uri, part.stat().st_size, got[:12])
        if errors:
            raise FetchError("refusing to start, nothing was installed:\n  " + "\n  ".join(errors))
        for part, final in parts.items():
            os.replace(part, final)
        parts.clear()
    finally:
        for part in parts:
            part.unlink(missing_ok=True)
    return [dest / r.file_name for r in refs]


def list_prefix(uri: str, *, client=None) -> list[ModelRef]:
    """The ``.mar`` objects under ``s3://bucket/prefix``; a ``<key>.sha256`` object beside an
    archive (hex digest first on its line, as ``sha256sum`` writes) makes it verified."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, prefix = uri[5:].partition("/")
    client = client or s3_client()
    keys: list[str] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
    except Exception as e:
        raise FetchError(_describe(e, ModelRef(f"s3://{bucket}/{prefix or '*'}.mar", None))) from e
    refs = []
    for key in sorted(k for k in keys if k.endswith(".mar")):
        digest = None
        if f"{key}.sha256" in keys:
            body = client.get_object(Bucket=bucket, Key=f"{key}.sha256")["Body"].read().decode()
            digest = body.split()[0] if body.split() else ""
            if not SHA256_RE.match(digest):
                raise FetchError(f"s3://{bucket}/{key}.sha256 does not hold a sha256 digest")
        refs.append(_ref(f"s3://{bucket}/{key}", digest))
    if not refs:
        raise FetchError(f"no .mar archives under {uri}")
    return refs


__all__ = ["ModelRef", "FetchError", "parse_ref", "read_manifest", "fetch", "list_prefix",
           "file_sha256", "s3_client"]
