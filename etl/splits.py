"""Deterministic train / valid / test splits of the (user, item) interactions.

* ``temporal`` is protocol P1 (NOTES.md): each user's positives sorted by time (ties by item
  id); the last round(test_fraction * n), at least 1, are test; validation is carved from the
  end of the remaining training part, never from test.
* ``random`` is RecBole's per-user ratio split (8:1:1 by default), shuffled by a seeded hash.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from etl.config import PrepareConfig

SPLITS = ("train", "valid", "test")


def temporal_split(pairs: DataFrame, cfg: PrepareConfig) -> DataFrame:
    """Add ``split`` to pairs (user_idx, item_id, timestamp, ...) following protocol P1."""
    order = Window.partitionBy("user_idx").orderBy("timestamp", F.length("item_id"), "item_id")
    n = F.count(F.lit(1)).over(Window.partitionBy("user_idx"))
    df = pairs.withColumn("_r", F.row_number().over(order)).withColumn("_n", n)
    n_test = F.greatest(F.lit(1), F.round(F.col("_n") * cfg.test_fraction).cast("int"))
    n_train = F.col("_n") - n_test
    n_valid = F.round(n_train * cfg.valid_fraction).cast("int")
    split = (F.when(F.col("_r") > n_train, "test")
             .when(F.col("_r") > n_train - n_valid, "valid").otherwise("train"))
    return df.withColumn("split", split).drop("_r", "_n")


def recbole_counts(n: Column, ratios: tuple[float, float, float]) -> tuple[Column, Column]:
    """(valid, test) counts of RecBole's ``split_by_ratio`` for a user with ``n`` items.

    RecBole takes int(ratio * n) for valid and test, then gives a part whose share is between 0
    and 1 item a single item (test first, then valid) while train keeps more than one.
    """
    train_r, valid_r, test_r = ratios
    t0 = F.floor(n * test_r).cast("int")
    v0 = F.floor(n * valid_r).cast("int")
    tr0 = n - t0 - v0
    bump_t = (tr0 > 1) & (n * test_r > 0) & (n * test_r < 1)
    t = F.when(bump_t, t0 + 1).otherwise(t0)
    tr1 = F.when(bump_t, tr0 - 1).otherwise(tr0)
    bump_v = (tr1 > 1) & (n * valid_r > 0) & (n * valid_r < 1)
    v = F.when(bump_v, v0 + 1).otherwise(v0)
    return v, t


def random_split(pairs: DataFrame, cfg: PrepareConfig) -> DataFrame:
    """Add ``split`` by RecBole's per-user random ratio split, seeded by ``cfg.seed``."""
    ratios = tuple(float(x) for x in cfg.random_ratios.split(","))
    if len(ratios) != 3 or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"random_ratios must be three numbers summing to 1, got {cfg.random_ratios!r}")
    shuffle = F.xxhash64(F.lit(cfg.seed), F.col("user_idx"), F.col("item_idx"))
    order = Window.partitionBy("user_idx").orderBy(shuffle, "item_idx")
    n = F.count(F.lit(1)).over(Window.partitionBy("user_idx"))
    df = pairs.withColumn("_r", F.row_number().over(order)).withColumn("_n", n)
    n_valid, n_test = recbole_counts(F.col("_n"), ratios)  # type: ignore[arg-type]
    n_train = F.col("_n") - n_valid - n_test
    split = (F.when(F.col("_r") <= n_train, "train")
             .when(F.col("_r") <= n_train + n_valid, "valid").otherwise("test"))
    return df.withColumn("split", split).drop("_r", "_n")
