"""A lean Redis client for the request path: one pipelined connection, hiredis for parsing.

Why not ``redis.asyncio`` on the request path: the gateway benchmark measured it at about
+190 µs of gateway CPU per request and a store read P99 of 4.8 ms at 300 req/s on this 2-core
machine (a pool checkout, a task for the deadline and a Python-level parser per command), against a
1 ms goal (benchmarks/results/gateway.md keeps both runs). Redis answers commands of one
connection in order, so one connection carries every concurrent command: a command is written
at once and its future queued; ``data_received`` feeds hiredis' C parser and resolves the
futures in order. A deadline is a timer on the future, not a task: a command that misses it is
abandoned (its future fails, its slot stays queued so the replies stay aligned, its reply is
dropped when it comes).

Failure handling: a lost connection fails every queued command with :class:`RespError`; the next
command reconnects (``connect_timeout_s``), so a Redis that is back is used again without a
restart. More than ``max_pending`` unanswered commands (a Redis that stopped answering) closes
the connection, so abandoned slots cannot pile up. URLs: ``redis://[user:password@]host:port/db``,
``rediss://`` (TLS, e.g. ElastiCache in-transit encryption) and ``unix:///path?db=N``.
"""
from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import hiredis


class RespError(RuntimeError):
    """A connection failure, a timeout or an error reply."""


def pack(*args: Any) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self, client: "RespClient"):
        self.client = client
        self.reader = hiredis.Reader(encoding="utf-8", errors="replace")
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.client._pending
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if not pending:  # a reply nobody asked for: the stream is out of step
                self.transport.close()
                return
            fut = pending.popleft()
            if fut.done():  # abandoned at its deadline
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(RespError(str(reply)))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc) -> None:
        self.client._lost(self, exc)


class RespClient:
    def __init__(self, url: str, *, connect_timeout_s: float = 1.0, max_pending: int = 10_000):
        u = urlparse(url)
        if u.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"{url!r}: expected redis://, rediss:// or unix://")
        self.url = url
        self.tls = u.scheme == "rediss"
        self.path = u.path if u.scheme == "unix" else None
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 6379
        query = parse_qs(u.query)
        db = query.get("db", [""])[0] if u.scheme == "unix" else (u.path or "/").lstrip("/")
        self.db = int(db or 0)
        self.username = unquote(u.username) if u.username else None
        self.password = unquote(u.password) if u.password else None
        self.connect_timeout_s = connect_timeout_s
        self.max_pending = max_pending
        self._pending: collections.deque[asyncio.Future] = collections.deque()
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future | None = None

    # ---- connection ---------------------------------------------------------------------------
    async def _connect(self) -> _Protocol:
        if self._proto is not None:
            return self._proto
        if self._connecting is not None:  # one connect at a time; the others wait for it
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            proto = await asyncio.wait_for(self._open(loop), self.connect_timeout_s)
        except (OSError, asyncio.TimeoutError, RespError) as e:
            err = RespError(f"cannot connect to {self._where()}: {type(e).__name__}: {e}")
            self._connecting.set_exception(err)
            self._connecting.exception()  # retrieved: no "never retrieved" warning
            self._connecting = None
            raise err from None
        self._connecting.set_result(proto)
        self._connecting = None
        return proto

    async def _open(self, loop) -> _Protocol:
        if self.path:
            _, proto = await loop.create_unix_connection(lambda: _Protocol(self), self.path)
        else:
            ctx = ssl.create_default_context() if self.tls else None
            _, proto = await loop.create_connection(lambda: _Protocol(self), self.host, self.port,
                                                    ssl=ctx)
        self._proto = proto
        hello = []
        if self.password is not None:
            hello.append(("AUTH", self.username, self.password) if self.username
                         else ("AUTH", self.password))
        if self.db:
            hello.append(("SELECT", self.db))
        for cmd in hello:
            await self._send(proto, cmd, None)
        return proto

    def _where(self) -> str:
        return self.path or f"{self.host}:{self.port}"

    def _lost(self, proto: _Protocol, exc) -> None:
        if self._proto is proto:
            self._proto = None
        err = RespError(f"connection to {self._where()} lost"
                        + (f": {exc}" if exc else ""))
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(err)

    # ---- commands -----------------------------------------------------------------------------
    async def call(self, *args: Any, timeout_s: float | None = None) -> Any:
        """Send one command and await its reply (RespError on failure or past ``timeout_s``)."""
        proto = self._proto or await self._connect()
        return await self._send(proto, args, timeout_s)

    def _send(self, proto: _Protocol, args, timeout_s: float | None) -> asyncio.Future:
        if len(self._pending) >= self.max_pending:  # Redis stopped answering: start afresh
            proto.transport.close()
            raise RespError(f"{len(self._pending)} commands unanswered by {self._where()}; "
                            "connection reset")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append(fut)
        proto.transport.write(pack(*args))
        if timeout_s is not None:
            handle = loop.call_later(timeout_s, _expire, fut, timeout_s)
            fut.add_done_callback(lambda _: handle.cancel())
        return fut

    async def close(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()


def _expire(fut: asyncio.Future, timeout_s: float) -> None:
    if not fut.done():
        fut.set_exception(RespError(f"no reply within {timeout_s * 1000:.1f} ms"))


__all__ = ["RespClient", "RespError", "pack"]
