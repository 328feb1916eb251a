"""Synthetic interaction logs and an item catalog whose content carries real signal.

Everything is a Spark job over ``spark.range`` built from Spark SQL expressions only (no
Python UDF, nothing per event or per user on the driver, no join or shuffle), so the same code
writes 100k events on a laptop or billions on a cluster. Randomness is hash based --
``xxhash64(seed, id, salt)`` mapped to [0, 1) -- so the output depends only on the config,
never on partitioning.

The model behind the data:

* ``clusters`` latent taste clusters. Internal user ``u`` belongs to cluster ``u % K`` and
  internal item ``r`` to cluster ``r % K``; the ids written out are an affine permutation of
  the internal ones, so neither clusters nor popularity can be read off an id.
* Items have Zipf-like popularity (``zipf_exponent``): internal item ``r`` has global rank
  ``r``, and ``r // K`` is its rank inside its cluster, so the global and the per-cluster
  orders agree. Ranks are drawn with the closed-form inverse CDF of a continuous power law
  on ``[0.5, n + 0.5)`` (a close approximation of the discrete Zipf law, O(1) per event).
* Event ``i`` happens at ``(i + jitter) / events`` of the date range, so every Spark
  partition covers a contiguous slice of time (few output files per partition). The acting
  user's cluster is drawn from shares that move linearly over the range (``drift``: each
  cluster has a slope in [-1, 1]); the user inside the cluster is drawn with a mild power law
  (some users are much more active than others).
* With probability ``cluster_affinity`` the item comes from the user's cluster
  (popularity-weighted within it), else from the global popularity draw.
* Each cluster has its own topic words and categories; titles, descriptions, tags and
  categories mix them with shared filler words (and a little cross-cluster noise), so
  content predicts what a user likes -- the signal cold-start needs.
"""
from __future__ import annotations

import logging
import math
import random
import re
import time
from datetime import date, datetime, timezone
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from etl.config import GenerateConfig, parse_weights
from common.schema import IMPLICIT_EVENT_TYPES, LIST_SEPARATOR, EtlLayout

log = logging.getLogger("etl.generate")

SECONDS_PER_DAY = 86_400
USER_ACTIVITY_SKEW = 2.0
"""User ``j`` of a cluster of ``n`` is drawn as ``floor(n * v**skew)``: a power law with
exponent ``1 - 1/skew`` (0.5), i.e. a few heavy users and a long tail of light ones."""
TOPIC_WORDS_PER_CLUSTER = 24
CATEGORIES_PER_CLUSTER = 3
CATALOG_MAX_AGE_DAYS = 730
"""Items are created up to this many days before ``start_date`` (never after an event)."""
TOPIC_WORD_SHARE = 0.40
"""Share of description words taken from the item's own cluster's topic words."""
NOISE_WORD_SHARE = 0.05
"""Share of description words taken from a random cluster's topic words."""
EXTRA_CATEGORY_PROB = 0.08
"""Probability that an item also carries one category of a random cluster."""

FILLER_WORDS = (
    "the new classic complete edition collection guide story best essential ultimate special "
    "original modern little great first last world life day night home series volume deluxe "
    "simple tales book journey secret return art light good true vintage perfect premium "
    "everyday select signature bright wild quiet golden hidden open free daily fresh prime "
    "grand united street house city river garden north south"
).split()

# Salts keep the hash streams independent of each other.
_S_TIME, _S_CLUSTER, _S_USER, _S_AFFINITY, _S_ITEM, _S_TYPE = range(1, 7)
_S_TITLE, _S_DESC_LEN, _S_DESC_KIND, _S_DESC_WORD, _S_DESC_NOISE = range(11, 16)
_S_TAGS_LEN, _S_TAG, _S_CAT1, _S_CAT2, _S_CAT2_P, _S_CAT3, _S_CAT3_P, _S_AGE = range(21, 29)

