"""The one percentile function every latency figure goes through (load generator, benchmarks,
monitoring's load runs), so round trips and handler times are comparable; and the paired
bootstrap interval over users that offline comparisons report (realtime/evaluate.py)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# Every percentile a benchmark reports (round trip, handler time, gateway) goes through
# percentiles() below: numpy's "higher" is always an observed value, never an interpolated one,
# and on the pessimistic side.
PERCENTILE_METHOD = "numpy.percentile(method='higher')"


def percentiles(values: Sequence[float], qs: Sequence[float]) -> list[float]:
    """The ``qs`` percentiles (0-100) of ``values`` by :data:`PERCENTILE_METHOD`; NaN when empty."""
    if len(values) == 0:
        return [math.nan] * len(qs)
    return [float(x) for x in np.percentile(np.asarray(values, dtype=float), list(qs), method="higher")]


__all__ = ["paired_bootstrap", "PERCENTILE_METHOD", "percentiles"]


def paired_bootstrap(differences: Sequence[float], resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> list[float]:
    """The percentile bootstrap interval of the mean of per-unit paired ``differences`` (one
    value per user: treatment minus control on the same user), resampling units with
    replacement. [lo, hi]; NaN for no units."""
    d = np.asarray(differences, dtype=float)
    if len(d) == 0:
        return [math.nan, math.nan]
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return [float(lo), float(hi)]

