"""The manifest: what went in, with which config, and a content hash of what came out."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from core.storage import AnyPath
from etl import fs

_HASH_LIMIT_BYTES = 512 * 1024 * 1024


def describe_inputs(*paths: Path) -> list[dict[str, Any]]:
    """Files, sizes and (for inputs up to 512 MiB) a sha256 of their bytes."""
    described = []
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()
                                                     and not p.name.endswith(".crc"))
        total = sum(p.stat().st_size for p in files)
        entry: dict[str, Any] = {"path": str(root), "files": len(files), "bytes": total}
        if total <= _HASH_LIMIT_BYTES:
            digest = hashlib.sha256()
            for p in files:
                digest.update(os.fsencode(p.relative_to(root) if p != root else p.name))
                digest.update(p.read_bytes())
            entry["sha256"] = digest.hexdigest()
        described.append(entry)
    return described


def table_fingerprint(df: DataFrame) -> str:
    """An order-independent fingerprint of a table's rows (row count + sums of row hashes).

    Computed by Spark, so it scales with the data, and equal for equal data however the files
    are partitioned or named.
    """
    cols = sorted(df.columns)
    row = [F.coalesce(F.col(c).cast("string"), F.lit("\u0000")) for c in cols]
    h1 = F.xxhash64(F.lit(1), *row).cast("decimal(38,0)")
    h2 = F.xxhash64(F.lit(2), *row).cast("decimal(38,0)")
    agg = df.agg(F.count(F.lit(1)).alias("n"), F.sum(h1).alias("a"), F.sum(h2).alias("b")).first()
    return f"{','.join(cols)}|{agg['n']}|{agg['a']}|{agg['b']}"


def content_hash(fingerprints: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(fingerprints):
        digest.update(f"{name}={fingerprints[name]}\n".encode())
    return digest.hexdigest()


def write_manifest(spark, path: AnyPath, manifest: dict[str, Any]) -> None:
    fs.write_text(spark, path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
