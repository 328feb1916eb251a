"""Replay held-out test users through the gateway: the demo's stand-in for real traffic.

For every user with test items in the P1 temporal split of ``OUT/etl`` (``common.splits.
load_split``), send ``{"user_id": u, "k": 10}`` to ``POST /v1/recommendations``; every
recommended item that is one of the user's test items is posted as a ``click`` event
(``POST /v1/events`` with the answer's ``request_id``). The gateway logs exposures and events;
``python -m gateway report`` then compares the variants.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

import aiohttp

from core.jsonio import write_json


def test_users(out: str | Path, scheme: str = "temporal") -> list[tuple[str, set[str]]]:
    """(user id, set of test item ids) of every user with at least one test item."""
    from common.schema import EtlLayout
    from common.splits import load_split

    data = load_split(EtlLayout.under(out), scheme)
    test = data.test.tocsr()
    users = []
    for u in range(test.shape[0]):
        cols = test.indices[test.indptr[u]:test.indptr[u + 1]]
        if len(cols):
            users.append((str(data.user_ids[u]), {str(data.item_ids[c]) for c in cols}))
    return users


async def replay(url: str, key: str, users: Sequence[tuple[str, set[str]]], *, k: int = 10,
                 concurrency: int = 8, timeout_s: float = 30.0) -> dict:
    """Send one request per user; post clicks. Returns counts (by variant)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    stats: Counter = Counter()
    by_variant: dict[str, Counter] = {}
    sem = asyncio.Semaphore(concurrency)
    base = url.rstrip("/")

    async def one(session: aiohttp.ClientSession, user: str, test: set[str]) -> None:
        async with sem:
            async with session.post(f"{base}/v1/recommendations",
                                    data=json.dumps({"user_id": user, "k": k})) as r:
                body = await r.read()
                if r.status != 200:
                    stats[f"http_{r.status}"] += 1
                    return
            d = json.loads(body)
            c = by_variant.setdefault(d["variant"], Counter())
            c["users"] += 1
            c["fallbacks"] += bool(d.get("fallback"))
            hits = [it["item_id"] for it in d["items"] if it["item_id"] in test]
            stats["ok"] += 1
            if hits:
                c["clicked_users"] += 1
                c["clicks"] += len(hits)
                events = [{"type": "click", "item_id": i, "request_id": d["request_id"]}
                          for i in hits]
                async with session.post(f"{base}/v1/events", data=json.dumps(events)) as r:
                    await r.read()
                    stats["events_ok" if r.status == 202 else f"events_http_{r.status}"] += len(hits)

    async with aiohttp.ClientSession(headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        await asyncio.gather(*(one(session, u, t) for u, t in users))
    return {"requests": len(users), **stats, "variants": {v: dict(c) for v, c in by_variant.items()}}


def cmd_replay(a) -> int:
    from gateway.config import GatewayPaths
    paths = GatewayPaths.under(a.out)
    url = a.url
    if not url:
        try:
            url = json.loads(paths.state.read_text())["url"]
        except (OSError, ValueError, KeyError):
            print(f"error: no running gateway recorded in {paths.state}; start one (make serve "
                  f"OUT={a.out}) or pass --url", file=sys.stderr)
            return 1
    key = Path(a.key_file or paths.client_key).read_text().strip()
    t0 = time.time()
    users = test_users(a.out, a.scheme)
    if a.limit:
        users = users[: a.limit]
    print(f"replaying {len(users)} held-out test users through {url} ...", flush=True)
    result = asyncio.run(replay(url, key, users, k=a.k, concurrency=a.concurrency))
    result["seconds"] = round(time.time() - t0, 1)
    out = Path(a.out) / "experiment"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "replay.json", result)
    print(json.dumps(result, indent=2))
    failed = result["requests"] - result.get("ok", 0)
    if failed:
        print(f"error: {failed} requests were not answered 200", file=sys.stderr)
        return 1
    return 0


def add_parser(sub) -> None:
    r = sub.add_parser("replay", help="send the held-out test users through the gateway, post "
                                      "clicks", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--out", required=True, help="run folder (OUT/etl, OUT/gateway)")
    r.add_argument("--url", help="gateway URL (default: OUT/gateway/gateway.json)")
    r.add_argument("--key-file", help="client key (default OUT/gateway/client_key)")
    r.add_argument("--scheme", default="temporal", help="split scheme (P1: temporal)")
    r.add_argument("--k", type=int, default=10)
    r.add_argument("--concurrency", type=int, default=8)
    r.add_argument("--limit", type=int, default=0, help="first N users only (0 = all)")
    r.set_defaults(fn=cmd_replay)


__all__ = ["replay", "test_users", "add_parser"]
