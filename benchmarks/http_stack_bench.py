"""The gateway's HTTP stack alone: aiohttp (server + ClientSession) vs gateway/fastserver.py +
gateway/fastclient.py (httptools), side by side.

One run (``python -m benchmarks.http_stack_bench`` or ``make bench-http-stack``):

1. an upstream stub (its own process) answers every POST with a fixed recommendation-sized JSON,
   standing in for TorchServe: what is measured is the proxy's own CPU, not the model's;
2. two proxy processes, both on uvloop, run the same minimal gateway route: check the
   ``Authorization`` header, forward the body unparsed to the stub, splice the gateway's fields
   (experiment, variant, model_version, fallback, request_id) into the answer as the gateway
   does; (a) on aiohttp's server and one pooled ``ClientSession`` configured as
   gateway/upstream.py configures it, (b) on ``start_fast`` + ``FastClient``;
3. open-loop load (common/loadgen.py, Poisson arrivals, the serving benchmark's request mix)
   at each rate, alternating (a) and (b) over several rounds (the order flips every round), each
   proxy's CPU time (psutil user + system of its process) over the requests it handled, and
   P50/P99 from the load generator.

Writes ``benchmarks/results/http_stack.json`` and ``http_stack.md``. The machine is shared and
noisy: read the per-round ratio, not the absolute microseconds.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from benchmarks.common import RESULTS, machine, write_results
from common.cli import run_cli
from common import loadgen
from common.net import wait_until

STACKS = ("aiohttp", "fast")
KEY = "bench-key"
UPSTREAM_PATH = "/predictions/recsys/1"
ROUTE = "/v1/recommendations"
# an answer the size and shape of the handler's (10 items with scores)
STUB_ANSWER = (b'{"items":[' + b",".join(b'{"item_id":"%d","score":0.%d}' % (10 * i, 9000 - i)
                                          for i in range(1, 11))
               + b'],"strategy":"personalized","model_version":"1"}')


def _splice(answer: bytes) -> bytes:
    """The gateway adds its fields to the handler's JSON object without re-encoding it."""
    return (answer[:-1] + b',"experiment":"bench","variant":"control","model_version":"1",'
            b'"fallback":false,"request_id":"' + os.urandom(8).hex().encode() + b'"}')


def _unauthorized() -> tuple[int, bytes]:
    return 401, b'{"code":401,"reason":"unauthorized"}'


# --------------------------------------------------------------------------- processes

async def serve_stub(port_file: Path, body: bytes = STUB_ANSWER) -> None:
    """The upstream stub: every POST to UPSTREAM_PATH answers 200 ``body`` (also
    benchmarks/gateway_route_bench.py's loopback upstream)."""
    from gateway.fastserver import start_fast
    from gateway.http import Request, Response, ServerLimits

    async def answer(req: Request) -> Response:
        return Response(200, body)
    limits = ServerLimits(8 << 20, lambda n: Response(413), lambda: Response(503))
    srv = await start_fast({("POST", UPSTREAM_PATH): answer}, "127.0.0.1", 0, limits)
    port_file.write_text(str(srv.port))
    await asyncio.Event().wait()