_MAX_PERMUTED = 3_000_000_000  # (id * mult) must fit in a signed 64-bit long


# ----------------------------------------------------------------------------------------------
# Driver-side helpers (O(clusters) or O(vocabulary) work only)
# ----------------------------------------------------------------------------------------------
#
# Expressions are Spark SQL text: one py4j round trip per stage instead of thousands of Column
# calls, and the same plan either way (codegen, no Python on the executors).

def _d(x: float) -> str:
    """A double literal (plain ``0.5`` would be a DECIMAL in Spark SQL)."""
    return f"({float(x)!r}D)"


def _l(x: int) -> str:
    return f"({int(x)}L)"


def _u01(seed: int, key: str, salt: int, *more: str) -> str:
    """A uniform double in [0, 1) from ``xxhash64(seed, key, salt, *more)`` (top 53 bits)."""
    args = ", ".join((_l(seed), key, str(salt), *more))
    return f"(CAST(shiftrightunsigned(xxhash64({args}), 11) AS DOUBLE) / {_d(1 << 53)})"


def _str_array(words: list[str]) -> str:
    """A literal array of words (no spaces or quotes in them); the optimizer folds it once."""
    assert all(re.fullmatch(r"[A-Za-z]+", w) for w in words)
    return f"split('{' '.join(words)}', ' ')"


def _pick(array_sql: str, index0: str) -> str:
    """``array[index0]`` with a 0-based BIGINT index."""
    return f"element_at({array_sql}, CAST({index0} AS INT) + 1)"


def _scaled(u: str, n: int | str) -> str:
    """``floor(u * n)`` as a BIGINT in [0, n)."""
    return f"CAST(floor({u} * CAST({n} AS DOUBLE)) AS BIGINT)"


def _permutation(n: int, seed: int, salt: str) -> tuple[int, int, int]:
    """``(mult, offset, inverse)`` so that ``(x * mult + offset) % n`` is a bijection on [0, n)."""
    if n > _MAX_PERMUTED:
        raise ValueError(f"at most {_MAX_PERMUTED:,} users/items are supported, got {n:,}")
    if n == 1:
        return 1, 0, 1
    rng = random.Random(f"{seed}:{salt}")
    mult = max(1, int(n * (0.5 + 0.3 * rng.random())))
    while math.gcd(mult, n) != 1:
        mult += 1
    mult %= n
    if mult == 0 or math.gcd(mult, n) != 1:
        mult = 1
    return mult, rng.randrange(n), pow(mult, -1, n)


def _permute(x: str, n: int, perm: tuple[int, int, int]) -> str:
    mult, offset, _ = perm
    return f"pmod({x} * {_l(mult)} + {_l(offset)}, {_l(n)})"


def _unpermute(x: str, n: int, perm: tuple[int, int, int]) -> str:
    _, offset, inverse = perm
    return f"pmod(pmod({x} - {_l(offset)}, {_l(n)}) * {_l(inverse)}, {_l(n)})"


def _pseudo_words(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    """``count`` new pronounceable lowercase words (3+ letters) not in ``taken``."""
    consonants, vowels, finals = "bdfgklmnprstvz", "aeiou", "lnrsx"
    words: list[str] = []
    while len(words) < count:
        syllables = rng.choice((2, 2, 3))
        word = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables))
        if rng.random() < 0.3:
            word += rng.choice(finals)
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def effective_clusters(cfg: GenerateConfig) -> int:
    """``cfg.clusters`` capped so that every cluster has at least one user and one item."""
    return max(1, min(cfg.clusters, cfg.users, cfg.items))


