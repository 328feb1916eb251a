"""The few file-system operations the Spark jobs need, for local paths and for URIs (S3, HDFS).

Local paths use the standard library; URIs go through Hadoop's FileSystem API of the running
SparkSession, which is what reads and writes the data on EMR anyway.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from pyspark.sql import SparkSession

from core.storage import AnyPath, as_path, is_local


def _hadoop(spark: SparkSession, path: AnyPath):
    jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
    hpath = jvm.org.apache.hadoop.fs.Path(str(path))
    conf = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[attr-defined]
    return hpath.getFileSystem(conf), hpath, jvm


def exists(spark: SparkSession, path: AnyPath) -> bool:
    if is_local(path):
        return path.exists()  # type: ignore[union-attr]
    fs, hpath, _ = _hadoop(spark, path)
    return bool(fs.exists(hpath))


def remove(spark: SparkSession, path: AnyPath) -> None:
    if is_local(path):
        shutil.rmtree(path, ignore_errors=True)  # type: ignore[arg-type]
        return
    fs, hpath, _ = _hadoop(spark, path)
    fs.delete(hpath, True)


def rename(spark: SparkSession, src: AnyPath, dst: AnyPath) -> None:
    if is_local(src):
        src.rename(dst)  # type: ignore[union-attr]
        return
    fs, hsrc, jvm = _hadoop(spark, src)
    if not fs.rename(hsrc, jvm.org.apache.hadoop.fs.Path(str(dst))):
        raise OSError(f"could not rename {src} to {dst}")


def sync(spark: SparkSession, path: AnyPath) -> None:
    """Flush a local file or folder (every file, then the folders' entries) to disk, so that a
    rename after it publishes complete data even across a power cut. URIs: nothing to do (HDFS
    and object stores have a file durable once it is closed)."""
    if not is_local(path):
        return
    root = Path(path)  # type: ignore[arg-type]
    if not root.exists():
        return
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    folders = [] if root.is_file() else sorted((p for p in root.rglob("*") if p.is_dir()),
                                              key=lambda p: -len(p.parts)) + [root]
    for p in files:
        _fsync(p, os.O_RDONLY)
    for p in folders:
        _fsync(p, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(spark: SparkSession, path: AnyPath, text: str) -> None:
    if is_local(path):
        path.parent.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        path.write_text(text)  # type: ignore[union-attr]
        return
    fs, hpath, _ = _hadoop(spark, path)
    stream = fs.create(hpath, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()


def read_text(spark: SparkSession, path: AnyPath) -> str:
    if is_local(path):
        return path.read_text()  # type: ignore[union-attr]
    return "\n".join(r.value for r in spark.read.text(str(path), wholetext=True).collect())


def list_files(spark: SparkSession, path: AnyPath) -> list[tuple[str, int]]:
    """(path, size) of the data files under ``path`` (or ``path`` itself), skipping Spark's
    marker, checksum and hidden files; sorted by path."""
    def keep(name: str) -> bool:
        return not name.startswith((".", "_")) and not name.endswith(".crc")

    if is_local(path):
        if path.is_file():  # type: ignore[union-attr]
            return [(str(path), path.stat().st_size)]  # type: ignore[union-attr]
        if not path.exists():  # type: ignore[union-attr]
            return []
        return sorted((str(p), p.stat().st_size) for p in path.rglob("*")  # type: ignore[union-attr]
                      if p.is_file() and keep(p.name))
    fs, hpath, _ = _hadoop(spark, path)
    if not fs.exists(hpath):
        return []
    found, it = [], fs.listFiles(hpath, True)
    while it.hasNext():
        status = it.next()
        if keep(status.getPath().getName()):
            found.append((str(status.getPath()), int(status.getLen())))
    return sorted(found)


def first_line(spark: SparkSession, path: "str | AnyPath") -> bytes:
    """The first line of one file, as bytes (the caller decodes with the input's encoding)."""
    local = as_path(path)
    if is_local(local):
        with open(local, "rb") as fh:  # type: ignore[arg-type]
            return fh.readline()
    fs, hpath, _ = _hadoop(spark, local)
    stream = fs.open(hpath)
    try:
        out = bytearray()
        while len(out) < 1 << 20:
            b = stream.read()
            if b < 0:
                break
            out.append(b)
            if b == 10:
                break
        return bytes(out)
    finally:
        stream.close()
