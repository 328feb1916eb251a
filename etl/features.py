"""Item content features with Spark ML: tokenize, drop stop words, TF-IDF, L2-normalize.

The vocabulary is chosen by a deterministic query (document frequency, then term) instead of
CountVectorizer's fit, whose order among equally frequent terms depends on partitioning; the
fitted pipeline is saved for Spark, and vocabulary/IDF/tokenizer as JSON for serving.
"""
from __future__ import annotations

import json

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import (IDF, CountVectorizerModel, Normalizer, RegexTokenizer,
                                StopWordsRemover)
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (ArrayType, ByteType, DoubleType, IntegerType, StructField,
                               StructType)

from etl.config import PrepareConfig
from core.storage import AnyPath
from etl import fs
from core.vectorizer import JAVA_TOKEN_GAPS

TEXT_FIELDS = ("title", "description", "categories", "tags")


def _text(items: DataFrame) -> DataFrame:
    text = F.concat_ws(" ", F.coalesce("title", F.lit("")), F.coalesce("description", F.lit("")),
                       F.array_join("categories", " "), F.array_join("tags", " "))
    return items.withColumn("text", text)


def fit_content_features(items: DataFrame, cfg: PrepareConfig, out_dir: AnyPath,
                         vectorizer_path: AnyPath) -> DataFrame:
    """Fit on the catalog, save the pipeline and the JSON spec; return per-item sparse features."""
    tokenizer = RegexTokenizer(inputCol="text", outputCol="tokens", pattern=JAVA_TOKEN_GAPS,
                               gaps=True, toLowercase=True, minTokenLength=cfg.min_token_length)
    stop_words = StopWordsRemover.loadDefaultStopWords("english")
    remover = StopWordsRemover(inputCol="tokens", outputCol="terms", stopWords=stop_words)
    docs = remover.transform(tokenizer.transform(_text(items)))
    doc_freq = (docs.select("item_idx", F.explode(F.array_distinct("terms")).alias("term"))
                .groupBy("term").count().where(F.col("count") >= cfg.min_doc_freq)
                .orderBy(F.desc("count"), "term").limit(cfg.vocab_size))
    vocab = [r.term for r in doc_freq.collect()]
    if not vocab:
        vocab = ["<empty>"]  # CountVectorizerModel needs one term; nothing in the catalog matches it
    counter = CountVectorizerModel.from_vocabulary(vocab, inputCol="terms", outputCol="tf")
    idf = IDF(inputCol="tf", outputCol="tfidf", minDocFreq=0)
    normalizer = Normalizer(inputCol="tfidf", outputCol="features", p=2.0)
    model: PipelineModel = Pipeline(stages=[tokenizer, remover, counter, idf, normalizer]).fit(
        _text(items))
    model.write().overwrite().save(str(out_dir))

    categories = sorted(r[0] for r in items.select(F.explode("categories")).distinct().collect())
    spec = {
        "tokenizer": {"java_gaps_pattern": JAVA_TOKEN_GAPS, "lowercase": True,
                      "min_token_length": cfg.min_token_length},
        "fields": list(TEXT_FIELDS),
        "stop_words": stop_words,
        "vocabulary": vocab,
        "idf": [float(x) for x in model.stages[3].idf.toArray()],
        "normalize": "l2",
        "categories": categories,
    }
    fs.write_text(items.sparkSession, vectorizer_path, json.dumps(spec))

    cat_index = F.create_map(*[x for i, c in enumerate(categories) for x in (F.lit(c), F.lit(i))])
    vectors = model.transform(_text(items)).select(
        "item_idx", "features",
        F.array_sort(F.transform("categories", lambda c: cat_index[c])).alias("category_indices"))
    return vectors


def write_features(vectors: DataFrame, path: AnyPath) -> None:
    """Store each item's sparse vector as plain arrays (text_indices, text_values).

    A Spark ML vector is stored in Parquet as struct<type,size,indices,values>; reading the
    file back with that struct schema exposes the arrays without a Python UDF.
    """
    spark = vectors.sparkSession
    tmp = path.with_name(path.name + ".vectors")
    vectors.orderBy("item_idx").coalesce(1).write.mode("overwrite").parquet(str(tmp))
    schema = StructType([
        StructField("item_idx", IntegerType()),
        StructField("features", StructType([
            StructField("type", ByteType()), StructField("size", IntegerType()),
            StructField("indices", ArrayType(IntegerType())),
            StructField("values", ArrayType(DoubleType()))])),
        StructField("category_indices", ArrayType(IntegerType()))])
    plain = spark.read.schema(schema).parquet(str(tmp)).select(
        "item_idx", F.coalesce("features.indices", F.array().cast("array<int>")).alias("text_indices"),
        F.coalesce("features.values", F.array().cast("array<double>")).cast("array<float>").alias("text_values"),
        "category_indices")
    plain.coalesce(1).write.mode("overwrite").parquet(str(path))
    fs.remove(spark, tmp)
