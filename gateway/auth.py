"""Client API keys: created once, stored by the gateway only as hashes, checked in constant time.

``python -m gateway keys init --out OUT`` writes two keys, each readable only by its owner
(mode 0600): ``OUT/gateway/client_key`` (rights ``recommend``, ``events``) and
``OUT/gateway/admin_key`` (``admin`` as well), plus ``OUT/gateway/keys.json``, which is all the
gateway reads: per key an id, the sha256 of the key, its rights and its rate limit. Keys are
256-bit random tokens, so an unsalted sha256 is enough (no password stretching is needed for
keys nobody chose). A presented key is hashed and compared with **every** stored hash with
``hmac.compare_digest`` (no early exit), so timing says nothing about which key came close.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

RIGHTS = ("recommend", "events", "admin")
CLIENT_RIGHTS = ("recommend", "events")
ADMIN_RIGHTS = ("recommend", "events", "admin")


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass
class KeyEntry:
    id: str
    sha256: str
    rights: tuple[str, ...]
    rate_per_s: float
    """Requests per second; 0 means suspended (every request gets 403 ``suspended``)."""
    burst: float

    @property
    def suspended(self) -> bool:
        return self.rate_per_s == 0


@dataclass
class TokenBucket:
    """Per-key rate limit: ``rate`` tokens per second up to ``burst``."""

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def take(self, now: float | None = None) -> float:
        """0.0 when allowed, else seconds until a token is available."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate if self.rate > 0 else math.inf


class KeyStore:
    """The hashed keys of ``keys.json`` and one token bucket per key."""

    def __init__(self, entries: list[KeyEntry]):
        self.entries = entries
        self.buckets = {e.id: TokenBucket(e.rate_per_s, e.burst) for e in entries}

    @classmethod
    def load(cls, path: str | Path, default_rate: float = 1000.0,
             default_burst: float = 2000.0) -> "KeyStore":
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{p} is missing; create keys with: python -m gateway keys "
                                    f"init --out {p.parent.parent}")
        data = json.loads(p.read_text())
        entries = []
        for i, k in enumerate(data.get("keys", [])):
            rights = tuple(k.get("rights", []))
            bad = set(rights) - set(RIGHTS)
            if bad or not k.get("id") or len(k.get("sha256", "")) != 64:
                raise ValueError(f"{p}: keys[{i}] is malformed (id, sha256, rights in {RIGHTS})")
            rate = _number(k.get("rate_per_s", default_rate), f"{p}: keys[{i}].rate_per_s")
            burst = _number(k.get("burst", default_burst), f"{p}: keys[{i}].burst")
            if rate > 0 and burst < 1:
                raise ValueError(f"{p}: keys[{i}].burst must be >= 1 (one request), got {burst:g}")
            entries.append(KeyEntry(k["id"], k["sha256"], rights, rate, burst))
        return cls(entries)

    def identify(self, key: str | None) -> KeyEntry | None:
        """The entry whose hash matches, compared with every entry (constant time per entry)."""
        if not key:
            return None
        h = key_hash(key).encode()
        found = None
        for e in self.entries:
            if hmac.compare_digest(h, e.sha256.encode()):
                found = e
        return found

    def throttle(self, entry: KeyEntry) -> float:
        """0.0 when this key may go on, else seconds to wait (Retry-After)."""
        return self.buckets[entry.id].take()


def _number(value, what: str) -> float:
    """A finite number >= 0 (a rate of 0 suspends the key), else a clear error at load time."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number >= 0, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{what} must be a finite number >= 0 (0 suspends the key), got {value!r}")
    return v


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _write_secret(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 from the first byte (never world-readable, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def add_key(store_path: Path, key_path: Path, key_id: str, rights: tuple[str, ...],
            rate_per_s: float | None = None, burst: float | None = None) -> bool:
    """Create ``key_path`` (0600) with a fresh key and add its hash to ``store_path``.

    Returns False (and changes nothing) when ``key_path`` exists and its hash is already stored.
    """
    bad = set(rights) - set(RIGHTS)
    if bad:
        raise ValueError(f"unknown rights {sorted(bad)}; choose from {RIGHTS}")
    data = json.loads(store_path.read_text()) if store_path.exists() else {"keys": []}
    if key_path.exists():
        h = key_hash(key_path.read_text().strip())
        if any(k["sha256"] == h for k in data["keys"]):
            return False
    key = secrets.token_urlsafe(32)
    _write_secret(key_path, key + "\n")
    entry = {"id": key_id, "sha256": key_hash(key), "rights": list(rights)}
    if rate_per_s is not None:
        entry["rate_per_s"] = rate_per_s
    if burst is not None:
        entry["burst"] = burst
    data["keys"] = [k for k in data["keys"] if k["id"] != key_id] + [entry]
    _write_secret(store_path, json.dumps(data, indent=2) + "\n")
    return True


def ensure_secret(path: Path) -> bytes:
    """The pseudonym HMAC secret (created, 0600, on first use)."""
    if not path.exists():
        _write_secret(path, secrets.token_hex(32) + "\n")
    return path.read_text().strip().encode()


def init_keys(paths, rate_per_s: float | None = None, burst: float | None = None) -> list[str]:
    """Client and admin keys + pseudonym secret under ``paths.root`` when missing. Returns the
    names of what was created."""
    made = []
    if add_key(paths.key_hashes, paths.client_key, "client", CLIENT_RIGHTS, rate_per_s, burst):
        made.append(str(paths.client_key))
    if add_key(paths.key_hashes, paths.admin_key, "admin", ADMIN_RIGHTS, rate_per_s, burst):
        made.append(str(paths.admin_key))
    if not paths.pseudonym_secret.exists():
        ensure_secret(paths.pseudonym_secret)
        made.append(str(paths.pseudonym_secret))
    return made


def read_key(path: str | Path) -> str:
    return Path(path).read_text().strip()


__all__ = ["KeyStore", "KeyEntry", "TokenBucket", "bearer", "add_key", "init_keys",
           "ensure_secret", "read_key", "key_hash", "RIGHTS", "CLIENT_RIGHTS", "ADMIN_RIGHTS"]
