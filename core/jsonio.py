"""JSON files: one cleaner, one writer, one format.

Every JSON file we write goes through :func:`write_json`: the artifact's config.json, the index
metadata and serving.json of an archive (so it lives in the served core, which imports nothing
of ours), eval.json, parity.json, the benchmarks' results and the run summaries. It writes
numpy and torch scalars as Python numbers, anything else JSON cannot hold (paths, dates) as its
``str``; indented by two, a trailing newline, written atomically (a reader never sees half a
file). A figure that does not exist (an empty slice's recall) stays ``NaN``, as
Python's json writes and reads it, so eval.json and the tables made from it keep their form;
``strict=True`` writes such values as ``null`` instead, for files read outside Python (the A/B
report, the evaluation logged to MLflow).
"""
from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Mapping


def plain(obj: Any, *, strict: bool = False) -> Any:
    """A copy of ``obj`` made of what JSON holds: numpy/torch scalars and arrays -> Python numbers
    and lists, mapping keys -> str, anything else -> ``str(obj)``; with ``strict``, NaN and
    infinities -> None as well."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v, strict=strict) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, strict=strict) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, float):
        f = obj
    elif hasattr(obj, "tolist") and not isinstance(obj, numbers.Number):  # an array or a tensor
        return plain(obj.tolist(), strict=strict)
    else:
        try:
            f = float(obj)
        except (TypeError, ValueError):
            return str(obj)
    return None if strict and not math.isfinite(f) else f


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON can hold: :func:`plain` with NaN/inf -> None."""
    return plain(obj, strict=True)


def dumps(obj: Any, sort_keys: bool = False, *, strict: bool = False) -> str:
    """The text :func:`write_json` writes."""
    return json.dumps(plain(obj, strict=strict), indent=2, sort_keys=sort_keys,
                      allow_nan=not strict) + "\n"


def write_json(path: str | os.PathLike, obj: Any, sort_keys: bool = False, *,
               strict: bool = False) -> Path:
    """Write ``obj`` (through :func:`plain`) to ``path`` atomically; creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(dumps(obj, sort_keys, strict=strict))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


__all__ = ["plain", "json_safe", "dumps", "write_json"]
