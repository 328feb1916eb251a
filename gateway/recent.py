"""The gateway's side of the recent-event store: reads under a deadline, writes, and what a
replica remembers to use them (docs/realtime.md).

* :meth:`RecentEvents.read`: a user's recent items for ``/v1/recommendations``, never an error:
  a read over ``read_deadline_ms`` or a store error answers without recent events and counts it
  (``recsys_gateway_realtime_reads_total{result}``). After an error the store is marked down for
  ``down_backoff_s``: reads are skipped (counted), so a dead Redis costs one failed call per
  period instead of one per request, and a Redis that is back is used again by itself.
* :meth:`RecentEvents.write`: a batch of events (raises :class:`realtime.store.StoreError`).
* the request-id join: the users of the last ``request_ids`` answers, so that an event that
  carries only the ``request_id`` of an answer is stored for that answer's user;
* the catalog of the served versions (:mod:`gateway.catalog` refreshes it), so that events on
  items no served version knows are logged but not stored;
* freshness: from an event's timestamp to the first answer on this replica that used it.
"""
from __future__ import annotations

import collections
import logging
import time
from typing import Sequence

from realtime.config import RealtimeConfig
from realtime.store import (EMPTY, Event, EventStore, MemoryStore, Recent, StoreError,
                            StoreTimeout, open_store)

log = logging.getLogger("gateway.recent")


class RecentEvents:
    def __init__(self, cfg: RealtimeConfig, metrics, store: EventStore | None = None):
        self.cfg = cfg
        self.metrics = m = metrics
        self.enabled = cfg.enabled
        self.store: EventStore = store if store is not None else open_store(cfg)
        # the embedded store answers synchronously: no coroutine, no deadline timer
        self._sync = self.store if isinstance(self.store, MemoryStore) else None
        self._deadline_s = cfg.read_deadline_ms / 1000.0
        self._users: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._served: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.catalog: frozenset[str] | None = None
        """Item ids of the served versions; None = not known (every item is stored)."""
        self._down_until = 0.0
        m.rt_enabled.set(1 if self.enabled else 0)
        m.rt_store_up.set(1)
        self._reads = m.rt_read_results

    # ---- reads -------------------------------------------------------------------------------
    async def read(self, user: str) -> Recent:
        """The user's recent items (oldest first), or none when the store is slow or down."""
        if self._down_until and time.monotonic() < self._down_until:
            self._reads["skipped"].inc()
            return EMPTY
        t0 = time.perf_counter()
        try:
            if self._sync is not None:
                rec = self._sync.recent_now(user)
            else:  # the deadline is a timer on the reply, not a task around the call
                rec = await self.store.recent(user, timeout_s=self._deadline_s)
        except StoreTimeout:
            self._reads["timeout"].inc()
            self.metrics.rt_read.observe(time.perf_counter() - t0)
            return EMPTY
        except StoreError as e:
            self._failed("read", e)
            self._reads["error"].inc()
            return EMPTY
        self.metrics.rt_read.observe(time.perf_counter() - t0)
        if self._down_until:
            self._recovered()
        if not rec.items:
            self._reads["empty"].inc()
            return rec
        self._reads["hit"].inc()
        self._fresh(user, rec.newest_ts)
        return rec

    def _fresh(self, user: str, newest: float) -> None:
        """Observe an event's freshness the first time this replica serves it."""
        served = self._served
        if served.get(user, -1.0) >= newest:
            return
        self.metrics.rt_freshness.observe(max(0.0, time.time() - newest))
        served[user] = newest
        served.move_to_end(user)
        if len(served) > self.cfg.request_ids:
            served.popitem(last=False)

    # ---- writes ------------------------------------------------------------------------------
    async def write(self, events: Sequence[Event]) -> list[str]:
        """Per event ``stored`` / ``duplicate`` / ``expired``; :class:`StoreError` when the store
        cannot take them (the caller answers 503; a retry is safe: a repeated event changes
        nothing, an ``event_id`` is applied once)."""
        if self._down_until and time.monotonic() < self._down_until:
            raise StoreError("the store is marked down after an error; retry shortly")
        try:
            states = await self.store.append(events)
        except StoreError as e:
            self._failed("write", e)
            raise
        if self._down_until:
            self._recovered()
        return states

    def _failed(self, op: str, e: Exception) -> None:
        self.metrics.rt_store_errors.labels(op).inc()
        if not self._down_until:
            log.warning("recent-event store %s failed (%s); answering without recent events, "
                        "retrying every %.1f s", op, e, self.cfg.down_backoff_s)
        self._down_until = time.monotonic() + self.cfg.down_backoff_s
        self.metrics.rt_store_up.set(0)

    def _recovered(self) -> None:
        log.info("recent-event store answers again")
        self._down_until = 0.0
        self.metrics.rt_store_up.set(1)

    # ---- the request-id join ----------------------------------------------------------------
    def remember(self, request_id: str, user: str) -> None:
        users = self._users
        users[request_id] = user
        if len(users) > self.cfg.request_ids:
            users.popitem(last=False)

    def user_of(self, request_id: str) -> str | None:
        return self._users.get(request_id)

    # ---- catalog ------------------------------------------------------------------------------
    def knows(self, item: str) -> bool:
        return self.catalog is None or item in self.catalog

    async def close(self) -> None:
        try:
            await self.store.close()
        except Exception:  # noqa: BLE001 - closing a dead connection must not fail a shutdown
            log.debug("closing the store", exc_info=True)


__all__ = ["RecentEvents"]
