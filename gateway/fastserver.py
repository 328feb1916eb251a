"""The gateway's HTTP/1.1 server: an asyncio ``Protocol`` with ``httptools`` (llhttp) parsing.

Why not aiohttp's server: the py-spy profile in docs/gateway.md put about two thirds of the
gateway's CPU in aiohttp and the event loop (request/response objects, stream readers, a
task-per-connection reader, header multidicts). This server does the minimum the gateway needs
and nothing per request that it does not use: one parser per connection, a plain dict of
lower-case headers, one ``Task`` per burst of requests on a connection, one ``write`` per
answer, and one timer *per server* (a sweep every ``tick_s``) instead of timers per request.
``benchmarks/http_stack_bench.py`` measures it side by side with aiohttp.

What it guarantees (the seam is ``gateway/http.py``):

* HTTP/1.1 keep-alive and pipelining (answers leave in request order), ``Connection: close``,
  HTTP/1.0 (keep-alive only when asked), ``Content-Length`` and chunked request bodies.
* Refusals happen **before a body is read**: a declared ``Content-Length`` above
  ``limits.max_body_bytes`` gets ``limits.too_large(n)`` and the connection is closed; a path in
  ``limits.shed_paths`` is charged to ``limits.admission`` (chunked bodies are charged
  ``max_body_bytes``) and a refusal gets ``limits.shed()`` while the body is discarded unread
  into memory. The admission's release runs once the answer is written or the connection dies.
  A chunked body that grows past the limit gets the 413 and the connection is closed.
* Malformed HTTP: 400 and close. Too many or too large headers: 431 and close.
* Timeouts: a new connection must send a request head within ``header_timeout_s``, every
  request head must complete within ``header_timeout_s`` of its first byte (slowloris), a body
  within ``body_timeout_s``, and an idle keep-alive connection is closed after
  ``idle_timeout_s``.
* A route's exception is logged and answered 500. A client that disconnects does not cancel
  its route (the route's own work, e.g. an exposure record, completes).
* ``close(grace_s)``: stop accepting, close idle connections, answer every request whose head
  has arrived (the last answer says ``Connection: close``), then abort what is left.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import Callable, Mapping

import httptools
import orjson

from gateway.http import JSON, Request, Response, Route, ServerLimits

log = logging.getLogger("gateway.fastserver")


@dataclass(frozen=True)
class FastServerConfig:
    """Transport limits of :func:`start_fast` (the body limit and shedding are in ServerLimits)."""

    idle_timeout_s: float = 75.0      # keep-alive connection with nothing in progress
    header_timeout_s: float = 10.0    # a request head must complete this long after its first byte
    body_timeout_s: float = 60.0      # a request body must complete this long after its head
    max_headers: int = 100
    max_header_bytes: int = 64 * 1024  # request line + all header names and values
    max_pipelined: int = 16           # parsed requests queued on a connection: reading pauses
    linger_s: float = 2.0             # after a refusal: read and drop input this long, then abort
    tick_s: float = 0.5               # how often the one timeout sweep runs


def _error(status: int, reason: str, message: str) -> Response:
    """The gateway's error shape (``gateway.middleware.error``): code, type, reason, message."""
    kind = HTTPStatus(status).phrase.replace(" ", "")
    return Response(status, orjson.dumps({"code": status, "type": kind, "reason": reason,
                                          "message": message}))


_BAD_REQUEST = _error(400, "bad_request", "malformed HTTP request")
_HEADERS_TOO_LARGE = _error(431, "headers_too_large", "too many or too large request headers")
_INTERNAL = _error(500, "internal", "internal error")
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_SMALL = 16 * 1024   # answers up to this size go out as one buffer (one copy, one syscall)


class _Refusal(Exception):
    """Raised inside a parser callback to stop parsing; the answer is on the connection."""


