"""The exposure and event records: what a request hands the log writer, and how it is shaped.

The request path builds a small :class:`ExposureRecord` (no parsing, no hashing); the writer
thread turns it into the logged dict (:func:`exposure_dict`: the answer's items parsed, the user
pseudonymized). Only canonical ids reach a record: the user id and ``history_items`` come from
the request as the handler's validation normalized it, so an entry of any size or type sent by
a client is never written. Answers other than 200 (a handler 4xx) log no history at all.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import orjson


@dataclass(slots=True)
class ExposureRecord:
    """One answered ``/v1/recommendations`` (one per answer with a handler status)."""

    ts: float
    request_id: str
    experiment: str
    variant: str
    model_version: str | None
    user: str | None                 # canonical id; pseudonymized by the writer
    mode: str
    answer: bytes | dict | None      # the 200 answer (handler bytes or a fallback dict)
    fallback: bool
    fallback_cause: str | None
    fallback_source: str | None
    history_len: int
    history_items: tuple[str, ...]   # canonical ids, the latest last; () unless status 200
    status: int
    override: bool
    nbytes: int = 0
    """Bytes this record holds (answer + history): for a queue bounded by bytes."""
    realtime_events: int = 0
    """Recent events from the store merged into this answer's history (docs/realtime.md)."""


@dataclass(slots=True)
class EventRecord:
    ts: float
    request_id: str | None
    user: str | None                 # canonical id; pseudonymized by the writer
    item_id: str
    type: str
    nbytes: int = 0
    event_id: str | None = None


@dataclass(slots=True)
class TrainingEvent:
    """One interaction for the training-event log: the raw (canonical) user id, since training
    must join it to the users it knows (CONTRACTS.md's one exception to pseudonyms)."""

    user: str
    item_id: str
    type: str
    ts: float


def exposure_dict(r: ExposureRecord, pseudo: Callable[[str | None], str | None]) -> dict:
    items, scores, strategy, unknown = [], [], None, 0
    if r.status == 200 and r.answer:
        d = orjson.loads(r.answer) if isinstance(r.answer, (bytes, bytearray)) else r.answer
        for it in d.get("items") or []:
            items.append(it.get("item_id"))
            scores.append(it.get("score"))
        strategy = d.get("strategy")
        unknown = len(d.get("ignored_history") or [])
    return {"ts": r.ts, "request_id": r.request_id, "experiment": r.experiment,
            "variant": r.variant, "model_version": r.model_version, "user": pseudo(r.user),
            "mode": r.mode, "strategy": strategy, "items": items, "scores": scores,
            "fallback": r.fallback, "fallback_cause": r.fallback_cause,
            "fallback_source": r.fallback_source, "history_len": r.history_len,
            "history_items": list(r.history_items), "unknown_history": unknown,
            "status": r.status, "override": r.override, "realtime_events": r.realtime_events}


def event_dict(r: EventRecord, pseudo: Callable[[str | None], str | None]) -> dict:
    return {"ts": r.ts, "request_id": r.request_id, "user": pseudo(r.user), "item_id": r.item_id,
            "type": r.type, "event_id": r.event_id}


def training_event_dict(r: TrainingEvent) -> dict:
    """The ETL's raw events format (common.schema.RAW_EVENT_COLUMNS): ``python -m etl`` reads
    these JSON lines as raw events (implicit, so no rating; epoch seconds)."""
    return {"user_id": r.user, "item_id": r.item_id, "event_type": r.type, "rating": None,
            "timestamp": int(r.ts)}


__all__ = ["ExposureRecord", "EventRecord", "TrainingEvent", "exposure_dict", "event_dict",
           "training_event_dict"]
