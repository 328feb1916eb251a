"""The gateway's own per-request CPU, in process: the ``/v1/recommendations`` route without HTTP.

``make bench-gateway`` measures the whole gateway process (HTTP server, client, event loop and
our code) and ``make bench-http-stack`` the HTTP stack alone; this driver measures what is left,
our per-request code, without the noise of sockets and a second process:

* the gateway is composed exactly as ``gateway/app.py`` composes it (``Gateway(cfg)``: real
  config, keys, experiment, pseudonymizer, metrics, both log writer threads and the shipper
  writing to a temporary OUT), started (popularity probe, warm-up) and its route table built;
* the upstream is a stub: ``--upstream fake`` (default) puts an in-process client in place of
  the HTTP client (``Upstream.client``: ``request()`` answers a handler-shaped recommendation
  JSON at once), so everything from ``Upstream.predict`` up is ours and nothing is HTTP;
  ``--upstream loopback`` keeps the real ``FastClient`` and runs the stub as a fast-stack
  server in a child process (its CPU is not counted), adding the client's share;
* each request does what the fast server does around the route (``limits.gate`` and the
  in-flight budget's admit/release) and then awaits the route, sequentially, ``--n`` times,
  over the benchmark's request mix (common/loadgen.py: 70% known users, 20% anonymous with a
  history, 10% new users);
* CPU is ``time.process_time()`` of the whole process (main thread, log writer threads, the
  shipper) from the first request until every exposure record is written, divided by the
  requests; the main thread's share is ``time.thread_time()``.

``--compare DIR`` runs the same measurement over another checkout of the repository (e.g.
``git archive main | tar -x -C /tmp/base``) in alternating child processes, so that before
and after are measured side by side in one run (``--rounds`` each). ``--dump DIR`` writes each
answer (status, headers, body), the exposure lines and the metrics exposition of one pass with
fixed request ids, to compare two checkouts' outputs byte for byte (``--check-same A B``).

Writes ``benchmarks/results/gateway_route.{json,md}`` (``--no-write`` to skip).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# runnable by path over another checkout (PYTHONPATH=<checkout>): no package-relative imports
REPO = Path(__file__).resolve().parents[1]
PATH = "/v1/recommendations"
# the handler's answer for k=10 (core/engine.py: user_id, model_version, strategy, items,
# ignored_history), as TorchServe sends it
ANSWER = (b'{"user_id":"42","model_version":"1","strategy":"personalized","items":['
          + b",".join(b'{"item_id":"%d","score":%.6f}' % (10 * i, 0.9 - i / 100)
                      for i in range(1, 11))
          + b'],"ignored_history":0}')


def _bodies(n: int, seed: int) -> list[bytes]:
    from common import loadgen
    users = [str(u + 1) for u in range(600)]
    items = [str(10 * (i + 1)) for i in range(5000)]
    return [json.dumps(s.body, separators=(",", ":")).encode() for s in loadgen.request_mix(users, items, n, seed=seed)]


class FakeClient:
    """``Upstream.client`` without HTTP: every request is answered ``(200, ANSWER)`` at once."""

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def request(self, method, path, body=b"", headers=None, *, timeout_s):
        return 200, ANSWER


def _start_stub(tmp: Path) -> tuple[subprocess.Popen, str]:
    from common.net import WaitError, wait_until

    port_file = tmp / "stub.port"
    # the stub is not measured: it runs this checkout's code whatever checkout is measured
    p = subprocess.Popen([sys.executable, __file__, "--stub", str(port_file)],
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        port = wait_until(lambda: port_file.exists() and port_file.read_text(), timeout=15,
                          interval=0.05, proc=p, what="the stub upstream")
    except WaitError:
        p.kill()
        raise
    return p, f"http://127.0.0.1:{port}"


async def _measure(out: Path, upstream_url: str, fake: bool, n: int, warmup: int, seed: int,
                   dump: Path | None, rate: float = 0.0, profile: str = "") -> dict:
    from gateway import auth
    from gateway import experiment as E
    from gateway.app import Gateway
    from gateway.config import GatewayConfig, GatewayPaths
    from gateway.http import Request

    paths = GatewayPaths.under(out)
    if dump is not None:  # the same pseudonyms in both checkouts' records
        paths.root.mkdir(parents=True, exist_ok=True)
        paths.pseudonym_secret.write_text("0123456789abcdef0123456789abcdef\n")
    auth.init_keys(paths, rate_per_s=100_000, burst=100_000)
    # --dump: two variants and some refused bodies, so that assignment and validation
    # outcomes are compared as well
    E.write(paths.experiment, E.simple("bench", ["1", "2"]) if dump is not None else
            E.simple("bench", ["1"], names=["control"]))
    key = auth.read_key(paths.client_key)
    cfg = GatewayConfig(out=out, upstream_url=upstream_url, management_url=upstream_url,
                        token_auth=False, deadline_ms=5000.0)
    gw = Gateway(cfg)
    if fake:
        gw.upstream.client = FakeClient()
    await gw.start()
    route = gw.routes().table()[("POST", PATH)]
    limits = gw.limits()
    gate, admission = limits.gate, limits.admission
    bodies = _bodies(warmup + n, seed)
    if dump is not None:
        bad = [b'{"user_id": "1", "k": "ten"}', b'{"user_id": true}', b'[1]', b'{"user_id": "1"',
               b'{"user_id": 18446744073709551616, "k": 3}', b'{"user": "1"}',
               b'{"filters": {"include_categories": [["x"]]}, "user_id": "2"}']
        for i in range(warmup, warmup + n, 37):
            bodies[i] = bad[(i // 37) % len(bad)]
    base = {"host": "127.0.0.1", "content-type": "application/json",
            "authorization": f"Bearer {key}", "user-agent": "bench"}

    answers: list = []

    async def one(i: int, body: bytes, rid: bool) -> None:
        headers = {**base, "content-length": str(len(body))}
        if rid:
            headers["x-request-id"] = f"bench-{i}"
        req = Request("POST", PATH, headers)
        refusal = gate(req)
        assert refusal is None, refusal
        release = admission.admit(len(body))
        req.body = body
        try:
            resp = await route(req)
        finally:
            release()
        if dump is not None:
            answers.append({"status": resp.status, "headers": resp.headers,
                            "content_type": resp.content_type, "body": resp.body.decode()})
        elif resp.status != 200:
            raise RuntimeError(f"answer {resp.status}: {resp.body[:200]!r}")

    for i in range(warmup):
        await one(i, bodies[i], False)
    logs = gw.exposures
    await _drained(logs)
    gc.collect()
    gc.freeze()  # as serve() does after start (gateway/app.py _tune_gc)
    gc.set_threshold(10_000, 20, 20)
    prof = None
    if profile:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    w0, c0, t0 = time.perf_counter(), time.process_time(), time.thread_time()
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(warmup, warmup + n):
        if rate > 0:
            delay = start + (i - warmup) / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        await one(i, bodies[i], dump is not None)
    t1 = time.thread_time()
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)
    await _drained(logs)   # the writer thread's share: every record written
    c1, w1 = time.process_time(), time.perf_counter()
    res = {"n": n, "process_us": 1e6 * (c1 - c0) / n, "main_thread_us": 1e6 * (t1 - t0) / n,
           "wall_us": 1e6 * (w1 - w0) / n, "exposures_written": logs.written}
    res["other_threads_us"] = res["process_us"] - res["main_thread_us"]
    if dump is not None:
        dump.mkdir(parents=True, exist_ok=True)
        (dump / "answers.json").write_text(json.dumps(answers[-n:], indent=0))
        (dump / "metrics.txt").write_bytes(gw.metrics.exposition())
    await gw.stop()
    if dump is not None:
        lines = []
        for f in sorted(paths.exposures.glob("*.jsonl")):
            lines += f.read_bytes().splitlines()
        lines = [x for x in lines if b'"request_id":"bench-' in x]  # the measured requests
        (dump / "exposures.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return res


async def _drained(log) -> None:
    while log.written + log.dropped < log.submitted:
        await asyncio.sleep(0.01)


def _child(a: argparse.Namespace) -> dict:
    import uvloop
    with tempfile.TemporaryDirectory(prefix="gwroute-") as d:
        tmp = Path(d)
        stub = None
        url = "http://127.0.0.1:9"  # never contacted with the fake client
        if a.upstream == "loopback":
            stub, url = _start_stub(tmp)
        try:
            res = uvloop.run(_measure(tmp / "out", url, a.upstream == "fake", a.n, a.warmup,
                                      a.seed, Path(a.dump) if a.dump else None, a.rate,
                                      a.profile))
        finally:
            if stub is not None:
                stub.kill()
                stub.wait()
    return res


def _run_child(code: Path, a: argparse.Namespace, upstream: str, rate: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--upstream", upstream,
           "--n", str(a.n), "--warmup", str(a.warmup), "--seed", str(a.seed),
           "--rate", str(rate)]
    # numpy (the request mix) would start OpenBLAS threads: not the gateway's
    env = {**os.environ, "PYTHONPATH": str(code), "OPENBLAS_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"child over {code} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _case(upstream: str, rate: float) -> str:
    return f"{upstream}, " + (f"{rate:g} req/s" if rate > 0 else "back to back")


def _compare(a: argparse.Namespace) -> dict:
    codes = {"this": REPO}
    if a.compare:
        codes = {"before": Path(a.compare).resolve(), "after": REPO}
    cases = [(u, rate) for rate in a.rates for u in a.upstreams]
    runs: dict = {_case(u, rate): {name: [] for name in codes} for u, rate in cases}
    for r in range(a.rounds):
        for upstream, rate in cases:
            order = list(codes) if r % 2 == 0 else list(reversed(codes))
            for name in order:
                res = _run_child(codes[name], a, upstream, rate)
                runs[_case(upstream, rate)][name].append(res)
                print(f"round {r} {_case(upstream, rate):20s} {name:6s} "
                      f"{res['process_us']:7.1f} us/request (main {res['main_thread_us']:.1f}, "
                      f"other threads {res['other_threads_us']:.1f})", flush=True)
    summary: dict = {}
    for upstream, by in runs.items():
        summary[upstream] = {name: {k: round(statistics.median([x[k] for x in rs]), 1)
                                    for k in ("process_us", "main_thread_us",
                                              "other_threads_us", "wall_us")}
                             for name, rs in by.items()}
        if "before" in by:
            summary[upstream]["ratio_after_before"] = [
                round(y["process_us"] / x["process_us"], 3)
                for x, y in zip(by["before"], by["after"])]
    from benchmarks.common import machine
    return {"machine": machine(), "config": {"n": a.n, "warmup": a.warmup, "rounds": a.rounds,
                                             "upstreams": a.upstreams, "rates": a.rates,
                                             "compare": a.compare},
            "runs": runs, "summary": summary}


def markdown(res: dict) -> str:
    from common.tables import table

    c = res["config"]
    lines = ["# Gateway route, in process (benchmarks/gateway_route_bench.py)", "",
             f"`/v1/recommendations` called {c['n']} times per round (back to back, or paced "
             "at a rate: colder caches and the background loops' share, as when served; after "
             f"{c['warmup']} warm-up calls), {c['rounds']} rounds; the gateway composed as "
             "gateway/app.py composes it; process CPU (every thread: route, log writers, "
             "shipper) per request until every exposure is written. Load average at start "
             f"{res['machine']['load_avg_at_start'][0]}. Medians over the rounds.", "",
             table(["upstream, pace", "code", "process CPU us/request", "main thread",
                    "other threads"],
                   [[upstream, name, f"{s['process_us']:.1f}", f"{s['main_thread_us']:.1f}",
                     f"{s['other_threads_us']:.1f}"]
                    for upstream, by in res["summary"].items() for name, s in by.items()
                    if name != "ratio_after_before"], right=(), pad=False)]
    for upstream, by in res["summary"].items():
        if "ratio_after_before" in by:
            rs = by["ratio_after_before"]
            lines.append("")
            lines.append(f"{upstream}: after / before per round: "
                         f"{', '.join(f'{x:.2f}' for x in rs)}")
    return "\n".join(lines) + "\n"


def _check_same(a_dir: Path, b_dir: Path) -> int:
    """Compare two ``--dump`` folders: answers and exposure lines byte for byte (but ``ts``),
    the metrics' names, labels and counts (not the timings)."""
    bad = 0
    if (a_dir / "answers.json").read_text() != (b_dir / "answers.json").read_text():
        print("answers differ")
        bad += 1

    def strip_ts(p: Path) -> list[bytes]:
        out = []
        for line in p.read_bytes().splitlines():
            head, sep, rest = line.partition(b'"request_id"')
            if not head.startswith(b'{"ts":'):
                raise ValueError(f"unexpected record {line[:80]!r}")
            out.append(sep + rest)
        return out
    ea, eb = strip_ts(a_dir / "exposures.jsonl"), strip_ts(b_dir / "exposures.jsonl")
    if ea != eb:
        print(f"exposure lines differ ({len(ea)} vs {len(eb)} lines)")
        bad += 1

    def series(p: Path) -> set[str]:
        keep = set()
        for line in p.read_text().splitlines():
            if line.startswith("#") and "HELP" not in line:
                keep.add(line)
            elif line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                timing = ("_seconds" in name or "_created" in name or "log_written" in name
                          or "log_pending_bytes" in name or "queued_bytes" in name)
                keep.add(name if timing else line)
        return keep
    ma, mb = series(a_dir / "metrics.txt"), series(b_dir / "metrics.txt")
    if ma != mb:
        print("metrics differ:", sorted(ma ^ mb)[:20])
        bad += 1
    print("same" if not bad else f"{bad} difference(s)")
    return 1 if bad else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4000, help="measured requests per round")
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate", type=float, default=0.0,
                   help="requests per second (0: back to back); paced requests find colder "
                        "caches and include the background loops' share, as a served gateway")
    p.add_argument("--profile", default="", help="cProfile the measured requests to this file")
    p.add_argument("--upstream", default="fake", choices=("fake", "loopback"))
    p.add_argument("--upstreams", default="fake", help="comma list for the parent run")
    p.add_argument("--rates", default="0", help="comma list of --rate values for the parent run")
    p.add_argument("--compare", default="", help="another checkout, measured as 'before'")
    p.add_argument("--dump", default="", help="write answers, exposures, metrics here")
    p.add_argument("--check-same", nargs=2, metavar=("A", "B"), default=None)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stub", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.stub:
        import uvloop

        from benchmarks.http_stack_bench import serve_stub
        uvloop.run(serve_stub(Path(a.stub), ANSWER))
        return 0
    if a.check_same:
        return _check_same(Path(a.check_same[0]), Path(a.check_same[1]))
    if a.child or a.dump:
        print(json.dumps(_child(a)))
        return 0
    a.upstreams = [u.strip() for u in a.upstreams.split(",") if u.strip()]
    a.rates = [float(x) for x in a.rates.split(",") if x.strip()]
    res = _compare(a)
    md = markdown(res)
    print(md)
    if not a.no_write:
        from benchmarks.common import RESULTS, write_results
        write_results("gateway_route", res)
        (RESULTS / "gateway_route.md").write_text(md)
    return 0


if __name__ == "__main__":
    # run by path: benchmarks/ must not shadow the top-level packages (benchmarks/common.py is
    # not common/); the code measured is PYTHONPATH's checkout, else this one
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != here]
    if not os.environ.get("PYTHONPATH"):
        sys.path.insert(0, str(REPO))
    sys.exit(main())
