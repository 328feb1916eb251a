"""``OUT/realtime.json``: two writers (the live measurement, the offline replay), one file."""
from __future__ import annotations

import json
from pathlib import Path

from core.jsonio import write_json

RESULTS = "realtime.json"


def merge_into(path: Path, figures: dict) -> dict:
    """``path`` with ``figures``' keys replaced and the others kept (each writer owns its
    keys, so running one again never loses the other's)."""
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc.update(figures)
    write_json(path, doc)
    return doc


__all__ = ["merge_into", "RESULTS"]
