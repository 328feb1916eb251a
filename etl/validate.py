"""Turn all-string raw rows into typed rows, or quarantine them with the reasons why.

Rules are column expressions, so one pass over the data evaluates all of them and a row can
carry several reasons (joined with ';'). Nothing here drops a row: every input row leaves as
exactly one valid or one quarantined row.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from etl.config import PrepareConfig, parse_weights
from core.ids import MAX_ID_CHARS, WHITESPACE_JAVA_CLASS
from common.schema import LIST_SEPARATOR, RATING_EVENT, Reason
from etl.readers import CORRUPT, SOURCE

REASON = "reason"
_EPOCH_S = r"^[0-9]{1,11}$"
_EPOCH_MS = r"^[0-9]{12,14}$"


def _blank(c: Column) -> Column:
    return c.isNull() | (F.trim(c) == "")


def canonical_id(c: Column) -> Column:
    """core/ids.py's canonical form as a column: a string of ASCII digits loses its leading
    zeros ("007" is "7"); any other string is NFC-normalised (ICU's ``Normalizer.compose``, on
    Spark's classpath: Spark has no normalize function, and this stays in the JVM), not trimmed."""
    digits = c.rlike("^[0-9]+$")
    nfc = F.try_reflect(F.lit("com.ibm.icu.text.Normalizer"), F.lit("compose"), c, F.lit(False))
    return F.when(digits, F.regexp_replace(c, "^0+(?!$)", "")).otherwise(nfc)


def normalize_id(c: Column) -> Column:
    """The canonical id (core/ids.py), or null when it is not a valid id: 1-256 code points,
    no control character (Unicode Cc), not only white space."""
    s = canonical_id(c)
    valid = ((F.char_length(s) >= 1) & (F.char_length(s) <= MAX_ID_CHARS) & ~s.rlike(r"\p{Cc}")
             & ~s.rlike(f"^{WHITESPACE_JAVA_CLASS}+$"))
    return F.when(valid, s)


def _id_reasons(c: Column, missing: str, bad: str) -> Column:
    return F.when(c.isNull() | (c == ""), F.lit(missing)).when(normalize_id(c).isNull(), F.lit(bad))


def parse_epoch_seconds(c: Column) -> Column:
    """Epoch seconds, epoch milliseconds or an ISO-8601 date/time, to epoch seconds (or null)."""
    s = F.trim(c)
    iso = F.coalesce(F.try_to_timestamp(s), F.try_to_timestamp(s, F.lit("yyyy-MM-dd'T'HH:mm:ssXXX")))
    return (F.when(s.rlike(_EPOCH_S), s.try_cast("bigint"))
            .when(s.rlike(_EPOCH_MS), F.floor(s.try_cast("bigint") / 1000).cast("bigint"))
            .otherwise(F.unix_timestamp(iso)))


def _timestamp_bounds(cfg: PrepareConfig) -> tuple[int, int]:
    low = int(datetime.fromisoformat(cfg.min_timestamp).replace(tzinfo=timezone.utc).timestamp())
    high = int((datetime.now(timezone.utc) + timedelta(days=cfg.max_future_days)).timestamp())
    return low, high


def _reasons(*checks: Column) -> Column:
    joined = F.concat_ws(";", *checks)
    return F.when(joined == "", F.lit(None).cast("string")).otherwise(joined)


def _any_contains(cols: list[str], needle: str) -> Column:
    out = F.lit(False)
    for name in cols:
        out = out | F.coalesce(F.col(name).contains(needle), F.lit(False))
    return out


def validate_events(events: DataFrame, cfg: PrepareConfig,
                    catalog_ids: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Split raw events into (valid typed events, quarantined raw rows with a reason column).

    ``catalog_ids`` has one column ``item_id`` holding the normalized ids of valid catalog
    items; events for any other item are quarantined as ``unknown_item``.
    """
    weights = parse_weights(cfg.event_weights)
    low, high = _timestamp_bounds(cfg)
    etype = F.lower(F.trim(F.col("event_type")))
    ts = parse_epoch_seconds(F.col("timestamp"))
    rating_raw = F.trim(F.col("rating"))
    rating = rating_raw.try_cast("double")
    has_rating = ~_blank(F.col("rating"))
    known = catalog_ids.select(F.col("item_id").alias("_known_item"), F.lit(True).alias("_in_catalog"))
    df = events.withColumn("_item_norm", normalize_id(F.col("item_id")))
    df = df.join(F.broadcast(known) if catalog_ids.count() < 2_000_000 else known,
                 F.col("_item_norm") == F.col("_known_item"), "left")

    checks = [
        F.when(_any_contains(["user_id", "item_id", "event_type", "rating", "timestamp"], "\ufffd"),
               F.lit(Reason.INVALID_UTF8)),
        _id_reasons(F.col("user_id"), Reason.MISSING_USER, Reason.BAD_USER),
        _id_reasons(F.col("item_id"), Reason.MISSING_ITEM, Reason.BAD_ITEM),
        F.when(etype.isNull() | ~etype.isin(list(weights)), F.lit(Reason.BAD_EVENT_TYPE)),
        F.when(ts.isNull() | (ts < low) | (ts > high), F.lit(Reason.BAD_TIMESTAMP)),
        F.when((etype == RATING_EVENT) & ~has_rating, F.lit(Reason.BAD_RATING))
         .when(has_rating & (rating.isNull() | F.isnan(rating)), F.lit(Reason.BAD_RATING))
         .when(has_rating & ((rating < cfg.rating_min) | (rating > cfg.rating_max)),
               F.lit(Reason.RATING_OUT_OF_RANGE)),
        F.when(F.col("_item_norm").isNotNull() & F.col("_in_catalog").isNull(),
               F.lit(Reason.UNKNOWN_ITEM)),
    ]
    # A line that could not be split into fields has no meaningful fields to judge further.
    df = df.withColumn(REASON, F.when(F.col(CORRUPT).isNotNull(), F.lit(Reason.MALFORMED))
                       .otherwise(_reasons(*checks)))
    weight_map = F.create_map(*[x for k, v in weights.items() for x in (F.lit(k), F.lit(float(v)))])
    valid = df.where(F.col(REASON).isNull()).select(
        normalize_id(F.col("user_id")).alias("user_id"),
        F.col("_item_norm").alias("item_id"),
        etype.alias("event_type"),
        F.when(has_rating, rating).alias("rating"),
        ts.alias("timestamp"),
        weight_map[etype].alias("weight"),
    )
    quarantined = df.where(F.col(REASON).isNotNull()).select(
        "user_id", "item_id", "event_type", "rating", "timestamp",
        F.col(CORRUPT).alias("raw_line"), F.col(SOURCE).alias("source_file"), REASON)
    return valid, quarantined


def split_list(c: Column) -> Column:
    """'a|b| c' -> ['a', 'b', 'c'] (empty parts and '(no genres listed)' removed)."""
    parts = F.transform(F.split(F.coalesce(c, F.lit("")), r"\|"), lambda x: F.trim(x))
    return F.filter(parts, lambda x: (x != "") & (x != "(no genres listed)"))


def validate_catalog(catalog: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Split the raw catalog into (valid items, quarantined rows); duplicate ids keep one row.

    Among rows sharing an item id, the earliest ``created_at`` (then the smallest title) wins,
    so the choice does not depend on file order.
    """
    from pyspark.sql.window import Window

    checks = [
        _id_reasons(F.col("item_id"), Reason.MISSING_ITEM, Reason.BAD_ITEM),
        F.when(_blank(F.col("title")), F.lit(Reason.MISSING_TITLE)),
    ]
    df = catalog.withColumn(REASON, F.when(F.col(CORRUPT).isNotNull(), F.lit(Reason.MALFORMED))
                            .otherwise(_reasons(*checks))).withColumn("_id", normalize_id(F.col("item_id")))
    order = Window.partitionBy("_id").orderBy(F.col("created_at").asc_nulls_last(),
                                              F.col("title").asc_nulls_last(),
                                              F.col("description").asc_nulls_last())
    df = df.withColumn("_rank", F.when(F.col(REASON).isNull(), F.row_number().over(order)))
    df = df.withColumn(REASON, F.when(F.col("_rank") > 1, F.lit(Reason.DUPLICATE_ITEM))
                       .otherwise(F.col(REASON)))
    created = parse_epoch_seconds(F.col("created_at"))
    valid = df.where(F.col(REASON).isNull()).select(
        F.col("_id").alias("item_id"),
        F.trim(F.col("title")).alias("title"),
        F.coalesce(F.trim(F.col("description")), F.lit("")).alias("description"),
        split_list(F.col("categories")).alias("categories"),
        split_list(F.col("tags")).alias("tags"),
        created.alias("created_at"),
    )
    quarantined = df.where(F.col(REASON).isNotNull()).select(
        "item_id", "title", "description", "categories", "tags", "created_at",
        F.col(CORRUPT).alias("raw_line"), F.col(SOURCE).alias("source_file"), REASON)
    return valid, quarantined


__all__ = ["validate_events", "validate_catalog", "normalize_id", "parse_epoch_seconds",
           "split_list", "REASON", "LIST_SEPARATOR"]
