"""Fault injection for test archives: the one mechanism the fault suite and the retraining
loop's online-bad scenario use to make a model version fail or slow down.

Off and inert unless the archive was built with ``python -m archives build ... --faults JSON``,
which writes the settings under ``handler.faults`` in the archive's model-config.yaml. A
handler without that key never looks at a request for faults (no header is read). Keys:

* ``latency_ms`` (number >= 0): sleep added to every batch, before scoring;
* ``error_user_prefix`` (non-empty string): a request whose canonical ``user_id`` starts with it
  makes the engine step raise ``RuntimeError`` (so the batch's isolation is exercised through
  the real code path: the batch fails, the handler finds the request, it alone gets a 500);
* ``error_rate`` (0..1): each request fails that way with this probability, drawn once per
  request from a ``random.Random(seed)`` of the worker;
* ``seed`` (integer, default 0): that generator's seed;
* ``allow_header`` (bool, default false): honour the request header ``X-Recsys-Fault``:
  ``error`` (this request fails), ``latency=<ms>`` (its batch sleeps that much more), or both,
  comma-separated.

Standard library only: the archive builder validates the settings with :func:`parse_faults`.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

HEADER = "X-Recsys-Fault"
KEYS = ("latency_ms", "error_user_prefix", "error_rate", "seed", "allow_header")
MAX_LATENCY_MS = 600_000.0


class InjectedFault(RuntimeError):
    """The exception an injected error raises inside the engine step."""


@dataclass(frozen=True)
class Faults:
    latency_ms: float = 0.0
    error_user_prefix: str | None = None
    error_rate: float = 0.0
    seed: int = 0
    allow_header: bool = False
    _rng: random.Random = field(default=None, init=False, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_rng", random.Random(self.seed))

    def to_dict(self) -> dict[str, Any]:
        """The settings as written into model-config.yaml (defaults left out)."""
        return {k: getattr(self, k) for k in KEYS if getattr(self, k) != getattr(Faults, k)}

    def doomed(self, user_id: str | None, header: str | None) -> bool:
        """Whether this request's engine step must fail (decided once per request)."""
        if self.allow_header and header and "error" in _header_parts(header):
            return True
        if self.error_user_prefix and user_id is not None and user_id.startswith(self.error_user_prefix):
            return True
        return self.error_rate > 0 and self._rng.random() < self.error_rate

    def extra_latency_s(self, header: str | None) -> float:
        """Sleep a request asks for through the header (0 unless ``allow_header``)."""
        if not (self.allow_header and header):
            return 0.0
        for part in _header_parts(header):
            if part.startswith("latency="):
                try:
                    ms = float(part.split("=", 1)[1])
                except ValueError:
                    continue
                if math.isfinite(ms) and ms > 0:
                    return min(ms, MAX_LATENCY_MS) / 1e3
        return 0.0

    def plan(self, user_ids: Mapping[int, str | None], header: Callable[[int], str | None]
             ) -> tuple[set[int], float]:
        """(requests whose engine step fails, seconds to sleep before scoring) for a batch."""
        doomed, sleep = set(), self.latency_ms / 1e3
        for idx, uid in user_ids.items():
            h = header(idx) if self.allow_header else None
            if self.doomed(uid, h):
                doomed.add(idx)
            sleep = max(sleep, self.latency_ms / 1e3 + self.extra_latency_s(h))
        return doomed, sleep


def _header_parts(value: str) -> list[str]:
    return [p.strip().lower() for p in value.split(",") if p.strip()]


def parse_faults(value: Mapping[str, Any] | str | None) -> Faults | None:
    """Validated settings (``None``: no faults), from a mapping or its JSON text; a clear
    ``ValueError`` for anything else, so a typo fails the build instead of injecting nothing."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise ValueError(f"faults must be a JSON object like "
                             f'{{"error_user_prefix": "fault-", "latency_ms": 50}}: {e}') from None
    if not isinstance(value, Mapping):
        raise ValueError(f"faults must be a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown fault setting(s) {unknown}; allowed: {', '.join(KEYS)}")
    if not value:
        raise ValueError("faults is empty: leave it out for an archive without faults")

    def number(key: str, lo: float, hi: float) -> float:
        v = value.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or not lo <= v <= hi:
            raise ValueError(f"faults.{key} must be a number from {lo:g} to {hi:g}, got {v!r}")
        return float(v)

    prefix = value.get("error_user_prefix")
    if prefix is not None and (not isinstance(prefix, str) or not prefix):
        raise ValueError(f"faults.error_user_prefix must be a non-empty string, got {prefix!r}")
    seed = value.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"faults.seed must be an integer, got {seed!r}")
    allow = value.get("allow_header", False)
    if not isinstance(allow, bool):
        raise ValueError(f"faults.allow_header must be true or false, got {allow!r}")
    return Faults(latency_ms=number("latency_ms", 0, MAX_LATENCY_MS), error_user_prefix=prefix,
                  error_rate=number("error_rate", 0, 1), seed=seed, allow_header=allow)


__all__ = ["Faults", "InjectedFault", "parse_faults", "HEADER", "KEYS"]
