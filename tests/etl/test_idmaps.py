"""Id maps are replaced so that a crash at any step leaves one complete map (issue 18, defect 11).

The old ``write_map`` deleted the map and then renamed the new one into place: a crash between
the two left no map, and the next run renumbered every id (a served model's embedding rows
would then belong to other users). Each test crashes one file-system step of a replacement, then
runs again and checks that every id keeps its index. Through the real local Spark."""
from __future__ import annotations

import pytest

from core.storage import UriPath
from etl import fs, idmaps

FIRST = ["5", "6", "7", "10"]
SECOND = ["1", "2", "5", "11"]  # "1" and "2" sort before every first id: a renumbering moves them


def run(spark, path, ids: list[str]) -> dict[str, int]:
    """One ETL run's map step: read the previous map, extend it, replace it."""
    new = spark.createDataFrame([(i,) for i in ids], "user_id string")
    out = idmaps.write_map(idmaps.extend_map(spark, new, idmaps.read_map(spark, path, "user_id"),
                                             "user_id"), path)
    return {r["user_id"]: r["user_idx"] for r in out.collect()}


class Crash(Exception):
    pass


def crash_at(monkeypatch, step: int) -> list[str]:
    """Make the ``step``-th remove or rename (1-based) raise instead of running; returns the
    calls seen, so a test knows when ``step`` is past the last one."""
    calls: list[str] = []
    for name in ("remove", "rename"):
        real = getattr(fs, name)

        def wrapped(*args, _real=real, _name=name):
            calls.append(f"{_name}{tuple(str(a) for a in args[1:])}")
            if len(calls) == step:
                raise Crash(calls[-1])
            return _real(*args)
        monkeypatch.setattr(fs, name, wrapped)
    return calls


@pytest.mark.parametrize("kind", ["local", "uri"])
def test_a_crash_after_the_old_map_is_gone_keeps_every_index(spark, tmp_path, monkeypatch, kind):
    """The old defect: crash on the rename that puts the new map in place."""
    root = tmp_path if kind == "local" else UriPath(f"file://{tmp_path}")
    path = root / "maps" / "users"
    first = run(spark, path, FIRST)
    assert first == {"5": 0, "6": 1, "7": 2, "10": 3}

    real = fs.rename

    def rename(spark_, src, dst):
        if str(dst) == str(path):
            raise Crash(f"rename {src} -> {dst}")
        return real(spark_, src, dst)
    monkeypatch.setattr(fs, "rename", rename)
    with pytest.raises(Crash):
        run(spark, path, SECOND)
    monkeypatch.undo()

    after = run(spark, path, SECOND)
    assert {k: after.get(k) for k in first} == first
    assert after == {**first, "1": 4, "2": 5, "11": 6}
    assert not (tmp_path / "maps" / "users.old").exists()


def test_a_crash_at_any_step_keeps_every_index(spark, tmp_path, monkeypatch):
    """Every remove/rename of a replacement, in turn; the run after it keeps each index, and
    the run after that finds the map where readers (training) look for it."""
    step = 0
    while True:
        step += 1
        path = tmp_path / f"step{step}" / "users"
        first = run(spark, path, FIRST)
        calls = crash_at(monkeypatch, step)
        try:
            run(spark, path, SECOND)
            crashed = False
        except Crash:
            crashed = True
        monkeypatch.undo()
        after = run(spark, path, ["3"])
        assert {k: after.get(k) for k in first} == first, (step, calls)
        assert (path / "_SUCCESS").exists(), (step, calls)
        if not crashed:
            break
    assert step >= 3, calls  # aside, into place, drop the old one: each was crashed once
