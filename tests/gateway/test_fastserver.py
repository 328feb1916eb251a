"""gateway/fastserver.py over real loopback sockets: raw bytes where the wire matters
(pipelining, 413 before the body, malformed input, chunked), aiohttp as an independent client
elsewhere. Every test runs on uvloop, the gateway's loop."""
from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Callable

import aiohttp
import pytest
import uvloop

from gateway.fastserver import FastServerConfig, start_fast
from gateway.http import Request, Response, ServerLimits

MAX_BODY = 1024


class TinyAdmission:
    """An in-flight byte budget, as small as a test needs (the gateway's lives elsewhere)."""

    def __init__(self, budget: int):
        self.budget, self.used, self.releases = budget, 0, 0

    def admit(self, n: int) -> Callable[[], None] | None:
        if self.used + n > self.budget:
            return None
        self.used += n

        def release() -> None:
            self.used -= n
            self.releases += 1
        return release


def limits(admission=None) -> ServerLimits:
    return ServerLimits(
        max_body_bytes=MAX_BODY,
        too_large=lambda n: Response(413, json.dumps({"reason": "too_large",
                                                      "declared": n}).encode()),
        shed=lambda: Response(503, b'{"reason":"shed"}', headers={"Retry-After": "1"}),
        admission=admission, shed_paths=frozenset({"/echo"}))


async def echo(req: Request) -> Response:
    return Response(200, json.dumps({"path": req.path, "len": len(req.body),
                                     "body": req.body.decode(),
                                     "x": req.header("X-Test")}).encode(),
                    headers={"X-Route": "echo"})


async def slow(req: Request) -> Response:
    await asyncio.sleep(float(req.body or b"0.3"))
    return Response(200, b'{"slept":true}')


async def boom(req: Request) -> Response:
    raise RuntimeError("route failure")


ROUTES = {("POST", "/echo"): echo, ("GET", "/echo"): echo, ("POST", "/slow"): slow,
          ("GET", "/boom"): boom}


def run(coro):
    return uvloop.run(coro)


async def started(admission=None, config: FastServerConfig | None = None):
    return await start_fast(ROUTES, "127.0.0.1", 0, limits(admission), config=config)


class Raw:
    """A raw client socket: send bytes, read HTTP answers one by one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.r, self.w = reader, writer

    @classmethod
    async def open(cls, port: int) -> "Raw":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.w.write(data)
        await self.w.drain()

    async def answer(self, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.r.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)}
        body = await asyncio.wait_for(self.r.readexactly(int(headers["content-length"])), timeout)
        return status, headers, body

    async def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closed the connection (EOF with nothing more to read)."""
        return await asyncio.wait_for(self.r.read(), timeout) == b""

    def close(self) -> None:
        self.w.close()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


def test_keepalive_reuses_one_connection_and_routes():
    async def main():
        srv = await started()
        try:
            conn = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(connector=conn) as s:
                for i in range(5):
                    async with s.post(f"http://127.0.0.1:{srv.port}/echo", data=b"x" * i,
                                      headers={"X-Test": "v"}) as r:
                        assert r.status == 200
                        assert r.headers["X-Route"] == "echo"
                        assert r.headers["Content-Type"] == "application/json"
                        assert await r.json() == {"path": "/echo", "len": i, "body": "x" * i,
                                                  "x": "v"}
                async with s.get(f"http://127.0.0.1:{srv.port}/nope") as r:
                    assert r.status == 404 and (await r.json())["reason"] == "not_found"
                async with s.delete(f"http://127.0.0.1:{srv.port}/echo") as r:
                    assert r.status == 405
                    assert set(r.headers["Allow"].split(", ")) == {"GET", "POST"}
                async with s.get(f"http://127.0.0.1:{srv.port}/boom") as r:
                    assert r.status == 500 and (await r.json())["reason"] == "internal"
                async with s.get(f"http://127.0.0.1:{srv.port}/echo?q=1") as r:
                    assert (await r.json())["path"] == "/echo"
                async with s.head(f"http://127.0.0.1:{srv.port}/echo") as r:
                    # HEAD runs the GET route and sends its headers only
                    assert r.status == 200 and int(r.headers["Content-Length"]) > 0
                    assert await r.read() == b""
            assert len(srv.conns) <= 1   # everything above went over one connection
        finally:
            await srv.close(1.0)
    run(main())


