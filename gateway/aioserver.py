"""The gateway's routes served by aiohttp's low-level server (no web.Application, no router).

Limits are enforced here, before the body is read (``gateway/http.py``, :class:`ServerLimits`):
a declared Content-Length over ``max_body_bytes`` gets the 413 at once; on a shed path the
in-flight budget (:class:`Admission`) is charged the declared length (``max_body_bytes`` for a
chunked body, whose size is unknown) and a refusal gets the 503 without reading a byte. The
reservation is released after the answer is written, so the budget covers the body, its parse
and the answer together.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Mapping

from aiohttp import HttpVersion11, web, web_server

from gateway.http import Request, Response, Route, ServerLimits

log = logging.getLogger("gateway.http")

_NOT_FOUND = b'{"code":404,"type":"NotFound","reason":"not_found","message":"no such endpoint"}'
_NOT_ALLOWED = (b'{"code":405,"type":"MethodNotAllowed","reason":"method_not_allowed",'
                b'"message":"method not allowed on this endpoint"}')


class _TooLarge(Exception):
    pass


async def _read(request: web.BaseRequest, limit: int) -> bytes:
    """The whole body, refusing (``_TooLarge``) as soon as it passes ``limit`` bytes."""
    n = request.content_length
    if n is not None:
        return await request.content.readexactly(n) if n else b""
    chunks, size = [], 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)


def _to_aiohttp(r: Response) -> web.Response:
    resp = web.Response(body=r.body, status=r.status, headers=r.headers)
    resp.content_type = r.content_type.split(";", 1)[0]
    if "charset=" in r.content_type:
        resp.charset = r.content_type.split("charset=", 1)[1].strip()
    return resp


class AiohttpServer:
    """A started aiohttp low-level server (``gateway.http.Server``)."""

    def __init__(self, routes: Mapping[tuple[str, str], Route], limits: ServerLimits):
        self.routes = dict(routes)
        self.paths = {p for _, p in self.routes}
        self.limits = limits
        self.port = 0
        self._web = web_server.Server(self._handle, access_log=None, handler_cancellation=False)
        self._tcp: asyncio.AbstractServer | None = None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        route = self.routes.get((request.method, request.path))
        if route is None:
            status, body = (405, _NOT_ALLOWED) if request.path in self.paths else (404, _NOT_FOUND)
            return web.Response(body=body, status=status, content_type="application/json")
        limits = self.limits
        declared = request.content_length
        if declared is not None and declared > limits.max_body_bytes:
            return _to_aiohttp(limits.too_large(declared))
        release = None
        headers = {k.lower(): v for k, v in request.headers.items()}
        gated = Request(request.method, request.path, headers)
        if limits.gate is not None and request.path in limits.shed_paths:
            refusal = limits.gate(gated)
            if refusal is not None:  # e.g. no API key: never admitted, its body never read
                resp = _to_aiohttp(refusal)
                resp.force_close()
                return resp
        if limits.admission is not None and request.path in limits.shed_paths:
            release = limits.admission.admit(declared if declared is not None
                                             else limits.max_body_bytes)
            if release is None:
                resp = _to_aiohttp(limits.shed())
                resp.force_close()  # the unread body must not be parsed as the next request
                return resp
        try:
            if request.version == HttpVersion11 and \
                    request.headers.get("Expect", "").lower() == "100-continue":
                # admitted: now the client may send the body (curl waits for this above 1 MiB)
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.writer.output_size = 0
            try:
                body = await _read(request, limits.max_body_bytes)
            except _TooLarge:
                resp = _to_aiohttp(limits.too_large(None))
                resp.force_close()
                return resp
            gated.body = body
            answer = await route(gated)
            del body
            resp = _to_aiohttp(answer)
            if release is not None:
                # write the answer before the reservation ends: the budget covers it too
                await resp.prepare(request)
                await resp.write_eof()
            return resp
        finally:
            if release is not None:
                release()

    async def start(self, host: str, port: int, backlog: int) -> "AiohttpServer":
        loop = asyncio.get_running_loop()
        self._tcp = await loop.create_server(self._web, host, port, backlog=backlog,
                                             reuse_address=True)
        self.port = self._tcp.sockets[0].getsockname()[1]
        return self

    async def close(self, grace_s: float) -> None:
        """Stop accepting, let requests in flight finish (up to ``grace_s``), close the rest."""
        if self._tcp is None:
            return
        self._tcp.close()
        self._web.pre_shutdown()
        await self._web.shutdown(grace_s)
        await self._tcp.wait_closed()
        self._tcp = None


async def start_aiohttp(routes: Mapping[tuple[str, str], Route], host: str, port: int,
                        limits: ServerLimits, backlog: int = 2048) -> AiohttpServer:
    """Serve ``routes`` (``(method, path) -> Route``) on ``host:port`` (0 = a free port)."""
    return await AiohttpServer(routes, limits).start(host, port, backlog)


__all__ = ["start_aiohttp", "AiohttpServer"]
