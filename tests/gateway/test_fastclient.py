"""gateway/fastclient.py against real peers on loopback: aiohttp's server (an independent HTTP
implementation), raw sockets where the failure must be exact, our own fastserver, and a real
TorchServe (its Netty frontend is what the gateway talks to in production)."""
from __future__ import annotations

import asyncio
import json

import pytest
import uvloop
from aiohttp import web

from gateway.fastclient import ConnectError, Disconnected, FastClient
from gateway.fastserver import FastServerConfig, start_fast
from gateway.http import Request, Response, ServerLimits


def run(coro):
    return uvloop.run(coro)


class AiohttpPeer:
    """An aiohttp server that records which client port each request came from."""

    def __init__(self):
        self.peers: list[int] = []
        app = web.Application()
        app.router.add_post("/echo", self.echo)
        app.router.add_get("/chunked", self.chunked)
        app.router.add_get("/close", self.close_after)
        app.router.add_get("/slow", self.slow)
        self.runner = web.AppRunner(app)

    async def start(self) -> "AiohttpPeer":
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    def _seen(self, request: web.Request) -> None:
        self.peers.append(request.transport.get_extra_info("peername")[1])

    async def echo(self, request: web.Request) -> web.Response:
        self._seen(request)
        return web.Response(body=await request.read(), status=201,
                            headers={"X-Seen": request.headers.get("X-Custom", "")})

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        self._seen(request)
        r = web.StreamResponse()
        r.enable_chunked_encoding()
        await r.prepare(request)
        for part in (b"alpha-", b"beta-", b"gamma"):
            await r.write(part)
            await asyncio.sleep(0.01)
        await r.write_eof()
        return r

    async def close_after(self, request: web.Request) -> web.Response:
        self._seen(request)
        return web.Response(body=b"bye", headers={"Connection": "close"})

    async def slow(self, request: web.Request) -> web.Response:
        self._seen(request)
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.Response(body=b"late")

    async def stop(self) -> None:
        await self.runner.cleanup()


def test_keepalive_reuse_chunked_and_connection_close_against_aiohttp():
    async def main():
        peer = await AiohttpPeer().start()
        c = FastClient(f"http://127.0.0.1:{peer.port}", max_connections=4)
        await c.start()
        try:
            for i in range(5):
                status, body = await c.request("POST", "/echo", b"x" * i * 10000,
                                               {"X-Custom": "v"}, timeout_s=5)
                assert (status, body) == (201, b"x" * i * 10000)
            assert len(set(peer.peers)) == 1 and c.open_connections == 1   # one reused connection
            status, body = await c.request("GET", "/chunked", timeout_s=5)
            assert (status, body) == (200, b"alpha-beta-gamma")
            assert len(set(peer.peers)) == 1
            status, body = await c.request("GET", "/close", timeout_s=5)
            assert (status, body) == (200, b"bye")
            assert c.open_connections == 0            # "Connection: close" is not pooled
            await c.request("POST", "/echo", b"again", timeout_s=5)
            assert len(set(peer.peers)) == 2
        finally:
            await c.close()
            await peer.stop()
    run(main())


def test_pool_limit_holds_under_concurrency():
    async def main():
        peer = await AiohttpPeer().start()
        c = FastClient(f"http://127.0.0.1:{peer.port}", max_connections=3)
        await c.start()
        try:
            answers = await asyncio.gather(*(c.request("GET", "/slow?s=0.05", timeout_s=10)
                                             for _ in range(30)))
            assert answers == [(200, b"late")] * 30
            assert len(set(peer.peers)) == 3 and c.open_connections == 3
        finally:
            await c.close()
            await peer.stop()
    run(main())


def test_timeout_discards_the_connection():
    async def main():
        peer = await AiohttpPeer().start()
        c = FastClient(f"http://127.0.0.1:{peer.port}", max_connections=1)
        await c.start()
        try:
            with pytest.raises(asyncio.TimeoutError):
                await c.request("GET", "/slow?s=0.5", timeout_s=0.1)
            assert c.open_connections == 0 and c.idle_connections == 0
            # the late "late" answer must not be read as this request's answer
            status, body = await c.request("POST", "/echo", b"mine", timeout_s=5)
            assert (status, body) == (201, b"mine")
            assert len(set(peer.peers)) == 2
            # waiting for a pooled connection counts against the deadline too
            slow = asyncio.create_task(c.request("GET", "/slow?s=0.5", timeout_s=5))
            await asyncio.sleep(0.05)
            with pytest.raises(asyncio.TimeoutError):
                await c.request("POST", "/echo", b"queued", timeout_s=0.1)
            assert await slow == (200, b"late")
        finally:
            await c.close()
            await peer.stop()
    run(main())


def test_connect_error():
    async def main():
        srv = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        srv.close()
        await srv.wait_closed()
        c = FastClient(f"http://127.0.0.1:{port}", max_connections=2)
        await c.start()
        with pytest.raises(ConnectError):
            await c.request("GET", "/", timeout_s=2)
        assert c.open_connections == 0
        await c.close()
    run(main())


