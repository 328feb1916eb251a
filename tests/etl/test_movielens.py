"""MovieLens flavours map onto the raw schema; P1 on ml-latest-small accounts for every rating."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from common.schema import EtlLayout
from etl.ingest import ingest
from etl.movielens import detect_movielens, read_movielens
from etl.readers import InputError

from .conftest import read


def test_ml_100k_layout(spark, tmp_path):
    (tmp_path / "u.data").write_text("1\t10\t5\t881250949\n2\t10\t3\t891717742\n1\t20\t4\t878887116\n")
    genres = ["0"] * 19
    genres[1] = genres[5] = "1"
    (tmp_path / "u.item").write_bytes(
        ("10|Caf\xe9 Society (1995)|01-Jan-1995||http://x|" + "|".join(genres) + "\n"
         "20|Other (1996)|01-Jan-1996||http://y|" + "|".join(["0"] * 18 + ["1"]) + "\n").encode("latin-1"))
    assert detect_movielens(tmp_path) == "ml-100k"
    events, catalog = read_movielens(spark, tmp_path)
    ev = events.toPandas().sort_values(["user_id", "item_id"])
    assert ev[["user_id", "item_id", "event_type", "rating", "timestamp"]].values.tolist() == [
        ["1", "10", "rating", "5", "881250949"], ["1", "20", "rating", "4", "878887116"],
        ["2", "10", "rating", "3", "891717742"]]
    cat = catalog.toPandas().set_index("item_id")
    assert cat.loc["10", "title"] == "Café Society (1995)"  # latin-1 decoded
    assert cat.loc["10", "categories"] == "Action|Comedy"
    assert cat.loc["20", "categories"] == "Western"


def test_ml_1m_layout(spark, tmp_path):
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\nbroken line\n")
    (tmp_path / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James (1996)::Animation|Children's\n"
        .encode("latin-1"))
    assert detect_movielens(tmp_path) == "ml-1m"
    events, catalog = read_movielens(spark, tmp_path)
    ev = events.toPandas()
    assert len(ev) == 3
    assert ev["_corrupt_record"].notna().sum() == 1  # the broken line is kept for quarantine
    cat = catalog.toPandas().set_index("item_id")
    assert cat.loc["661", "categories"] == "Animation|Children's"
    assert cat.loc["1193", "created_at"] == "1975-01-01"


def test_not_movielens_is_a_clear_error(spark, tmp_path):
    with pytest.raises(InputError, match="not a MovieLens folder"):
        ingest(spark, tmp_path, EtlLayout.under(tmp_path / "out"))


@pytest.mark.slow
def test_p1_on_ml_latest_small_accounts_for_every_rating(ml_latest_small_out, ml_latest_small):
    layout = EtlLayout.under(ml_latest_small_out)
    m = json.loads(layout.manifest.read_text())
    c = m["counts"]
    assert c["input"] == 100_836
    assert c["kept"] + c["filtered"] + c["duplicates"] + c["quarantined"] == 100_836
    assert c["quarantined"] == 0 and c["duplicates"] == 0
    ratings = pd.read_csv(ml_latest_small / "ratings.csv")
    positives = ratings[ratings.rating >= 4.0]
    per_user = positives.groupby("userId").size()
    kept_users = per_user[per_user >= 5]
    assert m["index_sizes"]["users"] == len(kept_users) == 603
    assert c["kept"] == int(kept_users.sum())
    assert m["filtered_reasons"]["below_rating_threshold"] == len(ratings) - len(positives)
    expected_test = sum(max(1, round(0.2 * n)) for n in kept_users)
    sizes = m["split_sizes"]["temporal"]
    assert sizes["test"] == expected_test
    assert sum(sizes.values()) == c["kept"]
    items = read(layout.items)
    toy = items[items.item_id == "1"].iloc[0]
    assert toy.title == "Toy Story (1995)" and "Animation" in list(toy.categories)
    assert "pixar" in list(toy.tags)
