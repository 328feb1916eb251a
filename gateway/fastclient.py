"""A keep-alive HTTP/1.1 client for the one upstream (TorchServe): asyncio ``Protocol`` +
``httptools`` response parsing.

Why not ``aiohttp.ClientSession``: per request it builds a ClientRequest, a ClientResponse, a
StreamReader, header multidicts, a URL object and a timeout context, which the gateway's
profile shows as a large share of its CPU (docs/gateway.md). The gateway sends small JSON bodies
to one host it trusts, so this client does only that: a pool of at most ``max_connections``
connections (the most recently used idle one first, so few stay warm), one ``write`` per
request, one timer per request for its deadline.

Errors, as ``gateway/upstream.py`` classifies them:

* ``asyncio.TimeoutError``: no complete answer within ``timeout_s`` (waiting for a pooled
  connection and connecting included); the connection is discarded, never reused, since a late
  answer could otherwise be read as the next request's.
* :class:`ConnectError`: the connection could not be made.
* :class:`Disconnected`: the server closed the connection before a complete answer (typically
  a pooled keep-alive connection it had already closed, e.g. TorchServe restarted); the caller
  retries once, which takes a fresh connection when the pool's idle ones are gone.
* :class:`ProtocolError`: the answer was not HTTP.

Only what the gateway needs: no TLS, no redirects, no 100-continue, no HEAD, no compression.
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Mapping
from urllib.parse import urlsplit

import httptools


class ConnectError(ConnectionError):
    """The connection to the upstream could not be made."""


class Disconnected(ConnectionError):
    """The upstream closed the connection before a complete answer."""


class ProtocolError(ConnectionError):
    """The upstream's answer was not valid HTTP."""


class _Conn(asyncio.Protocol):
    """One upstream connection; at most one request on it at a time."""

    __slots__ = ("pool", "transport", "parser", "waiter", "status", "body", "alive", "idle_since",
                 "framed", "in_body", "reusable")

    def __init__(self, pool: "FastClient") -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.status = 0
        self.body: list[bytes] = []
        self.alive = True
        self.idle_since = 0.0
        self.framed = False     # the answer has a Content-Length or is chunked
        self.in_body = False    # headers done, message not complete
        self.reusable = False

    # transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        w = self.waiter
        if w is not None and not w.done():
            if self.in_body and not self.framed and exc is None:
                # an HTTP/1.0-style answer whose body ends with the connection
                w.set_result((self.status, b"".join(self.body)))
            else:
                w.set_exception(Disconnected("upstream closed the connection"))

    def eof_received(self) -> bool | None:
        self.alive = False
        return None   # close our side too

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:     # bytes nobody asked for: the connection is unusable
            self.alive = False
            self.transport.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.alive = False
            self.transport.abort()
            if not self.waiter.done():
                self.waiter.set_exception(ProtocolError(f"bad HTTP answer: {e}"))

    # parser callbacks
    def on_message_begin(self) -> None:
        self.body = []
        self.framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) in (14, 17) and name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.in_body = True

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.in_body = False
        self.reusable = self.parser.should_keep_alive()
        w = self.waiter
        if w is not None and not w.done():
            body = self.body
            w.set_result((self.status, body[0] if len(body) == 1 else b"".join(body)))
        self.body = []


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(asyncio.TimeoutError())


