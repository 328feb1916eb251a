"""Contiguous integer indices for user and item ids that never move once assigned.

A served model addresses its embedding rows by these indices, so a re-run must keep every
known id's index and append new ids after the largest one. New ids are numbered in a fixed
order (numeric ids numerically, then the rest lexically) so the result does not depend on
partitioning or input order.

Losing a map therefore renumbers every id, so a map is replaced without ever leaving none: the
new one is written beside it (``<map>.tmp``) and flushed, the old one renamed aside
(``<map>.old``), the new one renamed into place, then the old one deleted. A crash at any step
leaves a complete map at ``<map>`` or at ``<map>.old``; :func:`recover` (run before every read
and write of a map) puts the latter back. Each rename is atomic on a local or HDFS file system.
On an object store (S3) a rename is a copy and a delete, so there a run should write a fresh
``--out`` and extend the earlier run's maps with ``--previous-maps``, which replaces nothing.
"""
from __future__ import annotations

import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from core.storage import AnyPath
from etl import fs

log = logging.getLogger("etl.idmaps")


def _id_order(c: str) -> list:
    return [F.length(c), F.col(c)]


def _staged(path: AnyPath) -> AnyPath:
    return path.with_name(path.name + ".tmp")


def _aside(path: AnyPath) -> AnyPath:
    return path.with_name(path.name + ".old")


def _complete(spark: SparkSession, path: AnyPath) -> bool:
    return fs.exists(spark, path / "_SUCCESS")


def recover(spark: SparkSession, path: AnyPath) -> None:
    """Finish a replacement a crash interrupted: the old map back in place when the new one never
    got there, or the old one dropped when it did."""
    old = _aside(path)
    if not fs.exists(spark, old):
        return
    if _complete(spark, path):
        fs.remove(spark, old)
    elif _complete(spark, old):
        log.warning("%s: restoring the map from %s (a replacement was interrupted)", path, old)
        fs.remove(spark, path)
        fs.rename(spark, old, path)
        fs.sync(spark, path.parent)
    else:
        log.warning("%s: neither it nor %s holds a complete map", path, old)


def read_map(spark: SparkSession, path: AnyPath, key: str) -> DataFrame | None:
    recover(spark, path)
    if not _complete(spark, path):
        return None
    return spark.read.parquet(str(path)).select(key, key.replace("_id", "_idx"))


def extend_map(spark: SparkSession, ids: DataFrame, previous: DataFrame | None, key: str) -> DataFrame:
    """Return ``previous`` plus every id of ``ids`` it lacks, numbered after its largest index."""
    idx = key.replace("_id", "_idx")
    ids = ids.select(key).distinct()
    if previous is None:
        start, new = 0, ids
    else:
        start = (previous.agg(F.max(idx)).first()[0] or -1) + 1
        new = ids.join(previous.select(key), key, "left_anti")
    appended = _number(new, key, idx, start)
    out = appended if previous is None else previous.select(key, idx).unionByName(appended)
    return out.select(F.col(key), F.col(idx).cast("int").alias(idx))


def _number(ids: DataFrame, key: str, idx: str, start: int) -> DataFrame:
    """Contiguous numbers in id order without a single-partition sort: range-partition and sort,
    count each partition, then add the sizes of the partitions before it."""
    parts = max(1, ids.rdd.getNumPartitions())
    ordered = (ids.repartitionByRange(parts, *_id_order(key)).sortWithinPartitions(*_id_order(key))
               .withColumn("_part", F.spark_partition_id()).persist())
    sizes = sorted((r["_part"], r["count"]) for r in ordered.groupBy("_part").count().collect())
    offsets, total = [], start
    for part, count in sizes:
        offsets.append((part, total))
        total += count
    if not offsets:
        ordered.unpersist()
        return ids.select(key, F.lit(0).cast("long").alias(idx)).limit(0)
    offset_df = ids.sparkSession.createDataFrame(offsets, "_part int, _offset long")
    within = F.row_number().over(Window.partitionBy("_part").orderBy(*_id_order(key))) - 1
    return (ordered.join(F.broadcast(offset_df), "_part")
            .select(key, (F.col("_offset") + within).alias(idx)))


def write_map(df: DataFrame, path: AnyPath) -> DataFrame:
    """Replace the map at ``path`` with ``df`` so that a crash at any step leaves a complete map
    (see the module's docstring); ``df`` may read the map it replaces."""
    spark = df.sparkSession
    recover(spark, path)
    tmp, old = _staged(path), _aside(path)
    df.orderBy(df.columns[1]).coalesce(1).write.mode("overwrite").parquet(str(tmp))
    fs.sync(spark, tmp)
    if fs.exists(spark, path):
        if fs.exists(spark, old):  # neither was complete (see recover): nothing to keep there
            fs.remove(spark, old)
        fs.rename(spark, path, old)
    fs.rename(spark, tmp, path)
    fs.sync(spark, path.parent)
    fs.remove(spark, old)
    return spark.read.parquet(str(path))