def cluster_vocabulary(cfg: GenerateConfig) -> dict[str, list]:
    """The words and categories of each cluster (deterministic in ``cfg.seed``).

    Returns ``{"topic_words": [[...] per cluster], "categories": [[...] per cluster],
    "filler": [...]}``; useful to inspect the data or to measure its content signal.
    """
    k = effective_clusters(cfg)
    rng = random.Random(f"{cfg.seed}:vocabulary")
    taken = set(FILLER_WORDS)
    topic = [_pseudo_words(rng, TOPIC_WORDS_PER_CLUSTER, taken) for _ in range(k)]
    cats = [[w.capitalize() for w in _pseudo_words(rng, CATEGORIES_PER_CLUSTER, taken)]
            for _ in range(k)]
    return {"topic_words": topic, "categories": cats, "filler": list(FILLER_WORDS)}


def _cluster_weights(cfg: GenerateConfig, k: int) -> tuple[list[float], list[float]]:
    """Per-cluster traffic share ``base_c * (1 + a_c * (2t - 1))`` as ``A_c + B_c * t``."""
    rng = random.Random(f"{cfg.seed}:clusters")
    drift = min(max(cfg.drift, 0.0), 1.0)
    slopes = [0.0] if k == 1 else [-1.0 + 2.0 * c / (k - 1) for c in range(k)]
    rng.shuffle(slopes)
    a_coef, b_coef = [], []
    for c in range(k):
        users_in_c = (cfg.users - 1 - c) // k + 1
        base = users_in_c * (0.5 + rng.random())  # some clusters are more engaged than others
        a = drift * slopes[c]
        a_coef.append(base * (1.0 - a))
        b_coef.append(base * 2.0 * a)
    return a_coef, b_coef


def _event_type_weights(cfg: GenerateConfig) -> list[tuple[str, float]]:
    weights = parse_weights(cfg.event_weights)
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"event weights must be >= 0 with a positive sum: {cfg.event_weights!r}")
    unknown = sorted(set(weights) - set(IMPLICIT_EVENT_TYPES))
    if unknown:
        log.warning("generating event types %s that are not in %s", unknown, IMPLICIT_EVENT_TYPES)
    bad = [n for n in weights if not re.fullmatch(r"[A-Za-z0-9_.:\-]+", n)]
    if bad:
        raise ValueError(f"bad event type name(s) {bad}: use letters, digits and _.:-")
    total = sum(weights.values())
    return [(name, w / total) for name, w in weights.items() if w > 0]


def _validate(cfg: GenerateConfig) -> None:
    problems = []
    if cfg.users < 1 or cfg.items < 1:
        problems.append("users and items must be >= 1")
    if cfg.events < 1:
        problems.append("events must be >= 1")
    if cfg.clusters < 1:
        problems.append("clusters must be >= 1")
    if cfg.days < 1:
        problems.append("days must be >= 1")
    if cfg.partitions < 1:
        problems.append("partitions must be >= 1")
    if cfg.zipf_exponent < 0:
        problems.append("zipf_exponent must be >= 0")
    if not 0.0 <= cfg.cluster_affinity <= 1.0:
        problems.append("cluster_affinity must be in [0, 1]")
    if not 0.0 <= cfg.drift <= 1.0:
        problems.append("drift must be in [0, 1]")
    if problems:
        raise ValueError("bad GenerateConfig: " + "; ".join(problems))
    date.fromisoformat(cfg.start_date)
    _event_type_weights(cfg)


# ----------------------------------------------------------------------------------------------
# Expressions
# ----------------------------------------------------------------------------------------------

def _zipf_rank(u: str, n: int | str, exponent: float) -> str:
    """Rank in [0, n) with P(rank) ~ (rank + 1) ** -exponent, by inverse CDF (closed form).

    Continuous power law on [0.5, n + 0.5): the mass of [k - 0.5, k + 0.5) approximates k**-s.
    """
    hi = f"(CAST({n} AS DOUBLE) + 0.5D)"
    e = 1.0 - exponent
    if abs(e) < 1e-9:
        x = f"(0.5D * pow({hi} / 0.5D, {u}))"
    else:
        lo_e = _d(0.5 ** e)
        x = f"pow({lo_e} + {u} * (pow({hi}, {_d(e)}) - {lo_e}), {_d(1.0 / e)})"
    rank = f"(CAST(floor({x} + 0.5D) AS BIGINT) - 1L)"
    return f"least(greatest({rank}, 0L), CAST({n} AS BIGINT) - 1L)"


