"""Open-loop HTTP load generator for the serving benchmark (asyncio + aiohttp).

Latency is measured from each request's *intended* send time, fixed in advance by the arrival
schedule, so a slow server shows up as queueing instead of silently lowering the offered rate
(no coordinated omission). Locust is closed-loop per user (gevent pacing); wrk2 and vegeta,
which are open-loop, cannot be installed here (only PyPI, npm and Debian packages are).

Percentiles come from ``common.stats.percentiles`` (numpy's ``method="higher"``: always an
observed latency, never an interpolated one, and on the pessimistic side), the one function every
benchmark figure goes through. With fewer than about 1000 measured requests p99 rests on
a handful of samples and is noise; use ``n >= 1000`` before reading anything into it.

The generator is not free: about 0.2 of a core at 300 rps (0.13 without the sub-millisecond
send timing of ``_sleep_until``), measured on a 2-core box. Run on the same host as
TorchServe, that CPU is taken from the server; check ``late_sends`` stays near 0.

CLI::

    python -m common.loadgen --url http://127.0.0.1:8080 --path /predictions/recsys \\
        --rate 50 --n 1000 --warmup 100 --users-file users.txt --items-file items.txt [--token T]
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import aiohttp
import numpy as np

from common import stats
from common.cli import run_cli

KINDS = ("known", "history", "unknown")
DEFAULT_FRACTIONS: Mapping[str, float] = {"known": 0.7, "history": 0.2, "unknown": 0.1}
LATE_SEND_S = 0.001     # a send leaving later than this after its intended time counts as late
TIMER_SLACK_S = 0.001   # wake this early from the loop's ms-granular timer, then yield until due
START_LEAD_S = 0.05     # the schedule starts this long after setup so the first sends are not late
HANDLER_MS_HEADER = "X-Handler-Ms"   # our TorchServe handler's own batch time (handlers/recommender.py)


@dataclass
class RequestSpec:
    """One request to send: the URL path (may be filled later), the JSON body, and its kind."""

    path: str
    body: dict[str, Any]
    kind: str


# --------------------------------------------------------------------------- request mix

def _kind_counts(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Exact per-kind counts summing to n (largest remainder), so a mix matches its fractions."""
    unknown = set(fractions) - set(KINDS)
    if unknown or any(f < 0 for f in fractions.values()) or not math.isclose(sum(fractions.values()), 1.0,
                                                                              abs_tol=1e-6):
        raise ValueError(f"fractions must map a subset of {KINDS} to non-negative numbers summing to 1,"
                         f" got {dict(fractions)}")
    exact = {kind: n * fractions.get(kind, 0.0) for kind in KINDS}
    counts = {kind: int(math.floor(x)) for kind, x in exact.items()}
    by_remainder = sorted(KINDS, key=lambda kind: exact[kind] - counts[kind], reverse=True)
    for kind in by_remainder[: n - sum(counts.values())]:
        counts[kind] += 1
    return counts


def _popularity_weights(n_items: int) -> np.ndarray:
    """Zipf-like weights (1/rank): real histories are dominated by a few popular items, and the
    ids are assumed ordered most popular first."""
    w = 1.0 / np.arange(1, n_items + 1)
    return w / w.sum()


def _history(rng: np.random.Generator, item_ids: Sequence[Any], weights: np.ndarray,
             max_history: int) -> list[Any]:
    """1..max_history distinct item ids, drawn with the popularity skew."""
    size = int(rng.integers(1, min(max_history, len(item_ids)) + 1))
    picks = rng.choice(len(item_ids), size=size, replace=False, p=weights)
    return [item_ids[int(i)] for i in picks]


