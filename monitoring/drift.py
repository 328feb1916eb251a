"""Drift of live traffic against the training data: PSI and unknown shares.

Population stability index over bins b with expected (training) shares e_b and live shares a_b,
each floored at ``epsilon``: PSI = sum_b (a_b - e_b) * ln(a_b / e_b). Below 0.1 is usually read
as stable, 0.1-0.2 as moderate, above 0.2 as a shift worth acting on (the alert's threshold).

Features (``recsys_drift_psi{feature}``):

* ``item_popularity``: which items live users interact with. Training items are sorted by
  training popularity (distinct users per item) and cut into ``bins`` bins that each hold an equal
  share of the training interactions (head bins few items, tail bins many), plus one bin for
  catalog items the training data never saw (expected share 0, floored). Live interactions are
  the distinct (user, item) pairs of the window: history items sent in requests (exposures'
  ``history_items``) and event items (``events``), users by pseudonym (a request without user
  counts as its own user). Items the model does not know at all are left out of the PSI and
  counted in ``recsys_drift_unknown_share{kind}`` instead.
* ``score_personalized``: the top-k scores of answers to known users (strategy
  ``personalized``, not a fallback, same model version as the reference), binned at the deciles
  of a reference: the served model's top-k scores for a sample of known users
  (drift_sources.reference_scores). Scores of other strategies are left out: their reference
  would depend on what anonymous users send.

Unknown shares (``recsys_drift_unknown_share{kind}``): ``user`` (answers to a request with a
user id that were not personalized: the model does not know the user), ``history_item``
(the handler's ``unknown_history`` over ``history_len``), ``event_item`` (event items not in the
model's catalog).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable

import numpy as np

from monitoring.config import DriftConfig
from monitoring.drift_sources import LogRead, Reference, iter_ids

PERSONALIZED = "personalized"


def psi(expected: np.ndarray, actual: np.ndarray, epsilon: float = 1e-4) -> float:
    """PSI of two histograms (counts or shares over the same bins)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("psi needs two non-empty histograms over the same bins")
    e = np.maximum(e / e.sum(), epsilon)
    a = np.maximum(a / a.sum(), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def popularity_bins(popularity: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(bin of each item, expected share of each bin): bins ``0..n_bins-1`` cut the items sorted
    by popularity (most popular first, ties by index) where the cumulative share of training
    interactions crosses k / n_bins; bin ``n_bins`` holds items with no training interaction."""
    pop = np.asarray(popularity, dtype=np.float64)
    total = pop.sum()
    if total <= 0:
        raise ValueError("the reference has no training interactions")
    order = np.lexsort((np.arange(len(pop)), -pop))
    before = np.concatenate(([0.0], np.cumsum(pop[order])[:-1])) / total
    bins = np.empty(len(pop), dtype=np.int64)
    bins[order] = np.minimum((before * n_bins).astype(np.int64), n_bins - 1)
    bins[pop <= 0] = n_bins
    expected = np.bincount(bins, weights=pop, minlength=n_bins + 1) / total
    return bins, expected


def score_bins(reference: np.ndarray, n_bins: int) -> np.ndarray:
    """Interior edges at the reference's quantiles (k / n_bins)."""
    return np.quantile(reference, np.linspace(0, 1, n_bins + 1)[1:-1])


@dataclass
class DriftReport:
    """One computation: PSI per feature (None when too few live samples), unknown shares, and
    the counts behind them."""

    psi: dict[str, float | None] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    unknown_share: dict[str, float | None] = field(default_factory=dict)
    unknown_counts: dict[str, list[int]] = field(default_factory=dict)  # kind -> [unknown, total]
    exposures: int = 0
    events: int = 0
    bad_lines: int = 0
    window: dict[str, float | str | None] = field(default_factory=dict)
    reference: dict[str, object] = field(default_factory=dict)
    threshold: float = 0.2

    @property
    def above(self) -> list[str]:
        return sorted(f for f, v in self.psi.items() if v is not None and v > self.threshold)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["above_threshold"] = self.above
        return d


def _ok(rec: dict) -> bool:
    status = rec.get("status")
    return (status is None or status == 200 or status == "ok") and not rec.get("fallback")


def live_pairs(exposures: Iterable[dict], events: Iterable[dict],
               ref: Reference) -> tuple[set[tuple[str, int]], int, int]:
    """Distinct (user, item index) pairs of known items, and the unknown and total counts of
    event items."""
    index = ref.item_index
    pairs: set[tuple[str, int]] = set()
    unknown_events = total_events = 0
    for rec in exposures:
        user = rec.get("user") or f"request:{rec.get('request_id')}"
        for iid in iter_ids(rec.get("history_items") or ()):
            i = index.get(iid) if iid is not None else None
            if i is not None:
                pairs.add((user, i))
    for ev in events:
        iid = next(iter_ids([ev.get("item_id")]))
        total_events += 1
        i = index.get(iid) if iid is not None else None
        if i is None:
            unknown_events += 1
            continue
        pairs.add((ev.get("user") or f"request:{ev.get('request_id')}", i))
    return pairs, unknown_events, total_events


def compute(exposures: LogRead, events: LogRead, ref: Reference,
            cfg: DriftConfig = DriftConfig(), threshold: float = 0.2) -> DriftReport:
    """The drift report of these records against ``ref``."""
    rep = DriftReport(exposures=len(exposures.records), events=len(events.records),
                      bad_lines=exposures.bad_lines + events.bad_lines, threshold=threshold,
                      reference={"source": ref.source, "model_version": ref.model_version,
                                 "items": len(ref.item_ids), "bins": cfg.bins,
                                 "score_reference": int(len(ref.scores)) if ref.scores is not None else 0,
                                 "score_note": ref.score_note})
    ok = [r for r in exposures.records if _ok(r)]

    # ---- item popularity
    pairs, unknown_ev, total_ev = live_pairs(ok, events.records, ref)
    bins, expected = popularity_bins(ref.popularity, cfg.bins)
    rep.samples["item_popularity"] = len(pairs)
    if len(pairs) >= cfg.min_samples:
        live = np.bincount(bins[np.fromiter((i for _, i in pairs), dtype=np.int64, count=len(pairs))],
                           minlength=cfg.bins + 1)
        rep.psi["item_popularity"] = psi(expected, live, cfg.epsilon)
    else:
        rep.psi["item_popularity"] = None

    # ---- scores of personalized answers
    if ref.scores is not None and len(ref.scores):
        live_scores = [float(s) for r in ok
                       if r.get("strategy") == PERSONALIZED and r.get("mode", "user") == "user"
                       and (ref.model_version is None or str(r.get("model_version")) == ref.model_version)
                       for s in (r.get("scores") or [])[:cfg.top_k]
                       if isinstance(s, (int, float)) and math.isfinite(s)]
        rep.samples["score_personalized"] = len(live_scores)
        if len(live_scores) >= cfg.min_samples:
            edges = score_bins(ref.scores, cfg.score_bins)
            e = np.bincount(np.searchsorted(edges, ref.scores, side="right"), minlength=cfg.score_bins)
            a = np.bincount(np.searchsorted(edges, np.asarray(live_scores), side="right"),
                            minlength=cfg.score_bins)
            rep.psi["score_personalized"] = psi(e, a, cfg.epsilon)
        else:
            rep.psi["score_personalized"] = None

    # ---- unknown shares
    with_user = [r for r in ok if r.get("mode", "user") == "user" and r.get("user") and r.get("strategy")]
    unknown_users = sum(r.get("strategy") != PERSONALIZED for r in with_user)
    hist_total = sum(int(r.get("history_len") or 0) for r in ok)
    hist_unknown = sum(int(r.get("unknown_history") or 0) for r in ok)
    for kind, unknown, total in (("user", unknown_users, len(with_user)),
                                 ("history_item", hist_unknown, hist_total),
                                 ("event_item", unknown_ev, total_ev)):
        rep.unknown_counts[kind] = [unknown, total]
        rep.unknown_share[kind] = unknown / total if total else None
    return rep


__all__ = ["psi", "popularity_bins", "score_bins", "compute", "DriftReport", "live_pairs"]
