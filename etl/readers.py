"""Read raw inputs of any supported format into all-string columns, keeping malformed lines.

Every reader returns the requested columns as strings plus ``_corrupt_record`` (the original
line when the parser could not split it into fields, else null). Nothing is dropped here:
deciding what is usable is the validator's job, so CSV, JSON lines and Parquet inputs obey the
same rules.

Delimited files with a header are read by each file's own header. Spark names CSV columns once
and applies the names by position to every file, so a file whose columns come in another order
would be read into the wrong columns without a sound. Files are grouped by header, each group
read with its own names, and the groups joined by column name; a header that names a column
twice, or a file without a required column, is refused with the file and its header named.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import PurePosixPath
from typing import Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from core.storage import AnyPath, as_path
from etl import fs

CORRUPT = "_corrupt_record"
SOURCE = "_source_file"
log = logging.getLogger("etl.readers")
_FORMATS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".dat": "csv", ".data": "csv",
            ".json": "json", ".jsonl": "json", ".ndjson": "json", ".parquet": "parquet"}


class InputError(ValueError):
    """An input that cannot be read at all (as opposed to bad rows, which are quarantined)."""


def _data_files(spark: SparkSession, path: AnyPath) -> list[tuple[str, int]]:
    return fs.list_files(spark, path)


def detect_format(spark: SparkSession, path: "str | AnyPath") -> str:
    """``csv``, ``json`` or ``parquet``, from the data files' extensions."""
    path = as_path(path)
    if not fs.exists(spark, path):
        raise InputError(f"input not found: {path}")
    files = _data_files(spark, path)
    if not files:
        raise InputError(f"input is empty: no data files under {path}")
    kinds = Counter(_FORMATS.get(PurePosixPath(name).suffix.lower()) for name, _ in files)
    kinds.pop(None, None)
    if not kinds:
        raise InputError(f"cannot tell the format of {path}: expected .csv, .tsv, .json(l) or "
                         f".parquet files, found e.g. {files[0][0]}")
    if len(kinds) > 1:
        raise InputError(f"mixed formats under {path}: {dict(kinds)}")
    return next(iter(kinds))


def _string_schema(names: Sequence[str], *extra: str) -> StructType:
    return StructType([StructField(n, StringType(), True) for n in (*names, *extra)])


