"""Peak memory of the gateway under 32 concurrent 4 MiB bodies: in-flight budget on vs off.

``python -m benchmarks.gateway_memory`` starts the real gateway (``python -m gateway serve``)
once per case, on free loopback ports, with TorchServe replaced by an upstream that accepts
connections and never answers (so every admitted request is held for its whole deadline, as
under a slow model, then answered by the popularity fallback: the gateway's own memory is what
is measured, with all 32 requests alive at once). Each case sends 32 requests at once and reads the gateway process's peak RSS
(``VmHWM`` in ``/proc/<pid>/status``) after all are answered. Bodies:

* ``short_strings``: 4 MiB of ``"1",`` in ``history`` (a million short strings: 60-100 MiB of
  Python objects when parsed in full; invalid, the handler allows 5,000);
* ``valid_large``: the largest kind of valid request (5,000 history + 5,000 exclude + 1,000
  candidate ids of 256 characters, about 2.9 MB), forwarded upstream, then the fallback.

``--repo DIR`` runs another checkout's gateway (e.g. the commit before the budget, to compare).
Writes ``benchmarks/results/gateway_memory.json``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common.cli import run_cli
from benchmarks.common import machine, write_results
from gateway.config import GatewayPaths
from gateway.process import launch, terminate

REPO = Path(__file__).resolve().parents[1]
SIZE = 4 * 2**20
CONCURRENCY = 32


def bodies() -> dict[str, bytes]:
    short = b'{"user_id": "1", "history": [' + b",".join([b'"1"'] * ((SIZE - 40) // 4)) + b"]}"
    ids = lambda p, n: [f"{p}{i:06d}".ljust(256, "x") for i in range(n)]  # noqa: E731
    large = json.dumps({"user_id": "1", "history": ids("h", 5000), "exclude": ids("e", 5000),
                        "candidates": ids("c", 1000)}).encode()
    return {"short_strings": short[:SIZE] if len(short) <= SIZE else short,
            "valid_large": large}


class HungUpstream:
    """Accepts connections, reads nothing, answers nothing (a model that never answers)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def _out(root: Path, repo: Path) -> tuple[Path, str]:
    out = root / "out"
    code = ("import json, time, sys; from gateway import auth, experiment as E; "
            "from gateway.config import GatewayPaths; p = GatewayPaths.under(sys.argv[1]); "
            "auth.init_keys(p); E.write(p.experiment, E.simple('mem', ['1'], [10000], salt='s')); "
            "p.popularity.write_text(json.dumps({'version': '1', 'fetched_at': time.time(), "
            "'items': [{'item_id': str(i), 'score': 1.0, 'title': '', 'categories': None} "
            "for i in range(100)]}))")
    subprocess.run([sys.executable, "-c", code, str(out)], cwd=repo, check=True,
                   env={**os.environ, "PYTHONPATH": str(repo)})
    return out, (out / "gateway" / "client_key").read_text().strip()


def _status(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0  # kB -> MiB
    raise KeyError(field)


async def _burst(url: str, key: str, body: bytes) -> dict[int, int]:
    import aiohttp
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        async def one() -> int:
            try:
                async with s.post(url + "/v1/recommendations", data=body, headers={
                        "Authorization": f"Bearer {key}",
                        "Content-Type": "application/json"}) as r:
                    await r.read()
                    return r.status
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return 0
        codes = await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
    return {c: codes.count(c) for c in sorted(set(codes))}


def run_case(repo: Path, kind: str, body: bytes, extra: list[str]) -> dict:
    upstream = HungUpstream()
    with tempfile.TemporaryDirectory(prefix="gw-mem-") as tmp:
        out, key = _out(Path(tmp), repo)
        proc = None
        try:
            proc, st = launch(GatewayPaths.under(out),
                              ["--out", str(out), "--port", "0", "--metrics-port", "0",
                               "--upstream-url", f"http://127.0.0.1:{upstream.port}", *extra],
                              log=Path(tmp) / "gateway.log", new_session=False, repo=repo)
            idle = _status(proc.pid, "VmRSS")
            t0 = time.perf_counter()
            codes = asyncio.run(_burst(st["url"], key, body))
            seconds = time.perf_counter() - t0
            peak = _status(proc.pid, "VmHWM")
        finally:
            if proc is not None and proc.poll() is None:
                terminate(proc, timeout=60)
            upstream.close()
    return {"body": kind, "body_bytes": len(body), "args": extra, "idle_rss_mib": round(idle, 1),
            "peak_rss_mib": round(peak, 1), "added_mib": round(peak - idle, 1),
            "statuses": codes, "seconds": round(seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", type=Path, default=REPO, help="checkout whose gateway runs")
    ap.add_argument("--label", default="this checkout")
    ap.add_argument("--cases", default="on,off", help="on (default budget), off (no budget), "
                                                      "plain (no budget option: older code)")
    ap.add_argument("--name", default="gateway_memory", help="results file name")
    ap.set_defaults(fn=_run)
    return run_cli(ap, argv, logs=False)


def _run(a: argparse.Namespace) -> int:
    args = {"on": [], "off": ["--inflight-bytes-budget", "0"], "plain": []}
    rows = []
    for case in a.cases.split(","):
        for kind, body in bodies().items():
            row = {"case": case, **run_case(a.repo, kind, body, args[case])}
            print(json.dumps(row), flush=True)
            rows.append(row)
    path = write_results(a.name, {"label": a.label, "concurrency": CONCURRENCY,
                                  "chart_memory_limit_mib": 1024, "rows": rows,
                                  "machine": machine()})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
