"""The one upstream: a TorchServe holding every model version of the experiment.

One pooled ``aiohttp.ClientSession`` for it; a semaphore per model version bounds that
version's in-flight requests (a slow version waits inside its own limit, then falls back,
instead of taking every connection).

Classification of an attempt (CONTRACTS.md, "Gateway answers"):

* ``ok``            200 from the handler
* ``client_error``  a 4xx **from the handler** (JSON body with ``reason``): passed through
* ``too_large``     TorchServe's own empty 413 (Netty's ``max_request_size``): our JSON 413
* failures          ``timeout``, ``connect``, ``disconnected``, ``overload`` (no slot within the
                    deadline), ``invalid_key``, ``http_404`` (unknown version), ``http_5xx``
                    codes (``http_503``, ``http_507`` on a worker's death, ...), other 4xx
                    from TorchServe itself (``http_4xx``)

Token auth (``--config prod``): :class:`TokenKeeper` reads ``key_file.json``, renews the
inference key through ``GET /token?type=inference`` (API key) before it expires, and on an
``InvalidKeyException`` adopts a newer key from the file (TorchServe restarted) or renews, then
the request is retried once.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

log = logging.getLogger("gateway.upstream")

FAILURE_KINDS = ("timeout", "connect", "disconnected", "overload", "invalid_key", "http_404",
                 "http_4xx", "http_5xx")


@dataclass
class Attempt:
    kind: str                 # ok | client_error | too_large | a failure kind
    status: int = 0
    body: bytes = b""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.kind not in ("ok", "client_error", "too_large")


def _expiry(value: str | None) -> float | None:
    """TorchServe writes e.g. ``2026-12-01T15:05:14.451523343Z`` (nanoseconds)."""
    if not value:
        return None
    v = value.strip().rstrip("Z")
    if "." in v:
        head, frac = v.split(".", 1)
        v = f"{head}.{frac[:6]}"
    try:
        return dt.datetime.fromisoformat(v).replace(tzinfo=dt.timezone.utc).timestamp()
    except ValueError:
        return None


class TokenKeeper:
    """TorchServe's inference key, from ``key_file.json``; None everywhere when auth is off."""

    def __init__(self, key_file: Path | None, management_url: str | None, metrics=None):
        self.key_file = key_file
        self.management_url = (management_url or "").rstrip("/")
        self.metrics = metrics
        self.key: str | None = None
        self.api_key: str | None = None
        self.expires: float | None = None
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return self.key_file is not None

    def header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def read(self) -> bool:
        """Load the keys from the file; True when it was readable."""
        if not self.enabled:
            return False
        try:
            data = json.loads(Path(self.key_file).read_text())
            inf = data["inference"]
            self.key, self.expires = inf["key"], _expiry(inf.get("expiration time"))
            self.api_key = (data.get("API") or {}).get("key")
            return True
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def _count(self, trigger: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.token_renewals.labels(trigger, result).inc()

    async def renew(self, session: aiohttp.ClientSession, trigger: str,
                    stale_key: str | None = None) -> bool:
        """A fresh key: from the file when it already holds a newer one (TorchServe restarted or
        someone renewed), else via ``GET /token``. One renewal at a time."""
        async with self._lock:
            if stale_key is not None and self.key != stale_key:
                return True  # another request renewed meanwhile
            before = self.key
            if self.read() and self.key != before and self.key != stale_key:
                self._count(trigger, "reread")
                return True
            if not (self.api_key and self.management_url):
                self._count(trigger, "error")
                return False
            try:
                async with session.get(f"{self.management_url}/token", params={"type": "inference"},
                                       headers={"Authorization": f"Bearer {self.api_key}"},
                                       timeout=aiohttp.ClientTimeout(total=5)) as r:
                    await r.read()
                    ok = r.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok = False
            if ok and self.read():
                self._count(trigger, "renewed")
                log.info("TorchServe inference key renewed (%s)", trigger)
                return True
            self._count(trigger, "error")
            log.warning("TorchServe inference key renewal failed (%s)", trigger)
            return False

    def due(self, margin_s: float) -> bool:
        return self.expires is not None and self.expires - time.time() <= margin_s


class Upstream:
    def __init__(self, inference_url: str, model_name: str, *, connections: int,
                 per_version: int, tokens: TokenKeeper):
        self.url = inference_url.rstrip("/")
        self.model = model_name
        self.connections, self.per_version = connections, per_version
        self.tokens = tokens
        self.session: aiohttp.ClientSession | None = None
        self._slots: dict[str, asyncio.Semaphore] = {}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.connections, keepalive_timeout=30,
                                         enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                             skip_auto_headers=("User-Agent",))
        self.tokens.read()

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def _slot(self, version: str) -> asyncio.Semaphore:
        s = self._slots.get(version)
        if s is None:
            s = self._slots[version] = asyncio.Semaphore(self.per_version)
        return s

    async def predict(self, version: str, body: bytes, timeout_s: float) -> Attempt:
        """One attempt (plus one retry after a key renewal) within ``timeout_s``."""
        t0 = time.perf_counter()
        if timeout_s <= 0:
            return Attempt("timeout")
        slot = self._slot(version)
        try:
            await asyncio.wait_for(slot.acquire(), timeout_s)
        except asyncio.TimeoutError:
            return Attempt("overload", seconds=time.perf_counter() - t0)
        try:
            a = await self._post(version, body, timeout_s - (time.perf_counter() - t0))
            if a.kind == "disconnected":
                # a pooled keep-alive connection the server had closed (e.g. TorchServe
                # restarted): one immediate retry on a fresh connection
                a = await self._post(version, body, timeout_s - (time.perf_counter() - t0))
            if a.kind == "invalid_key" and self.tokens.enabled:
                used = self.tokens.key
                if await self.tokens.renew(self.session, "invalid_key", stale_key=used):
                    a = await self._post(version, body, timeout_s - (time.perf_counter() - t0))
        finally:
            slot.release()
        a.seconds = time.perf_counter() - t0
        return a

    async def _post(self, version: str, body: bytes, timeout_s: float) -> Attempt:
        if timeout_s <= 0:
            return Attempt("timeout")
        headers = {"Content-Type": "application/json", **self.tokens.header()}
        try:
            async with self.session.post(f"{self.url}/predictions/{self.model}/{version}",
                                         data=body, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
                data = await r.read()
                status = r.status
        except asyncio.TimeoutError:
            return Attempt("timeout")
        except aiohttp.ClientConnectorError:
            return Attempt("connect")
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError):
            return Attempt("disconnected")
        except aiohttp.ClientError:
            return Attempt("connect")
        return classify(status, data)


def classify(status: int, data: bytes) -> Attempt:
    if status == 200:
        return Attempt("ok", status, data)
    if 400 <= status < 500:
        if status == 413 and not data.strip():
            return Attempt("too_large", status, data)
        if b"InvalidKeyException" in data:
            return Attempt("invalid_key", status, data)
        if b'"reason"' in data:
            try:
                d = orjson.loads(data)
                if isinstance(d, dict) and d.get("reason"):
                    return Attempt("client_error", status, data)
            except orjson.JSONDecodeError:
                pass
        return Attempt("http_404" if status == 404 else "http_4xx", status, data)
    return Attempt(f"http_{status}", status, data)


__all__ = ["Upstream", "TokenKeeper", "Attempt", "classify", "FAILURE_KINDS"]