def request_mix(known_user_ids: Sequence[str], item_ids: Sequence[str], n: int, *, seed: int = 0,
                fractions: Mapping[str, float] = DEFAULT_FRACTIONS, k: int = 10, max_history: int = 20,
                path: str = "") -> list[RequestSpec]:
    """A deterministic, shuffled mix of n requests exercising the handler's three strategies.

    * ``known``: a user the model knows, ``{"user_id", "k"}``;
    * ``history``: an anonymous user ``anon-<i>`` sending a history of item ids;
    * ``unknown``: a new user ``new-<i>`` without history (popularity fallback).

    Kind counts are exact (not sampled) so small runs still have the intended mix; ``<i>`` is the
    request's position, so anonymous ids never repeat and nothing can be cached per user.
    """
    counts = _kind_counts(n, fractions)
    if counts["known"] and not known_user_ids:
        raise ValueError("known requests asked for but known_user_ids is empty")
    if counts["history"] and (not item_ids or max_history < 1):
        raise ValueError("history requests asked for but item_ids is empty or max_history < 1")
    rng = np.random.default_rng(seed)
    kinds = [kind for kind in KINDS for _ in range(counts[kind])]
    order = rng.permutation(n)
    weights = _popularity_weights(len(item_ids)) if counts["history"] else np.empty(0)
    specs = []
    for i in range(n):
        kind = kinds[order[i]]
        if kind == "known":
            body = {"user_id": known_user_ids[int(rng.integers(len(known_user_ids)))], "k": k}
        elif kind == "history":
            body = {"user_id": f"anon-{i}", "history": _history(rng, item_ids, weights, max_history), "k": k}
        else:
            body = {"user_id": f"new-{i}", "k": k}
        specs.append(RequestSpec(path=path, body=body, kind=kind))
    return specs


# --------------------------------------------------------------------------- results