def _pick_cluster(x: str, t: str, a_cum: list[float], b_cum: list[float], lo: int, hi: int) -> str:
    """Smallest c with ``x < A_c + B_c * t`` (a balanced tree of comparisons, O(log K))."""
    if lo == hi:
        return _l(lo)
    mid = (lo + hi) // 2
    return (f"CASE WHEN {x} < {_d(a_cum[mid])} + {_d(b_cum[mid])} * {t} "
            f"THEN {_pick_cluster(x, t, a_cum, b_cum, lo, mid)} "
            f"ELSE {_pick_cluster(x, t, a_cum, b_cum, mid + 1, hi)} END")


def _members(total: int, k: int, c: str) -> str:
    """How many of ``0..total-1`` are congruent to ``c`` (< total) modulo ``k``."""
    return f"(({_l(total - 1)} - {c}) div {_l(k)} + 1L)"


def _events_frame(spark: SparkSession, cfg: GenerateConfig, k: int,
                  user_perm: tuple[int, int, int], item_perm: tuple[int, int, int]) -> DataFrame:
    seed = cfg.seed
    a_coef, b_coef = _cluster_weights(cfg, k)
    a_cum = [sum(a_coef[: c + 1]) for c in range(k)]
    b_cum = [sum(b_coef[: c + 1]) for c in range(k)]
    span = cfg.days * SECONDS_PER_DAY
    start = date.fromisoformat(cfg.start_date)
    start_epoch = int(datetime(start.year, start.month, start.day, tzinfo=timezone.utc).timestamp())

    ev = spark.range(0, cfg.events, 1, numPartitions=cfg.partitions)
    # Event i happens at (i + jitter) / events of the range: partitions are slices of time.
    t = f"(CAST(id AS DOUBLE) + {_u01(seed, 'id', _S_TIME)}) / {_d(cfg.events)}"
    ev = ev.selectExpr("id", f"least({t}, {_d(1.0 - 1e-12)}) AS t")

    # The acting user's cluster, from shares that drift linearly with t.
    x = f"({_u01(seed, 'id', _S_CLUSTER)} * ({_d(a_cum[-1])} + {_d(b_cum[-1])} * t))"
    ev = ev.selectExpr("id", "t", f"{_pick_cluster(x, 't', a_cum, b_cum, 0, k - 1)} AS c")

    # A user of that cluster: a few heavy users, a long tail of light ones.
    n_users = _members(cfg.users, k, "c")
    j = _scaled(f"pow({_u01(seed, 'id', _S_USER)}, {_d(USER_ACTIVITY_SKEW)})", n_users)
    user = f"(c + {_l(k)} * least({j}, {n_users} - 1L))"

    # The item: within the user's cluster (affinity) or from the global popularity law.
    u_item = _u01(seed, "id", _S_ITEM)
    in_rank = _zipf_rank(u_item, _members(cfg.items, k, "c"), cfg.zipf_exponent)
    in_cluster = f"(c + {_l(k)} * {in_rank})"
    anywhere = _zipf_rank(u_item, _l(cfg.items), cfg.zipf_exponent)
    item = (f"CASE WHEN {_u01(seed, 'id', _S_AFFINITY)} < {_d(cfg.cluster_affinity)} "
            f"THEN {in_cluster} ELSE {anywhere} END")

    # Event type by inverse CDF over the configured weights.
    types = _event_type_weights(cfg)
    u_type = _u01(seed, "id", _S_TYPE)
    cases, cum = [], 0.0
    for name, w in types[:-1]:
        cum += w
        cases.append(f"WHEN {u_type} < {_d(cum)} THEN '{name}'")
    last = f"'{types[-1][0]}'"
    event_type = f"CASE {' '.join(cases)} ELSE {last} END" if cases else last

    seconds = f"CAST(floor(t * {_d(span)}) AS BIGINT)"
    return ev.selectExpr(
        f"CAST({_permute(user, cfg.users, user_perm)} AS STRING) AS user_id",
        f"CAST({_permute(item, cfg.items, item_perm)} AS STRING) AS item_id",
        f"{event_type} AS event_type",
        "CAST(NULL AS STRING) AS rating",
        f"CAST({_l(start_epoch)} + {seconds} AS STRING) AS timestamp",
        f"CAST(date_add(DATE'{start.isoformat()}', "
        f"CAST({seconds} div {_l(SECONDS_PER_DAY)} AS INT)) AS STRING) AS date",
    )


