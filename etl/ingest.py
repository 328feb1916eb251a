"""Bring an external dataset into our raw layout (``OUT/etl/raw/{events,catalog}``)."""
from __future__ import annotations

import logging
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from common.schema import EtlLayout
from etl.movielens import detect_movielens, read_movielens
from etl.readers import CORRUPT, InputError
from etl.validate import parse_epoch_seconds

log = logging.getLogger("etl.ingest")


def write_raw_events(events: DataFrame, path: Path) -> None:
    """Raw events partitioned by event year (historical dumps span decades: daily partitions
    would mean thousands of tiny files); rows whose time cannot be read go to year=unknown."""
    year = F.coalesce(F.date_format(F.from_unixtime(parse_epoch_seconds(F.col("timestamp"))),
                                    "yyyy"), F.lit("unknown"))
    (events.drop("_source_file").withColumn("year", year)
     .repartition("year").write.mode("overwrite").partitionBy("year").parquet(str(path)))


def ingest(spark: SparkSession, dataset: Path, layout: EtlLayout) -> dict[str, str]:
    """Write ``dataset`` (a MovieLens folder) as raw events and catalog; return what it was."""
    flavour = detect_movielens(dataset)
    if flavour is None:
        raise InputError(f"{dataset}: not a MovieLens folder (ml-latest[-small], ml-100k or ml-1m)")
    log.info("ingesting %s (%s)", dataset, flavour)
    events, catalog = read_movielens(spark, dataset)
    write_raw_events(events, layout.raw_events)
    catalog.drop("_source_file").coalesce(1).write.mode("overwrite").parquet(str(layout.raw_catalog))
    return {"dataset": str(dataset), "format": flavour}


__all__ = ["ingest", "write_raw_events", "CORRUPT"]
