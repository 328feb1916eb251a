"""The synthetic generator: schema, determinism, realism and the content signal it promises."""
from __future__ import annotations

import dataclasses
import re
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from etl.config import GenerateConfig, parse_weights
from common.schema import RAW_CATALOG_COLUMNS, RAW_EVENT_COLUMNS, EtlLayout
from etl.generate import cluster_vocabulary, generate

CFG = GenerateConfig(users=300, items=200, events=20_000, days=30, partitions=4, seed=7)


def _read(spark, layout: EtlLayout) -> tuple[pd.DataFrame, pd.DataFrame]:
    events = spark.read.parquet(str(layout.raw_events))
    events = events.withColumn("date", events["date"].cast("string")).toPandas()
    catalog = spark.read.parquet(str(layout.raw_catalog)).toPandas()
    return events, catalog


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df[sorted(df.columns)].sort_values(sorted(df.columns)).reset_index(drop=True)


@pytest.fixture(scope="module")
def generated(spark, tmp_path_factory):
    layout = EtlLayout.under(tmp_path_factory.mktemp("gen_a"))
    stats = generate(spark, CFG, layout)
    events, catalog = _read(spark, layout)
    return layout, stats, events, catalog


@pytest.fixture(scope="module")
def clusters(generated):
    """Ground truth from the generator's vocabulary: each item's cluster, from its tags."""
    _, _, events, catalog = generated
    vocab = cluster_vocabulary(CFG)
    word_cluster = {w: c for c, words in enumerate(vocab["topic_words"]) for w in words}
    cat_cluster = {w: c for c, cats in enumerate(vocab["categories"]) for w in cats}
    item_cluster = {}
    for row in catalog.itertuples():
        votes = Counter(word_cluster[t] for t in row.tags.split("|"))
        assert len(votes) == 1, f"tags of item {row.item_id} mix clusters: {row.tags}"
        item_cluster[row.item_id] = next(iter(votes))
    return vocab, word_cluster, cat_cluster, item_cluster


def test_counts_and_schema(generated):
    layout, stats, events, catalog = generated
    assert stats["events"] == CFG.events and stats["users"] == CFG.users
    assert stats["items"] == CFG.items and stats["seconds"] > 0
    assert len(events) == CFG.events
    assert sorted(catalog["item_id"], key=int) == [str(i) for i in range(CFG.items)]

    event_file = next(Path(layout.raw_events).rglob("*.parquet"))
    schema = pq.read_schema(event_file)
    assert [f.name for f in schema] == [c for c in RAW_EVENT_COLUMNS]
    assert all(str(f.type) == "string" for f in schema)
    catalog_schema = pq.read_schema(next(Path(layout.raw_catalog).glob("*.parquet")))
    assert [f.name for f in catalog_schema] == list(RAW_CATALOG_COLUMNS)
    assert all(str(f.type) == "string" for f in catalog_schema)

    assert events["user_id"].str.fullmatch(r"\d+").all()
    assert events["item_id"].str.fullmatch(r"\d+").all()
    assert events["user_id"].astype(int).between(0, CFG.users - 1).all()
    assert set(events["item_id"]) <= set(catalog["item_id"])
    assert events["rating"].isna().all()
    assert set(events["event_type"]) == set(parse_weights(CFG.event_weights))
    # Nearly every user is active (a few light users may draw no event in a small sample).
    assert events["user_id"].nunique() > 0.95 * CFG.users

    assert catalog[["title", "description", "categories", "tags"]].notna().all().all()
    assert (catalog["title"].str.len() > 0).all()
    assert (catalog["description"].str.split().str.len() >= 10).all()
    created = pd.to_datetime(catalog["created_at"], format="%Y-%m-%d")
    assert (created < pd.Timestamp(CFG.start_date)).all()


def test_partitioned_by_date_within_range(generated):
    layout, _, events, _ = generated
    start = date.fromisoformat(CFG.start_date)
    end = start + timedelta(days=CFG.days)
    dirs = sorted(p.name for p in Path(layout.raw_events).iterdir() if p.is_dir())
    assert dirs and all(re.fullmatch(r"date=\d{4}-\d{2}-\d{2}", d) for d in dirs)
    days = {date.fromisoformat(d.split("=", 1)[1]) for d in dirs}
    assert min(days) >= start and max(days) < end
    assert len(days) == CFG.days  # 20k events over 30 days: every day has traffic

    ts = events["timestamp"].astype(np.int64)
    lo = int(datetime(start.year, start.month, start.day, tzinfo=timezone.utc).timestamp())
    assert ts.min() >= lo and ts.max() < lo + CFG.days * 86_400
    as_date = pd.to_datetime(ts, unit="s", utc=True).dt.strftime("%Y-%m-%d")
    assert (as_date == events["date"]).all()

    # Users' events are spread over the range, not bunched together.
    span = events.assign(ts=ts).groupby("user_id")["ts"].agg(lambda s: s.max() - s.min())
    busy = events["user_id"].value_counts()
    assert span[busy[busy >= 20].index].median() > 0.5 * CFG.days * 86_400


