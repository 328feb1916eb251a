"""The serving benchmark's tunables in one typed place (its CLI exposes each field as a
``--flag-name`` option)."""
from __future__ import annotations

from dataclasses import dataclass


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


__all__ = ["ServingBenchConfig"]