async def _raw_server(drop_on: int):
    """Answers each connection's requests with keep-alive, but closes the connection without an
    answer on its ``drop_on``-th request: a pooled connection the server gave up on."""
    conns = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)
        n = 0
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int([ln.split(b":")[1] for ln in head.split(b"\r\n")
                          if ln.lower().startswith(b"content-length")][0] or 0)
            await reader.readexactly(length)
            n += 1
            if n == drop_on:
                writer.close()
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, conns


def test_server_closing_a_pooled_connection_gives_disconnected_and_a_retry_works():
    async def main():
        srv, conns = await _raw_server(drop_on=2)
        port = srv.sockets[0].getsockname()[1]
        c = FastClient(f"http://127.0.0.1:{port}", max_connections=4)
        await c.start()
        try:
            assert await c.request("POST", "/p", b"{}", timeout_s=5) == (200, b"ok")
            with pytest.raises(Disconnected):
                await c.request("POST", "/p", b"{}", timeout_s=5)
            assert c.open_connections == 0
            # what gateway/upstream.py does on "disconnected": one retry, on a fresh connection
            assert await c.request("POST", "/p", b"{}", timeout_s=5) == (200, b"ok")
            assert len(conns) == 2
        finally:
            await c.close()
            srv.close()
    run(main())


def test_idle_connections_closed_by_the_server_are_not_reused():
    async def main():
        async def ok(req: Request) -> Response:
            return Response(200, b'{"ok":1}')
        limits = ServerLimits(1024, lambda n: Response(413), lambda: Response(503))
        cfg = FastServerConfig(idle_timeout_s=0.2, tick_s=0.05)
        srv = await start_fast({("POST", "/p"): ok}, "127.0.0.1", 0, limits, config=cfg)
        c = FastClient(f"http://127.0.0.1:{srv.port}", max_connections=4)
        await c.start()
        try:
            assert await c.request("POST", "/p", b"{}", timeout_s=5) == (200, b'{"ok":1}')
            await asyncio.sleep(0.6)           # the server closed the idle connection
            assert await c.request("POST", "/p", b"{}", timeout_s=5) == (200, b'{"ok":1}')
            # a pooled connection older than keepalive_s is not used either
            c.keepalive_s = 0.0
            assert await c.request("POST", "/p", b"{}", timeout_s=5) == (200, b'{"ok":1}')
        finally:
            await c.close()
            await srv.close(1.0)
    run(main())


def test_against_a_real_torchserve(tmp_path):
    """TorchServe's Netty keeps connections alive: /ping and predictions over one connection."""
    from testkit.archives import build_random_versions, running_server
    from tests.gateway.conftest import MODEL, need_java

    need_java()
    out = build_random_versions(tmp_path, versions=(("1", 0),), model_name=MODEL, n_users=20,
                                n_items=100, delay_ms=1)

    async def main(url: str):
        c = FastClient(url, max_connections=4)
        await c.start()
        try:
            status, body = await c.request("GET", "/ping", timeout_s=10)
            assert status == 200 and json.loads(body)["status"] == "Healthy"
            for user in ("1", "2", "3"):
                status, body = await c.request(
                    "POST", f"/predictions/{MODEL}/1",
                    json.dumps({"user_id": user, "k": 3}).encode(),
                    {"Content-Type": "application/json"}, timeout_s=30)
                assert status == 200, body
                assert len(json.loads(body)["items"]) == 3
            assert c.open_connections == 1       # the answers above reused one connection
            # TorchServe closes the connection after every answer >= 400 (the handler's own 400
            # too): the client must not reuse it, and the next request must still succeed
            status, body = await c.request("POST", f"/predictions/{MODEL}/1", b'{"k": "ten"}',
                                           {"Content-Type": "application/json"}, timeout_s=30)
            assert status == 400 and json.loads(body)["reason"]
            status, _ = await c.request("POST", f"/predictions/{MODEL}/9", b"{}", timeout_s=30)
            assert status == 404
            status, body = await c.request("GET", "/ping", timeout_s=10)
            assert status == 200
        finally:
            await c.close()

    with running_server(out, config="dev", models={MODEL: f"{MODEL}-v1.mar"}) as ts:
        run(main(ts.inference_url))


def test_megabyte_bodies_both_ways_through_fastserver_and_fastclient():
    """4 MiB request and answer bodies, concurrently: the server's and the client's write paths
    (several writes per body, write-buffer back-pressure) deliver every byte, in order."""
    async def main():
        async def mirror(req: Request) -> Response:
            return Response(200, req.body[::-1])
        big = 4 << 20
        limits = ServerLimits(big, lambda n: Response(413), lambda: Response(503))
        srv = await start_fast({("POST", "/m"): mirror}, "127.0.0.1", 0, limits)
        c = FastClient(f"http://127.0.0.1:{srv.port}", max_connections=2)
        await c.start()
        try:
            bodies = [bytes([i]) * (big // 2) + bytes(range(256)) * (big // 512)
                      for i in range(4)]
            answers = await asyncio.gather(*(c.request("POST", "/m", b, timeout_s=30)
                                             for b in bodies))
            assert [a == (200, b[::-1]) for a, b in zip(answers, bodies)] == [True] * 4
            assert await c.request("POST", "/m", b"x" * (big + 1), timeout_s=30) == (413, b"")
        finally:
            await c.close()
            await srv.close(1.0)
    run(main())
