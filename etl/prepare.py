"""Raw events + catalog -> validated, deduplicated, weighted, indexed and split training data.

Every input event ends in exactly one bucket, and the manifest proves it:
``input = kept + filtered + duplicates + quarantined``.

* quarantined: unusable rows (see etl/validate.py), written with their reasons;
* duplicates: exact repeats of a valid event (same user, item, type, rating, time);
* filtered: valid events the protocol does not use (ratings below the threshold, users with
  fewer than ``min_user_positives`` positive items);
* kept: events behind the (user, item) interactions that are trained and evaluated on.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from common.dataclass_args import to_dict

from etl.config import PrepareConfig
from common.schema import (RATING_EVENT, RAW_CATALOG_COLUMNS, RAW_EVENT_COLUMNS,
                           REQUIRED_CATALOG_COLUMNS, REQUIRED_EVENT_COLUMNS, SCHEMA_VERSION,
                           EtlLayout)
from core.storage import AnyPath, is_local
from etl import idmaps, manifest, splits
from etl.features import fit_content_features, write_features
from etl.readers import InputError, read_raw
from etl.validate import validate_catalog, validate_events

log = logging.getLogger("etl.prepare")


@dataclass
class PrepareResult:
    counts: dict[str, int]
    split_sizes: dict[str, dict[str, int]]
    quarantine_reasons: dict[str, int]
    filtered_reasons: dict[str, int]
    catalog: dict[str, int]
    index_sizes: dict[str, int]
    seconds: float
    manifest: dict[str, Any] = field(default_factory=dict)


def _write(df: DataFrame, path: AnyPath, partition_by: str | None = None, files: int | None = None) -> None:
    if files:
        df = df.coalesce(files)
    writer = df.write.mode("overwrite")
    if partition_by:
        writer = writer.partitionBy(partition_by)
    writer.parquet(str(path))


def _reason_counts(quarantined: DataFrame) -> dict[str, int]:
    rows = (quarantined.select(F.explode(F.split("reason", ";")).alias("r"))
            .groupBy("r").count().collect())
    return {r["r"]: int(r["count"]) for r in sorted(rows, key=lambda r: r["r"])}


def prepare(spark: SparkSession, events_path: "AnyPath | list[AnyPath]", catalog_path: AnyPath,
            layout: EtlLayout,
            cfg: PrepareConfig, previous_maps: EtlLayout | None = None,
            inputs_meta: dict[str, Any] | None = None) -> PrepareResult:
    """Run the whole prepare job; outputs land under ``layout.root``."""
    started = time.time()
    if is_local(layout.root):
        layout.root.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
    prev = previous_maps or layout

    log.info("reading catalog %s", catalog_path)
    raw_catalog = read_raw(spark, catalog_path, RAW_CATALOG_COLUMNS, REQUIRED_CATALOG_COLUMNS)
    catalog_valid, catalog_quarantine = validate_catalog(raw_catalog)
    catalog_valid = catalog_valid.persist()
    n_catalog = catalog_valid.count()
    if n_catalog == 0:
        raise InputError(f"{catalog_path}: no usable catalog rows")
    _write(catalog_quarantine, layout.quarantine_catalog, files=1)
    n_catalog_quarantined = spark.read.parquet(str(layout.quarantine_catalog)).count()

    # several inputs (e.g. the original log and the gateway's training-event log), each read by
    # its own format, are one raw event table: the same validation, dedup and split apply
    paths = list(events_path) if isinstance(events_path, (list, tuple)) else [events_path]
    log.info("reading events %s", ", ".join(map(str, paths)))
    raw_events = functools.reduce(DataFrame.unionByName, [
        read_raw(spark, p, RAW_EVENT_COLUMNS, REQUIRED_EVENT_COLUMNS) for p in paths])
    valid, quarantined = validate_events(raw_events, cfg, catalog_valid.select("item_id"))
    _write(quarantined, layout.quarantine_events)
    quarantined = spark.read.parquet(str(layout.quarantine_events))
    n_quarantined = quarantined.count()
    valid = valid.persist()
    n_valid = valid.count()
    n_input = n_valid + n_quarantined
    if n_input == 0:
        raise InputError(f"{events_path}: the input holds no events")
    log.info("events: %d read, %d valid, %d quarantined", n_input, n_valid, n_quarantined)

    # Exact duplicates: keep one of each identical valid event.
    unique = valid.dropDuplicates(["user_id", "item_id", "event_type", "rating", "timestamp"]).persist()
    n_unique = unique.count()
    n_duplicates = n_valid - n_unique

    # Explicit ratings below the threshold are not interactions.
    is_negative = (F.col("event_type") == RATING_EVENT) & (F.col("rating") < cfg.rating_threshold)
    positive = unique.where(~is_negative)
    n_below_threshold = n_unique - positive.count()

    pairs = (positive.groupBy("user_id", "item_id")
             .agg(F.sum("weight").alias("weight"), F.min("timestamp").alias("timestamp"),
                  F.max_by("rating", "timestamp").alias("rating"), F.count(F.lit(1)).alias("n_events")))
    user_n = Window.partitionBy("user_id")
    pairs = pairs.withColumn("_n", F.count(F.lit(1)).over(user_n))
    kept_pairs = pairs.where(F.col("_n") >= cfg.min_user_positives).drop("_n").persist()
    agg = kept_pairs.agg(F.count(F.lit(1)).alias("pairs"), F.sum("n_events").alias("events")).first()
    n_kept = int(agg["events"] or 0)
    n_few_positives = n_unique - n_below_threshold - n_kept
    n_filtered = n_below_threshold + n_few_positives
    log.info("kept %d events in %d (user, item) pairs; %d duplicates, %d filtered",
             n_kept, agg["pairs"], n_duplicates, n_filtered)

    log.info("indexing ids")
    user_map = idmaps.write_map(idmaps.extend_map(
        spark, kept_pairs.select("user_id"), idmaps.read_map(spark, prev.user_map, "user_id"),
        "user_id"), layout.user_map)
    item_map = idmaps.write_map(idmaps.extend_map(
        spark, catalog_valid.select("item_id"), idmaps.read_map(spark, prev.item_map, "item_id"),
        "item_id"), layout.item_map)

    interactions = (kept_pairs.join(F.broadcast(user_map) if user_map.count() < 5_000_000 else user_map,
                                    "user_id")
                    .join(item_map, "item_id")
                    .select("user_idx", "item_idx", "user_id", "item_id", "weight", "rating",
                            "timestamp", "n_events"))
    _write(interactions.repartition(4, "user_idx").sortWithinPartitions("user_idx", "item_idx"),
           layout.interactions)
    interactions = spark.read.parquet(str(layout.interactions))

    log.info("splitting")
    split_sizes: dict[str, dict[str, int]] = {}
    cols = ["user_idx", "item_idx", "weight", "rating", "timestamp"]
    for scheme, fn in (("temporal", splits.temporal_split), ("random", splits.random_split)):
        split_df = fn(interactions, cfg).select(*cols, "split")
        _write(split_df.repartition(2, "split").sortWithinPartitions("split", "user_idx", "item_idx"),
               layout.split(scheme), partition_by="split")
        sizes = spark.read.parquet(str(layout.split(scheme))).groupBy("split").count().collect()
        split_sizes[scheme] = {s: 0 for s in splits.SPLITS} | {r["split"]: int(r["count"]) for r in sizes}

    log.info("content features")
    items = catalog_valid.join(item_map, "item_id").select(
        "item_idx", "item_id", "title", "description", "categories", "tags", "created_at")
    _write(items.orderBy("item_idx"), layout.items, files=1)
    items = spark.read.parquet(str(layout.items))
    vectors = fit_content_features(items, cfg, layout.spark_pipeline, layout.vectorizer)
    write_features(vectors, layout.item_features)

    counts = {"input": n_input, "kept": n_kept, "filtered": n_filtered,
              "duplicates": n_duplicates, "quarantined": n_quarantined}
    assert counts["input"] == n_kept + n_filtered + n_duplicates + n_quarantined, counts
    tables = {
        "interactions": interactions,
        "splits/temporal": spark.read.parquet(str(layout.split("temporal"))),
        "splits/random": spark.read.parquet(str(layout.split("random"))),
        "maps/users": spark.read.parquet(str(layout.user_map)),
        "maps/items": spark.read.parquet(str(layout.item_map)),
        "items": items,
        "features/items": spark.read.parquet(str(layout.item_features)),
        "quarantine/events": quarantined.drop("source_file"),
    }
    fingerprints = {name: manifest.table_fingerprint(df) for name, df in tables.items()}
    result = PrepareResult(
        counts=counts,
        split_sizes=split_sizes,
        quarantine_reasons=_reason_counts(quarantined),
        filtered_reasons={"below_rating_threshold": n_below_threshold,
                          "user_too_few_positives": n_few_positives},
        catalog={"valid": n_catalog, "quarantined": n_catalog_quarantined},
        index_sizes={"users": user_map.count(), "items": item_map.count()},
        seconds=round(time.time() - started, 1),
    )
    result.manifest = {
        "schema_version": SCHEMA_VERSION,
        "inputs": inputs_meta or {"events": str(events_path), "catalog": str(catalog_path)},
        "config": to_dict(cfg),
        "counts": counts,
        "filtered_reasons": result.filtered_reasons,
        "quarantine_reasons": result.quarantine_reasons,
        "catalog": result.catalog,
        "index_sizes": result.index_sizes,
        "split_sizes": split_sizes,
        "outputs": {name: str(p.relative_to(layout.root)) for name, p in {
            "interactions": layout.interactions, "temporal": layout.split("temporal"),
            "random": layout.split("random"), "user_map": layout.user_map,
            "item_map": layout.item_map, "items": layout.items,
            "item_features": layout.item_features, "vectorizer": layout.vectorizer,
            "spark_pipeline": layout.spark_pipeline, "quarantine_events": layout.quarantine_events,
            "quarantine_catalog": layout.quarantine_catalog}.items()},
        "table_fingerprints": fingerprints,
        "content_hash": manifest.content_hash(fingerprints),
    }
    manifest.write_manifest(spark, layout.manifest, result.manifest)
    for df in (catalog_valid, valid, unique, kept_pairs):
        df.unpersist()
    return result