def percentiles(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean in ms (``common.stats.percentiles``); NaN everywhere when empty."""
    if len(latencies_ms) == 0:
        return {key: math.nan for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms")}
    a = np.asarray(latencies_ms, dtype=float)
    p50, p95, p99 = stats.percentiles(a, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
            "max_ms": float(a.max()), "mean_ms": float(a.mean())}


@dataclass
class RunResult:
    """What one open-loop run measured (warm-up requests excluded from every field)."""

    rate_rps: float                 # offered rate
    n: int                          # measured requests
    ok: int
    errors: int
    error_kinds: dict[str, int]     # "http_503", "timeout", "connect", "disconnected", exception name
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    throughput_rps: float           # ok responses / (first intended send -> last completion)
    duration_s: float               # that same window
    late_sends: int                 # sends leaving > 1 ms after their intended time: client overloaded
    latencies_ms: list[float] = field(repr=False)   # ok requests only, from intended send time
    responses: list[dict[str, Any]] = field(default_factory=list, repr=False)   # only with collect=True

    def summary(self) -> dict[str, Any]:
        """Everything but the per-request lists; NaN (no ok response) becomes None so the JSON stays standard."""
        out = asdict(self)
        del out["latencies_ms"], out["responses"]
        return {key: None if isinstance(v, float) and math.isnan(v) else v for key, v in out.items()}


@dataclass
class _Outcome:
    """One request's fate, as recorded by its own task."""

    intended: float                 # perf_counter seconds
    done: float
    late: bool
    error: str | None               # None when the response was 2xx
    status: int | None = None       # None when no response arrived
    body: bytes | None = None       # kept only with collect=True, decoded after the run
    handler_ms: str | None = None


# --------------------------------------------------------------------------- sending

def schedule(n: int, rate_rps: float, arrival: str = "poisson", seed: int = 0) -> np.ndarray:
    """Intended send offsets in seconds from the start, first one at 0.

    Poisson arrivals (exponential gaps) model independent users and expose queueing that a
    perfectly even ``uniform`` schedule hides; both are fixed before anything is sent.
    """
    if rate_rps <= 0:
        raise ValueError(f"rate_rps must be positive, got {rate_rps}")
    if arrival == "poisson":
        gaps = np.random.default_rng(seed).exponential(1.0 / rate_rps, size=n)
    elif arrival == "uniform":
        gaps = np.full(n, 1.0 / rate_rps)
    else:
        raise ValueError(f"arrival must be 'poisson' or 'uniform', got {arrival!r}")
    return np.concatenate(([0.0], np.cumsum(gaps[:-1]))) if n else np.empty(0)


def _error_kind(exc: BaseException) -> str:
    """A short label for a failed request (asyncio.TimeoutError is TimeoutError on 3.11+)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    return type(exc).__name__


async def _send(session: aiohttp.ClientSession, url: str, body: bytes, intended: float,
                collect: bool) -> _Outcome:
    """POST one body; the response body is read fully so completion means the client has it all."""
    out = _Outcome(intended=intended, done=math.nan, late=time.perf_counter() - intended > LATE_SEND_S,
                   error=None)
    try:
        async with session.post(url, data=body) as resp:
            data = await resp.read()
            out.status = resp.status
            if not 200 <= resp.status < 300:
                out.error = f"http_{resp.status}"
            if collect:
                out.body, out.handler_ms = data, resp.headers.get(HANDLER_MS_HEADER)
    except (aiohttp.ClientError, TimeoutError) as exc:
        out.error = _error_kind(exc)
    out.done = time.perf_counter()
    return out


async def _sleep_until(t: float) -> None:
    """Sleep until perf_counter() reaches t, on time to well under a millisecond.

    The event loop's epoll timeout has millisecond granularity (rounded up), so a plain
    ``asyncio.sleep`` wakes 0-1 ms late; this sleeps to ``TIMER_SLACK_S`` before t and yields
    (``sleep(0)``, other tasks keep running) for the rest, a bounded short spin per send."""
    delay = t - time.perf_counter() - TIMER_SLACK_S
    if delay > 0:
        await asyncio.sleep(delay)
    while time.perf_counter() < t:
        await asyncio.sleep(0)


async def _dispatch(session: aiohttp.ClientSession, urls: Sequence[str], bodies: Sequence[bytes],
                    offsets: np.ndarray, collect: bool) -> list[_Outcome]:
    """Start each request as its own task at its intended time, never waiting for responses."""
    start = time.perf_counter() + START_LEAD_S
    tasks = []
    for url, body, offset in zip(urls, bodies, offsets):
        intended = start + float(offset)
        await _sleep_until(intended)
        tasks.append(asyncio.create_task(_send(session, url, body, intended, collect)))
    return list(await asyncio.gather(*tasks))


def _response_record(i: int, o: _Outcome) -> dict[str, Any]:
    """What ``collect=True`` keeps of one response: its index in ``requests``, status, the item ids
    of a JSON ``{"items": [{"item_id": ...}]}`` body (else None), and the handler time header."""
    items = None
    if o.error is None and o.body:
        try:
            items = [it["item_id"] for it in json.loads(o.body)["items"]]
        except (ValueError, KeyError, TypeError):
            pass
    handler_ms = float(o.handler_ms) if o.handler_ms else None
    return {"i": i, "status": o.status, "error": o.error, "items": items, "handler_ms": handler_ms}


def _result(outcomes: Sequence[_Outcome], rate_rps: float) -> RunResult:
    """Aggregate the measured outcomes into a RunResult."""
    ok = [o for o in outcomes if o.error is None]
    latencies = [(o.done - o.intended) * 1000.0 for o in ok]
    duration = max(o.done for o in outcomes) - min(o.intended for o in outcomes)
    kinds = Counter(o.error for o in outcomes if o.error is not None)
    return RunResult(rate_rps=rate_rps, n=len(outcomes), ok=len(ok), errors=len(outcomes) - len(ok),
                     error_kinds=dict(sorted(kinds.items())), **percentiles(latencies),
                     throughput_rps=len(ok) / duration if duration > 0 else 0.0, duration_s=duration,
                     late_sends=sum(o.late for o in outcomes), latencies_ms=latencies)


async def run_open_loop(base_url: str, requests: Sequence[RequestSpec], rate_rps: float, *,
                        warmup: int = 100, headers: Mapping[str, str] | None = None, timeout_s: float = 10.0,
                        arrival: str = "poisson", seed: int = 0, max_connections: int = 512,
                        path: str | None = None, collect: bool = False) -> RunResult:
    """Send ``requests`` open-loop at ``rate_rps``; the first ``warmup`` are sent on the same
    schedule but left out of the result.

    ``path`` (when given) overrides every ``RequestSpec.path``. A request waiting for a free
    connection (``max_connections``) is still timed from its intended send time, so client-side
    queueing is not hidden either; ``late_sends`` only counts the event loop being late.

    ``collect=True`` also fills ``RunResult.responses`` (one dict per measured request, see
    ``_response_record``); bodies are kept as bytes and decoded after the run, off the clock.
    """
    if not 0 <= warmup < len(requests):
        raise ValueError(f"need 0 <= warmup < len(requests), got warmup={warmup}, {len(requests)} requests")
    base = base_url.rstrip("/")
    urls = [base + (spec.path if path is None else path) for spec in requests]
    bodies = [json.dumps(spec.body, separators=(",", ":")).encode() for spec in requests]
    offsets = schedule(len(requests), rate_rps, arrival, seed)
    connector = aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                     headers={"Content-Type": "application/json", **(headers or {})}) as session:
        outcomes = await _dispatch(session, urls, bodies, offsets, collect)
    result = _result(outcomes[warmup:], rate_rps)
    if collect:
        result.responses = [_response_record(i, outcomes[i]) for i in range(warmup, len(outcomes))]
    return result


def run(base_url: str, requests: Sequence[RequestSpec], rate_rps: float, **kw: Any) -> RunResult:
    """Synchronous wrapper around :func:`run_open_loop` (own event loop).

    The cyclic garbage collector is paused for the run: a full collection of a large caller heap
    (the benchmark keeps catalogs and reference answers in the same process) stalls the event
    loop for tens of ms, which open-loop timing would charge to the server."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return asyncio.run(run_open_loop(base_url, requests, rate_rps, **kw))
    finally:
        if was_enabled:
            gc.enable()


# --------------------------------------------------------------------------- CLI

def _read_ids(path: Path) -> list[str]:
    """One id per line; blank lines are skipped."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def parser() -> argparse.ArgumentParser:
    """The CLI's options; ``--n`` counts measured requests, the mix holds ``n + warmup``."""
    p = argparse.ArgumentParser(prog="python -m common.loadgen",
                                description="Open-loop load generator; prints the run summary as JSON.")
    p.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--path", required=True, help="request path, e.g. /predictions/recsys")
    p.add_argument("--rate", type=float, required=True, help="offered rate, requests per second")
    p.add_argument("--n", type=int, default=1000, help="measured requests (p99 needs >= 1000)")
    p.add_argument("--warmup", type=int, default=100, help="requests sent first and not measured")
    p.add_argument("--users-file", type=Path, required=True, help="known user ids, one per line")
    p.add_argument("--items-file", type=Path, required=True,
                   help="item ids, one per line, most popular first (histories are skewed toward the top)")
    p.add_argument("--token", help="inference key, sent as 'Authorization: Bearer <token>'")
    p.add_argument("--arrival", choices=("poisson", "uniform"), default="poisson")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, seconds")
    p.add_argument("--max-connections", type=int, default=512)
    p.set_defaults(fn=_run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(parser(), argv, (OSError,), logs=False)


def _run(args: argparse.Namespace) -> int:
    """Build the request mix from the id files, run once, print the summary as JSON."""
    specs = request_mix(_read_ids(args.users_file), _read_ids(args.items_file), args.n + args.warmup,
                        seed=args.seed, k=args.k, path=args.path)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    result = run(args.url, specs, args.rate, warmup=args.warmup, headers=headers, timeout_s=args.timeout,
                 arrival=args.arrival, seed=args.seed, max_connections=args.max_connections)
    print(json.dumps(result.summary(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
