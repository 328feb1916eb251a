"""Every tunable of the ETL stage in one typed place: Spark, the synthetic generator, prepare,
EMR submission.

``python -m etl`` exposes each field as a ``--flag-name`` option
(:func:`common.dataclass_args.add_dataclass_args`), so defaults live here and nowhere else.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SparkConfig:
    """How the local (or cluster) SparkSession is built."""

    master: str = "local[2]"
    app_name: str = "recsys-etl"
    shuffle_partitions: int = 8
    driver_memory: str = "4g"
    log_level: str = "WARN"


@dataclass(frozen=True)
class GenerateConfig:
    """Synthetic interaction logs with real content signal (see etl/generate.py)."""

    users: int = 2_000
    items: int = 1_000
    events: int = 100_000
    clusters: int = 12
    zipf_exponent: float = 1.05
    cluster_affinity: float = 0.8
    """Probability that an event goes to an item of the user's own taste cluster."""
    start_date: str = "2024-01-01"
    days: int = 90
    drift: float = 0.5
    """How strongly each cluster's share of traffic moves over the date range (0 = none)."""
    event_weights: str = "view:0.70,click:0.20,add_to_cart:0.07,purchase:0.03"
    """Relative frequency of each event type, ``type:weight`` comma separated."""
    partitions: int = 8
    seed: int = 42


@dataclass(frozen=True)
class PrepareConfig:
    """Raw events -> validated, weighted, indexed, split training data."""

    event_weights: str = "view:1,click:2,add_to_cart:4,purchase:8,rating:1"
    """Implicit-feedback weight of each event type; unknown types are quarantined."""
    rating_min: float = 0.5
    rating_max: float = 5.0
    rating_threshold: float = 4.0
    """Explicit ratings below this are not interactions (filtered, not quarantined)."""
    min_user_positives: int = 5
    test_fraction: float = 0.2
    valid_fraction: float = 0.1
    """Share of each user's *training* positives (the latest ones) held out for early stopping."""
    random_ratios: str = "0.8,0.1,0.1"
    seed: int = 42
    min_timestamp: str = "1990-01-01"
    max_future_days: int = 2
    """Events later than run time + this many days are quarantined as bad timestamps."""
    vocab_size: int = 20_000
    min_doc_freq: int = 2
    min_token_length: int = 2


@dataclass(frozen=True)
class EmrConfig:
    """Where and how the prepare job is submitted to EMR."""

    bucket: str = ""
    prefix: str = "recsys"
    region: str = "us-east-1"
    cluster_id: str = ""
    release_label: str = ""
    """A transient cluster's EMR release: one whose Spark is 4.x (the prepare job uses Spark 4
    APIs; emr-7.x ships Spark 3.5, docs/emr.md). No default: the choice is checked by a person."""
    instance_type: str = "m6i.4xlarge"
    core_instances: int = 4
    log_uri: str = ""


def parse_weights(spec: str) -> dict[str, float]:
    """``"view:1,click:2"`` -> ``{"view": 1.0, "click": 2.0}`` with a clear error on bad input."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"bad weight entry {part!r}: expected name:number")
        weights[name.strip()] = float(value)
    if not weights:
        raise ValueError(f"no weights in {spec!r}")
    return weights


__all__ = ["SparkConfig", "GenerateConfig", "PrepareConfig", "EmrConfig", "parse_weights"]