async def _serve_aiohttp(upstream: str, port_file: Path) -> None:
    import aiohttp
    from aiohttp import web

    connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=30, enable_cleanup_closed=True)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                    skip_auto_headers=("User-Agent",))
    url = upstream + UPSTREAM_PATH

    async def handle(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            status, body = _unauthorized()
            return web.Response(status=status, body=body, content_type="application/json")
        body = await request.read()
        async with session.post(url, data=body, headers={"Content-Type": "application/json"},
                                timeout=aiohttp.ClientTimeout(total=10.0)) as r:
            data = await r.read()
            status = r.status
        return web.Response(status=status, body=_splice(data) if status == 200 else data,
                            content_type="application/json")

    app = web.Application(client_max_size=4 << 20)
    app.router.add_post(ROUTE, handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048, reuse_address=True)
    await site.start()
    port_file.write_text(str(site._server.sockets[0].getsockname()[1]))
    await asyncio.Event().wait()


async def _serve_fast(upstream: str, port_file: Path) -> None:
    from gateway.fastclient import FastClient
    from gateway.fastserver import start_fast
    from gateway.http import Request, Response, ServerLimits

    client = FastClient(upstream, max_connections=256, keepalive_s=30)
    await client.start()
    headers = {"Content-Type": "application/json"}

    async def handle(req: Request) -> Response:
        if req.headers.get("authorization") != f"Bearer {KEY}":
            status, body = _unauthorized()
            return Response(status, body)
        status, data = await client.request("POST", UPSTREAM_PATH, req.body, headers,
                                            timeout_s=10.0)
        return Response(status, _splice(data) if status == 200 else data)

    limits = ServerLimits(4 << 20, lambda n: Response(413), lambda: Response(503))
    srv = await start_fast({("POST", ROUTE): handle}, "127.0.0.1", 0, limits)
    port_file.write_text(str(srv.port))
    await asyncio.Event().wait()


def _child(argv: list[str]) -> None:
    import uvloop

    kind, port_file = argv[0], Path(argv[1])
    if kind == "stub":
        uvloop.run(serve_stub(port_file))
    elif kind == "aiohttp":
        uvloop.run(_serve_aiohttp(argv[2], port_file))
    elif kind == "fast":
        uvloop.run(_serve_fast(argv[2], port_file))
    else:
        raise SystemExit(f"unknown child {kind}")


class Child:
    """One server process of this benchmark, started and waited for."""

    def __init__(self, kind: str, tmp: Path, *args: str):
        self.port_file = tmp / f"{kind}.port"
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.http_stack_bench",
                                      "--child", kind, str(self.port_file), *args],
                                     cwd=Path(__file__).resolve().parents[1])
        port = wait_until(lambda: self.port_file.exists() and self.port_file.read_text(),
                          timeout=60, interval=0.05, proc=self.proc, what=kind)
        self.url = f"http://127.0.0.1:{port}"
        self.ps = psutil.Process(self.proc.pid)

    def cpu(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the process so far."""
        t = self.ps.cpu_times()
        return t.user, t.system

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --------------------------------------------------------------------------- the run

def _row(stack: str, rate: float, rnd: int, r: loadgen.RunResult, before: tuple[float, float],
         after: tuple[float, float], sent: int) -> dict:
    user, system = after[0] - before[0], after[1] - before[1]
    return {"stack": stack, "rate_rps": rate, "round": rnd, "requests": sent,
            "cpu_us_per_request": round((user + system) / sent * 1e6, 1),
            "user_us_per_request": round(user / sent * 1e6, 1),
            "system_us_per_request": round(system / sent * 1e6, 1),
            "p50_ms": round(r.p50_ms, 3), "p99_ms": round(r.p99_ms, 3), "errors": r.errors,
            "late_sends": r.late_sends, "throughput_rps": round(r.throughput_rps, 1)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        _child(argv[1:])
        return 0
    p = argparse.ArgumentParser(prog="python -m benchmarks.http_stack_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="300,600", help="offered rates, requests/s")
    p.add_argument("--requests", type=int, default=3000, help="measured requests per run")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.set_defaults(fn=_run)
    return run_cli(p, argv, logs=False)


def _run(a: argparse.Namespace) -> int:
    rates = [float(x) for x in a.rates.split(",")]
    users = [str(u + 1) for u in range(600)]
    items = [str(10 * (i + 1)) for i in range(5000)]
    headers = {"Authorization": f"Bearer {KEY}"}

    result: dict = {"machine": machine(), "config": vars(a), "runs": []}
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="http-stack-") as d:
        tmp = Path(d)
        stub = Child("stub", tmp)
        procs = {s: Child(s, tmp, stub.url) for s in STACKS}
        try:
            for s in STACKS:   # warm both (imports, first connections)
                loadgen.run(procs[s].url, loadgen.request_mix(users, items, 300, seed=7), 100, warmup=50,
                      headers=headers, path=ROUTE)
            for rate in rates:
                for rnd in range(1, a.rounds + 1):
                    order = STACKS if rnd % 2 else STACKS[::-1]
                    for s in order:
                        mix = loadgen.request_mix(users, items, a.requests + a.warmup,
                                            seed=1000 * rnd + int(rate))
                        before = procs[s].cpu()
                        r = loadgen.run(procs[s].url, mix, rate, warmup=a.warmup, headers=headers,
                                  path=ROUTE, timeout_s=10.0)
                        row = _row(s, rate, rnd, r, before, procs[s].cpu(), len(mix))
                        result["runs"].append(row)
                        print(f"[bench] {rate:5.0f} rps round {rnd} {s:8s} cpu/req "
                              f"{row['cpu_us_per_request']:7.1f} us  p50 {r.p50_ms:6.2f}  p99 "
                              f"{r.p99_ms:7.2f}  err {r.errors} late {r.late_sends}", flush=True)
        finally:
            for c in (*procs.values(), stub):
                c.stop()
    result["summary"] = summarize(result["runs"], rates, a.rounds)
    result["seconds"] = round(time.time() - t0, 1)
    path = write_results("http_stack", result)
    md = markdown(result)
    (RESULTS / "http_stack.md").write_text(md)
    print(md)
    print(f"wrote {path} and {RESULTS / 'http_stack.md'}")
    return 0


def summarize(runs: list[dict], rates: list[float], rounds: int) -> list[dict]:
    """Per rate: each stack's median CPU/request and P50/P99 over the rounds, and the median of
    the per-round ratio fast / aiohttp (a ratio within one round shares that round's noise)."""
    out = []
    for rate in rates:
        by = {s: [r for r in runs if r["stack"] == s and r["rate_rps"] == rate] for s in STACKS}
        ratios = [f["cpu_us_per_request"] / a_["cpu_us_per_request"]
                  for a_, f in zip(by["aiohttp"], by["fast"])]
        row = {"rate_rps": rate, "cpu_ratio_fast_over_aiohttp": round(float(np.median(ratios)), 3),
               "cpu_ratio_per_round": [round(x, 3) for x in ratios]}
        for s in STACKS:
            row[s] = {k: round(float(np.median([r[k] for r in by[s]])), 3)
                      for k in ("cpu_us_per_request", "user_us_per_request",
                                "system_us_per_request", "p50_ms", "p99_ms")}
            row[s]["errors"] = sum(r["errors"] for r in by[s])
        out.append(row)
    return out


def markdown(res: dict) -> str:
    c = res["config"]
    lines = ["# HTTP stack: aiohttp vs fastserver + FastClient", "",
             f"benchmarks/http_stack_bench.py: a minimal gateway route (auth header check, body forwarded unparsed, fields spliced "
             f"into the answer) in its own uvloop process in front of a stub upstream; open loop, "
             f"{c['rounds']} alternating rounds of {c['requests']} measured requests per stack and "
             f"rate; {res['machine']['cpus']} cores shared by the stub, both proxies and the load "
             f"generator (load average at start {res['machine']['load_avg_at_start'][0]}). CPU is "
             "the proxy process's user + system time per request; medians over the rounds.", "",
             "| rate | stack | CPU µs/request (user + system) | P50 ms | P99 ms | errors |",
             "|---|---|---|---|---|---|"]
    for row in res["summary"]:
        for s in STACKS:
            x = row[s]
            lines.append(f"| {row['rate_rps']:.0f} req/s | {s} | {x['cpu_us_per_request']:.0f} "
                         f"({x['user_us_per_request']:.0f} + {x['system_us_per_request']:.0f}) | "
                         f"{x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x['errors']} |")
    lines.append("")
    lines += [f"CPU ratio fast / aiohttp at {row['rate_rps']:.0f} req/s: "
              f"**{row['cpu_ratio_fast_over_aiohttp']:.2f}** (per round: "
              + ", ".join(f"{x:.2f}" for x in row["cpu_ratio_per_round"]) + ")."
              for row in res["summary"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