def _check_required(path: AnyPath, found: Sequence[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in found]
    if missing:
        raise InputError(f"{path}: missing required column(s) {missing}; found {list(found)}")


def _header(spark: SparkSession, file: str, sep: str, encoding: str) -> list[str]:
    """One file's header line, read directly (cheap, and clear on a blank first line)."""
    line = fs.first_line(spark, file)
    if not line.strip():
        raise InputError(f"{file}: empty file (expected a header line)")
    text = line.decode(encoding, errors="replace").rstrip("\r\n").lstrip("\ufeff")
    return [c.strip().strip('"') for c in text.split(sep)]


def _csv_headers(spark: SparkSession, path: AnyPath, sep: str,
                 encoding: str) -> dict[tuple[str, ...], list[str]]:
    """Header -> the files that have it, in path order. Empty (0-byte) files hold no rows and
    no header: they are left out, unless every file is empty."""
    files = _data_files(spark, path)
    if not files:
        raise InputError(f"input not found or empty: {path}")
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, size in files:
        if size > 0:
            groups.setdefault(tuple(_header(spark, name, sep, encoding)), []).append(name)
    if not groups:
        raise InputError(f"{files[0][0]}: empty file (expected a header line)")
    return groups


def _check_headers(groups: dict[tuple[str, ...], list[str]], required: Sequence[str]) -> None:
    """Columns are matched by name across files, so each file must name each column once and
    hold every required one; the error names the file, its header and another file's."""
    for header, files in groups.items():
        twice = sorted(c for c, n in Counter(header).items() if n > 1)
        if twice:
            others = [(h, f[0]) for h, f in groups.items() if h != header]
            beside = (f", so its columns cannot be matched by name to those of {others[0][1]} "
                      f"(header {list(others[0][0])})" if others else "")
            raise InputError(f"{files[0]}: header {list(header)} names column(s) {twice} more "
                             f"than once{beside}; give each column one distinct name")
        _check_required(files[0], header, required)


def read_delimited(spark: SparkSession, path: "str | AnyPath", *, columns: Sequence[str] | None = None,
                   rename: dict[str, str] | None = None, sep: str = ",", header: bool = True,
                   encoding: str = "UTF-8", quote: str | None = '"',
                   required: Sequence[str] = ()) -> DataFrame:
    """Read delimited text as strings; ``columns`` names the fields when there is no header.

    With a header, each file is read by its own (see the module's docstring): the columns are
    the first file's, then any that another file adds; a file lacking one has nulls there.
    In PERMISSIVE mode Spark puts any line with too few or too many fields, or that it cannot
    parse, into the corrupt-record column, so nothing is lost silently.
    """
    path = as_path(path)
    if header:
        groups = _csv_headers(spark, path, sep, encoding)
        _check_headers(groups, required)
    elif columns is None:
        raise InputError("columns are required for a file without a header")
    else:
        if all(size == 0 for _, size in _data_files(spark, path)):
            raise InputError(f"{path}: empty input")
        groups = {tuple(columns): [str(path)]}

    def reader(names: Sequence[str]):
        r = (spark.read.schema(_string_schema(names, CORRUPT))
             .option("header", str(header).lower()).option("sep", sep)
             .option("encoding", encoding).option("mode", "PERMISSIVE")
             .option("columnNameOfCorruptRecord", CORRUPT)
             .option("ignoreLeadingWhiteSpace", "true").option("ignoreTrailingWhiteSpace", "true"))
        return r.option("quote", quote) if quote is not None else r.option("quote", "\u0000")

    if len(groups) == 1:
        df = reader(next(iter(groups))).csv(str(path))
    else:
        log.info("%s: %d different headers, each file read by its own: %s", path, len(groups),
                 "; ".join(f"{list(h)} ({len(f)} file(s), e.g. {f[0]})" for h, f in groups.items()))
        # several headers mean several files, so ``path`` is a folder: it stays the base of
        # partition discovery (``year=2024/`` folders keep their column)
        parts = [reader(names).option("basePath", str(path)).csv(files)
                 for names, files in groups.items()]
        df = parts[0]
        for part in parts[1:]:
            df = df.unionByName(part, allowMissingColumns=True)
    for old, new in (rename or {}).items():
        if old in df.columns:
            df = df.withColumnRenamed(old, new)
    return df.withColumn(SOURCE, F.input_file_name())


def read_raw(spark: SparkSession, path: "str | AnyPath", columns: Sequence[str],
             required: Sequence[str], fmt: str | None = None) -> DataFrame:
    """Read our raw event or catalog layout (CSV with header, JSON lines or Parquet)."""
    path = as_path(path)
    fmt = fmt or detect_format(spark, path)
    if fmt == "csv":
        df = read_delimited(spark, path, required=required)
    elif fmt == "json":
        df = (spark.read.schema(_string_schema(columns, CORRUPT)).option("mode", "PERMISSIVE")
              .option("columnNameOfCorruptRecord", CORRUPT).json(str(path)))
        df = df.withColumn(SOURCE, F.input_file_name())
    elif fmt == "parquet":
        df = spark.read.parquet(str(path))
        _check_required(path, df.columns, required)
        if CORRUPT not in df.columns:
            df = df.withColumn(CORRUPT, F.lit(None).cast("string"))
        df = df.withColumn(SOURCE, F.input_file_name())
    else:
        raise InputError(f"unsupported format {fmt!r}")
    selected = [(F.col(c).cast("string") if c in df.columns else F.lit(None).cast("string")).alias(c)
                for c in columns]
    return df.select(*selected, F.col(CORRUPT).cast("string").alias(CORRUPT),
                     F.col(SOURCE).alias(SOURCE))
