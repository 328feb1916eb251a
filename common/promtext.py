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


__all__ = ["Sample", "samples", "metric_value"]
