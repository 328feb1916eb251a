"""Every setting of the real-time store in one typed place (docs/realtime.md, "Settings")."""
from __future__ import annotations

import os
from dataclasses import dataclass

from core.validation import MAX_HISTORY

INTERACTIONS = ("view", "click", "add_to_cart", "purchase")
"""Event types that enter the store and the training-event log (the ETL's implicit types)."""


@dataclass(frozen=True)
class RealtimeConfig:
    """The recent-event store's rules. Both stores apply them the same way."""

    enabled: bool = True
    """Read recent events on every request (``make ab-demo`` turns it off so that its figures
    stay comparable across releases)."""
    redis_url: str = ""
    """``redis://host:port/db`` (``REDIS_URL``); '' = the embedded in-process store."""
    history_cap: int = 200
    """Distinct items kept per user, the newest; older ones are cut when a write passes it."""
    ttl_s: float = 7 * 24 * 3600.0
    """An event older than this (by its timestamp) is no longer served, nor stored."""
    dedup_window_s: float = 24 * 3600.0
    """An ``event_id`` seen within this window is answered ``duplicate`` and not applied again."""
    read_deadline_ms: float = 5.0
    """A read slower than this is abandoned: the answer goes out without recent events."""
    max_future_s: float = 300.0
    """An event ``ts`` further than this in the future is refused (``bad_ts``)."""
    down_backoff_s: float = 0.5
    """After a store error the store is not asked again for this long (reads answer without
    recent events, writes 503), so that a dead Redis costs one error per period, not one
    connect per request; it is retried after, so a Redis that is back is used again."""
    request_ids: int = 100_000
    """Recent request ids this gateway remembers (id -> user), to join events that carry only
    a ``request_id``; per replica."""
    memory_max_users: int = 200_000
    """The embedded store's bound: past it the least recently written user is forgotten."""
    key_prefix: str = "recsys:rt:"
    max_history: int = MAX_HISTORY
    """The handler's history limit: the merged history is cut oldest-first to fit it."""

    def __post_init__(self) -> None:
        if self.history_cap < 1 or self.ttl_s <= 0 or self.dedup_window_s <= 0:
            raise ValueError("history_cap must be >= 1, ttl_s and dedup_window_s > 0")
        if self.read_deadline_ms <= 0 or self.down_backoff_s < 0:
            raise ValueError("read_deadline_ms must be > 0, down_backoff_s >= 0")
        if self.request_ids < 0 or self.memory_max_users < 1:
            raise ValueError("request_ids must be >= 0, memory_max_users >= 1")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url {self.redis_url!r}: expected redis://, rediss:// or "
                             "unix://")

    @property
    def store_name(self) -> str:
        return "redis" if self.redis_url else "memory"

    @classmethod
    def from_env(cls, **overrides) -> "RealtimeConfig":
        """Defaults, then ``REDIS_URL`` and ``GATEWAY_REALTIME`` (on/off), then ``overrides``
        (those not None)."""
        env: dict = {}
        if os.environ.get("REDIS_URL"):
            env["redis_url"] = os.environ["REDIS_URL"]
        flag = os.environ.get("GATEWAY_REALTIME", "").strip().lower()
        if flag:
            if flag not in ("on", "off", "true", "false", "1", "0"):
                raise ValueError(f"GATEWAY_REALTIME={flag!r}: on or off")
            env["enabled"] = flag in ("on", "true", "1")
        env.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**env)


__all__ = ["RealtimeConfig", "INTERACTIONS"]
