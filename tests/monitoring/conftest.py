"""Fixtures of the monitoring tests: a small ETL output written in the ETL's own layout (so
``common.splits.load_split`` reads it), and writers of gateway exposure / event logs in the
contract's JSON-lines format."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring import config
from monitoring.dashboard import dashboard_queries
from monitoring.promql import raw_metrics, recordings_of
from monitoring.promserver import PrometheusConfig
from monitoring.rules import rule_groups

N_USERS, N_ITEMS, PER_USER = 1500, 400, 20


@dataclass
class SyntheticEtl:
    out: Path
    item_ids: list[str]
    train_pairs: list[tuple[str, str]]   # (user id, item id) of train + valid
    newest_items: list[str]              # the 5% of items that appeared last


def write_etl(out: Path, seed: int = 0) -> SyntheticEtl:
    """Items appear one after another (item i at time i); a user interacts with items already
    released, older ones more often (popularity ~ 1/(1 + age rank)^1.1, as in real catalogs where
    new items have had little time to gather interactions). P1-style split: each user's last 20%
    are test, the 10% before valid."""
    rng = np.random.default_rng(seed)
    root = out / "etl"
    item_ids = [f"m{i:04d}" for i in range(N_ITEMS)]
    user_ids = [f"u{u}" for u in range(N_USERS)]
    weights = 1.0 / (1.0 + np.arange(N_ITEMS)) ** 1.1
    rows = []
    for u in range(N_USERS):
        items = rng.choice(N_ITEMS, size=PER_USER, replace=False, p=weights / weights.sum())
        t = items + rng.integers(0, 50, size=PER_USER)  # seen some time after its release
        order = np.argsort(t, kind="stable")
        n_test, n_valid = PER_USER // 5, PER_USER // 10
        for rank, j in enumerate(order):
            split = ("test" if rank >= PER_USER - n_test else
                     "valid" if rank >= PER_USER - n_test - n_valid else "train")
            rows.append((u, int(items[j]), 1.0, int(1_700_000_000 + t[j]), split))
    df = pd.DataFrame(rows, columns=["user_idx", "item_idx", "weight", "timestamp", "split"])
    (root / "splits").mkdir(parents=True)
    df.to_parquet(root / "splits" / "temporal", partition_cols=["split"], index=False)
    for name, ids, col in (("users", user_ids, "user"), ("items", item_ids, "item")):
        (root / "maps" / name).mkdir(parents=True)
        pd.DataFrame({f"{col}_id": ids, f"{col}_idx": np.arange(len(ids))}).to_parquet(
            root / "maps" / name / "part-0.parquet", index=False)
    (root / "features" / "items").mkdir(parents=True)
    pd.DataFrame({"item_idx": np.arange(N_ITEMS),
                  "text_indices": [[0] for _ in range(N_ITEMS)],
                  "text_values": [[1.0] for _ in range(N_ITEMS)],
                  "category_indices": [[i % 3] for i in range(N_ITEMS)]}).to_parquet(
        root / "features" / "items" / "part-0.parquet", index=False)
    (root / "features" / "vectorizer.json").write_text(json.dumps(
        {"vocabulary": ["film"], "idf": [1.0], "categories": ["Comedy", "Drama", "Horror"]}))
    (root / "items").mkdir(parents=True)
    pd.DataFrame({"item_idx": np.arange(N_ITEMS), "title": [f"Movie {i}" for i in item_ids],
                  "categories": [["Comedy"] for _ in range(N_ITEMS)]}).to_parquet(
        root / "items" / "part-0.parquet", index=False)
    (root / "manifest.json").write_text("{}")
    fit = df[df["split"] != "test"]
    pairs = [(user_ids[u], item_ids[i]) for u, i in zip(fit["user_idx"], fit["item_idx"])]
    first_seen = fit.groupby("item_idx")["timestamp"].min().sort_values()
    newest = [item_ids[i] for i in first_seen.index[-N_ITEMS // 20:]]
    return SyntheticEtl(out, item_ids, pairs, newest)


@pytest.fixture(scope="session")
def synthetic_etl(tmp_path_factory) -> SyntheticEtl:
    return write_etl(tmp_path_factory.mktemp("drift") / "out")


@pytest.fixture
def etl_out(synthetic_etl, tmp_path) -> SyntheticEtl:
    """A fresh OUT holding a copy of the session's ETL output (tests write their own logs)."""
    out = tmp_path / "out"
    shutil.copytree(synthetic_etl.out / "etl", out / "etl")
    return SyntheticEtl(out, synthetic_etl.item_ids, synthetic_etl.train_pairs,
                        synthetic_etl.newest_items)


def exposure(i: int, *, user: str | None, history: list[str] | None = None, strategy: str = "history",
             items: list[str] | None = None, scores: list[float] | None = None, unknown_history: int = 0,
             model_version: str = "1", fallback: bool = False, ts: float | None = None) -> dict:
    """One exposure record as the gateway writes it (docs/contracts.md)."""
    history = history or []
    return {"ts": 1_700_000_000.0 + i if ts is None else ts, "request_id": f"r{i}",
            "experiment": "homepage", "variant": "control", "model_version": model_version,
            "user": user, "mode": "user", "strategy": strategy, "items": items or [],
            "scores": scores or [], "fallback": fallback, "fallback_cause": None,
            "history_len": len(history), "history_items": history[-50:],
            "unknown_history": unknown_history, "status": 200}


def write_jsonl(directory: Path, records: list[dict], name: str = "part-0001.jsonl") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


# ---- the every-panel tests ---------------------------------------------------------------------

PANEL_VARIABLES = {"experiment": ".*", "model_version": ".*"}
LIVE_PROM = PrometheusConfig(scrape_interval="1s", evaluation_interval="1s", rate_window="10s")


def committed_queries() -> list[tuple[str, str, str]]:
    """(row, panel, expr) of every target of the committed dashboard JSON."""
    return dashboard_queries(json.loads(config.DASHBOARD_FILE.read_text()))


def needs_gateway(expr: str) -> bool:
    return any(m.startswith("recsys_gateway_") for m in raw_metrics(expr, recordings_of(rule_groups())))


def panels_without_data(prom, queries) -> list[str]:
    """The queries (Grafana variables set to All) that return no series with a finite value."""
    import math

    from monitoring.render import expand

    empty = []
    for row, title, expr in queries:
        result = prom.query(expand(expr, PANEL_VARIABLES))
        if not [r for r in result if math.isfinite(float(r["value"][1]))]:
            empty.append(f"{row} / {title}: {expr} -> {result}")
    return empty
