"""Results as JSON files: one cleaner, one writer, one format.

Every results file (eval.json, parity.json, the benchmarks' results, run summaries) goes through
:func:`write_json`: standard JSON (NaN and infinities become ``null``), numpy and torch scalars
as Python numbers, anything else JSON cannot hold (paths, dates) as its ``str``; indented by two,
a trailing newline, written atomically (a reader never sees half a file).
"""
from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Mapping


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON can hold: NaN/inf -> None, numpy/torch scalars and
    arrays -> Python numbers and lists, mapping keys -> str, anything else -> ``str(obj)``."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "tolist") and not isinstance(obj, numbers.Number):  # an array or a tensor
        return json_safe(obj.tolist())
    try:
        f = float(obj)
    except (TypeError, ValueError):
        return str(obj)
    return f if math.isfinite(f) else None


def dumps(obj: Any, sort_keys: bool = False) -> str:
    """The text :func:`write_json` writes."""
    return json.dumps(json_safe(obj), indent=2, sort_keys=sort_keys, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any, sort_keys: bool = False) -> Path:
    """Write ``obj`` (through :func:`json_safe`) to ``path`` atomically; creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(dumps(obj, sort_keys))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


__all__ = ["json_safe", "dumps", "write_json"]
