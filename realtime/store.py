"""The recent-event store: one interface, two implementations with the same rules.

* :class:`MemoryStore`: in-process, the embedded default (``make demo`` needs nothing new). One
  process only: replicas each hold their own, which is why the chart requires Redis.
* :class:`RedisStore`: a real Redis (``REDIS_URL``), shared by every gateway replica.

What a store keeps, per user (the canonical user id): the user's recent distinct items, each
with the timestamp of its latest event, at most ``history_cap`` of them (the newest) and none
older than ``ttl_s``. An item seen again moves to its new position (the encoder counts it once,
at its latest position, anyway). Events with an ``event_id`` are applied once per
``dedup_window_s``: a retry is answered ``duplicate``.

Redis layout (``key_prefix`` = ``recsys:rt:``): ``<prefix>u:<user>`` a sorted set (member =
item id, score = the event's epoch seconds; ``ZADD GT`` keeps an item's latest), with an
expiry of ``ttl_s`` renewed by each write; ``<prefix>e:<event_id>`` a dedup marker (``SET NX
EX``). One Lua script per user and batch applies dedup, add, TTL cut, cap cut and expiry
atomically, so concurrent writers for one user cannot interleave half-applied batches.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from realtime.config import RealtimeConfig

STORED, DUPLICATE, EXPIRED = "stored", "duplicate", "expired"


class StoreError(RuntimeError):
    """The store could not be reached or answered an error (a read then goes without recent
    events; a write is answered 503 and may be retried)."""


class StoreTimeout(StoreError):
    """A read that missed its deadline (one slow answer, not a store marked down)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One interaction to store: canonical ids, epoch seconds."""

    user: str
    item: str
    ts: float
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class Recent:
    """A user's recent items, oldest first, and the newest one's timestamp (0 when none)."""

    items: tuple[str, ...]
    newest_ts: float = 0.0


EMPTY = Recent(())


class EventStore(Protocol):
    name: str

    async def append(self, events: Sequence[Event], now: float | None = None) -> list[str]:
        """Apply ``events``; per event ``stored``, ``duplicate`` or ``expired``. Raises
        :class:`StoreError` when the store cannot be written (nothing may be assumed applied)."""

    async def recent(self, user: str, now: float | None = None,
                     timeout_s: float | None = None) -> Recent:
        """The user's recent items, oldest first, within ``timeout_s``. Raises
        :class:`StoreError` (:class:`StoreTimeout` past the deadline)."""

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


# ---- in-process -------------------------------------------------------------------------------

class MemoryStore:
    """The embedded store: a dict per user, bounded by ``memory_max_users`` (least recently
    written first out), ``history_cap`` and ``ttl_s``. ``clock`` is injectable so the offline
    replay can run the store on the data's own timestamps."""

    name = "memory"

    def __init__(self, cfg: RealtimeConfig | None = None, clock: Callable[[], float] = time.time):
        self.cfg = cfg or RealtimeConfig()
        self.clock = clock
        self._users: collections.OrderedDict[str, dict[str, float]] = collections.OrderedDict()
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()  # id -> expiry

    def __len__(self) -> int:
        return len(self._users)

    def append_now(self, events: Sequence[Event], now: float | None = None) -> list[str]:
        """:meth:`append` without the coroutine (the offline replay calls it in a loop)."""
        cfg = self.cfg
        now = self.clock() if now is None else now
        self._expire_ids(now)
        horizon = now - cfg.ttl_s
        out: list[str] = []
        touched: set[str] = set()
        for e in events:
            if e.event_id is not None:
                if e.event_id in self._seen:
                    out.append(DUPLICATE)
                    continue
                self._seen[e.event_id] = now + cfg.dedup_window_s
            if e.ts < horizon:
                out.append(EXPIRED)
                continue
            items = self._users.get(e.user)
            if items is None:
                items = self._users[e.user] = {}
            else:
                self._users.move_to_end(e.user)
            if e.ts > items.get(e.item, float("-inf")):
                items[e.item] = e.ts
            touched.add(e.user)
            out.append(STORED)
        for user in touched:
            items = self._users[user]
            stale = [i for i, ts in items.items() if ts < horizon]
            for i in stale:
                del items[i]
            if len(items) > cfg.history_cap:
                # oldest first, ties by item id: the order of a read and of Redis' ranks
                for _, i in sorted((ts, i) for i, ts in items.items())[:len(items) - cfg.history_cap]:
                    del items[i]
        while len(self._users) > cfg.memory_max_users:
            self._users.popitem(last=False)
        return out

    def recent_now(self, user: str, now: float | None = None) -> Recent:
        items = self._users.get(user)
        if not items:
            return EMPTY
        horizon = (self.clock() if now is None else now) - self.cfg.ttl_s
        live = sorted(((ts, i) for i, ts in items.items() if ts >= horizon))
        if not live:
            return EMPTY
        return Recent(tuple(i for _, i in live), live[-1][0])

    def _expire_ids(self, now: float) -> None:
        seen = self._seen
        while seen:
            first = next(iter(seen))
            if seen[first] > now:
                break
            del seen[first]

    async def append(self, events: Sequence[Event], now: float | None = None) -> list[str]:
        return self.append_now(events, now)

    async def recent(self, user: str, now: float | None = None,
                     timeout_s: float | None = None) -> Recent:
        return self.recent_now(user, now)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._users.clear()
        self._seen.clear()


# ---- Redis ------------------------------------------------------------------------------------

