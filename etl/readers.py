"""Read raw inputs of any supported format into all-string columns, keeping malformed lines.

Every reader returns the requested columns as strings plus ``_corrupt_record`` (the original
line when the parser could not split it into fields, else null). Nothing is dropped here:
deciding what is usable is the validator's job, so CSV, JSON lines and Parquet inputs obey the
same rules.
"""
from __future__ import annotations

from collections import Counter
from pathlib import PurePosixPath
from typing import Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from common.storage import AnyPath, as_path
from etl import fs

CORRUPT = "_corrupt_record"
SOURCE = "_source_file"
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


def _csv_header(spark: SparkSession, path: AnyPath, sep: str, encoding: str) -> list[str]:
    """The header of the first data file, read directly (cheap, and clear on an empty file)."""
    files = _data_files(spark, path)
    if not files:
        raise InputError(f"input not found or empty: {path}")
    first = files[0][0]
    line = fs.first_line(spark, first)
    if not line.strip():
        raise InputError(f"{first}: empty file (expected a header line)")
    text = line.decode(encoding, errors="replace").rstrip("\r\n").lstrip("\ufeff")
    return [c.strip().strip('"') for c in text.split(sep)]


def read_delimited(spark: SparkSession, path: "str | AnyPath", *, columns: Sequence[str] | None = None,
                   rename: dict[str, str] | None = None, sep: str = ",", header: bool = True,
                   encoding: str = "UTF-8", quote: str | None = '"') -> DataFrame:
    """Read delimited text as strings; ``columns`` names the fields when there is no header.

    In PERMISSIVE mode Spark puts any line with too few or too many fields, or that it cannot
    parse, into the corrupt-record column, so nothing is lost silently.
    """
    path = as_path(path)
    if header:
        names = _csv_header(spark, path, sep, encoding)
    elif columns is None:
        raise InputError("columns are required for a file without a header")
    else:
        names = list(columns)
        if all(size == 0 for _, size in _data_files(spark, path)):
            raise InputError(f"{path}: empty input")
    reader = (spark.read.schema(_string_schema(names, CORRUPT))
              .option("header", str(header).lower()).option("sep", sep)
              .option("encoding", encoding).option("mode", "PERMISSIVE")
              .option("columnNameOfCorruptRecord", CORRUPT)
              .option("ignoreLeadingWhiteSpace", "true").option("ignoreTrailingWhiteSpace", "true"))
    reader = reader.option("quote", quote) if quote is not None else reader.option("quote", "\u0000")
    df = reader.csv(str(path))
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
        df = read_delimited(spark, path)
        _check_required(path, df.columns, required)
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
