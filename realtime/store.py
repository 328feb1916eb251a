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
import time
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from realtime.config import RealtimeConfig

STORED, DUPLICATE, EXPIRED = "stored", "duplicate", "expired"


class StoreError(RuntimeError):
    """The store could not be reached or answered an error (a read then goes without recent
    events; a write is answered 503 and may be retried)."""


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

    async def recent(self, user: str, now: float | None = None) -> Recent:
        """The user's recent items, oldest first. Raises :class:`StoreError`."""

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
                for i, _ in sorted(items.items(), key=lambda kv: kv[1])[:len(items) - cfg.history_cap]:
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

    async def recent(self, user: str, now: float | None = None) -> Recent:
        return self.recent_now(user, now)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._users.clear()
        self._seen.clear()


# ---- Redis ------------------------------------------------------------------------------------

# KEYS[1] = the user's set, KEYS[2..] = dedup markers of the events that carry an id (in order).
# ARGV = now, ttl, cap, dedup window, then per event: has-id (0/1), item, ts.
# Answers per event: 1 stored, 2 duplicate, 3 expired.
_APPEND = """
local now = tonumber(ARGV[1]); local ttl = tonumber(ARGV[2])
local cap = tonumber(ARGV[3]); local window = tonumber(ARGV[4])
local horizon = now - ttl
local out = {}; local k = 2; local added = false
for i = 5, #ARGV, 3 do
  local state = 1
  if ARGV[i] == '1' then
    if not redis.call('SET', KEYS[k], '1', 'NX', 'PX', window) then state = 2 end
    k = k + 1
  end
  local ts = tonumber(ARGV[i + 2])
  if state == 1 and ts < horizon then state = 3 end
  if state == 1 then
    redis.call('ZADD', KEYS[1], 'GT', ts, ARGV[i + 1]); added = true
  end
  out[#out + 1] = state
end
if added then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. horizon)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(cap + 1))
  redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 1000))
end
return out
"""
_STATES = {1: STORED, 2: DUPLICATE, 3: EXPIRED}


class RedisStore:
    """The production store: a real Redis behind ``redis.asyncio`` (hiredis parser), one
    connection pool per gateway. Socket timeouts are short (a read is abandoned by the gateway
    at ``read_deadline_ms`` anyway); the client reconnects by itself, so a Redis that comes back
    is used again without a restart."""

    name = "redis"

    def __init__(self, cfg: RealtimeConfig, clock: Callable[[], float] = time.time,
                 socket_timeout_s: float = 1.0, max_connections: int = 64):
        import redis.asyncio as aioredis  # the embedded store must not need the client

        self.cfg = cfg
        self.clock = clock
        self._errors = (aioredis.RedisError, OSError, asyncio.TimeoutError)
        self.client = aioredis.from_url(cfg.redis_url, socket_timeout=socket_timeout_s,
                                        socket_connect_timeout=socket_timeout_s,
                                        max_connections=max_connections,
                                        decode_responses=True)
        self._append = self.client.register_script(_APPEND)

    def user_key(self, user: str) -> str:
        return f"{self.cfg.key_prefix}u:{user}"

    def event_key(self, event_id: str) -> str:
        return f"{self.cfg.key_prefix}e:{event_id}"

    async def append(self, events: Sequence[Event], now: float | None = None) -> list[str]:
        cfg = self.cfg
        now = self.clock() if now is None else now
        by_user: dict[str, list[int]] = {}
        for i, e in enumerate(events):
            by_user.setdefault(e.user, []).append(i)
        out: list[str] = [""] * len(events)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for user, idx in by_user.items():
                    keys = [self.user_key(user)]
                    argv: list = [repr(now), repr(cfg.ttl_s), cfg.history_cap,
                                  int(cfg.dedup_window_s * 1000)]
                    for i in idx:
                        e = events[i]
                        if e.event_id is not None:
                            keys.append(self.event_key(e.event_id))
                        argv += ["1" if e.event_id is not None else "0", e.item, repr(e.ts)]
                    await self._append(keys=keys, args=argv, client=pipe)
                answers = await pipe.execute()
        except self._errors as e:
            raise StoreError(f"redis write: {type(e).__name__}: {e}") from None
        for idx, states in zip(by_user.values(), answers):
            for i, s in zip(idx, states):
                out[i] = _STATES[int(s)]
        return out

    async def recent(self, user: str, now: float | None = None) -> Recent:
        now = self.clock() if now is None else now
        try:
            rows = await self.client.zrangebyscore(self.user_key(user), now - self.cfg.ttl_s,
                                                   "+inf", withscores=True)
        except self._errors as e:
            raise StoreError(f"redis read: {type(e).__name__}: {e}") from None
        if not rows:
            return EMPTY
        return Recent(tuple(r[0] for r in rows), float(rows[-1][1]))

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except self._errors:
            return False

    async def close(self) -> None:
        await self.client.aclose()


def open_store(cfg: RealtimeConfig) -> EventStore:
    """The store ``cfg`` names: Redis when ``redis_url`` is set, else the embedded one."""
    return RedisStore(cfg) if cfg.redis_url else MemoryStore(cfg)


__all__ = ["Event", "Recent", "EMPTY", "EventStore", "MemoryStore", "RedisStore", "StoreError",
           "open_store", "STORED", "DUPLICATE", "EXPIRED"]
