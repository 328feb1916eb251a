"""A real TorchServe with two versions and the real gateway (a `python -m gateway serve`
process) on free loopback ports, shared by a test module and always stopped."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import requests

from archives.client import TorchServeClient
from archives.server import ServerState
from gateway import auth
from gateway import experiment as E
from gateway.config import GatewayPaths
from testkit.archives import build_random_versions
from testkit.gateway import GatewayProc

REPO = Path(__file__).resolve().parents[2]
MODEL = "recsys"


def need_java() -> None:
    if shutil.which("java") is None:
        pytest.fail("Java 17 is required for TorchServe (see README)")


def build_versions(root: Path, versions=(("1", 0), ("2", 1)), *, delay_ms: int = 5,
                   n_users: int = 60, n_items: int = 500) -> Path:
    """OUT with one small archive per (version, seed)."""
    return build_random_versions(root, versions, model_name=MODEL, n_users=n_users,
                                 n_items=n_items, delay_ms=delay_ms)


def register(state: ServerState, version: str) -> None:
    r = TorchServeClient(state).register(f"{MODEL}-v{version}.mar", MODEL, initial_workers=1)
    assert r.status_code == 200, r.text


def setup_keys(out: Path) -> dict[str, str]:
    """client/admin keys plus a rate-limited key and an events-only key."""
    paths = GatewayPaths.under(out)
    auth.init_keys(paths)
    auth.add_key(paths.key_hashes, paths.root / "slow_key", "slow", ("recommend",), 2.0, 2.0)
    auth.add_key(paths.key_hashes, paths.root / "events_key", "events-only", ("events",))
    return {name: auth.read_key(paths.root / f"{name}_key")
            for name in ("client", "admin", "slow", "events")}


def write_experiment(out: Path, versions=("1", "2"), weights=(5000, 5000),
                     name: str = "test-exp") -> E.Experiment:
    exp = E.simple(name, list(versions), list(weights), salt="s1")
    E.write(GatewayPaths.under(out).experiment, exp)
    return exp


class Client:
    """requests against the gateway with a key."""

    def __init__(self, gw: GatewayProc, key: str | None):
        self.gw, self.key = gw, key
        self.s = requests.Session()

    def headers(self, extra=None) -> dict:
        h = {"Content-Type": "application/json"}
        if self.key:
            h["Authorization"] = f"Bearer {self.key}"
        return {**h, **(extra or {})}

    def rec(self, body, headers=None, timeout=30) -> requests.Response:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return self.s.post(self.gw.url + "/v1/recommendations", data=data,
                           headers=self.headers(headers), timeout=timeout)

    def event(self, body) -> requests.Response:
        return self.s.post(self.gw.url + "/v1/events", data=json.dumps(body),
                           headers=self.headers(), timeout=30)

    def put_experiment(self, doc) -> requests.Response:
        return self.s.put(self.gw.url + "/v1/admin/experiment", data=json.dumps(doc),
                          headers=self.headers(), timeout=60)


def load(url: str, key: str, bodies: list, *, concurrency: int = 8, timeout: float = 30.0,
         headers: dict | None = None) -> list[tuple[int, dict | None]]:
    """POST every body to /v1/recommendations with at most ``concurrency`` in flight:
    [(status or 0 for a transport error, decoded body or None)]."""
    import asyncio

    import aiohttp

    async def main():
        sem = asyncio.Semaphore(concurrency)
        h = {"Authorization": f"Bearer {key}", "Content-Type": "application/json",
             **(headers or {})}
        conn = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=conn, headers=h,
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async def one(b):
                async with sem:
                    try:
                        async with s.post(url + "/v1/recommendations", data=json.dumps(b)) as r:
                            data = await r.read()
                            try:
                                return r.status, json.loads(data)
                            except ValueError:
                                return r.status, None
                    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                        return 0, {"error": repr(e)}
            return await asyncio.gather(*(one(b) for b in bodies))

    return asyncio.run(main())