class FastClient:
    """A pool of keep-alive connections to one ``http://host:port`` base URL."""

    def __init__(self, base_url: str, max_connections: int, keepalive_s: float = 30) -> None:
        u = urlsplit(base_url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"FastClient speaks plain http://host:port only, got {base_url!r}")
        self.host = u.hostname
        self.port = u.port or 80
        self.prefix = u.path.rstrip("/")
        self.host_header = u.netloc
        self.max_connections = max_connections
        self.keepalive_s = keepalive_s
        self._idle: deque[_Conn] = deque()
        self._count = 0        # connections open or being opened
        self._waiters: deque[asyncio.Future] = deque()
        self._closed = True
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closed = False

    async def close(self) -> None:
        """Close idle connections; connections in use are closed when their request ends."""
        self._closed = True
        while self._idle:
            self._idle.pop().transport.close()
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_exception(ConnectError("client closed"))

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    @property
    def open_connections(self) -> int:
        return self._count

    # ------------------------------------------------------------------ the pool

    async def _connect(self, deadline: float) -> _Conn:
        loop = self._loop
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(self), self.host, self.port),
                max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            self._discarded()
            raise
        except OSError as e:
            self._discarded()
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {e}") from e
        except BaseException:
            self._discarded()
            raise
        return conn

    async def _acquire(self, deadline: float) -> _Conn:
        if self._closed:
            raise ConnectError("client is not started or closed")
        loop = self._loop
        now = loop.time()
        idle = self._idle
        while idle:
            c = idle.pop()
            if c.alive and now - c.idle_since < self.keepalive_s:
                return c
            self._drop(c)
        if self._count < self.max_connections:
            self._count += 1
            return await self._connect(deadline)
        fut = loop.create_future()
        self._waiters.append(fut)
        timer = loop.call_at(deadline, _expire, fut)
        try:
            c = await fut
        except asyncio.CancelledError:
            # cancelled after being handed a connection or a slot: give it back
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                handed = fut.result()
                if handed is None:
                    self._discarded()
                else:
                    self._release(handed)
            raise
        finally:
            timer.cancel()
        if c is None:                 # a slot freed up: open a connection in it
            return await self._connect(deadline)
        return c

    def _drop(self, c: _Conn) -> None:
        if c.transport is not None:
            c.transport.abort()
        self._discarded()

    def _discarded(self) -> None:
        """One connection fewer: a waiter may open one in its place."""
        self._count -= 1
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                self._count += 1
                w.set_result(None)
                return

    def _release(self, c: _Conn) -> None:
        if not (c.alive and c.reusable) or self._closed or c.transport.is_closing():
            self._drop(c)
            return
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(c)
                return
        c.idle_since = self._loop.time()
        self._idle.append(c)
        # expire the oldest idle connections here instead of with a timer per connection
        while self._idle and c.idle_since - self._idle[0].idle_since >= self.keepalive_s:
            self._drop(self._idle.popleft())

    # ------------------------------------------------------------------ requests

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: Mapping[str, str] | None = None, *,
                      timeout_s: float) -> tuple[int, bytes]:
        """``(status, body)`` of one request; see the module docstring for the errors."""
        loop = self._loop
        if loop is None:
            raise ConnectError("client is not started")
        if timeout_s <= 0:
            raise asyncio.TimeoutError()
        deadline = loop.time() + timeout_s
        conn = await self._acquire(deadline)
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()) if headers else ""
        length = f"Content-Length: {len(body)}\r\n" if body or method not in ("GET", "HEAD") else ""
        head = (f"{method} {self.prefix}{path} HTTP/1.1\r\nHost: {self.host_header}\r\n"
                f"{length}{extra}\r\n").encode("latin-1")
        fut = loop.create_future()
        conn.waiter = fut
        conn.reusable = False
        if not conn.alive:
            fut.set_exception(Disconnected("upstream closed the connection"))
        elif len(body) <= 16384:
            conn.transport.write(head + body if body else head)
        else:
            conn.transport.writelines((head, body))
        timer = loop.call_at(deadline, _expire, fut)
        try:
            result = await fut
        except BaseException:
            # timeout, disconnect, cancellation: a late answer must never be read as another's
            conn.waiter = None
            conn.alive = False
            self._drop(conn)
            raise
        finally:
            timer.cancel()
        conn.waiter = None
        self._release(conn)
        return result


__all__ = ["FastClient", "ConnectError", "Disconnected", "ProtocolError"]
