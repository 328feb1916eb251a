"""``POST /v1/events``: check a batch, then store and log it whole or not at all.

The answer's promise (docs/realtime.md, "Events"):

* **400**: a malformed event refuses the whole batch, nothing is applied; ``errors`` names each
  bad index and why. Fix and send the whole batch again.
* **503** (``Retry-After``): nothing is applied, send the batch again: ``log_full`` (the
  write queues cannot take the whole batch; room is reserved before anything is stored) or
  ``store_unavailable`` (the store did not take the batch; what it may have applied is
  idempotent: an item's latest timestamp, an ``event_id``'s marker).
* **202**: every event is accounted for, per index (``results``): ``stored`` (in the store and
  queued for both logs), ``duplicate`` (an ``event_id`` already applied within the dedup window:
  nothing done again), or ``logged`` with a reason (``unknown_request_id``: its user could not
  be joined; ``unknown_item``: no served version knows the item; ``not_an_interaction``: a type
  other than view, click, add_to_cart, purchase; ``expired``: older than the store's TTL;
  ``realtime_off``). A 2xx means each non-duplicate event is queued for the experiment log and,
  when its user is known and it is an interaction, for the training-event log.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from core.ids import try_canonical_id
from gateway.fallback import BadRequest
from gateway.http import Response
from gateway.logs import JsonlLog
from gateway.records import EventRecord, TrainingEvent
from realtime.config import INTERACTIONS
from realtime.store import DUPLICATE, EXPIRED, STORED, Event, StoreError

MAX_BATCH = 1000
_RID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_EVENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_FIELDS = frozenset({"type", "item_id", "request_id", "user_id", "ts", "event_id"})
_RECORD_BYTES = 256          # a record's fixed fields in the write queue's byte count


@dataclass(slots=True)
class Posted:
    """One valid posted event (canonical ids)."""

    type: str
    item: str
    request_id: str | None
    user: str | None          # as posted
    ts: float
    event_id: str | None


def parse_event(d: Any, now: float, max_future_s: float) -> Posted:
    """One event, or :class:`BadRequest` with the reason."""
    if not isinstance(d, dict):
        raise BadRequest("not_object", "an event must be a JSON object")
    unknown = set(d) - _FIELDS
    if unknown:
        raise BadRequest("unknown_field", f"unknown event fields {sorted(unknown)}")
    kind = d.get("type")
    if not isinstance(kind, str) or not _EVENT_TYPE.match(kind):
        raise BadRequest("bad_type", "type must be a short lower-case word (view, click, "
                                     "add_to_cart, purchase, ...)")
    item = try_canonical_id(d.get("item_id"))
    if item is None:
        raise BadRequest("bad_item_id", "item_id must be a valid id")
    rid, user = d.get("request_id"), d.get("user_id")
    if rid is not None and (not isinstance(rid, str) or not _RID.match(rid)):
        raise BadRequest("bad_request_id", "request_id must be the id the gateway answered")
    cuser = try_canonical_id(user) if user is not None else None
    if user is not None and cuser is None:
        raise BadRequest("bad_user_id", "user_id must be a valid id")
    if rid is None and cuser is None:
        raise BadRequest("missing_subject", "an event needs request_id or user_id")
    eid = d.get("event_id")
    if eid is not None and (not isinstance(eid, str) or not _EVENT_ID.match(eid)):
        raise BadRequest("bad_event_id", "event_id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    ts = d.get("ts")
    if ts is not None:
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or ts != ts or ts < 0:
            raise BadRequest("bad_ts", "ts must be epoch seconds")
        if ts > now + max_future_s:
            raise BadRequest("bad_ts", f"ts is more than {max_future_s:g} s in the future")
    return Posted(kind, item, rid, cuser, float(ts) if ts is not None else now, eid)


class Intake:
    """The events route over the gateway's store access and logs."""

    def __init__(self, recent, events_log: JsonlLog, training_log: JsonlLog | None, metrics):
        self.recent = recent
        self.events_log, self.training_log = events_log, training_log
        self.metrics = metrics
        self.max_future_s = recent.cfg.max_future_s

    async def handle(self, body: bytes) -> Response:
        m = self.metrics
        now = time.time()
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return self._refuse(BadRequest("not_json", "the body is not valid JSON"))
        docs = doc if isinstance(doc, list) else [doc]
        if len(docs) > MAX_BATCH:
            return self._refuse(BadRequest("too_many", f"at most {MAX_BATCH} events per request"))
        if not docs:
            return self._refuse(BadRequest("empty", "no events"))
        posted: list[Posted] = []
        errors: list[dict] = []
        for i, d in enumerate(docs):
            try:
                posted.append(parse_event(d, now, self.max_future_s))
            except BadRequest as e:
                errors.append({"index": i, "reason": e.reason, "message": e.message})
        if errors:
            for e in errors:
                m.events.labels("refused", e["reason"]).inc()
            first = errors[0]
            single = len(docs) == 1
            return Response(400, orjson.dumps({
                "code": 400, "type": "BadRequest", "reason": first["reason"],
                "message": first["message"] if single else
                f"{len(errors)} of {len(docs)} events are malformed (first: index "
                f"{first['index']}, {first['message']}); nothing was applied",
                "errors": errors}))
        return await self._apply(posted)

    def _refuse(self, e: BadRequest) -> Response:
        self.metrics.events.labels("refused", e.reason).inc()
        return Response(e.status, orjson.dumps(e.to_dict()))

    async def _apply(self, posted: list[Posted]) -> Response:
        rt, m = self.recent, self.metrics
        users = [p.user or (rt.user_of(p.request_id) if p.request_id else None) for p in posted]
        results: list[dict] = [{}] * len(posted)
        to_store: list[int] = []
        for i, (p, user) in enumerate(zip(posted, users)):
            reason = None
            if not rt.enabled:
                reason = "realtime_off"
            elif user is None:
                reason = "unknown_request_id"
            elif p.type not in INTERACTIONS:
                reason = "not_an_interaction"
            elif not rt.knows(p.item):
                reason = "unknown_item"
            if reason is None:
                to_store.append(i)
            else:
                results[i] = {"status": "logged", "reason": reason}
        trainable = [i for i, (p, u) in enumerate(zip(posted, users))
                     if u is not None and p.type in INTERACTIONS]
        ev_bytes = [_RECORD_BYTES + len(p.item) + len(u or "") + len(p.request_id or "")
                    for p, u in zip(posted, users)]
        tr_bytes = {i: _RECORD_BYTES + len(posted[i].item) + len(users[i] or "") for i in trainable}
        tlog = self.training_log if trainable else None
        if not self.events_log.reserve(len(posted), sum(ev_bytes)):
            return self._busy("log_full", "the event write queue cannot take this batch")
        if tlog is not None and not tlog.reserve(len(trainable), sum(tr_bytes.values())):
            self.events_log.release(len(posted), sum(ev_bytes))
            return self._busy("log_full", "the training-event write queue cannot take this batch")
        try:
            states = await rt.write([Event(users[i], posted[i].item, posted[i].ts,
                                           posted[i].event_id) for i in to_store]) \
                if to_store else []
        except StoreError as e:
            self.events_log.release(len(posted), sum(ev_bytes))
            if tlog is not None:
                tlog.release(len(trainable), sum(tr_bytes.values()))
            return self._busy("store_unavailable", f"the recent-event store did not take the "
                                                   f"batch ({e}); nothing was applied")
        duplicate: set[int] = set()
        for i, state in zip(to_store, states):
            if state == STORED:
                results[i] = {"status": "stored"}
            elif state == DUPLICATE:
                results[i] = {"status": "duplicate"}
                duplicate.add(i)
            elif state == EXPIRED:
                results[i] = {"status": "logged", "reason": "expired"}
        for i, (p, user) in enumerate(zip(posted, users)):
            if i in duplicate:
                self.events_log.release(1, ev_bytes[i])
                continue
            self.events_log.submit_reserved(
                EventRecord(p.ts, p.request_id, user, p.item, p.type, ev_bytes[i], p.event_id),
                ev_bytes[i])
        if tlog is not None:
            for i in trainable:
                if i in duplicate:
                    tlog.release(1, tr_bytes[i])
                else:
                    p = posted[i]
                    tlog.submit_reserved(TrainingEvent(users[i], p.item, p.type, p.ts),
                                         tr_bytes[i])
        counts = {"stored": 0, "duplicate": 0, "logged": 0}
        for r in results:
            counts[r["status"]] += 1
            m.events.labels(r["status"], r.get("reason", "")).inc()
        return Response(202, orjson.dumps({"accepted": len(posted) - counts["duplicate"],
                                           "stored": counts["stored"],
                                           "duplicates": counts["duplicate"],
                                           "logged": counts["logged"], "results": results}))

    def _busy(self, reason: str, message: str) -> Response:
        self.metrics.events.labels("refused", reason).inc()
        return Response(503, orjson.dumps({"code": 503, "type": "ServiceUnavailable",
                                           "reason": reason, "message": message +
                                           "; send the whole batch again"}),
                        {"Retry-After": "1"})


__all__ = ["Intake", "Posted", "parse_event", "MAX_BATCH"]
