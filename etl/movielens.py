"""MovieLens folders (ml-latest / ml-latest-small, ml-100k, ml-1m) as raw events + catalog.

Ratings become ``rating`` events (the rating kept); titles, genres and user tags become the
item's text and categories. Line-level problems are carried through (``_corrupt_record``) so the
prepare job quarantines them exactly as it would for our own logs.
"""
from __future__ import annotations

from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from common.schema import LIST_SEPARATOR, RATING_EVENT
from etl.readers import CORRUPT, SOURCE, InputError, read_delimited

ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western"]
_LAYOUTS = {
    "ml-latest": ("ratings.csv", "movies.csv"),
    "ml-100k": ("u.data", "u.item"),
    "ml-1m": ("ratings.dat", "movies.dat"),
}


def detect_movielens(path: str | Path) -> str | None:
    """The MovieLens flavour stored in ``path``, or None when it is not a MovieLens folder."""
    path = Path(path)
    for name, files in _LAYOUTS.items():
        if all((path / f).is_file() for f in files):
            return name
    return None


def _events(df: DataFrame) -> DataFrame:
    return df.select(F.col("user_id"), F.col("item_id"), F.lit(RATING_EVENT).alias("event_type"),
                     F.col("rating"), F.col("timestamp"), F.col(CORRUPT), F.col(SOURCE))


def _year_from_title(title) -> F.Column:
    year = F.regexp_extract(title, r"\((\d{4})\)\s*$", 1)
    return F.when(year != "", F.concat(year, F.lit("-01-01")))


def _catalog(movies: DataFrame, genres: F.Column, tags: DataFrame | None) -> DataFrame:
    movies = movies.withColumn("categories", genres)
    if tags is not None:
        movies = movies.join(tags, "item_id", "left")
    else:
        movies = movies.withColumn("tags", F.lit(None).cast("string"))
    return movies.select("item_id", "title", F.lit("").alias("description"), "categories", "tags",
                         _year_from_title(F.col("title")).alias("created_at"), CORRUPT, SOURCE)


def _tags(spark: SparkSession, path: Path) -> DataFrame | None:
    if not path.is_file():
        return None
    tags = read_delimited(spark, path, rename={"movieId": "item_id"})
    tags = tags.where(F.col(CORRUPT).isNull() & F.col("tag").isNotNull())
    return (tags.groupBy(F.trim(F.col("item_id")).alias("item_id"))
            .agg(F.array_join(F.array_sort(F.collect_set(F.lower(F.trim(F.regexp_replace(
                "tag", r"\|", " "))))), LIST_SEPARATOR).alias("tags")))


def read_movielens(spark: SparkSession, path: str | Path) -> tuple[DataFrame, DataFrame]:
    """(raw events, raw catalog) for any supported MovieLens folder."""
    path = Path(path)
    flavour = detect_movielens(path)
    if flavour == "ml-latest":
        ratings = read_delimited(spark, path / "ratings.csv",
                                 rename={"userId": "user_id", "movieId": "item_id"})
        movies = read_delimited(spark, path / "movies.csv", rename={"movieId": "item_id"})
        catalog = _catalog(movies, F.col("genres"), _tags(spark, path / "tags.csv"))
    elif flavour == "ml-100k":
        ratings = read_delimited(spark, path / "u.data", header=False, sep="\t",
                                 columns=["user_id", "item_id", "rating", "timestamp"])
        cols = ["item_id", "title", "release_date", "video_release_date", "url"] + \
            [f"g{i}" for i in range(len(ML100K_GENRES))]
        movies = read_delimited(spark, path / "u.item", header=False, sep="|", columns=cols,
                                encoding="ISO-8859-1", quote=None)
        flags = [F.when(F.col(f"g{i}") == "1", F.lit(g)) for i, g in enumerate(ML100K_GENRES)]
        catalog = _catalog(movies, F.concat_ws(LIST_SEPARATOR, *flags), None)
    elif flavour == "ml-1m":
        ratings = read_delimited(spark, path / "ratings.dat", header=False, sep="::", quote=None,
                                 columns=["user_id", "item_id", "rating", "timestamp"])
        movies = read_delimited(spark, path / "movies.dat", header=False, sep="::", quote=None,
                                columns=["item_id", "title", "genres"], encoding="ISO-8859-1")
        catalog = _catalog(movies, F.col("genres"), None)
    else:
        expected = "; ".join(f"{k}: {' + '.join(v)}" for k, v in _LAYOUTS.items())
        raise InputError(f"{path} is not a MovieLens folder (expected {expected})")
    return _events(ratings), catalog
