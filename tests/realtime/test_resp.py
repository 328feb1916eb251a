"""realtime/resp.py against a real Redis: pipelining keeps replies in order, a deadline abandons
one command without shifting the others, error replies fail only their command, db selection."""
from __future__ import annotations

import asyncio

import pytest

from realtime.resp import RespClient, RespError, pack


def run(coro):
    return asyncio.run(coro)


def test_pack_is_resp_arrays_of_bulk_strings():
    assert pack("SET", "k", 1.5) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n1.5\r\n"
    assert pack("GET", "ü") == b"*2\r\n$3\r\nGET\r\n$2\r\n\xc3\xbc\r\n"


def test_concurrent_commands_share_one_connection_in_order(redis_url):
    async def scenario():
        c = RespClient(redis_url)
        await c.call("DEL", "resp:n")
        got = await asyncio.gather(*(c.call("INCR", "resp:n") for _ in range(200)))
        assert sorted(got) == list(range(1, 201))
        echoes = await asyncio.gather(*(c.call("ECHO", f"m{i}") for i in range(100)))
        assert echoes == [f"m{i}" for i in range(100)]
        await c.close()
    run(scenario())


def test_a_missed_deadline_abandons_one_command_and_keeps_the_rest_aligned(redis_url):
    async def scenario():
        c = RespClient(redis_url)
        slow = asyncio.ensure_future(c.call("BLPOP", "resp:never", "0.3"))  # holds the line
        await asyncio.sleep(0.01)
        with pytest.raises(RespError, match="no reply within"):
            await c.call("ECHO", "late", timeout_s=0.05)
        assert await slow is None
        assert await c.call("ECHO", "next") == "next"  # the late reply was dropped
        await c.close()
    run(scenario())


def test_an_error_reply_fails_only_its_command(redis_url):
    async def scenario():
        c = RespClient(redis_url)
        await c.call("SET", "resp:s", "x")
        with pytest.raises(RespError, match="WRONGTYPE"):
            await c.call("LPUSH", "resp:s", "y")
        assert await c.call("GET", "resp:s") == "x"
        await c.close()
    run(scenario())


def test_the_url_selects_the_database(redis_url):
    async def scenario():
        db3 = RespClient(redis_url.rsplit("/", 1)[0] + "/3")
        db0 = RespClient(redis_url)
        await db3.call("SET", "resp:db", "three")
        assert await db3.call("GET", "resp:db") == "three"
        assert await db0.call("GET", "resp:db") is None
        await db3.close()
        await db0.close()
    run(scenario())


def test_a_dead_server_fails_fast_and_a_bad_url_is_refused():
    from common.net import free_ports

    async def scenario():
        c = RespClient(f"redis://127.0.0.1:{free_ports(1)[0]}/0", connect_timeout_s=0.5)
        with pytest.raises(RespError, match="cannot connect"):
            await c.call("PING")
    run(scenario())
    with pytest.raises(ValueError):
        RespClient("http://localhost:6379")
