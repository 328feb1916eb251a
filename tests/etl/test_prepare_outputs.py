"""Determinism, stable id maps, leak-free splits and content features of the prepare job."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from etl.config import PrepareConfig
from core.vectorizer import ContentVectorizer, item_text

from .conftest import T0, good_events, read, run_prepare, write_inputs

CFG = PrepareConfig(min_user_positives=3, min_doc_freq=1, valid_fraction=0.2)


def _events(users: int, per_user: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, users + 1):
        items = rng.choice(np.arange(1, 21), size=per_user, replace=False)
        times = np.sort(rng.integers(0, 10_000_000, size=per_user))
        kinds = rng.choice(["view", "click", "add_to_cart", "purchase"], size=per_user)
        rows += [f"{u},{i},{k},,{T0 + int(t)}" for i, t, k in zip(items, times, kinds)]
    return rows


@pytest.fixture(scope="module")
def twice(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("twice")
    events, catalog = write_inputs(root, _events(30, 10, 0))
    first, layout_a = run_prepare(spark, root, events, catalog, CFG, out="a")
    second, layout_b = run_prepare(spark, root, events, catalog, CFG, out="b")
    return (first, layout_a), (second, layout_b), root


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for c in df.columns:
        if df[c].map(lambda v: isinstance(v, np.ndarray)).any():
            df[c] = df[c].map(lambda v: tuple(np.round(v, 6)) if v.dtype.kind == "f" else tuple(v))
        elif isinstance(df[c].dtype, pd.CategoricalDtype):
            df[c] = df[c].astype(str)
    return df.sort_values(list(df.columns)).reset_index(drop=True)


def test_two_runs_give_identical_outputs(twice):
    (first, a), (second, b), _ = twice
    assert first.manifest["content_hash"] == second.manifest["content_hash"]
    for name in ("interactions", "user_map", "item_map", "items", "item_features"):
        pd.testing.assert_frame_equal(_sorted(read(getattr(a, name))), _sorted(read(getattr(b, name))))
    for scheme in ("temporal", "random"):
        pd.testing.assert_frame_equal(_sorted(read(a.split(scheme))), _sorted(read(b.split(scheme))))
    assert a.vectorizer.read_text() == b.vectorizer.read_text()


def test_manifest_contents(twice):
    (first, layout), _, _ = twice
    m = json.loads(layout.manifest.read_text())
    assert m["schema_version"] == "1.0"
    assert m["counts"] == first.counts
    c = m["counts"]
    assert c["input"] == c["kept"] + c["filtered"] + c["duplicates"] + c["quarantined"] == 300
    assert m["config"]["min_user_positives"] == 3
    assert set(m["split_sizes"]) == {"temporal", "random"}
    assert len(m["content_hash"]) == 64


def test_maps_are_contiguous(twice):
    (_, layout), _, _ = twice
    for path, n in ((layout.user_map, 30), (layout.item_map, 20)):
        m = read(path)
        assert sorted(m.iloc[:, 1]) == list(range(n))
        assert m.iloc[:, 0].is_unique


def test_rerun_with_appended_data_keeps_every_old_index(spark, twice):
    (_, old), _, root = twice
    rows = _events(30, 10, 0) + _events(35, 10, 1)[300:]  # users 31..35 are new
    catalog = ("item_id,title,description,categories,tags,created_at\n"
               + "".join(f"{i},Item {i},d,c{i % 3},t,2023-01-01\n" for i in range(25, 0, -1)))
    events, cat = write_inputs(root / "appended", rows, catalog=catalog)
    _, new = run_prepare(spark, root / "appended", events, cat, CFG, previous=old)
    for name in ("user_map", "item_map"):
        before, after = read(getattr(old, name)), read(getattr(new, name))
        key, idx = before.columns
        merged = before.merge(after, on=key, suffixes=("_old", "_new"))
        assert len(merged) == len(before)
        assert (merged[f"{idx}_old"] == merged[f"{idx}_new"]).all()
        assert sorted(after[idx]) == list(range(len(after)))
    items = read(new.item_map)
    assert items.loc[items.item_id.astype(int) > 20, "item_idx"].min() == 20  # appended after the old


def test_temporal_split_has_no_leakage(twice):
    (_, layout), _, _ = twice
    df = read(layout.split("temporal"))
    df["split"] = df["split"].astype(str)
    for _, g in df.groupby("user_idx"):
        train, valid, test = (g[g.split == s] for s in ("train", "valid", "test"))
        assert len(train) > 0 and len(test) >= 1
        assert len(test) == max(1, round(0.2 * len(g)))
        assert test.timestamp.min() >= pd.concat([train, valid]).timestamp.max()
        if len(valid):
            assert valid.timestamp.min() >= train.timestamp.max()


def test_random_split_follows_recbole_ratios(twice):
    (_, layout), _, _ = twice
    df = read(layout.split("random"))
    sizes = df.groupby(["user_idx", df.split.astype(str)]).size().unstack(fill_value=0)
    assert (sizes["train"] == 8).all() and (sizes["valid"] == 1).all() and (sizes["test"] == 1).all()


def test_recbole_counts_match_recbole_for_small_users(spark):
    from pyspark.sql import functions as F

    from etl.splits import recbole_counts

    def recbole(tot: int, ratios=(0.8, 0.1, 0.1)) -> tuple[int, int]:
        # RecBole's Dataset._calcu_split_ids, written out.
        cnt = [int(r * tot) for r in ratios]
        cnt[0] = tot - sum(cnt[1:])
        for i in range(1, len(ratios)):
            if cnt[0] <= 1:
                break
            if 0 < ratios[-i] * tot < 1:
                cnt[-i] += 1
                cnt[0] -= 1
        return cnt[1], cnt[2]

    ns = list(range(1, 40))
    v, t = recbole_counts(F.col("n"), (0.8, 0.1, 0.1))
    got = spark.createDataFrame([(n,) for n in ns], "n int").select("n", v.alias("v"), t.alias("t"))
    assert {r.n: (r.v, r.t) for r in got.collect()} == {n: recbole(n) for n in ns}


def test_python_vectorizer_reproduces_spark_features(twice):
    (_, layout), _, _ = twice
    vec = ContentVectorizer.load(layout.vectorizer)
    items = read(layout.items).set_index("item_idx")
    feats = read(layout.item_features).set_index("item_idx")
    for idx, row in items.iterrows():
        indices, values = vec.transform(item_text(row.title, row.description, row.categories, row.tags))
        assert indices == list(feats.loc[idx, "text_indices"])
        np.testing.assert_allclose(values, feats.loc[idx, "text_values"], rtol=1e-5)
        assert vec.category_ids(row.categories) == list(feats.loc[idx, "category_indices"])


def test_few_positive_users_are_filtered_not_lost(spark, tmp_path):
    rows = good_events(users=4, per_user=8) + [f"9,{i},view,,{T0 + i}" for i in (1, 2)]
    events, catalog = write_inputs(tmp_path, rows)
    result, layout = run_prepare(spark, tmp_path, events, catalog, PrepareConfig(min_user_positives=3))
    assert result.filtered_reasons["user_too_few_positives"] == 2
    assert "9" not in set(read(layout.user_map).user_id)
