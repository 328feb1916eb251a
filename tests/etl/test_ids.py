"""The ETL's Spark id rule and the serving stdlib rule (core/ids.py) on the same table."""
from __future__ import annotations

from core import ids
from etl.validate import normalize_id


def test_spark_expression_matches_common_ids_on_every_case(spark):
    from pyspark.sql import functions as F

    rows = [(i, raw) for i, (raw, _) in enumerate(ids.CASES)]
    df = spark.createDataFrame(rows, "i int, raw string")
    got = {r.i: r.id for r in df.select("i", normalize_id(F.col("raw")).alias("id")).collect()}
    for i, (raw, expected) in enumerate(ids.CASES):
        assert got[i] == expected, (raw, got[i], expected)
        assert ids.try_canonical_id(raw) == expected
    assert df.select(normalize_id(F.lit(None).cast("string")).alias("x")).first().x is None
