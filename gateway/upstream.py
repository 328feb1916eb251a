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


class AiohttpClient:
    """The upstream HTTP call over one pooled aiohttp session: ``request()`` is the whole
    interface the gateway uses, so ``gateway/fastclient.py``'s ``FastClient`` (httptools) can
    take its place. Errors: ``asyncio.TimeoutError``; ``ConnectionRefusedError`` (or another
    ``ConnectionError``/``OSError``) when no connection could be made; ``ConnectionResetError``
    when a connection broke (e.g. a pooled keep-alive connection the server had closed)."""

    def __init__(self, base_url: str, connections: int):
        self.base_url = base_url.rstrip("/")
        self.connections = connections
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.connections, keepalive_timeout=30,
                                         enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                             skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: dict[str, str] | None = None, *,
                      timeout_s: float) -> tuple[int, bytes]:
        try:
            async with self.session.request(method, self.base_url + path, data=body,
                                            headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
                return r.status, await r.read()
        except asyncio.TimeoutError:
            raise
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as e:
            raise ConnectionResetError(str(e)) from None
        except aiohttp.ClientConnectorError as e:
            raise ConnectionRefusedError(str(e)) from None
        except aiohttp.ClientError as e:
            raise ConnectionError(str(e)) from None


class TokenKeeper:
    """TorchServe's inference key, from ``key_file.json``; None everywhere when auth is off.

    Renewal is shared: one ``GET /token`` at a time, bounded by ``timeout_s``; a caller waits
    for it at most its own remaining deadline (the renewal goes on for the others). After a
    failed renewal no new ``GET /token`` is sent until a back-off has passed (doubling from
    ``backoff_s`` up to ``max_backoff_s``), so a broken management API sees no renewal storm;
    meanwhile a newer key in the file is still adopted at once.
    """

    def __init__(self, key_file: Path | None, management_url: str | None, metrics=None, *,
                 timeout_s: float = 5.0, backoff_s: float = 1.0, max_backoff_s: float = 60.0):
        self.key_file = key_file
        self.management_url = (management_url or "").rstrip("/")
        self.metrics = metrics
        self.key: str | None = None
        self.api_key: str | None = None
        self.expires: float | None = None
        self.timeout_s, self.backoff_s, self.max_backoff_s = timeout_s, backoff_s, max_backoff_s
        self.client: AiohttpClient | None = None
        self._task: asyncio.Future | None = None
        self._failures = 0
        self._retry_at = 0.0

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

    async def start(self) -> None:
        if self.enabled and self.management_url and self.client is None:
            self.client = AiohttpClient(self.management_url, 2)
            await self.client.start()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.client is not None:
            await self.client.close()

    def _count(self, trigger: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.token_renewals.labels(trigger, result).inc()

    async def renew(self, trigger: str, stale_key: str | None = None,
                    timeout_s: float | None = None) -> bool:
        """A fresh key: from the file when it already holds a newer one (TorchServe restarted or
        someone renewed), else via the shared ``GET /token``. Waits at most ``timeout_s``."""
        if stale_key is not None and self.key != stale_key:
            return True  # another request renewed meanwhile
        task = self._task
        if task is None or task.done():
            before = self.key
            if self.read() and self.key != before and self.key != stale_key:
                self._count(trigger, "reread")
                return True
            if time.monotonic() < self._retry_at:
                self._count(trigger, "backoff")
                return False
            task = self._task = asyncio.ensure_future(self._renew(trigger))
        if timeout_s is None:
            return await asyncio.shield(task)
        if timeout_s <= 0:
            return False
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except asyncio.TimeoutError:
            return False

    async def _renew(self, trigger: str) -> bool:
        ok = False
        if self.api_key and self.client is not None:
            try:
                status, _ = await self.client.request(
                    "GET", "/token?type=inference", b"",
                    {"Authorization": f"Bearer {self.api_key}"}, timeout_s=self.timeout_s)
                ok = status == 200
            except (OSError, asyncio.TimeoutError):
                ok = False
        if ok and self.read():
            self._failures, self._retry_at = 0, 0.0
            self._count(trigger, "renewed")
            log.info("TorchServe inference key renewed (%s)", trigger)
            return True
        self._failures += 1
        wait = min(self.max_backoff_s, self.backoff_s * 2 ** (self._failures - 1))
        self._retry_at = time.monotonic() + wait
        self._count(trigger, "error")
        log.warning("TorchServe inference key renewal failed (%s); next try in %g s", trigger,
                    wait)
        return False

    def due(self, margin_s: float) -> bool:
        return self.expires is not None and self.expires - time.time() <= margin_s


DISCONNECTED: tuple[type[BaseException], ...] = (ConnectionResetError, BrokenPipeError,
                                                 ConnectionAbortedError)


class Upstream:
    """Model versions behind one TorchServe. ``client`` is anything with ``start()``,
    ``close()`` and ``request(method, path, body, headers, *, timeout_s) -> (status, body)``
    (:class:`AiohttpClient` by default, or ``gateway.fastclient.FastClient``);
    ``disconnected`` names its errors for a connection that broke (retried once at once), any
    other ``OSError`` is a failure to connect."""

    def __init__(self, inference_url: str, model_name: str, *, connections: int,
                 per_version: int, tokens: TokenKeeper, client=None,
                 disconnected: tuple[type[BaseException], ...] = DISCONNECTED):
        self.disconnected = disconnected
        self.url = inference_url.rstrip("/")
        self.model = model_name
        self.connections, self.per_version = connections, per_version
        self.tokens = tokens
        self.client = client if client is not None else AiohttpClient(self.url, connections)
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._paths: dict[str, str] = {}
        self._headers: dict[str, str] = {}
        self._headers_key: str | None = ""   # the inference key _headers was built for

    async def start(self) -> None:
        await self.client.start()
        await self.tokens.start()
        self.tokens.read()

    async def close(self) -> None:
        await self.tokens.close()
        await self.client.close()

    def _slot(self, version: str) -> asyncio.Semaphore:
        s = self._slots.get(version)
        if s is None:
            s = self._slots[version] = asyncio.Semaphore(self.per_version)
        return s

    async def _attempt(self, version: str, body: bytes, t0: float, timeout_s: float) -> Attempt:
        """Post within the version's concurrency slot (taken within the time left)."""
        slot = self._slot(version)
        left = timeout_s - (time.perf_counter() - t0)
        if left <= 0:
            return Attempt("timeout")
        if slot.locked():
            try:
                await asyncio.wait_for(slot.acquire(), left)
            except asyncio.TimeoutError:
                return Attempt("overload")
        else:
            await slot.acquire()  # free: taken at once (wait_for would refuse a tiny timeout)
        try:
            a = await self._post(version, body, timeout_s - (time.perf_counter() - t0))
            if a.kind == "disconnected":
                # a pooled keep-alive connection the server had closed (e.g. TorchServe
                # restarted): one immediate retry on a fresh connection
                a = await self._post(version, body, timeout_s - (time.perf_counter() - t0))
            return a
        finally:
            slot.release()

    async def predict(self, version: str, body: bytes, timeout_s: float) -> Attempt:
        """One attempt (plus one retry after a key renewal) within ``timeout_s``. A key renewal
        happens outside the version's slot and within the time left."""
        t0 = time.perf_counter()
        if timeout_s <= 0:
            return Attempt("timeout")
        used = self.tokens.key
        a = await self._attempt(version, body, t0, timeout_s)
        if a.kind == "invalid_key" and self.tokens.enabled:
            left = timeout_s - (time.perf_counter() - t0)
            if await self.tokens.renew("invalid_key", stale_key=used, timeout_s=left):
                a = await self._attempt(version, body, t0, timeout_s)
        a.seconds = time.perf_counter() - t0
        return a

    async def _post(self, version: str, body: bytes, timeout_s: float) -> Attempt:
        if timeout_s <= 0:
            return Attempt("timeout")
        key = self.tokens.key
        if key != self._headers_key:  # built once per inference key, not per request
            self._headers = {"Content-Type": "application/json", **self.tokens.header()}
            self._headers_key = key
        path = self._paths.get(version)
        if path is None:
            path = self._paths[version] = f"/predictions/{self.model}/{version}"
        try:
            status, data = await self.client.request("POST", path, body, self._headers,
                                                     timeout_s=timeout_s)
        except asyncio.TimeoutError:
            return Attempt("timeout")
        except OSError as e:
            return Attempt("disconnected" if isinstance(e, self.disconnected) else "connect")
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


__all__ = ["Upstream", "TokenKeeper", "AiohttpClient", "Attempt", "classify", "FAILURE_KINDS"]
