"""Freshness and store read latency, measured live through a running gateway and TorchServe.

``python -m realtime measure --out OUT`` (``make demo`` runs it against ``make serve``'s stack):

* **freshness**: per trial, a new user asks for a top 10, clicks its first item
  (``POST /v1/events``), and asks again until an answer no longer holds the clicked item (the
  click is in the history the model saw, which excludes seen items). Freshness is the time
  from sending the event to receiving that answer; a trial that sees no effect within
  ``give_up_s`` counts as a failure, never as a fast one.
* **store read latency**: an open-loop load (``common.loadgen``) of those users' requests, every
  one of which reads the store; P50/P99 from the gateway's own histogram
  (``recsys_gateway_realtime_read_seconds``, bucket interpolation as Prometheus does), taken
  between two scrapes around the load.

Both go into ``OUT/realtime.json`` next to the offline replay's figures (read, merged, written).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import requests

from common import loadgen, stats
from common.promtext import bucket_delta, buckets, metric_value, quantile
from realtime.results import merge_into

log = logging.getLogger("realtime.live")
READ_METRIC = "recsys_gateway_realtime_read_seconds"


def gateway_of(out: Path) -> dict:
    """``gateway.json`` of the gateway ``make serve`` started for ``out`` (URLs, real-time
    store), with its client key under ``key``."""
    state = json.loads((out / "gateway" / "gateway.json").read_text())
    return {**state, "key": (out / "gateway" / "client_key").read_text().strip()}


def freshness(url: str, key: str, trials: int, *, give_up_s: float = 5.0,
              prefix: str = "rt-fresh") -> tuple[list[float], int, list[str]]:
    """(seconds per trial that saw its click, failed trials, the users)."""
    s = requests.Session()
    s.headers.update({"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    run = f"{prefix}-{int(time.time())}"
    seconds, failed, users = [], 0, []
    for t in range(trials):
        user = f"{run}-{t}"
        users.append(user)
        first = s.post(f"{url}/v1/recommendations", data=json.dumps({"user_id": user, "k": 10}),
                       timeout=10)
        first.raise_for_status()
        item = first.json()["items"][0]["item_id"]
        t0 = time.perf_counter()
        r = s.post(f"{url}/v1/events", data=json.dumps(
            {"type": "click", "item_id": item, "user_id": user, "event_id": f"{user}-0"}),
            timeout=10)
        if r.status_code != 202 or r.json()["results"][0]["status"] != "stored":
            raise RuntimeError(f"the event was not stored: {r.status_code} {r.text[:300]}")
        while True:
            a = s.post(f"{url}/v1/recommendations",
                       data=json.dumps({"user_id": user, "k": 10}), timeout=10)
            elapsed = time.perf_counter() - t0
            if a.status_code == 200 and item not in {i["item_id"] for i in a.json()["items"]}:
                seconds.append(elapsed)
                break
            if elapsed > give_up_s:
                failed += 1
                break
            time.sleep(0.005)
        if (t + 1) % 50 == 0:
            log.info("freshness: %d/%d trials", t + 1, trials)
    return seconds, failed, users


def store_reads_under_load(url: str, metrics_url: str, key: str, users: list[str], *,
                           rate: float, n: int, seed: int = 0) -> dict[str, Any]:
    """An open-loop load of requests by ``users`` (each reads the store); the store read's
    P50/P99 (ms) from the gateway's histogram over exactly that load."""
    before = buckets(requests.get(metrics_url, timeout=10).text, READ_METRIC)
    specs = [loadgen.RequestSpec("/v1/recommendations", {"user_id": users[i % len(users)],
                                                         "k": 10}, "user") for i in range(n)]
    result = loadgen.run(url, specs, rate, warmup=0, seed=seed,
                         headers={"Authorization": f"Bearer {key}"})
    text = requests.get(metrics_url, timeout=10).text
    delta = bucket_delta(buckets(text, READ_METRIC), before)
    p50, p99 = quantile(delta, 0.50), quantile(delta, 0.99)
    return {"p50": None if p50 is None else p50 * 1000, "p99": None if p99 is None else p99 * 1000,
            "reads": int(delta[-1][1]) if delta else 0,
            "source": f"{READ_METRIC} (histogram buckets, interpolated)",
            "load": {"rate_rps": rate, "requests": n, "errors": result.errors,
                     "end_to_end_ms": {"p50": result.p50_ms, "p99": result.p99_ms},
                     "late_sends": result.late_sends,
                     "read_errors": metric_value(text, "recsys_gateway_realtime_reads_total",
                                                 result="error")}}


def measure(out: Path, *, trials: int = 200, rate: float = 100.0, n: int = 2000) -> dict:
    gw = gateway_of(out)
    url, metrics_url, key = gw["url"], gw["metrics_url"], gw["key"]
    realtime = gw.get("realtime") or {}
    if not realtime.get("enabled"):
        raise RuntimeError(f"the gateway of {out} runs with real-time off; start it with "
                           "--realtime on (make realtime-demo does)")
    t0 = time.perf_counter()
    seconds, failed, users = freshness(url, key, trials)
    if not seconds:
        raise RuntimeError(f"no freshness trial saw its click within the time limit "
                           f"({failed} trials)")
    p50, p99 = stats.percentiles([s * 1000 for s in seconds], [50, 99])
    reads = store_reads_under_load(url, metrics_url, key, users, rate=rate, n=n)
    store = json.loads(requests.get(f"{url}/readyz", timeout=10).text)
    return {"freshness_ms": {"p50": float(p50), "p99": float(p99), "trials": trials,
                             "failed": failed, "max": max(seconds) * 1000},
            "store_read_ms": {"p50": reads["p50"], "p99": reads["p99"], "reads": reads["reads"],
                              "store": realtime.get("store"), "source": reads["source"]},
            "live": {"gateway": url, "load": reads["load"], "experiment": store.get("experiment"),
                     "seconds": round(time.perf_counter() - t0, 1)}}


def cmd_measure(a) -> int:
    out = Path(a.out)
    figures = measure(out, trials=a.trials, rate=a.rate, n=a.requests)
    merge_into(out / "realtime.json", figures)
    f, r = figures["freshness_ms"], figures["store_read_ms"]
    print(f"freshness P50 {f['p50']:.1f} ms, P99 {f['p99']:.1f} ms ({f['trials']} trials, "
          f"{f['failed']} failed); store read P50 {r['p50']:.3f} ms, P99 {r['p99']:.3f} ms "
          f"({r['reads']} reads, {r['store']} store) -> {out / 'realtime.json'}")
    return 0 if f["failed"] == 0 else 1


def add_parser(sub) -> None:
    p = sub.add_parser("measure", help="freshness and store read latency through a running "
                                       "gateway (make serve) -> OUT/realtime.json")
    p.add_argument("--out", required=True, help="run folder whose gateway is running")
    p.add_argument("--trials", type=int, default=200, help="freshness trials (one new user each)")
    p.add_argument("--rate", type=float, default=100.0, help="load for the store read, req/s")
    p.add_argument("--requests", type=int, default=2000, help="requests in that load")
    p.set_defaults(fn=cmd_measure)


__all__ = ["measure", "freshness", "store_reads_under_load", "gateway_of"]
