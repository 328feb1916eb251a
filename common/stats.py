"""The one percentile function every latency figure goes through (load generator, benchmarks,
monitoring's load runs), so round trips and handler times are comparable."""
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


__all__ = ["PERCENTILE_METHOD", "percentiles"]
