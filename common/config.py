"""Every tunable of the pipeline in one typed place.

Each stage's CLI exposes the fields of its dataclass as ``--flag-name`` options (see
:func:`add_dataclass_args`), so defaults live here and nowhere else.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


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


def _field_type(cls: type, f: dataclasses.Field) -> type:
    hints = typing.get_type_hints(cls)
    return hints[f.name]


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Expose each field of ``cls`` as ``--<prefix><field-name>`` with its default and type."""
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        typ = _field_type(cls, f)
        flag = "--" + prefix + f.name.replace("_", "-")
        if typ is bool:
            group.add_argument(flag, dest=prefix.replace("-", "_") + f.name,
                               action=argparse.BooleanOptionalAction, default=f.default)
        else:
            group.add_argument(flag, dest=prefix.replace("-", "_") + f.name, type=typ,
                               default=f.default, help=f"(default: {f.default})")


def from_args(cls: type[T], args: argparse.Namespace, prefix: str = "") -> T:
    """Build ``cls`` from the options :func:`add_dataclass_args` added."""
    values = {f.name: getattr(args, prefix.replace("-", "_") + f.name) for f in dataclasses.fields(cls)}
    return cls(**values)


def to_dict(obj: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(obj)))


__all__ = ["SparkConfig", "GenerateConfig", "PrepareConfig", "EmrConfig", "parse_weights",
           "add_dataclass_args", "from_args", "to_dict", "field"]


@dataclass(frozen=True)
class TrainConfig:
    """The hybrid model (training/model.py) and how it is trained (training/train.py).

    Defaults are the configuration chosen on the P1 *validation* split of ml-latest-small
    (3-seed mean validation NDCG@10, ``python -m training.experiments --no-test``; the search
    is logged in docs/quality.md); the test split is only read for reporting.
    """

    loss: str = "softmax"
    """``softmax`` (full, over the items seen in training), ``sampled_softmax`` (in-batch
    negatives with logQ correction) or ``bpr`` (one uniform negative per positive)."""
    objective: str = "future"
    """``denoise``: predict the (dropped-out) history itself (Mult-DAE); ``future``: predict the
    user's later training items from a random time-ordered prefix, as P1 tests."""
    future_min_frac: float = 0.5
    """``future``: the prefix keeps at least this share of the user's items."""
    future_mix: float = 0.85
    """``future``: share of users per batch that get a prefix/future target (rest: denoise)."""
    recency_boost: float = 50.0
    """History input weight 1 + boost * exp(-(items after this one) / tau): recent items count
    more (0 = plain binary bag, as Mult-DAE)."""
    recency_tau: float = 7.0
    truncate: float = 0.8
    """softmax: probability that a training row sees its user's history only up to a random
    length in [0.3 n, n] (the same user earlier in time: more distinct inputs and targets)."""
    crop: float = 0.5
    """softmax: probability that a training row then loses a random share (< half) of its
    oldest items (a shorter history, as many users have)."""
    target_norm: float = 0.5
    """softmax: a row's target log-likelihoods are divided by (their total weight)^this:
    0 = plain sum (Mult-DAE; users with many targets dominate), 1 = mean (every user counts
    the same)."""
    target_recency: float = 0.0
    """softmax: weight each target item 1 + this * exp(-(items after it) / tau)."""
    dim: int = 600
    """User/item vector size (the last encoder layer)."""
    linear_dim: int = 0
    """How many of the ``dim`` user-vector units skip the tanh (a linear item-item path)."""
    hidden: str = ""
    """Comma-separated hidden layer sizes of the history encoder before ``dim`` ('' = none)."""
    dropout: float = 0.3
    """Dropout on the (L2-normalised) history bag."""
    user_ids: bool = False
    """Add a user id embedding to the history encoding (then users are no longer served from
    the history alone)."""
    item_ids: bool = True
    content: bool = True
    category_weight: float = 1.0
    id_dropout: float = 0.6
    """Probability of zeroing an item's id part in a training step (content must stand alone)."""
    lr: float = 2e-3
    weight_decay: float = 0.0
    ema: float = 0.99
    """Per-step decay of an exponential moving average of the weights, which is what is
    validated and returned (0 = off)."""
    batch_size: int = 128
    """Users per step (softmax) or positive pairs per step / 8 (sampled_softmax, bpr)."""
    temperature: float = 1.0
    """sampled_softmax: logits are divided by this."""
    logq: bool = True
    """sampled_softmax: subtract log(item frequency) from in-batch logits."""
    max_epochs: int = 150
    eval_every: int = 2
    patience: int = 8
    """Evaluations without a better validation NDCG@10 before stopping."""
    refit_full: bool = True
    """After early stopping, refit on train + valid for the best number of epochs."""
    seed: int = 42
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    num_threads: int = 0
    """torch intra-op CPU threads while training (0 = leave torch's setting). On a shared
    machine 1 avoids the large slowdowns of threads contending for busy cores."""
    progress: bool = True


__all__ += ["TrainConfig"]


@dataclass(frozen=True)
class ServingBenchConfig:
    """The serving benchmark (benchmarks/serving_bench.py): catalogs, variants, load, knobs.

    Rates are offered open-loop (common/loadgen.py); each (variant, rate) run sends
    ``warmup`` unmeasured then ``requests`` measured requests. The headline catalog uses
    d = 256, the dimension our model shipped with when serving.json was measured (today's
    TrainConfig.dim is 600: benchmarks/tower_bench.py compares the two); the 10M x 1M scale run uses
    d = 64 so that its 10M-user table (2.6 GB instead of 10 GB) fits this machine's disk and time.
    """

    catalog_items: int = 100_000
    catalog_users: int = 200_000
    dim: int = 256
    variants: str = "fp32,int8,onnx_int8,sq8,faiss_sq8,hnsw,ivf"
    rates: str = "100,200,300,400"              # requests/s offered to every variant
    requests: int = 1500
    warmup: int = 150
    batch_size: int = 8
    max_batch_delay_ms: int = 2
    workers: int = 2
    threads: int = 1
    # knobs, measured on the baseline and the best variant
    knob_batch_sizes: str = "1,8,32"
    knob_batch_delays_ms: str = "1,2,5"          # maxBatchDelay at the default batch size
    knob_workers_threads: str = "2x1,1x2"
    knob_rates: str = "100,200,300,400,500"
    p99_budget_ms: float = 100.0
    # scale: 0 users skips it
    scale_items: int = 1_000_000
    scale_users: int = 10_000_000
    scale_dim: int = 64
    scale_variants: str = "sq8,ivf,hnsw"
    scale_rates: str = "20"
    scale_requests: int = 1000
    seed: int = 0


__all__ += ["ServingBenchConfig"]