# KEYS[1] = the user's set, KEYS[2..] = dedup markers of the events that carry an id (in order).
# ARGV = horizon (now - ttl), ttl in ms, cap, dedup window in ms, then per event: has-id (0/1),
# item, ts. Scores go to Redis as the strings Python wrote: a Lua number turned back into a
# string keeps 14 digits (1.7e9 s to 0.1 ms), which would tie events a few microseconds apart.
# Answers per event: 1 stored, 2 duplicate, 3 expired.
_APPEND = """
local horizon = tonumber(ARGV[1]); local ttl_ms = ARGV[2]
local cap = tonumber(ARGV[3]); local window_ms = ARGV[4]
local out = {}; local k = 2; local added = false
for i = 5, #ARGV, 3 do
  local state = 1
  if ARGV[i] == '1' then
    if not redis.call('SET', KEYS[k], '1', 'NX', 'PX', window_ms) then state = 2 end
    k = k + 1
  end
  if state == 1 and tonumber(ARGV[i + 2]) < horizon then state = 3 end
  if state == 1 then
    redis.call('ZADD', KEYS[1], 'GT', ARGV[i + 2], ARGV[i + 1]); added = true
  end
  out[#out + 1] = state
end
if added then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(cap + 1))
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
end
return out
"""
_APPEND_SHA = hashlib.sha1(_APPEND.encode()).hexdigest()
_STATES = {1: STORED, 2: DUPLICATE, 3: EXPIRED}


class RedisStore:
    """The production store: a real Redis (``REDIS_URL``) over :class:`realtime.resp.RespClient`,
    one pipelined connection per gateway process (why not ``redis.asyncio``: realtime/resp.py).
    A read has the caller's deadline as a timer (:class:`StoreTimeout` past it); a write gets
    ``write_timeout_s``. A lost connection is reopened by the next command, so a Redis that comes
    back is used again without a restart."""

    name = "redis"

    def __init__(self, cfg: RealtimeConfig, clock: Callable[[], float] = time.time,
                 write_timeout_s: float = 1.0, connect_timeout_s: float = 1.0):
        from realtime.resp import RespClient, RespError

        self.cfg = cfg
        self.clock = clock
        self.write_timeout_s = write_timeout_s
        self.client = RespClient(cfg.redis_url, connect_timeout_s=connect_timeout_s)
        self._resp_error = RespError

    def user_key(self, user: str) -> str:
        return f"{self.cfg.key_prefix}u:{user}"

    def event_key(self, event_id: str) -> str:
        return f"{self.cfg.key_prefix}e:{event_id}"

    async def append(self, events: Sequence[Event], now: float | None = None) -> list[str]:
        cfg = self.cfg
        now = self.clock() if now is None else now
        out: list[str] = [""] * len(events)
        # an id repeated within the batch is a duplicate of its first occurrence, in batch order
        # (as in MemoryStore), whichever user's script would run first
        first: set[str] = set()
        by_user: dict[str, list[int]] = {}
        for i, e in enumerate(events):
            if e.event_id is not None:
                if e.event_id in first:
                    out[i] = DUPLICATE
                    continue
                first.add(e.event_id)
            by_user.setdefault(e.user, []).append(i)
        head = [repr(now - cfg.ttl_s), max(1, math.ceil(cfg.ttl_s * 1000)), cfg.history_cap,
                max(1, math.ceil(cfg.dedup_window_s * 1000))]
        calls = []
        for user, idx in by_user.items():
            keys, argv = [self.user_key(user)], list(head)
            for i in idx:
                e = events[i]
                if e.event_id is not None:
                    keys.append(self.event_key(e.event_id))
                argv += ["1" if e.event_id is not None else "0", e.item, repr(e.ts)]
            calls.append((keys, argv))
        try:  # one script call per user, all written at once (pipelined on the connection)
            answers = await asyncio.gather(*(self._eval(keys, argv) for keys, argv in calls))
        except self._resp_error as e:
            raise StoreError(f"redis write: {e}") from None
        for idx, states in zip(by_user.values(), answers):
            for i, state in zip(idx, states):
                out[i] = _STATES[int(state)]
        return out

    async def _eval(self, keys: list[str], argv: list) -> list:
        try:
            return await self.client.call("EVALSHA", _APPEND_SHA, len(keys), *keys, *argv,
                                          timeout_s=self.write_timeout_s)
        except self._resp_error as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
        return await self.client.call("EVAL", _APPEND, len(keys), *keys, *argv,
                                      timeout_s=self.write_timeout_s)

    async def recent(self, user: str, now: float | None = None,
                     timeout_s: float | None = None) -> Recent:
        now = self.clock() if now is None else now
        try:
            rows = await self.client.call("ZRANGEBYSCORE", self.user_key(user),
                                          repr(now - self.cfg.ttl_s), "+inf", "WITHSCORES",
                                          timeout_s=timeout_s or self.write_timeout_s)
        except self._resp_error as e:
            kind = StoreTimeout if str(e).startswith("no reply within") else StoreError
            raise kind(f"redis read: {e}") from None
        if not rows:
            return EMPTY
        return Recent(tuple(rows[0::2]), float(rows[-1]))

    async def ping(self) -> bool:
        try:
            return await self.client.call("PING", timeout_s=self.write_timeout_s) == "PONG"
        except self._resp_error:
            return False

    async def close(self) -> None:
        await self.client.close()


def open_store(cfg: RealtimeConfig) -> EventStore:
    """The store ``cfg`` names: Redis when ``redis_url`` is set, else the embedded one."""
    return RedisStore(cfg) if cfg.redis_url else MemoryStore(cfg)


__all__ = ["Event", "Recent", "EMPTY", "EventStore", "MemoryStore", "RedisStore", "StoreError",
           "StoreTimeout",
           "open_store", "STORED", "DUPLICATE", "EXPIRED"]
