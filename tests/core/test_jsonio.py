"""One results writer: numpy numbers as numbers, NaN kept unless strict, the same bytes as before."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from core.jsonio import json_safe, write_json


def test_json_safe_cleans_nan_numpy_and_objects():
    obj = {"nan": math.nan, "inf": -math.inf, "f32": np.float32(0.5), "i64": np.int64(3),
           "arr": np.arange(3), "path": Path("/x"), "nested": [{"t": (1, math.nan)}], 7: True}
    assert json_safe(obj) == {"nan": None, "inf": None, "f32": 0.5, "i64": 3, "arr": [0, 1, 2],
                              "path": "/x", "nested": [{"t": [1, None]}], "7": True}


def test_write_json_format_is_the_results_format(tmp_path):
    obj = {"b": 1, "a": [1.5, "x"], "c": {"d": None}}
    path = write_json(tmp_path / "sub" / "r.json", obj)
    assert path.read_text() == json.dumps(obj, indent=2) + "\n"     # what the writers wrote
    write_json(path, obj, sort_keys=True)
    assert path.read_text() == json.dumps(obj, indent=2, sort_keys=True) + "\n"
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]     # no temporary file left


def test_a_missing_figure_stays_nan_unless_strict(tmp_path):
    """eval.json's empty slices hold NaN, and the tables made from it print ``nan``: the default
    keeps the figure as Python's json reads it back; strict files (read outside Python) get null."""
    obj = {"recall": math.nan, "n": np.int64(0)}
    path = write_json(tmp_path / "eval.json", obj)
    assert path.read_text() == json.dumps({"recall": math.nan, "n": 0}, indent=2) + "\n"
    assert math.isnan(json.loads(path.read_text())["recall"])
    write_json(path, obj, strict=True)
    assert json.loads(path.read_text()) == {"recall": None, "n": 0}