def _catalog_frame(spark: SparkSession, cfg: GenerateConfig, k: int,
                   item_perm: tuple[int, int, int]) -> DataFrame:
    seed = cfg.seed
    vocab = cluster_vocabulary(cfg)
    topic = _str_array([w for words in vocab["topic_words"] for w in words])
    cats = _str_array([w for cs in vocab["categories"] for w in cs])
    filler = _str_array(vocab["filler"])
    nw, nc, nf = TOPIC_WORDS_PER_CLUSTER, CATEGORIES_PER_CLUSTER, len(vocab["filler"])

    def u(salt: int, *more: str) -> str:
        return _u01(seed, "r", salt, *more)

    def topic_word(cluster: str, h: str) -> str:
        return _pick(topic, f"{cluster} * {_l(nw)} + {_scaled(h, nw)}")

    def category(cluster: str, h: str) -> str:
        return _pick(cats, f"{cluster} * {_l(nc)} + {_scaled(h, nc)}")

    parts = max(1, min(cfg.partitions, cfg.items // 100_000 + 1))
    items = spark.range(0, cfg.items, 1, numPartitions=parts)
    # Rows in item_id order; r is the internal id (= global popularity rank), c its cluster.
    items = items.selectExpr("id AS item_id", f"{_unpermute('id', cfg.items, item_perm)} AS r")
    items = items.selectExpr("item_id", "r", f"pmod(r, {_l(k)}) AS c")

    # Two different topic words of the item's cluster, optionally after a filler word.
    first = _scaled(u(_S_TITLE, "2"), nw)
    second = f"pmod({first} + 1L + {_scaled(u(_S_TITLE, '3'), nw - 1)}, {_l(nw)})"
    lead = _pick(filler, _scaled(u(_S_TITLE, "1"), nf))
    title = (f"initcap(concat_ws(' ', CASE WHEN {u(_S_TITLE, '0')} < 0.5D THEN {lead} END, "
             f"{_pick(topic, f'c * {_l(nw)} + {first}')}, "
             f"{_pick(topic, f'c * {_l(nw)} + {second}')}))")

    # Own-cluster topic words, a little cross-cluster noise, shared filler words.
    n_words = f"(10 + CAST({_scaled(u(_S_DESC_LEN), 15)} AS INT))"
    kind, h = u(_S_DESC_KIND, "p"), u(_S_DESC_WORD, "p")
    word = (f"CASE WHEN {kind} < {_d(TOPIC_WORD_SHARE)} THEN {topic_word('c', h)} "
            f"WHEN {kind} < {_d(TOPIC_WORD_SHARE + NOISE_WORD_SHARE)} "
            f"THEN {topic_word(_scaled(u(_S_DESC_NOISE, 'p'), k), h)} "
            f"ELSE {_pick(filler, _scaled(h, nf))} END")
    description = (f"concat(array_join(transform(sequence(0, {n_words} - 1), p -> {word}), ' '), "
                   "'.')")

    n_tags = f"(2 + CAST({_scaled(u(_S_TAGS_LEN), 3)} AS INT))"
    tags = (f"array_join(array_distinct(transform(sequence(0, {n_tags} - 1), "
            f"p -> {topic_word('c', u(_S_TAG, 'p'))})), '{LIST_SEPARATOR}')")

    other = category(_scaled(u(_S_CAT3), k), u(_S_CAT3, "1"))
    categories = (f"array_join(array_distinct(array("
                  f"{category('c', u(_S_CAT1))}, "
                  f"CASE WHEN {u(_S_CAT2_P)} < 0.5D THEN {category('c', u(_S_CAT2))} END, "
                  f"CASE WHEN {u(_S_CAT3_P)} < {_d(EXTRA_CATEGORY_PROB)} THEN {other} END"
                  f")), '{LIST_SEPARATOR}')")

    age = f"(1 + CAST({_scaled(u(_S_AGE), CATALOG_MAX_AGE_DAYS)} AS INT))"
    start = date.fromisoformat(cfg.start_date).isoformat()
    created_at = f"CAST(date_sub(DATE'{start}', {age}) AS STRING)"

    return items.selectExpr(
        "CAST(item_id AS STRING) AS item_id",
        f"{title} AS title",
        f"{description} AS description",
        f"{categories} AS categories",
        f"{tags} AS tags",
        f"{created_at} AS created_at",
    )


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

def generate(spark: SparkSession, cfg: GenerateConfig, layout: EtlLayout) -> dict[str, Any]:
    """Write the synthetic catalog and event log under ``layout`` and return run stats.

    * ``layout.raw_catalog``: Parquet, one row per item ``0..items-1`` -- item_id, title,
      description, categories ('|'), tags ('|'), created_at ('YYYY-MM-DD'), all strings.
    * ``layout.raw_events``: Parquet partitioned by ``date`` ('YYYY-MM-DD') -- user_id,
      item_id, event_type, rating (always null), timestamp (epoch seconds), all strings.

    Same config, same rows (whatever the cluster or the number of partitions).
    """
    _validate(cfg)
    k = effective_clusters(cfg)
    if k != cfg.clusters:
        log.warning("clusters capped at %d (users=%d, items=%d)", k, cfg.users, cfg.items)
    user_perm = _permutation(cfg.users, cfg.seed, "users")
    item_perm = _permutation(cfg.items, cfg.seed, "items")
    log.info("generating %s events for %s users x %s items, %d clusters, %d days from %s "
             "(seed %d, %d partitions)", f"{cfg.events:,}", f"{cfg.users:,}", f"{cfg.items:,}",
             k, cfg.days, cfg.start_date, cfg.seed, cfg.partitions)

    started = time.perf_counter()
    _catalog_frame(spark, cfg, k, item_perm).write.mode("overwrite") \
        .parquet(str(layout.raw_catalog))
    catalog_s = time.perf_counter() - started
    log.info("catalog: %s items -> %s (%.1fs)", f"{cfg.items:,}", layout.raw_catalog, catalog_s)

    events_started = time.perf_counter()
    _events_frame(spark, cfg, k, user_perm, item_perm).write.mode("overwrite") \
        .partitionBy("date").parquet(str(layout.raw_events))
    events_s = time.perf_counter() - events_started
    total_s = time.perf_counter() - started
    log.info("events: %s -> %s (%.1fs, %s events/s)", f"{cfg.events:,}", layout.raw_events,
             events_s, f"{cfg.events / max(events_s, 1e-9):,.0f}")
    return {
        "events": cfg.events,
        "users": cfg.users,
        "items": cfg.items,
        "clusters": k,
        "days": cfg.days,
        "catalog_seconds": round(catalog_s, 3),
        "events_seconds": round(events_s, 3),
        "seconds": round(total_s, 3),
    }


__all__ = ["generate", "cluster_vocabulary", "effective_clusters"]
