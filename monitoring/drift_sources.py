"""Inputs of the drift check: the gateway's logs (live) and the training side (reference).

Live: JSON lines under ``OUT/gateway/exposures/*.jsonl`` and ``OUT/gateway/events/*.jsonl``
(fields: docs/contracts.md, "Gateway"). A line that is not a JSON object is counted and skipped,
never fatal: monitoring must keep running on a half-written or damaged file.

Reference: what the model was trained on, from the serving artifact
(``OUT/model/serving_artifact``: item ids, ``popularity`` = distinct training users per item, the
known users) or from the ETL's P1 split (``common.splits.load_split``: train + valid pairs).
"""
from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from gateway.logs import read_jsonl

log = logging.getLogger("monitoring.drift")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float | None:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"2d"`` -> seconds; ``"all"`` -> None."""
    if text.strip().lower() == "all":
        return None
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"bad duration {text!r}: use e.g. 90s, 15m, 1h, 2d or all")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def parse_ts(value) -> float | None:
    """A record's ``ts``: epoch seconds (number) or ISO 8601 text -> epoch seconds."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.timezone.utc)
        return t.timestamp()
    return None


@dataclass
class LogRead:
    """Records of one kind of log, with what could not be read."""

    records: list[dict] = field(default_factory=list)
    files: int = 0
    bad_lines: int = 0


def read_log(directory: Path, since: float | None = None) -> LogRead:
    """Every JSON-object line of ``directory/*.jsonl`` (name order) whose ts >= ``since``.

    Files last modified before ``since`` are skipped unread (they can hold nothing newer)."""
    out = LogRead()
    if not directory.is_dir():
        return out
    files = [f for f in sorted(directory.glob("*.jsonl"))
             if since is None or f.stat().st_mtime >= since]
    out.files = len(files)

    def bad(f: Path, n: int) -> None:
        out.bad_lines += 1
        if out.bad_lines <= 5:
            log.warning("%s:%d: not a JSON object, skipped", f, n)

    for rec in read_jsonl(files, on_bad=bad):
        ts = parse_ts(rec.get("ts"))
        if since is not None and (ts is None or ts < since):
            continue
        rec["_ts"] = ts
        out.records.append(rec)
    return out


def newest_ts(*reads: LogRead) -> float | None:
    stamps = [r["_ts"] for read in reads for r in read.records if r.get("_ts") is not None]
    return max(stamps) if stamps else None


def within(read: LogRead, since: float | None) -> LogRead:
    if since is None:
        return read
    return LogRead([r for r in read.records if r.get("_ts") is not None and r["_ts"] >= since],
                   read.files, read.bad_lines)


# ----------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------

@dataclass
class Reference:
    """The training side: item ids and their training popularity (distinct users per item),
    and, when computed, the reference top-k scores of known users."""

    item_ids: list[str]
    popularity: np.ndarray
    source: str
    model_version: str | None = None
    n_users: int = 0
    scores: np.ndarray | None = None
    score_note: str = ""
    _index: dict[str, int] | None = field(default=None, repr=False)

    @property
    def item_index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {iid: i for i, iid in enumerate(self.item_ids)}
        return self._index


def reference_from_artifact(path: str | Path) -> Reference:
    """Item ids and ``popularity`` (distinct training users per item) of a serving artifact."""
    import torch

    from core.artifact import load_artifact

    art = load_artifact(path, mmap=True)
    pop = art.popularity.to(dtype=torch.float64).numpy().copy()
    return Reference(item_ids=[str(i) for i in art.item_ids], popularity=pop,
                     source=f"artifact {Path(path)}", model_version=art.version or None,
                     n_users=art.n_users)


def reference_from_etl(out: str | Path, scheme: str = "temporal") -> Reference:
    """Training pairs (train + valid) of the ETL's split: distinct users per item."""
    from common.schema import EtlLayout
    from common.splits import load_split

    split = load_split(EtlLayout.under(out), scheme)
    pop = np.asarray((split.train_full > 0).sum(axis=0)).ravel().astype(np.float64)
    return Reference(item_ids=[str(i) for i in split.item_ids], popularity=pop,
                     source=f"etl {split.etl_root} ({scheme}: train + valid)",
                     n_users=int(split.n_users))


def reference_scores(artifact_dir: str | Path, k: int, n_users: int, seed: int = 0,
                     batch: int = 64) -> tuple[np.ndarray, str]:
    """Top-k scores the served model gives known users: ``n_users`` users drawn at random among
    those with a training history, each scored by the handler's own engine
    (``core.engine.Recommender``, exact fp32 scoring: the served variant may be an approximate index
    whose scores differ by its quantization error only) with its defaults (seen items
    excluded), exactly like a live ``{"user_id": u, "k": k}`` request answered ``personalized``."""
    from core.artifact_adapter import load_recommender
    from core.engine import PERSONALIZED
    from core.validation import RecRequest

    rec = load_recommender(artifact_dir, scoring="fp32")
    d = rec.data
    counts = np.diff(d.hist_indptr.numpy())
    users = [uid for uid, u in d.user_index.items() if counts[u] > 0]
    rng = np.random.default_rng(seed)
    if len(users) > n_users:
        users = [users[i] for i in sorted(rng.choice(len(users), n_users, replace=False))]
    scores: list[float] = []
    for start in range(0, len(users), batch):
        reqs = [RecRequest(user_id=u, k=k) for u in users[start:start + batch]]
        for o in rec.recommend(reqs):
            if o.strategy == PERSONALIZED:
                scores += [float(it["score"]) for it in o.body["items"][:k]]
    note = (f"top-{k} scores of {len(users)} known users with a training history, scored by "
            f"core.engine.Recommender on {Path(artifact_dir)} (scoring {d.info.get('scoring')})")
    return np.asarray(scores, dtype=np.float64), note


def iter_ids(values: Iterable) -> Iterator[str | None]:
    """Canonical ids (core.ids); None for an invalid one."""
    from core.ids import try_canonical_id

    for v in values:
        yield try_canonical_id(v)


__all__ = ["LogRead", "Reference", "read_log", "within", "newest_ts", "parse_duration", "parse_ts",
           "reference_from_artifact", "reference_from_etl", "reference_scores", "iter_ids"]