class _Item:
    """One request on a connection, in arrival order: either a request for a route or an answer
    decided before its body was read (``answer``)."""

    __slots__ = ("route", "request", "answer", "keep_alive", "http10", "head_only", "release",
                 "close_after")

    def __init__(self) -> None:
        self.route: Route | None = None
        self.request: Request | None = None
        self.answer: Response | None = None
        self.keep_alive = True
        self.http10 = False
        self.head_only = False
        self.release: Callable[[], None] | None = None
        self.close_after = False

    def done(self) -> None:
        """Run the admission release exactly once."""
        release, self.release = self.release, None
        if release is not None:
            try:
                release()
            except Exception:  # a release must never take the connection down
                log.exception("admission release failed")


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue in order, run routes one after another, answer."""

    __slots__ = ("srv", "loop", "transport", "parser", "queue", "task", "cur", "url", "headers",
                 "head_bytes", "body", "body_len", "discard", "deadline", "closing", "input_done",
                 "refusal", "unread", "lost", "paused_writing", "drained", "reading_paused")

    def __init__(self, srv: "_FastServer") -> None:
        self.srv = srv
        self.loop = srv.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[_Item] = deque()
        self.task: asyncio.Task | None = None
        self.cur: _Item | None = None          # the message being parsed (head or body)
        self.url = b""
        self.headers: dict[str, str] = {}
        self.head_bytes = 0
        self.body: list[bytes] = []
        self.body_len = 0
        self.discard = False                   # this message's body is dropped as it arrives
        self.deadline = 0.0                    # loop.time() past which the sweep acts; 0: none
        self.closing = False                   # answer what is queued, then close
        self.input_done = False                # ignore further input (after a refusal, or closing)
        self.refusal: Response | None = None
        self.unread = False                    # input was cut short: linger before closing
        self.lost = False
        self.paused_writing = False
        self.drained: asyncio.Future | None = None
        self.reading_paused = False

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.srv.conns.add(self)
        self.deadline = self.loop.time() + self.srv.cfg.header_timeout_s
        if self.srv.closing:
            self.closing = True
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.srv.conns.discard(self)
        if self.cur is not None:
            self.cur.done()
            self.cur = None
        while self.queue:          # queued but never started: nobody will read their answers
            self.queue.popleft().done()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        if not self.srv.conns and self.srv.closing:
            self.srv.all_closed.set()

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.input_done:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An Upgrade/CONNECT request: its head was queued as a plain request; nothing after
            # it is HTTP we speak, so answer it and close.
            self._stop_input()
        except httptools.HttpParserCallbackError:
            refusal, self.refusal = self.refusal, None
            if refusal is not None:
                self._refuse(refusal)
            else:
                self._stop_input()   # closing: the next request is not read
        except httptools.HttpParserError:
            self._refuse(_BAD_REQUEST)

    def eof_received(self) -> bool | None:
        if self.unread and self.closing and self.task is None and not self.queue:
            return None        # lingering after our last answer and the client is done: close
        # The client half-closed: answer what it sent, then close (True keeps our side open).
        self._stop_input()
        return True

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        if self.closing:
            raise _Refusal()
        self.cur = _Item()
        self.url = b""
        self.headers = {}
        self.head_bytes = 0
        self.body = []
        self.body_len = 0
        self.discard = False
        self.deadline = self.loop.time() + self.srv.cfg.header_timeout_s

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > self.srv.cfg.max_header_bytes:
            self.refusal = _HEADERS_TOO_LARGE
            raise _Refusal()

    def on_header(self, name: bytes, value: bytes) -> None:
        cfg = self.srv.cfg
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > cfg.max_header_bytes or len(self.headers) >= cfg.max_headers:
            self.refusal = _HEADERS_TOO_LARGE
            raise _Refusal()
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1")
        old = self.headers.get(key)
        self.headers[key] = val if old is None else f"{old}, {val}"

    def on_headers_complete(self) -> None:
        srv, item, headers = self.srv, self.cur, self.headers
        assert item is not None
        limits = srv.limits
        method = self.parser.get_method().decode("ascii")
        url = self.url
        q = url.find(b"?")
        path = (url if q < 0 else url[:q]).decode("latin-1")
        item.keep_alive = self.parser.should_keep_alive()
        item.http10 = self.parser.get_http_version() == "1.0"
        if self.closing:
            item.keep_alive = False
        cl = headers.get("content-length")
        chunked = "transfer-encoding" in headers
        n = int(cl) if cl is not None and not chunked else 0   # llhttp has checked the digits
        if n > limits.max_body_bytes:
            self.refusal = limits.too_large(n)
            raise _Refusal()
        has_body = n > 0 or chunked
        expect = has_body and headers.get("expect", "").lower() == "100-continue"
        route = srv.routes.get((method, path))
        request = None  # the gated request object, handed on to the route
        if route is None and method == "HEAD":
            route = srv.routes.get(("GET", path))
            item.head_only = True
        if route is None:
            allowed = srv.methods.get(path)
            item.answer = (_error(405, "method_not_allowed", f"{method} not allowed on {path}")
                           if allowed else _error(404, "not_found", f"no route {path}"))
            if allowed:
                item.answer.headers["Allow"] = ", ".join(sorted(allowed))
        elif limits.gate is not None and path in limits.shed_paths and \
                (refusal := limits.gate(request := Request(method, path, headers))) is not None:
            item.answer = refusal  # e.g. no API key: never admitted, its body never read
        elif limits.admission is not None and path in limits.shed_paths:
            release = limits.admission.admit(limits.max_body_bytes if chunked else n)
            if release is None:
                item.answer = limits.shed()
            else:
                item.release = release
        if item.answer is not None:
            # Decided before the body: answer in turn, drop the body as it arrives. With
            # "Expect: 100-continue" the client may never send it, so the connection closes.
            self.discard = True
            if expect:
                item.close_after = True
                self.closing = self.input_done = self.unread = True
            self._enqueue(item)
        else:
            item.route = route
            item.request = request if request is not None else Request(method, path, headers)
            if expect and not self.queue and self.task is None:
                self.transport.write(_CONTINUE)
        self.deadline = self.loop.time() + srv.cfg.body_timeout_s if has_body else 0.0

    def on_body(self, data: bytes) -> None:
        if self.discard:
            return
        self.body_len += len(data)
        if self.body_len > self.srv.limits.max_body_bytes:   # chunked, grown past the limit
            self.refusal = self.srv.limits.too_large(None)
            raise _Refusal()
        self.body.append(data)

    def on_message_complete(self) -> None:
        item, self.cur = self.cur, None
        assert item is not None
        if item.answer is None:
            body = self.body
            item.request.body = body[0] if len(body) == 1 else b"".join(body)
            self._enqueue(item)
        self.body = []
        self.deadline = 0.0
        if not item.keep_alive:
            self._stop_input()

    # ------------------------------------------------------------------ answering

    def _enqueue(self, item: _Item) -> None:
        self.queue.append(item)
        if self.task is None:
            self.task = self.loop.create_task(self._serve())
        elif len(self.queue) >= self.srv.cfg.max_pipelined and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    async def _serve(self) -> None:
        """Answer queued items in order; one task per burst, not per request."""
        queue = self.queue
        try:
            while queue and not self.lost:
                item = queue.popleft()
                if self.reading_paused and len(queue) < self.srv.cfg.max_pipelined // 2:
                    self.reading_paused = False
                    if not self.input_done:
                        self.transport.resume_reading()
                try:
                    resp = item.answer
                    if resp is None:
                        try:
                            resp = await item.route(item.request)
                            if not isinstance(resp, Response):
                                raise TypeError(f"route returned {type(resp).__name__}")
                        except Exception:
                            log.exception("route %s %s failed", item.request.method,
                                          item.request.path)
                            resp = _INTERNAL
                    if self.lost:
                        break
                    keep = item.keep_alive and not item.close_after and not (
                        self.closing and not queue and self.cur is None)
                    self._write(resp, keep, item.head_only, item.http10)
                finally:
                    item.done()
                if not keep:
                    self._finish()
                    break
                if self.paused_writing:
                    self.drained = self.loop.create_future()
                    await self.drained
                    self.drained = None
        finally:
            self.task = None
        if self.lost or self.transport.is_closing():
            return
        if self.closing and self.cur is None:
            self._finish()
        elif self.cur is None and not self.input_done:
            self.deadline = self.loop.time() + self.srv.cfg.idle_timeout_s

    def _write(self, resp: Response, keep_alive: bool, head_only: bool, http10: bool) -> None:
        body = resp.body
        status = _STATUS_LINES.get(resp.status) or f"HTTP/1.1 {resp.status} Unknown\r\n"
        extra = "".join(f"{k}: {v}\r\n" for k, v in resp.headers.items()) if resp.headers else ""
        conn = ("Connection: keep-alive\r\n" if http10 else "") if keep_alive else \
            "Connection: close\r\n"
        head = (f"{status}Content-Type: {resp.content_type}\r\nContent-Length: {len(body)}\r\n"
                f"{extra}{conn}\r\n").encode("latin-1")
        if head_only or not body:
            self.transport.write(head)
        elif len(body) <= _SMALL:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))

    # ------------------------------------------------------------------ closing

    def _cut_input(self) -> None:
        self.closing = True
        self.input_done = True
        if self.cur is not None:   # a message cut short (half-close, refusal): never answered
            self.unread = True
            self.cur.done()
            self.cur = None

    def _stop_input(self) -> None:
        """Read no further requests: answer what is queued, then close."""
        self._cut_input()
        if self.task is None and not self.queue and not self.lost:
            self._finish()

    def _refuse(self, resp: Response) -> None:
        """Answer ``resp`` after the answers already owed, then close (lingering: see _finish)."""
        self._cut_input()
        self.unread = True
        if self.lost or self.transport.is_closing():
            return
        item = _Item()
        item.answer, item.keep_alive = resp, False
        self.queue.append(item)
        if self.task is None:
            self.task = self.loop.create_task(self._serve())

    def _finish(self) -> None:
        """Close after the last answer. When input was cut short (unread body), half-close and
        keep dropping input for ``linger_s`` so the client reads our answer instead of a reset."""
        if self.transport.is_closing():
            return
        self.closing = True
        if self.unread and self.transport.can_write_eof():
            self.transport.write_eof()
            if self.reading_paused:
                self.reading_paused = False
                self.transport.resume_reading()
            self.deadline = self.loop.time() + self.srv.cfg.linger_s
        else:
            self.transport.close()

    def timed_out(self) -> None:
        """The sweep found this connection past its deadline."""
        self.deadline = 0.0
        if self.task is not None:      # a request is being answered: let it finish, then close
            self._stop_input()
        else:
            self.transport.abort()

    def shutdown(self) -> None:
        """Server closing: idle connections go now, busy ones after their queued answers."""
        if self.lost:
            return
        if self.task is None and not self.queue and self.cur is None:
            self.closing = True
            self.transport.close()
        else:
            self.closing = True


class _FastServer:
    """The listening server and its connections; satisfies ``gateway.http.Server``."""

    def __init__(self, routes: Mapping[tuple[str, str], Route], limits: ServerLimits,
                 cfg: FastServerConfig) -> None:
        self.loop = asyncio.get_running_loop()
        self.routes = dict(routes)
        self.methods: dict[str, set[str]] = {}
        for method, path in self.routes:
            self.methods.setdefault(path, set()).add(method)
        self.limits, self.cfg = limits, cfg
        self.conns: set[_Connection] = set()
        self.closing = False
        self.all_closed = asyncio.Event()
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._sweeper: asyncio.Task | None = None

    async def start(self, host: str, port: int, backlog: int) -> "_FastServer":
        self.server = await self.loop.create_server(lambda: _Connection(self), host, port,
                                                    backlog=backlog, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        self._sweeper = self.loop.create_task(self._sweep())
        return self

    async def _sweep(self) -> None:
        """The one timer of the server: time out connections past their deadline."""
        while True:
            await asyncio.sleep(self.cfg.tick_s)
            now = self.loop.time()
            for c in [c for c in self.conns if c.deadline and c.deadline < now]:
                c.timed_out()

    async def close(self, grace_s: float) -> None:
        """Stop accepting, answer requests already received, close, abort after ``grace_s``."""
        if self.server is None:
            return
        self.closing = True
        self.server.close()
        for c in list(self.conns):
            c.shutdown()
        if self.conns:
            try:
                await asyncio.wait_for(self.all_closed.wait(), grace_s)
            except asyncio.TimeoutError:
                log.warning("%d connections still busy after %.1f s: aborting", len(self.conns),
                            grace_s)
                for c in list(self.conns):
                    c.transport.abort()
        self._sweeper.cancel()
        try:
            await self._sweeper
        except asyncio.CancelledError:
            pass
        await asyncio.sleep(0)   # let connection_lost callbacks of the aborts run


async def start_fast(routes: Mapping[tuple[str, str], Route], host: str, port: int,
                     limits: ServerLimits, backlog: int = 2048, *,
                     config: FastServerConfig | None = None) -> _FastServer:
    """Start serving ``routes`` ((METHOD, path) -> route) on host:port (0: an ephemeral port,
    see ``.port``); a :data:`gateway.http.ServerFactory`."""
    return await _FastServer(routes, limits, config or FastServerConfig()).start(host, port,
                                                                                  backlog)


__all__ = ["FastServerConfig", "start_fast"]