def test_deterministic_and_independent_of_partitioning(spark, generated, tmp_path):
    _, _, events, catalog = generated
    again = EtlLayout.under(tmp_path / "same")
    generate(spark, dataclasses.replace(CFG, partitions=3), again)
    events2, catalog2 = _read(spark, again)
    pd.testing.assert_frame_equal(_sorted(events), _sorted(events2))
    pd.testing.assert_frame_equal(_sorted(catalog), _sorted(catalog2))

    other = EtlLayout.under(tmp_path / "other")
    generate(spark, dataclasses.replace(CFG, seed=CFG.seed + 1, events=2_000), other)
    events3, catalog3 = _read(spark, other)
    assert not catalog3["title"].equals(catalog.sort_values("item_id")["title"])
    assert not _sorted(events3).equals(_sorted(events.head(2_000)))


def test_zipf_skew(generated):
    _, _, events, _ = generated
    counts = events["item_id"].value_counts()
    top = counts.iloc[: CFG.items // 10].sum() / len(events)
    assert top > 0.3, f"top 10% of items get only {top:.1%} of events (uniform: 10%)"
    assert counts.iloc[0] > 10 * len(events) / CFG.items


def test_event_type_mix(generated):
    _, _, events, _ = generated
    weights = parse_weights(CFG.event_weights)
    total = sum(weights.values())
    share = events["event_type"].value_counts(normalize=True)
    for name, w in weights.items():
        assert share[name] == pytest.approx(w / total, abs=0.015), name


def test_content_matches_user_taste(generated, clusters):
    _, _, events, catalog = generated
    vocab, word_cluster, cat_cluster, item_cluster = clusters
    k = len(vocab["topic_words"])

    # Item text and categories agree with the item's cluster.
    primary = catalog.apply(lambda r: Counter(cat_cluster[c] for c in r.categories.split("|"))
                            .most_common(1)[0][0] == item_cluster[r.item_id], axis=1)
    assert primary.mean() > 0.9
    title_ok = catalog.apply(lambda r: all(word_cluster.get(w.lower(), item_cluster[r.item_id])
                                           == item_cluster[r.item_id] for w in r.title.split()),
                             axis=1)
    assert title_ok.all()

    def own_topic_share(r) -> float:
        topical = [word_cluster[w] for w in r.description.rstrip(".").split() if w in word_cluster]
        return sum(c == item_cluster[r.item_id] for c in topical) / max(len(topical), 1)

    assert catalog.apply(own_topic_share, axis=1).mean() > 0.8

    # Users' taste, read off the *words* of what they touch, predicts the *categories* of each
    # item they interact with far above chance (same statistic with users shuffled).
    ev = events.assign(cluster=events["item_id"].map(item_cluster))
    taste = ev.groupby("user_id")["cluster"].agg(lambda s: s.value_counts().idxmax())
    cats = dict(zip(catalog["item_id"], catalog["categories"]))
    own_cats = vocab["categories"]

    def match_rate(user_taste: pd.Series) -> float:
        t = ev["user_id"].map(user_taste)
        return float(np.mean([any(c in own_cats[tc] for c in cats[i].split("|"))
                              for i, tc in zip(ev["item_id"], t)]))

    observed = match_rate(taste)
    rng = np.random.default_rng(0)
    shuffled = match_rate(pd.Series(rng.permutation(taste.values), index=taste.index))
    assert observed > 0.7, observed
    assert observed > 4 * shuffled, (observed, shuffled)
    assert shuffled < 3 / k


def test_cluster_traffic_drifts(generated, clusters):
    _, _, events, _ = generated
    *_, item_cluster = clusters
    ev = events.assign(cluster=events["item_id"].map(item_cluster),
                       ts=events["timestamp"].astype(int))
    lo, hi = ev["ts"].quantile(0.2), ev["ts"].quantile(0.8)
    early = ev.loc[ev["ts"] <= lo, "cluster"].value_counts(normalize=True)
    late = ev.loc[ev["ts"] >= hi, "cluster"].value_counts(normalize=True)
    tv = 0.5 * early.sub(late, fill_value=0).abs().sum()
    assert tv > 0.1, f"cluster shares barely move over the range (TV {tv:.3f})"


def test_bad_config_is_rejected(spark, tmp_path):
    layout = EtlLayout.under(tmp_path)
    for bad in (dict(cluster_affinity=1.5), dict(event_weights="view:-1"), dict(events=0),
                dict(start_date="2024-13-01")):
        with pytest.raises(ValueError):
            generate(spark, dataclasses.replace(CFG, **bad), layout)
    assert not layout.root.exists()  # rejected before anything is written
