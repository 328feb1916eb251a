"""Column names, versions and the on-disk layout every stage agrees on.

Raw inputs are *unvalidated*: the prepare job reads every raw column as a string and decides
itself what is usable, so the same rules apply to CSV, JSON lines and Parquet inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.storage import AnyPath, as_path

SCHEMA_VERSION = "1.0"

# Raw event log: one row per event, as logged.
RAW_EVENT_COLUMNS = ("user_id", "item_id", "event_type", "rating", "timestamp")
REQUIRED_EVENT_COLUMNS = ("user_id", "item_id", "event_type", "timestamp")
# Raw item catalog. categories and tags are '|'-separated in text formats.
RAW_CATALOG_COLUMNS = ("item_id", "title", "description", "categories", "tags", "created_at")
REQUIRED_CATALOG_COLUMNS = ("item_id", "title")
LIST_SEPARATOR = "|"

RATING_EVENT = "rating"
IMPLICIT_EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")

# Ids: any string of 1-256 characters without control characters, or a non-negative integer;
# one canonicalization for every stage: core/ids.py.


class Reason:
    """Quarantine reasons: one row may carry several, joined with ';'."""

    MALFORMED = "malformed_line"
    INVALID_UTF8 = "invalid_utf8"
    MISSING_USER = "missing_user_id"
    MISSING_ITEM = "missing_item_id"
    BAD_USER = "bad_user_id"
    BAD_ITEM = "bad_item_id"
    BAD_EVENT_TYPE = "unknown_event_type"
    BAD_TIMESTAMP = "bad_timestamp"
    BAD_RATING = "bad_rating"
    RATING_OUT_OF_RANGE = "rating_out_of_range"
    UNKNOWN_ITEM = "unknown_item"
    MISSING_TITLE = "missing_title"
    DUPLICATE_ITEM = "duplicate_item_id"


@dataclass(frozen=True)
class EtlLayout:
    """Where the ETL stage writes under ``OUT/etl`` (and where later stages read)."""

    root: AnyPath

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", as_path(self.root))

    @classmethod
    def under(cls, out: "str | AnyPath") -> "EtlLayout":
        return cls(as_path(out) / "etl")

    @property
    def raw_events(self) -> AnyPath:
        return self.root / "raw" / "events"

    @property
    def raw_catalog(self) -> AnyPath:
        return self.root / "raw" / "catalog"

    @property
    def interactions(self) -> AnyPath:
        """All kept (user, item) interactions with weights, before splitting."""
        return self.root / "interactions"

    def split(self, scheme: str) -> AnyPath:
        """``temporal`` (protocol P1) or ``random`` (8:1:1); partitioned by ``split``."""
        return self.root / "splits" / scheme

    @property
    def user_map(self) -> AnyPath:
        return self.root / "maps" / "users"

    @property
    def item_map(self) -> AnyPath:
        return self.root / "maps" / "items"

    @property
    def items(self) -> AnyPath:
        """Validated catalog with item_idx, title, categories, tags, created_at."""
        return self.root / "items"

    @property
    def item_features(self) -> AnyPath:
        return self.root / "features" / "items"

    @property
    def vectorizer(self) -> AnyPath:
        """Plain-JSON TF-IDF vocabulary/IDF that serving uses without Spark."""
        return self.root / "features" / "vectorizer.json"

    @property
    def spark_pipeline(self) -> AnyPath:
        return self.root / "features" / "spark_pipeline"

    @property
    def quarantine_events(self) -> AnyPath:
        return self.root / "quarantine" / "events"

    @property
    def quarantine_catalog(self) -> AnyPath:
        return self.root / "quarantine" / "catalog"

    @property
    def manifest(self) -> AnyPath:
        return self.root / "manifest.json"