def test_pipelined_requests_are_answered_in_order():
    async def main():
        srv = await started()
        try:
            c = await Raw.open(srv.port)
            # the first one is slow: the fast ones after it must still come back after it
            await c.send(post("/slow", b"0.2") + b"".join(post("/echo", str(i).encode())
                                                         for i in range(10)))
            status, _, body = await c.answer()
            assert status == 200 and json.loads(body) == {"slept": True}
            for i in range(10):
                status, _, body = await c.answer()
                assert json.loads(body)["body"] == str(i)
            c.close()
        finally:
            await srv.close(1.0)
    run(main())


def test_413_is_answered_before_the_body_is_sent_and_the_connection_closes():
    async def main():
        adm = TinyAdmission(10 * MAX_BODY)
        srv = await started(adm)
        try:
            c = await Raw.open(srv.port)
            await c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000\r\n\r\n")
            status, _, body = await c.answer()   # no byte of the body was sent
            assert status == 413 and json.loads(body) == {"reason": "too_large",
                                                          "declared": 1000000000}
            assert await c.closed()
            assert adm.used == 0
        finally:
            await srv.close(1.0)
    run(main())


def test_shed_answers_503_without_the_body_and_releases_after_answering():
    async def main():
        adm = TinyAdmission(MAX_BODY)
        srv = await started(adm)
        try:
            slow_release = []
            gate = asyncio.Event()

            async def hold(req: Request) -> Response:
                slow_release.append(req.body)
                await gate.wait()
                return Response(200, b"{}")
            srv.routes[("POST", "/echo")] = hold
            a = await Raw.open(srv.port)
            await a.send(post("/echo", b"a" * 1000))      # holds 1000 of the 1024 budget
            while not slow_release:
                await asyncio.sleep(0.01)
            assert adm.used == 1000
            b = await Raw.open(srv.port)
            # headers only: the 503 must come without the body being sent
            await b.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
            status, headers, body = await b.answer()
            assert status == 503 and headers["retry-after"] == "1"
            # the body arrives later and is dropped; the connection is still usable
            await b.send(b"z" * 100 + b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, body = await b.answer()
            assert status == 200 and json.loads(body)["path"] == "/echo"
            gate.set()
            assert (await a.answer())[0] == 200
            await asyncio.sleep(0.05)
            assert adm.used == 0 and adm.releases == 2   # the held POST and the GET (0 bytes)
            # chunked bodies are charged the whole limit: refused while anything is held
            adm.used = 1
            await b.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"3\r\nabc\r\n0\r\n\r\n")
            assert (await b.answer())[0] == 503
            adm.used = 0
            a.close()
            b.close()
        finally:
            await srv.close(1.0)
    run(main())


def test_chunked_request_bodies_and_chunked_over_the_limit():
    async def main():
        adm = TinyAdmission(10 * MAX_BODY)
        srv = await started(adm)
        try:
            c = await Raw.open(srv.port)
            await c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            status, _, body = await c.answer()
            assert status == 200 and json.loads(body)["body"] == "hello world"
            # grows past MAX_BODY while streaming: 413 and close, budget released
            await c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(3):
                await c.send(b"200\r\n" + b"y" * 512 + b"\r\n")
            status, _, body = await c.answer()
            assert status == 413 and json.loads(body)["declared"] is None
            assert await c.closed()
            assert adm.used == 0
        finally:
            await srv.close(1.0)
    run(main())


@pytest.mark.parametrize("garbage", [
    b"THIS IS NOT HTTP\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
])
def test_malformed_requests_get_400_and_close(garbage):
    async def main():
        srv = await started()
        try:
            c = await Raw.open(srv.port)
            await c.send(garbage)
            status, _, body = await c.answer()
            assert status == 400 and json.loads(body)["reason"] == "bad_request"
            assert await c.closed()
        finally:
            await srv.close(1.0)
    run(main())


def test_header_limits_give_431():
    async def main():
        srv = await started(config=FastServerConfig(max_headers=10, max_header_bytes=2048))
        try:
            c = await Raw.open(srv.port)
            await c.send(b"GET /echo HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(11))
                         + b"\r\n")
            assert (await c.answer())[0] == 431
            assert await c.closed()
            c = await Raw.open(srv.port)
            await c.send(b"GET /echo HTTP/1.1\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n")
            assert (await c.answer())[0] == 431
        finally:
            await srv.close(1.0)
    run(main())


