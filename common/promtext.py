"""Reading the Prometheus text exposition format that our servers export (gateway, TorchServe,
drift exporter): one parser for the tests, the benchmarks and the fault suite.

Handles what these exporters write: ``name value`` and ``name{label="v",...} value`` lines,
comments (``# HELP`` / ``# TYPE``) skipped, escaped quotes in label values.
"""
from __future__ import annotations

import re
from typing import Iterator, NamedTuple

_LINE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(?P<key>[A-Za-z_][A-Za-z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


def samples(text: str) -> Iterator[Sample]:
    """Every sample line of ``text``, in order."""
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:  # comments and blank lines
            continue
        labels = {x["key"]: x["value"].replace('\\"', '"').replace("\\\\", "\\")
                  for x in _LABEL.finditer(m["labels"] or "")}
        yield Sample(m["name"], labels, float(m["value"]))


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0.0 when none)."""
    return sum(s.value for s in samples(text) if s.name == name
               and all(s.labels.get(k) == str(v) for k, v in labels.items()))


def buckets(text: str, name: str, **labels: str) -> list[tuple[float, float]]:
    """Histogram ``name``'s cumulative buckets ``[(le, count), ...]`` in ``le`` order (``+Inf``
    last), summed over the series whose labels include ``labels``."""
    total: dict[float, float] = {}
    for s in samples(text):
        if s.name == f"{name}_bucket" and all(s.labels.get(k) == str(v)
                                                for k, v in labels.items()):
            le = float(s.labels["le"])
            total[le] = total.get(le, 0.0) + s.value
    return sorted(total.items())


def bucket_delta(after: list[tuple[float, float]],
                 before: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The buckets of what was observed between two scrapes (one round of a benchmark)."""
    prior = dict(before)
    return [(le, n - prior.get(le, 0.0)) for le, n in after]


def quantile(cumulative: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' ``histogram_quantile``: linear interpolation inside the bucket that holds the
    rank (the lowest bucket from 0); the highest finite bound when the rank falls in ``+Inf``;
    None without observations. Its resolution is the bucket layout's."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower_le, lower_n = 0.0, 0.0
    for le, n in cumulative:
        if n >= rank:
            if le == float("inf"):
                return lower_le
            if n == lower_n:
                return le
            return lower_le + (le - lower_le) * (rank - lower_n) / (n - lower_n)
        lower_le, lower_n = le, n
    return lower_le


__all__ = ["Sample", "samples", "metric_value", "buckets", "bucket_delta", "quantile"]
