"""CSV inputs of several files are read by each file's own header (issue 18, defect 11).

Spark's CSV reader names the columns once, from one header (or our schema), and applies them
by position to every file: a second file with its columns in another order was silently read
into the wrong columns. Through the real local Spark."""
from __future__ import annotations

import pytest

from common.schema import REQUIRED_EVENT_COLUMNS, RAW_EVENT_COLUMNS
from etl.readers import CORRUPT, SOURCE, InputError, read_delimited, read_raw


def _rows(df, cols=RAW_EVENT_COLUMNS) -> list[tuple]:
    return sorted(tuple(r[c] for c in cols) for r in df.collect())


def test_csv_files_with_columns_in_different_orders_land_in_the_right_columns(spark, tmp_path):
    d = tmp_path / "events"
    d.mkdir()
    (d / "a.csv").write_text("user_id,item_id,event_type,rating,timestamp\n"
                             "u1,i1,view,,100\nu2,i1,rating,3.5,101\n")
    (d / "b.csv").write_text("timestamp,rating,event_type,item_id,user_id\n"
                             "200,4.5,rating,i2,u3\n201,,click,i3,u4\n")
    df = read_raw(spark, d, RAW_EVENT_COLUMNS, REQUIRED_EVENT_COLUMNS)
    assert df.columns == [*RAW_EVENT_COLUMNS, CORRUPT, SOURCE]
    assert _rows(df) == [("u1", "i1", "view", None, "100"), ("u2", "i1", "rating", "3.5", "101"),
                         ("u3", "i2", "rating", "4.5", "200"), ("u4", "i3", "click", None, "201")]
    rows = df.collect()
    assert [r[CORRUPT] for r in rows] == [None] * 4
    sources = {r["user_id"]: r[SOURCE].rsplit("/", 1)[-1] for r in rows}
    assert sources == {"u1": "a.csv", "u2": "a.csv", "u3": "b.csv", "u4": "b.csv"}


def test_a_file_without_an_optional_column_gets_nulls_and_keeps_the_others(spark, tmp_path):
    """Each file is read as it would be alone: a file without ``rating`` has none."""
    d = tmp_path / "events"
    (d / "year=2024").mkdir(parents=True)
    (d / "year=2024" / "a.csv").write_text("user_id,item_id,event_type,rating,timestamp\nu1,i1,rating,5,100\n")
    (d / "z.csv").write_text("item_id,timestamp,user_id,event_type\ni9,300,u9,view\n")
    df = read_raw(spark, d, RAW_EVENT_COLUMNS, REQUIRED_EVENT_COLUMNS)
    assert _rows(df) == [("u1", "i1", "rating", "5", "100"), ("u9", "i9", "view", None, "300")]


def test_a_file_missing_a_required_column_is_refused_by_name(spark, tmp_path):
    d = tmp_path / "events"
    d.mkdir()
    (d / "a.csv").write_text("user_id,item_id,event_type,timestamp\nu1,i1,view,100\n")
    (d / "b.csv").write_text("item_id,user_id,event_type\ni2,u2,view\n")
    with pytest.raises(InputError) as e:
        read_raw(spark, d, RAW_EVENT_COLUMNS, REQUIRED_EVENT_COLUMNS)
    msg = str(e.value)
    assert "b.csv" in msg and "missing required column(s) ['timestamp']" in msg
    assert "['item_id', 'user_id', 'event_type']" in msg  # its own header


def test_an_ambiguous_header_is_refused_naming_both_files_and_headers(spark, tmp_path):
    d = tmp_path / "events"
    d.mkdir()
    (d / "a.csv").write_text("user_id,item_id,event_type,timestamp\nu1,i1,view,100\n")
    (d / "b.csv").write_text("user_id,item_id,user_id,timestamp\nu2,i2,u3,200\n")
    with pytest.raises(InputError) as e:
        read_raw(spark, d, RAW_EVENT_COLUMNS, REQUIRED_EVENT_COLUMNS)
    msg = str(e.value)
    assert "a.csv" in msg and "b.csv" in msg and "['user_id']" in msg
    assert "['user_id', 'item_id', 'event_type', 'timestamp']" in msg
    assert "['user_id', 'item_id', 'user_id', 'timestamp']" in msg


def test_one_header_for_every_file_reads_as_before(spark, tmp_path):
    d = tmp_path / "ratings"
    d.mkdir()
    for name, rows in (("1.csv", "1,10,4.0,5\n"), ("2.csv", "2,20,3.0,6\n"), ("3.csv", "")):
        (d / name).write_text("userId,movieId,rating,timestamp\n" + rows)
    (d / "empty.csv").write_bytes(b"")
    df = read_delimited(spark, d, rename={"userId": "user_id", "movieId": "item_id"})
    assert _rows(df, ("user_id", "item_id", "rating", "timestamp")) == [
        ("1", "10", "4.0", "5"), ("2", "20", "3.0", "6")]
