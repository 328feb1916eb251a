"""Helpers to write small raw inputs and run the prepare job on them."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from etl.config import PrepareConfig
from common.schema import EtlLayout

CATALOG_CSV = (
    "item_id,title,description,categories,tags,created_at\n"
    + "".join(f"{i},Item {i} title,about thing{i % 3} stuff,cat{i % 3}|shared,tag{i % 2},2023-01-01\n"
              for i in range(1, 21))
)
T0 = 1_700_000_000  # 2023-11-14


def good_events(users: int = 6, per_user: int = 8) -> list[str]:
    """Rows of a clean event log: every user views `per_user` distinct items at increasing times."""
    rows = []
    for u in range(1, users + 1):
        for k in range(per_user):
            item = (u + k) % 20 + 1
            rows.append(f"{u},{item},view,,{T0 + 3600 * (u * 100 + k)}")
    return rows


def write_inputs(root: Path, event_rows: list[str], *, catalog: str = CATALOG_CSV,
                 header: str = "user_id,item_id,event_type,rating,timestamp",
                 newline: str = "\n", raw_bytes: bytes = b"") -> tuple[Path, Path]:
    events = root / "raw_events" / "events.csv"
    events.parent.mkdir(parents=True)
    events.write_bytes((newline.join([header, *event_rows]) + newline).encode() + raw_bytes)
    cat = root / "raw_catalog" / "catalog.csv"
    cat.parent.mkdir(parents=True)
    cat.write_text(catalog)
    return events.parent, cat.parent


def run_prepare(spark, root: Path, events: Path, catalog: Path, cfg: PrepareConfig | None = None,
                previous: EtlLayout | None = None, out: str = "out"):
    from etl.prepare import prepare

    layout = EtlLayout.under(root / out)
    return prepare(spark, events, catalog, layout, cfg or PrepareConfig(), previous), layout


def read(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


@pytest.fixture
def small_cfg() -> PrepareConfig:
    return PrepareConfig(min_user_positives=3, min_doc_freq=1)
