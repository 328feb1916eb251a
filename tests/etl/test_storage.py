"""URI paths and the file operations behind them (local and through Hadoop's FileSystem)."""
from __future__ import annotations

from pathlib import Path

from common.schema import EtlLayout
from core.storage import UriPath, as_path
from etl import fs


def test_uri_paths_keep_their_double_slash():
    layout = EtlLayout.under("s3://bucket/runs/x")
    assert str(layout.interactions) == "s3://bucket/runs/x/etl/interactions"
    assert str(layout.user_map.with_name("users.tmp")) == "s3://bucket/runs/x/etl/maps/users.tmp"
    assert str(layout.manifest.parent) == "s3://bucket/runs/x/etl"
    assert as_path("file:///tmp/a") == Path("/tmp/a")
    assert isinstance(as_path("runs/x"), Path)


def test_hadoop_file_operations(spark, tmp_path):
    root = UriPath(f"file://{tmp_path}")  # a URI, so every call goes through Hadoop's API
    fs.write_text(spark, root / "a" / "m.json", '{"x": 1}')
    assert fs.exists(spark, root / "a" / "m.json")
    assert fs.read_text(spark, root / "a" / "m.json") == '{"x": 1}'
    assert fs.first_line(spark, root / "a" / "m.json") == b'{"x": 1}'
    assert [as_path(p) for p, _ in fs.list_files(spark, root / "a")] == [tmp_path / "a" / "m.json"]
    fs.rename(spark, root / "a", root / "b")
    assert not fs.exists(spark, root / "a") and (tmp_path / "b" / "m.json").exists()
    fs.remove(spark, root / "b")
    assert not (tmp_path / "b").exists()
