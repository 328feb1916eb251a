"""Contiguous integer indices for user and item ids that never move once assigned.

A served model addresses its embedding rows by these indices, so a re-run must keep every
known id's index and append new ids after the largest one. New ids are numbered in a fixed
order (numeric ids numerically, then the rest lexically) so the result does not depend on
partitioning or input order.
"""
from __future__ import annotations


from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from common.storage import AnyPath
from etl import fs


def _id_order(c: str) -> list:
    return [F.length(c), F.col(c)]


def read_map(spark: SparkSession, path: AnyPath, key: str) -> DataFrame | None:
    if not fs.exists(spark, path / "_SUCCESS"):
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
    """Write through a temporary folder, so a map being read is never overwritten in place."""
    spark = df.sparkSession
    tmp = path.with_name(path.name + ".tmp")
    df.orderBy(df.columns[1]).coalesce(1).write.mode("overwrite").parquet(str(tmp))
    fs.remove(spark, path)
    fs.rename(spark, tmp, path)
    return spark.read.parquet(str(path))
