"""Sticky experiment assignment: which variant serves a user, with no state to store.

One implementation, imported by the gateway (gateway/) and by the SageMaker client (its
``TargetVariant``), so a user lands on the same variant everywhere (``../shared/CONTRACTS.md``,
"Assignment"). Standard library only.

* ``bucket = int.from_bytes(sha256(f"{salt}:{canonical_user_id}").digest()[:8], "big") % 10000``
* Weights are per variant: integers summing to 10,000, or fractions summing to 1 (normalized
  to 10,000 buckets by largest remainder, ties to the earlier variant).
* Ranges: control owns the lowest buckets ``[0, w_control)``; the treatments follow in file
  order up to 9,999. Ramping the treatment next to control (taking buckets from control) moves
  only control's highest buckets into it: nobody already in it leaves. With several treatments,
  raising a later one shifts the ranges between: :func:`changed_buckets` counts the users'
  buckets that change owner, so the caller can log it.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

N_BUCKETS = 10_000


def bucket(salt: str, canonical_user_id: str) -> int:
    """The user's bucket in ``[0, 10000)`` (the id must already be canonical: core/ids.py)."""
    digest = hashlib.sha256(f"{salt}:{canonical_user_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % N_BUCKETS


def normalize_weights(weights: Sequence[float]) -> list[int]:
    """Weights -> integer bucket counts summing to 10,000.

    Integers summing to 10,000 are kept; otherwise the weights must be non-negative with a
    positive sum (fractions summing to 1, percentages, ...) and are scaled by largest remainder.
    """
    w = [float(x) for x in weights]
    if not w:
        raise ValueError("no weights")
    if any(not math.isfinite(x) or x < 0 for x in w):
        raise ValueError(f"weights must be finite and >= 0, got {list(weights)}")
    total = sum(w)
    if total <= 0:
        raise ValueError("weights must not all be zero")
    if all(x.is_integer() for x in w) and total == N_BUCKETS:
        return [int(x) for x in w]
    exact = [x * N_BUCKETS / total for x in w]
    counts = [math.floor(x) for x in exact]
    short = N_BUCKETS - sum(counts)
    order = sorted(range(len(w)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:short]:
        counts[i] += 1
    return counts


@dataclass(frozen=True)
class Split:
    """Variants and their bucket ranges: ``ranges[name] = (lo, hi)``, ``lo <= bucket < hi``."""

    control: str
    order: tuple[str, ...]            # control first, then the treatments in file order
    counts: Mapping[str, int]          # buckets per variant (sum 10,000)

    @classmethod
    def of(cls, variants: Iterable[tuple[str, float]], control: str) -> "Split":
        """From ``(name, weight)`` pairs in file order and the control's name."""
        pairs = list(variants)
        names = [n for n, _ in pairs]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        if control not in names:
            raise ValueError(f"control {control!r} is not one of the variants {names}")
        counts = dict(zip(names, normalize_weights([w for _, w in pairs])))
        order = (control, *[n for n in names if n != control])
        return cls(control, order, counts)

    @property
    def ranges(self) -> dict[str, tuple[int, int]]:
        out, lo = {}, 0
        for name in self.order:
            out[name] = (lo, lo + self.counts[name])
            lo += self.counts[name]
        return out

    def owner(self, b: int) -> str:
        """The variant owning bucket ``b``."""
        lo = 0
        for name in self.order:
            lo += self.counts[name]
            if b < lo:
                return name
        raise ValueError(f"bucket {b} outside [0, {N_BUCKETS})")

    def assign(self, salt: str, canonical_user_id: str) -> tuple[str, int]:
        """(variant, bucket) of a user."""
        b = bucket(salt, canonical_user_id)
        return self.owner(b), b

    def fractions(self) -> dict[str, float]:
        return {n: self.counts[n] / N_BUCKETS for n in self.order}


def changed_buckets(old: Split, new: Split) -> int:
    """How many of the 10,000 buckets change owner from ``old`` to ``new``."""
    owners_old = _owners(old)
    owners_new = _owners(new)
    return sum(a != b for a, b in zip(owners_old, owners_new))


def _owners(split: Split) -> list[str]:
    out: list[str] = []
    for name in split.order:
        out += [name] * split.counts[name]
    return out


__all__ = ["N_BUCKETS", "bucket", "normalize_weights", "Split", "changed_buckets"]