def test_connection_close_and_http10():
    async def main():
        srv = await started()
        try:
            c = await Raw.open(srv.port)
            await c.send(post("/echo", b"1", "Connection: close\r\n") + post("/echo", b"2"))
            status, headers, _ = await c.answer()
            assert status == 200 and headers["connection"] == "close"
            assert await c.closed()          # the second request is never answered
            c = await Raw.open(srv.port)
            await c.send(b"GET /echo HTTP/1.0\r\n\r\n")
            status, headers, _ = await c.answer()
            assert status == 200 and headers["connection"] == "close"
            assert await c.closed()
            c = await Raw.open(srv.port)
            await c.send(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            status, headers, _ = await c.answer()
            assert headers["connection"] == "keep-alive"
            await c.send(b"GET /echo HTTP/1.0\r\n\r\n")
            assert (await c.answer())[0] == 200
            c.close()
            # a client that half-closes after its request still gets the answer, then EOF
            c = await Raw.open(srv.port)
            await c.send(post("/slow", b"0.1"))
            c.w.write_eof()
            status, headers, _ = await c.answer()
            assert status == 200 and headers["connection"] == "close"
            assert await c.closed()
        finally:
            await srv.close(1.0)
    run(main())


def test_slowloris_and_idle_connections_are_closed():
    async def main():
        cfg = FastServerConfig(header_timeout_s=0.3, idle_timeout_s=0.5, tick_s=0.05)
        srv = await started(config=cfg)
        try:
            slowloris = await Raw.open(srv.port)
            await slowloris.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n")   # never finishes
            idle = await Raw.open(srv.port)
            await idle.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await idle.answer())[0] == 200
            assert await slowloris.closed(timeout=2.0)
            assert await idle.closed(timeout=2.0)
            silent = await Raw.open(srv.port)       # connects, sends nothing
            assert await silent.closed(timeout=2.0)
        finally:
            await srv.close(1.0)
    run(main())


def test_graceful_close_answers_every_request_in_flight():
    async def main():
        srv = await started()
        conn = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(connector=conn) as s:
            async def one():
                async with s.post(f"http://127.0.0.1:{srv.port}/slow", data=b"0.5") as r:
                    return r.status, await r.read()
            idle = await Raw.open(srv.port)
            tasks = [asyncio.create_task(one()) for _ in range(20)]
            while len(srv.conns) < 21:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)                 # all 20 are inside the route now
            await srv.close(5.0)
            answers = await asyncio.gather(*tasks, return_exceptions=True)
        assert answers == [(200, b'{"slept":true}')] * 20
        assert await idle.closed()
        with pytest.raises(OSError):              # no longer accepting
            socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
    run(main())


def test_close_aborts_what_outlives_the_grace():
    async def main():
        srv = await started()
        c = await Raw.open(srv.port)
        await c.send(post("/slow", b"30"))
        await asyncio.sleep(0.1)
        await asyncio.wait_for(srv.close(0.3), 5.0)
        assert await c.closed()
    run(main())


def test_admission_is_released_when_the_client_goes_away():
    """A client that disconnects while its request (and a pipelined one behind it) holds the
    budget must not leak it: the running route finishes, the queued one is dropped."""
    async def main():
        adm = TinyAdmission(10 * MAX_BODY)
        srv = await started(adm)
        gate, entered = asyncio.Event(), asyncio.Event()

        async def hold(req: Request) -> Response:
            entered.set()
            await gate.wait()
            return Response(200, b"{}")
        srv.routes[("POST", "/echo")] = hold
        try:
            c = await Raw.open(srv.port)
            await c.send(post("/echo", b"a" * 100) + post("/echo", b"b" * 200))
            await entered.wait()
            await asyncio.sleep(0.05)
            assert adm.used == 300
            # a reset, not a FIN: a FIN is a half-close, after which the answers are still owed
            c.w.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.w.transport.abort()
            await asyncio.sleep(0.1)
            assert adm.used == 100          # the queued request's budget is back at once
            gate.set()
            await asyncio.sleep(0.1)
            assert adm.used == 0 and adm.releases == 2
        finally:
            await srv.close(1.0)
    run(main())


def test_a_deep_pipeline_pauses_reading_and_still_answers_everything_in_order():
    async def main():
        srv = await started(config=FastServerConfig(max_pipelined=4))
        try:
            c = await Raw.open(srv.port)
            await c.send(b"".join(post("/echo", str(i).encode()) for i in range(200)))
            for i in range(200):
                status, _, body = await c.answer()
                assert status == 200 and json.loads(body)["body"] == str(i)
            c.close()
        finally:
            await srv.close(1.0)
    run(main())
