"""The fault suite: open-loop load through the real gateway while faults are injected in turn.

``python -m benchmarks.faults --out OUT [--quick]`` (``make faults OUT=<dir>``) starts its own
TorchServe and gateway on free loopback ports in ``OUT/faults-run/`` (OUT's archives are linked
there; ``--quick`` builds small random archives instead, as the tests do), sends Poisson load
through ``/v1/recommendations`` (common/loadgen.py's schedule and request mix) and injects:

==================  ==========================================================================
baseline            no fault; also 401s (no key) and 413s (5 MiB bodies), which log nothing
worker_sigkill      SIGKILL of one TorchServe worker (a Python child of the frontend)
torchserve_sigkill  SIGKILL of the frontend and its workers; restarted afterwards (same ports)
upstream_hang       SIGSTOP of the frontend for a few seconds, then SIGCONT
slow_version        the experiment switched to a treatment that answers slowly
gateway_sigterm     the gateway SIGTERMed right after the last send (slow version in, so
                    >= 20 requests are in flight); every one of them must be answered
big_bodies          32 concurrent 4 MiB (minus a little) JSON bodies; the gateway's RSS sampled
bad_experiment      garbage written to the experiment file: the old one keeps serving
version_added       a fresh archive registered in the running TorchServe (a cold worker), then
                    the experiment file rewritten to give it 50 %: the gateway's reload warms it
                    before switching, so its fallback rate must not exceed control's
log_enospc          the exposure folder on a tiny, almost full tmpfs: writes fail with ENOSPC
==================  ==========================================================================

Each fault gets ``{"sent", "answered", "fallback", "client_5xx", "shed", "transport_errors"}``:
``answered`` = an HTTP answer of any status; ``fallback`` = a 200 with ``"fallback": true``;
``shed`` = a 503 with ``Retry-After`` and reason ``shed`` (load the gateway refused by its budget;
not an error); ``client_5xx`` = every other 5xx; ``transport_errors`` = no HTTP answer.

Exposure accounting: every request carries its own ``X-Request-Id``, so each exposure record is
matched to the answer the client saw. An answered ``/v1/recommendations`` expects exactly one
record, except refusals (400, 401, 403, 413, 429) and shed answers, which expect none. After the last clean stop
``exposures_logged + exposures_dropped == exposures_expected`` must hold (dropped: the gateway's
``recsys_gateway_log_dropped_total{log="exposures"}`` or its final log line, per gateway run), and
only the ENOSPC run may drop.

Writes ``OUT/faults.json`` and prints a table; exits 1 when a rule of issue 18's "Done when"
fails, 2 when the suite could not run. Every process it starts is stopped on the way out
(Ctrl-C included), and the tmpfs is unmounted.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import aiohttp
import orjson
import psutil

from benchmarks.common import machine
from common.cli import run_cli
from common import loadgen
from common.net import WaitError, wait_for_http, wait_until
from core.jsonio import write_json
from common.assignment import N_BUCKETS

MODEL = "recsys"
JSON = "application/json"
SHED_REASONS = ("shed",)              # the JSON reason of a 503 the gateway sheds by its budget
# Refusals show no recommendation and log no exposure: the gateway's own (401 no key, 403, 413
# body over the limit, 429 rate limit) and an invalid request's 400 (the gateway checks requests
# with the handler's own validation, so it refuses them before any model is asked).
NO_EXPOSURE_STATUSES = (400, 401, 403, 413, 429)
STATS_KEYS = ("sent", "answered", "fallback", "client_5xx", "shed", "transport_errors")
FAULTS = ("baseline", "worker_sigkill", "torchserve_sigkill", "upstream_hang", "slow_version",
          "gateway_sigterm", "big_bodies", "bad_experiment", "version_added", "log_enospc")
ADDED_VARIANT = "added"                # the variant name of version_added's new version
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SuiteConfig:
    """Rates, windows and sizes of one run (``FULL`` or ``QUICK``)."""

    rate_rps: float = 60.0             # background open-loop rate during each fault
    window_s: float = 12.0             # each fault's load window
    fault_at: float = 0.25             # the fault starts at this share of the window
    hang_s: float = 4.0                # SIGSTOP -> SIGCONT
    sigterm_rate_rps: float = 100.0    # denser, so >= 20 requests are in flight at SIGTERM
    sigterm_window_s: float = 4.0
    min_inflight: int = 20
    slow_latency_ms: int = 1000        # the slow treatment's added time per batch
    slow_batch_size: int = 64
    deadline_ms: float = 1500.0        # gateway deadline: the slow treatment fits inside it
    fallback_reserve_ms: float = 400.0
    big_bodies: int = 32
    big_body_bytes: int = 4 * 2**20 - 4096
    too_large_bytes: int = 5 * 2**20   # over the gateway's 4 MiB limit: 413, no exposure
    refusals: int = 4                  # 401s and 413s sent in the baseline
    tmpfs_bytes: int = 256 * 1024
    tmpfs_free_bytes: int = 16 * 1024  # left free on the tmpfs: a few dozen records, then ENOSPC
    client_timeout_s: float = 20.0
    added_weight: int = 5000           # version_added: the new version's buckets (of 10,000)
    added_after_s: float = 6.0         # version_added: load kept up this long after the switch
    added_switch_timeout_s: float = 90.0   # > the gateway's warm_up_timeout_s + reload interval
    grace_s: float = 30.0              # GATEWAY_SHUTDOWN_GRACE_S for the gateway runs
    seed: int = 0
    # --quick only: the random archives
    n_users: int = 60
    n_items: int = 500


FULL = SuiteConfig()
QUICK = replace(FULL, rate_rps=30.0, window_s=3.0, hang_s=1.5, sigterm_window_s=2.0,
                refusals=2, client_timeout_s=10.0, added_after_s=4.0)


class SuiteError(RuntimeError):
    """The suite could not set itself up (no archives, TorchServe did not start, ...)."""


# ============================================================================ requests / answers

@dataclass
class Req:
    rid: str
    body: bytes
    headers: dict[str, str] | None = None   # replaces the Authorization header when given


@dataclass
class Answer:
    """What the client saw of one request (perf_counter times)."""

    rid: str
    t_send: float = math.nan
    t_done: float = math.nan
    status: int | None = None
    error: str | None = None
    fallback: bool | None = None
    reason: str | None = None
    variant: str | None = None
    retry_after: bool = False

    @property
    def shed(self) -> bool:
        return self.status == 503 and self.retry_after and self.reason in SHED_REASONS

    @property
    def expects_exposure(self) -> bool:
        return self.status is not None and self.status not in NO_EXPOSURE_STATUSES and not self.shed


def stats(answers: Sequence[Answer]) -> dict[str, Any]:
    """The per-fault figures of issue 18, plus the status histogram."""
    return {"sent": len(answers),
            "answered": sum(a.status is not None for a in answers),
            "fallback": sum(a.status == 200 and a.fallback is True for a in answers),
            "client_5xx": sum(a.status is not None and a.status >= 500 and not a.shed
                              for a in answers),
            "shed": sum(a.shed for a in answers),
            "transport_errors": sum(a.status is None for a in answers),
            "statuses": dict(sorted(Counter(str(a.status or a.error) for a in answers).items()))}


async def _send(session: aiohttp.ClientSession, url: str, req: Req, key: str) -> Answer:
    a = Answer(req.rid, t_send=time.perf_counter())
    headers = {"Content-Type": JSON, "X-Request-Id": req.rid,
               **(req.headers if req.headers is not None else {"Authorization": f"Bearer {key}"})}
    try:
        async with session.post(url + "/v1/recommendations", data=req.body, headers=headers) as r:
            data = await r.read()
            a.status, a.retry_after = r.status, "Retry-After" in r.headers
            try:
                d = orjson.loads(data)
                if isinstance(d, dict):
                    a.fallback, a.reason = d.get("fallback"), d.get("reason")
                    a.variant = d.get("variant")
            except orjson.JSONDecodeError:
                pass
    except (aiohttp.ClientError, TimeoutError) as e:
        a.error = loadgen._error_kind(e)
    a.t_done = time.perf_counter()
    return a


Injection = tuple[float, Callable[..., Any]]   # (seconds after the window starts, action)


async def _inject(at: float, action: Callable[..., Any], session, url: str, key: str) -> Any:
    await loadgen._sleep_until(at)
    if asyncio.iscoroutinefunction(action):
        return await action(session, url, key)
    return await asyncio.get_running_loop().run_in_executor(None, action)


def variant_fallbacks(answers: Sequence[Answer], since: float = -math.inf) -> dict[str, dict]:
    """Per variant, of the requests sent at or after ``since``: 200 answers, fallbacks among
    them, their ratio (None without answers) and the slowest answer (a cold version shows)."""
    out: dict[str, dict] = {}
    for a in answers:
        if a.status == 200 and a.variant is not None and a.t_send >= since:
            v = out.setdefault(a.variant, {"answered": 0, "fallback": 0, "max_ms": 0.0})
            v["answered"] += 1
            v["fallback"] += a.fallback is True
            v["max_ms"] = max(v["max_ms"], round((a.t_done - a.t_send) * 1000, 1))
    for v in out.values():
        v["rate"] = round(v["fallback"] / v["answered"], 4) if v["answered"] else None
    return out


def added_rule(entry: dict) -> tuple[bool, str]:
    """version_added's rule: the new version answered, and its fallback rate after the switch
    is no higher than control's (with none for control, none for it either)."""
    new, control = entry.get("fallback_rate_new"), entry.get("fallback_rate_control")
    counts = entry.get("variants_after_write") or {}
    ok = new is not None and control is not None and new <= control and \
        entry.get("switch_after_s") is not None
    return ok, (f"fallback_rate_new={new} fallback_rate_control={control} "
                f"switch_after_s={entry.get('switch_after_s')} per variant: {counts}")


async def _window(url: str, key: str, reqs: Sequence[Req], offsets: Sequence[float],
                  injections: Sequence[Injection], timeout_s: float,
                  until_injected: bool = False) -> tuple[list[Answer], list]:
    """Send ``reqs`` open-loop at ``offsets`` and run the injections at their times;
    ``until_injected``: stop sending once every injection has returned (a window as long as
    the fault takes)."""
    conn = aiohttp.TCPConnector(limit=2048, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=conn,
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        start = time.perf_counter() + loadgen.START_LEAD_S
        inj = [asyncio.create_task(_inject(start + at, fn, session, url, key))
               for at, fn in injections]
        tasks = []
        for req, off in zip(reqs, offsets):
            await loadgen._sleep_until(start + float(off))
            if until_injected and all(t.done() for t in inj):
                break
            tasks.append(asyncio.create_task(_send(session, url, req, key)))
        answers = list(await asyncio.gather(*tasks))
        results = list(await asyncio.gather(*inj))
    for r in results:   # an injection may send requests of its own (the big bodies)
        if isinstance(r, dict):
            answers += r.pop("answers", [])
    return answers, results


# ============================================================================ processes

class TorchServe:
    """TorchServe on fixed free ports with every version registered; killable and restartable."""

    def __init__(self, work: Path, control: str, versions: Sequence[str]):
        from archives import server as S
        from common.net import free_ports
        self.S, self.work, self.control, self.versions = S, work, control, list(versions)
        self.ports = dict(zip(("inference", "management", "metrics"), free_ports(3)))
        self.state = None
        self.pids: set[int] = set()   # every TorchServe process seen: killed by pid on teardown

    def start(self) -> float:
        """Start with control, register the other versions (in parallel); seconds taken."""
        from archives.store import mar_name
        t0 = time.monotonic()
        S = self.S
        self.state = S.start(self.work, config="dev", host="127.0.0.1", ports=self.ports,
                             models={MODEL: mar_name(MODEL, self.control)}, timeout=300)
        self._track()
        self.register([v for v in self.versions if v != self.control])
        return time.monotonic() - t0

    def register(self, versions: Sequence[str]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from archives.client import TorchServeClient
        from archives.store import mar_name
        client = TorchServeClient(self.state)
        with ThreadPoolExecutor(max(1, len(versions))) as pool:
            answers = list(pool.map(lambda v: client.register(
                mar_name(MODEL, v), MODEL, initial_workers=1), versions))
        for v, r in zip(versions, answers):
            if r.status_code != 200:
                raise SuiteError(f"registering version {v}: HTTP {r.status_code} {r.text[:300]}")
        self._track()

    def _track(self) -> list[psutil.Process]:
        try:
            procs = [psutil.Process(self.state.pid)] + \
                psutil.Process(self.state.pid).children(recursive=True)
        except psutil.Error:
            return []
        self.pids.update(p.pid for p in procs)
        return procs

    def workers(self) -> list[psutil.Process]:
        self._track()
        return self.S.worker_processes(self.state)

    def kill_worker(self) -> dict:
        workers = self.workers()
        if not workers:
            raise SuiteError("no TorchServe worker process found")
        victim = workers[0]
        victim.send_signal(signal.SIGKILL)
        return {"killed_pid": victim.pid}

    def kill_all(self) -> dict:
        procs = self._track()
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)
        return {"killed_pids": len(procs)}

    def pause(self, seconds: float) -> dict:
        frontend = psutil.Process(self.state.pid)
        frontend.send_signal(signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            frontend.send_signal(signal.SIGCONT)
        return {"stopped_s": seconds}

    def stop(self) -> None:
        """Stop it and anything it left (SIGCONT first: a stopped frontend ignores --stop)."""
        for pid in list(self.pids):
            try:
                psutil.Process(pid).send_signal(signal.SIGCONT)
            except psutil.Error:
                pass
        try:
            self.S.stop(self.work, timeout=30)
        finally:
            self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        left = []
        for pid in self.pids:
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    p.send_signal(signal.SIGKILL)
                    left.append(p)
            except psutil.Error:
                pass
        psutil.wait_procs(left, timeout=10)
        self.pids.clear()


_FINAL_LINE = (re.compile(r"exposures[^\n]*?dropped[\"'=: ]+(\d+)"),
               re.compile(r"gateway stopped \(\d+ exposures, \d+ events(?:, \d+ training events)? "
                          r"written; (\d+) dropped\)"))


class GatewayRuns:
    """The gateway processes of the suite, one at a time; each run's exposure drops recorded."""

    def __init__(self, work: Path, args: list[str], env: dict[str, str]):
        self.work, self.args, self.env = work, args, env
        self.gw = None
        self.runs: list[dict] = []

    def start(self, label: str) -> None:
        from testkit.gateway import GatewayProc
        self.gw = GatewayProc(self.work, list(self.args), dict(self.env)).start(timeout=120)
        self.runs.append({"label": label, "pid": self.gw.proc.pid, "dropped": None})

    @property
    def url(self) -> str:
        return self.gw.url

    def metric(self, name: str, **labels) -> float | None:
        from common.promtext import metric_value
        try:
            return metric_value(self.gw.metrics(), name, **labels)
        except Exception:  # noqa: BLE001 - a dead gateway has no metrics
            return None

    def scrape_dropped(self) -> None:
        v = self.metric("recsys_gateway_log_dropped_total", log="exposures")
        if v is not None:
            self.runs[-1]["dropped_metric"] = int(v)

    def sigterm(self) -> float:
        self.scrape_dropped()
        t = time.perf_counter()
        self.gw.proc.send_signal(signal.SIGTERM)
        self.runs[-1]["sigterm_sent"] = True
        return t

    def stop(self, timeout: float = 90.0) -> dict:
        """SIGTERM (unless already sent), wait, and record this run's dropped exposures."""
        if self.gw is None:
            return {}
        run, gw = self.runs[-1], self.gw
        if gw.proc.poll() is None and not run.get("sigterm_sent"):   # one SIGTERM only
            self.scrape_dropped()
            gw.proc.send_signal(signal.SIGTERM)
        try:
            run["exit_code"] = gw.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            gw.proc.kill()
            run["exit_code"] = gw.proc.wait(10)
            run["killed"] = True
        log = gw.log()
        found = None
        for rx in _FINAL_LINE:
            m = rx.findall(log)
            if m:
                found = int(m[-1])
                break
        run["dropped_final_line"] = found
        known = [v for v in (found, run.get("dropped_metric")) if v is not None]
        run["dropped"] = max(known) if known else None
        self.gw = None
        return run

    def kill(self) -> None:
        if self.gw is not None and self.gw.proc.poll() is None:
            self.gw.proc.kill()
            self.gw.proc.wait(10)


class RssSampler(threading.Thread):
    """Peak RSS of one process, sampled every ``every_s`` until stopped."""

    def __init__(self, pid: int, every_s: float = 0.01):
        super().__init__(daemon=True)
        self.proc, self.every_s = psutil.Process(pid), every_s
        self.peak = self.proc.memory_info().rss
        self.before = self.peak
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            self._halt.wait(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


class Tmpfs:
    """A small tmpfs mounted over a folder (needs root / CAP_SYS_ADMIN): a real full disk."""

    def __init__(self, path: Path, size: int):
        self.path, self.size, self.mounted = path, size, False

    def mount(self, leave_free: int) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0700", "tmpfs",
                            str(self.path)], capture_output=True, text=True)
        if r.returncode != 0:
            raise SuiteError(f"cannot mount a tmpfs on {self.path} (needs root): "
                             f"{(r.stderr or r.stdout).strip()}")
        self.mounted = True
        filler = self.path / "filler.bin"
        with open(filler, "wb") as f:
            try:
                f.write(b"\0" * max(0, self.size - leave_free))
                f.flush()
            except OSError:
                pass

    def unmount(self) -> None:
        if self.mounted:
            if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False


# ============================================================================ setup

def build_slow(work: Path, artifact: Path, version: str, cfg: SuiteConfig) -> dict:
    """The slow treatment through issue 18's fault switch (``handler.faults`` with
    ``latency_ms``): in process when ``ArchiveConfig`` has a ``faults`` field, else through
    ``python -m archives build --faults``; where neither exists yet, TorchServe's own batching
    wait (``maxBatchDelay``) makes the version slow instead."""
    import dataclasses

    from archives import build as B
    from archives.__main__ import parser
    faults = {"latency_ms": cfg.slow_latency_ms}
    base = dict(batch_size=cfg.slow_batch_size, min_workers=1, max_workers=1)
    if "faults" in {f.name for f in dataclasses.fields(B.ArchiveConfig)}:
        B.build_from_folder(artifact, work, version=version, model_name=MODEL, force=True,
                            archive_format="zip-store",
                            config=B.ArchiveConfig(**base, max_batch_delay_ms=5, faults=faults))
        return {"mechanism": "handler.faults", **faults}
    if "--faults" in parser().format_help() or "--faults" in _build_help():
        cmd = [sys.executable, "-m", "archives", "build", "--out", str(work), "--artifact",
               str(artifact), "--version", version, "--model-name", MODEL, "--min-workers", "1",
               "--archive-format", "zip-store", "--force", "--batch-size",
               str(cfg.slow_batch_size), "--max-batch-delay", "5", "--faults", json.dumps(faults)]
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            raise SuiteError(f"building the slow version failed:\n{r.stdout}\n{r.stderr}")
        return {"mechanism": "handler.faults (archives build --faults)", **faults}
    B.build_from_folder(artifact, work, version=version, model_name=MODEL, force=True,
                        archive_format="zip-store",
                        config=B.ArchiveConfig(**base, max_batch_delay_ms=cfg.slow_latency_ms))
    return {"mechanism": "maxBatchDelay (archives build has no --faults yet)", **faults}


def _build_help() -> str:
    """``archives build --help`` (the subcommand's own options)."""
    from archives.__main__ import parser
    p = parser()
    for action in p._subparsers._group_actions:   # argparse keeps them here
        if "build" in action.choices:
            return action.choices["build"].format_help()
    return ""


def chart_memory_limit_mb(values: Path = REPO / "helm" / "recsys" / "values.yaml") -> float | None:
    """The gateway container's memory limit in the chart's default values (MiB), if any."""
    import yaml
    try:
        limit = str(yaml.safe_load(values.read_text())["gateway"]["resources"]["limits"]["memory"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|K|M|G)?", limit.strip())
    if not m:
        return None
    scale = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9, None: 1}
    return float(m.group(1)) * scale[m.group(2)] / 2**20


def _ids(path: Path) -> list[str]:
    return [x for x in path.read_text().splitlines() if x.strip()]


def _quick_archive_config():
    from archives import build as B
    return B.ArchiveConfig(batch_size=8, max_batch_delay_ms=5, min_workers=1, max_workers=1)


def prepare_quick(work: Path, cfg: SuiteConfig) -> dict:
    """Two small random archives (control v1, treatment v2) and the slow v3; v4 (version_added)
    is built when that fault runs."""
    from archives import build as B
    from testkit.archives import make_random_artifact
    arts = {}
    for version, seed in (("1", 0), ("2", 1)):
        arts[version] = make_random_artifact(work / f"artifact-v{version}", n_users=cfg.n_users,
                                             n_items=cfg.n_items, seed=seed, model_version=version)
        B.build_from_folder(arts[version], work, version=version, model_name=MODEL,
                            config=_quick_archive_config(), archive_format="zip-store", force=True)
    slow = build_slow(work, arts["2"], "3", cfg)
    return {"control": "1", "treatment": "2", "slow": "3", "slow_how": slow, "added": "4",
            "users": [str(u + 1) for u in range(cfg.n_users)],
            "items": [str(10 * (i + 1)) for i in range(cfg.n_items)]}


def prepare_from_out(out: Path, work: Path, cfg: SuiteConfig) -> dict:
    """OUT's control and treatment archives (the experiment's, else the two newest) linked into
    the work folder; the slow version built from the treatment's own artifact."""
    from archives.store import find_archive, list_archives, model_store
    from gateway import experiment as E
    from gateway.config import GatewayPaths
    have = [a for a in list_archives(out) if a.model_name == MODEL]
    if not have:
        raise SuiteError(f"no {MODEL} archives in {model_store(out)}: run `make demo OUT={out}` "
                         "first (or use --quick)")
    exp_path = GatewayPaths.under(out).experiment
    if exp_path.exists():
        vs = E.load(exp_path).versions
    else:
        vs = [a.version for a in have][-2:]
    control, treatment = vs[0], vs[-1]
    store = model_store(work)
    store.mkdir(parents=True, exist_ok=True)
    for v in {control, treatment}:
        src = find_archive(out, MODEL, v).path
        dst = store / src.name
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    art = work / "artifact-slow"
    with zipfile.ZipFile(find_archive(out, MODEL, treatment).path) as z:
        names = [n for n in z.namelist() if n.startswith("artifact/")]
        if not names:
            raise SuiteError("the treatment archive holds no artifact/ folder")
        z.extractall(work / "unpacked", names)
    shutil.move(str(work / "unpacked" / "artifact"), art)
    from core import artifact
    slow_version = str(max(int(v) for v in vs if v.isdigit()) + 900) if all(
        v.isdigit() for v in vs) else "900"
    slow = build_slow(work, art, slow_version, cfg)
    added = str(int(slow_version) + 1)
    return {"control": control, "treatment": treatment, "slow": slow_version, "slow_how": slow,
            "added": added, "added_artifact": art,
            "users": _ids(art / artifact.USER_IDS_FILE), "items": _ids(art / artifact.ITEM_IDS_FILE)}


def build_added(work: Path, cfg: SuiteConfig, ids: dict, quick: bool) -> None:
    """version_added's archive, built the normal way (no faults): with ``--quick`` a fresh
    random artifact like the others, else the treatment's artifact with the default
    ``ArchiveConfig``. Nothing has ever asked its model anything: its first worker is cold."""
    from archives import build as B
    from testkit.archives import make_random_artifact
    v = ids["added"]
    if quick:
        art = make_random_artifact(work / f"artifact-v{v}", n_users=cfg.n_users,
                                   n_items=cfg.n_items, seed=2, model_version=v)
        config = _quick_archive_config()
    else:
        art, config = ids["added_artifact"], B.ArchiveConfig()
    B.build_from_folder(art, work, version=v, model_name=MODEL, config=config,
                        archive_format="zip-store", force=True)


# ============================================================================ the suite

class Suite:
    def __init__(self, out: Path, cfg: SuiteConfig, quick: bool, log=print):
        self.out, self.cfg, self.quick, self.log = out, cfg, quick, log
        self.work = out / "faults-run"
        self.faults: dict[str, dict] = {}
        self.answers: dict[str, list[Answer]] = {}
        self.ts: TorchServe | None = None
        self.gws: GatewayRuns | None = None
        self.tmpfs: Tmpfs | None = None
        self.enospc_records: Counter = Counter()
        self.enospc_partial = 0
        self.top: dict[str, Any] = {}

    # ---------------------------------------------------------------- helpers
    def _mix(self, name: str, n: int) -> list[Req]:
        specs = loadgen.request_mix(self.ids["users"], self.ids["items"], n,
                              seed=self.cfg.seed + len(self.faults))
        return [Req(f"{name}-{i}", orjson.dumps(s.body)) for i, s in enumerate(specs)]

    def _write_experiment(self, versions: list[str], name: str,
                          weights: list[float] | None = None,
                          names: list[str] | None = None) -> None:
        from gateway import experiment as E
        from gateway.config import GatewayPaths
        E.write(GatewayPaths.under(self.work).experiment,
                E.simple(name, versions, weights or [5000, 5000], names=names, salt="faults"))

    def run_fault(self, name: str, injections: Sequence[Injection] = (), *,
                  rate: float | None = None, window: float | None = None,
                  extra: Sequence[tuple[float, Req]] = (), settle: bool = True,
                  until_injected: bool = False) -> dict:
        cfg = self.cfg
        rate, window = rate or cfg.rate_rps, window or cfg.window_s
        n = max(2, int(round(rate * window)))
        reqs = self._mix(name, n)
        offsets = list(loadgen.schedule(n, rate, "poisson", cfg.seed + len(self.faults)))
        for at, r in extra:
            reqs.append(r)
            offsets.append(at)
        order = sorted(range(len(reqs)), key=lambda i: offsets[i])
        reqs, offsets = [reqs[i] for i in order], [offsets[i] for i in order]
        t0 = time.monotonic()
        answers, results = asyncio.run(_window(self.gws.url, self.key, reqs, offsets,
                                               injections, cfg.client_timeout_s,
                                               until_injected))
        entry = {**stats(answers), "window_s": round(time.monotonic() - t0, 2), "rate_rps": rate}
        for r in results:
            if isinstance(r, dict):
                entry.update(r)
        self.faults[name], self.answers[name] = entry, answers
        if settle:
            took = self._settle()
            if took is None or took > 1.0:
                entry["gateway_unresponsive_after_s"] = took
            if took is None:   # wedged: a fresh gateway, so the next fault measures its own
                self.log(f"[faults] the gateway did not recover from {name}: restarting it")
                self.gws.stop(timeout=10)
                self.gws.start(f"after-{name}")
                entry["gateway_restarted"] = True
        self.log(f"[faults] {name:20s} " + " ".join(f"{k}={entry[k]}" for k in STATS_KEYS)
                 + f"  {entry['statuses']}")
        return entry

    # ---------------------------------------------------------------- phases
    def setup(self) -> None:
        from gateway import auth
        from gateway.config import GatewayPaths
        if self.work.exists():
            left = Tmpfs(GatewayPaths.under(self.work).exposures, 0)
            left.mounted = os.path.ismount(left.path)
            left.unmount()
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        t0 = time.monotonic()
        self.ids = prepare_quick(self.work, self.cfg) if self.quick else \
            prepare_from_out(self.out, self.work, self.cfg)
        self.top["build_s"] = round(time.monotonic() - t0, 1)
        self.top["versions"] = {k: self.ids[k] for k in ("control", "treatment", "slow", "added")}
        self.top["slow_version"] = self.ids["slow_how"]
        paths = GatewayPaths.under(self.work)
        auth.init_keys(paths, rate_per_s=100_000, burst=100_000)
        self.key = auth.read_key(paths.client_key)
        self._write_experiment([self.ids["control"], self.ids["treatment"]], "faults")
        self.ts = TorchServe(self.work, self.ids["control"],
                             [self.ids["control"], self.ids["treatment"]])
        self.top["torchserve_start_s"] = round(self.ts.start(), 1)
        c = self.cfg
        self.gws = GatewayRuns(self.work, ["--deadline-ms", str(c.deadline_ms),
                                           "--fallback-reserve-ms", str(c.fallback_reserve_ms)],
                               {"GATEWAY_SHUTDOWN_GRACE_S": str(c.grace_s)})
        self.gws.start("main")

    def at(self, share: float | None = None) -> float:
        return self.cfg.window_s * (self.cfg.fault_at if share is None else share)

    def baseline(self) -> None:
        c, w = self.cfg, self.cfg.window_s
        extra = [(w * (i + 1) / (2 * c.refusals + 1), Req(f"baseline-nokey-{i}", b'{"user_id":"1"}',
                                                          headers={}))
                 for i in range(c.refusals)]
        big = b'{"user_id":"1","pad":"' + b"x" * c.too_large_bytes + b'"}'
        extra += [(w * (c.refusals + i + 1) / (2 * c.refusals + 1), Req(f"baseline-413-{i}", big))
                  for i in range(c.refusals)]
        self.run_fault("baseline", extra=extra)

    def worker_sigkill(self) -> None:
        self.run_fault("worker_sigkill", [(self.at(), self.ts.kill_worker)])

    def torchserve_sigkill(self) -> None:
        self.run_fault("torchserve_sigkill", [(self.at(), self.ts.kill_all)])
        self.ts.S.stop(self.work, timeout=10)
        if self.ids["slow"] not in self.ts.versions:   # its worker loads beside treatment's
            self.ts.versions.append(self.ids["slow"])
        self.faults["torchserve_sigkill"]["restart_s"] = round(self.ts.start(), 1)
        self.faults["torchserve_sigkill"]["served_again_s"] = self._await_model()

    def _settle(self, timeout: float = 30.0) -> float | None:
        """Seconds until the gateway answers /healthz within a second again (None: never), so
        one fault's aftermath does not spill into the next fault's figures."""
        t0 = time.monotonic()
        try:
            wait_for_http(self.gws.url + "/healthz", timeout=timeout, request_timeout=1)
        except WaitError:
            return None
        return round(time.monotonic() - t0, 1)

    def _await_model(self, timeout: float = 120.0) -> float | None:
        """Seconds until the gateway answers a known user from the model again."""
        import requests
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                r = requests.post(self.gws.url + "/v1/recommendations",
                                  json={"user_id": self.ids["users"][0], "k": 5},
                                  headers={"Authorization": f"Bearer {self.key}",
                                           "X-Request-Id": f"probe-{time.monotonic_ns()}"},
                                  timeout=10)
                if r.status_code == 200 and r.json().get("fallback") is False:
                    return round(time.monotonic() - t0, 1)
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.5)
        return None

    def _reloaded_since(self, before: float, timeout: float, interval: float = 0.2) -> bool:
        """Whether the gateway counts a successful config reload beyond ``before`` in time."""
        try:
            wait_until(lambda: (self.gws.metric("recsys_gateway_config_reloads_total",
                                                result="ok") or 0) > before,
                       timeout=timeout, interval=interval, what="the gateway's reload")
        except WaitError:
            return False
        return True

    def upstream_hang(self) -> None:
        hang = self.cfg.hang_s
        self.run_fault("upstream_hang", [(self.at(), lambda: self.ts.pause(hang))],
                       window=max(self.cfg.window_s, hang + self.at() + 1.0))

    def slow_version(self) -> None:
        t0 = time.monotonic()
        if self.ids["slow"] not in self.ts.versions:
            self.ts.versions.append(self.ids["slow"])
            self.ts.register([self.ids["slow"]])
        register_s = round(time.monotonic() - t0, 1)
        before = self.gws.metric("recsys_gateway_config_reloads_total", result="ok") or 0
        self._write_experiment([self.ids["control"], self.ids["slow"]], "faults-slow")
        self.gws.gw.signal(signal.SIGHUP)
        if not self._reloaded_since(before, timeout=30):
            raise SuiteError("the gateway did not load the slow experiment")
        time.sleep(2 * self.cfg.slow_latency_ms / 1000)   # the gateway's warm-up of the version
        self.run_fault("slow_version")
        self.faults["slow_version"]["register_s"] = register_s

    def version_added(self) -> None:
        """Under load: register a cold version, give it ``added_weight`` buckets in the
        experiment file (no SIGHUP: the gateway's reload loop finds it), keep the load up
        ``added_after_s`` past the switch; per-variant fallback rates of what was sent after
        the write."""
        c, ids = self.cfg, self.ids
        t0 = time.monotonic()
        build_added(self.work, c, ids, self.quick)
        build_s = round(time.monotonic() - t0, 1)
        box: dict = {}

        def add() -> dict:
            t1 = time.monotonic()
            self.ts.versions.append(ids["added"])
            self.ts.register([ids["added"]])
            box["register_s"] = round(time.monotonic() - t1, 1)
            before = self.gws.metric("recsys_gateway_config_reloads_total", result="ok") or 0
            rest = (N_BUCKETS - c.added_weight) / 2
            box["t_write"] = time.perf_counter()
            self._write_experiment([ids["control"], ids["treatment"], ids["added"]],
                                   "faults-added", [rest, rest, c.added_weight],
                                   ["control", "treatment", ADDED_VARIANT])
            if not self._reloaded_since(before, timeout=c.added_switch_timeout_s, interval=0.1):
                return {}
            box["switch_after_s"] = round(time.perf_counter() - box["t_write"], 2)
            time.sleep(c.added_after_s)
            return {}

        self.run_fault("version_added", [(self.at(), add)], until_injected=True,
                       window=self.at() + 400.0)
        per = variant_fallbacks(self.answers["version_added"], box.get("t_write", math.inf))
        new_seen = [a.t_send - box["t_write"] for a in self.answers["version_added"]
                    if a.variant == ADDED_VARIANT] if "t_write" in box else []
        self.faults["version_added"].update(
            version=ids["added"], build_s=build_s, register_s=box.get("register_s"),
            switch_after_s=box.get("switch_after_s"),
            first_new_sent_after_s=round(min(new_seen), 2) if new_seen else None,
            fallback_rate_new=(per.get(ADDED_VARIANT) or {}).get("rate"),
            fallback_rate_control=(per.get("control") or {}).get("rate"),
            variants_after_write=per)

    def gateway_sigterm(self) -> None:
        c = self.cfg
        n = int(round(c.sigterm_rate_rps * c.sigterm_window_s))
        last = float(loadgen.schedule(n, c.sigterm_rate_rps, "poisson", c.seed + len(self.faults))[-1])
        box: dict = {}

        def term():
            box["t"] = self.gws.sigterm()
            return {}

        self.run_fault("gateway_sigterm", [(last + 0.01, term)], rate=c.sigterm_rate_rps,
                       window=c.sigterm_window_s, settle=False)
        run = self.gws.stop()
        t = box["t"]
        inflight = [a for a in self.answers["gateway_sigterm"] if a.t_send <= t < a.t_done]
        answered = [a for a in inflight if a.status is not None and a.status < 500]
        self.top["inflight_at_sigterm"], self.top["inflight_answered"] = len(inflight), len(answered)
        self.faults["gateway_sigterm"].update(
            inflight_at_sigterm=len(inflight), inflight_answered=len(answered),
            inflight_unanswered=dict(Counter(str(a.status or a.error) for a in inflight
                                             if a not in answered)),
            gateway_exit_code=run.get("exit_code"))
        self._write_experiment([self.ids["control"], self.ids["treatment"]], "faults")
        self.gws.start("after-sigterm")

    def big_bodies(self) -> None:
        c = self.cfg
        head = b'{"user_id":"1","k":10,"history":['   # short strings: many objects per byte
        n_ids = (c.big_body_bytes - len(head) - 1) // 7  # '"0042",' each, "]}" at the end
        body = head + b",".join(b'"%04d"' % (i % 10000) for i in range(n_ids)) + b"]}"
        sampler = RssSampler(self.gws.gw.proc.pid)
        sampler.start()

        async def burst(session, url, key):
            rs = [Req(f"big_bodies-big-{i}", body) for i in range(c.big_bodies)]
            return {"answers": list(await asyncio.gather(*(_send(session, url, r, key) for r in rs))),
                    "big_body_bytes": len(body)}

        try:
            self.run_fault("big_bodies", [(self.at(), burst)])
        finally:
            sampler.stop()
        big = [a for a in self.answers["big_bodies"] if "-big-" in a.rid]
        self.top["gateway_peak_rss_mb"] = round(sampler.peak / 2**20, 1)
        self.faults["big_bodies"].update(
            gateway_rss_before_mb=round(sampler.before / 2**20, 1),
            gateway_peak_rss_mb=self.top["gateway_peak_rss_mb"],
            chart_memory_limit_mb=chart_memory_limit_mb(),
            big_statuses=dict(Counter(str(a.status or a.error) for a in big)))

    def bad_experiment(self) -> None:
        from gateway.config import GatewayPaths
        path = GatewayPaths.under(self.work).experiment
        good = path.read_bytes()
        before = self.gws.metric("recsys_gateway_config_reloads_total", result="error") or 0

        def garbage():
            path.write_bytes(b"variants: [this is: not, {an experiment\n\x00\xff")
            return {}

        try:
            self.run_fault("bad_experiment", [(self.at(), garbage)])
            after = self.gws.metric("recsys_gateway_config_reloads_total", result="error") or 0
        finally:
            path.write_bytes(good)
        self.faults["bad_experiment"]["reload_errors"] = int(after - before)

    def log_enospc(self) -> None:
        from gateway.config import GatewayPaths
        from gateway.logs import read_jsonl
        self.gws.stop()   # a clean stop: its exposures are all on disk (or counted as dropped)
        exposures = GatewayPaths.under(self.work).exposures
        self.tmpfs = Tmpfs(exposures, self.cfg.tmpfs_bytes)
        try:
            self.tmpfs.mount(self.cfg.tmpfs_free_bytes)
        except SuiteError as e:
            self.faults["log_enospc"] = {"skipped": str(e)}
            self.log(f"[faults] log_enospc skipped: {e}")
            return
        try:
            self.gws.start("enospc")
            self.run_fault("log_enospc")
            self.gws.stop()

            def bad(_f, _n):
                self.enospc_partial += 1

            self.enospc_records = Counter(r.get("request_id") for r in read_jsonl([exposures], bad))
        finally:
            self.gws.kill()
            self.tmpfs.unmount()
        self.faults["log_enospc"].update(records_on_full_disk=sum(self.enospc_records.values()),
                                         partial_lines=self.enospc_partial,
                                         dropped=self.gws.runs[-1]["dropped"])

    # ---------------------------------------------------------------- accounting
    def account(self) -> None:
        from gateway.config import GatewayPaths
        from gateway.logs import read_jsonl
        logged = Counter(r.get("request_id") for r in
                         read_jsonl([GatewayPaths.under(self.work).exposures], lambda f, n: None))
        logged.update(self.enospc_records)
        everyone = {a.rid: a for answers in self.answers.values() for a in answers}
        # no answer seen: the client cannot tell whether the gateway logged one (reported apart)
        ambiguous = {rid for rid, a in everyone.items() if a.status is None}
        ours = {rid: a for rid, a in everyone.items() if rid not in ambiguous}
        expected = sum(a.expects_exposure for a in ours.values())
        n_logged = sum(v for rid, v in logged.items() if rid in ours)
        duplicates = sum(v - 1 for rid, v in logged.items() if rid in ours and v > 1)
        unexpected = {rid: ours[rid].status for rid in logged if rid in ours
                      and not ours[rid].expects_exposure}
        missing = sum(1 for a in ours.values() if a.expects_exposure and a.rid not in logged)
        dropped_runs = [r["dropped"] for r in self.gws.runs]
        dropped = sum(d for d in dropped_runs if d is not None)
        for name, answers in self.answers.items():
            self.faults[name]["exposures_expected"] = sum(a.expects_exposure for a in answers)
            self.faults[name]["exposures_logged"] = sum(logged.get(a.rid, 0) for a in answers
                                                        if a.status is not None)
        self.top.update(exposures_logged=n_logged, exposures_expected=expected,
                        exposures_dropped=dropped)
        self.top["exposure_detail"] = {
            "duplicates": duplicates, "missing": missing,
            "unexpected": dict(Counter(str(s) for s in unexpected.values())),
            "no_answer_requests": len(ambiguous),
            "no_answer_logged": sum(v for rid, v in logged.items() if rid in ambiguous),
            "foreign_records": sum(v for rid, v in logged.items() if rid not in everyone
                                   and not str(rid).startswith("probe-")),
            "gateway_runs": self.gws.runs}

    def rules(self) -> list[dict]:
        out = []

        def rule(name: str, ok: bool, detail: str) -> None:
            out.append({"rule": name, "ok": bool(ok), "detail": detail})

        for name in FAULTS:
            f = self.faults.get(name)
            if f is None or "skipped" in f:
                rule(f"{name}: injected", False, (f or {}).get("skipped", "did not run"))
                continue
            if name != "gateway_sigterm":
                rule(f"{name}: client_5xx == 0 and transport_errors == 0",
                     f["client_5xx"] == 0 and f["transport_errors"] == 0,
                     f"client_5xx={f['client_5xx']} transport_errors={f['transport_errors']} "
                     f"statuses={f['statuses']}")
        big = self.faults.get("big_bodies") or {}
        if "gateway_peak_rss_mb" in big and big.get("chart_memory_limit_mb"):
            rule("big_bodies: gateway peak RSS within the chart's memory limit",
                 big["gateway_peak_rss_mb"] < big["chart_memory_limit_mb"],
                 f"peak {big['gateway_peak_rss_mb']} MiB, limit {big['chart_memory_limit_mb']:.0f} "
                 "MiB (helm/recsys/values.yaml gateway.resources.limits.memory)")
        added = self.faults.get("version_added") or {}
        if "sent" in added:
            rule("version_added: the new version's fallback rate <= control's", *added_rule(added))
        if "bad_experiment" in self.faults:
            n = self.faults["bad_experiment"].get("reload_errors", 0)
            rule("bad_experiment: counted as a failed reload", n >= 1, f"reload_errors={n}")
        t = self.top
        if "inflight_at_sigterm" in t:
            rule(f"gateway_sigterm: >= {self.cfg.min_inflight} in flight, every one answered",
                 t["inflight_at_sigterm"] >= self.cfg.min_inflight and
                 t["inflight_answered"] == t["inflight_at_sigterm"],
                 f"inflight_at_sigterm={t['inflight_at_sigterm']} "
                 f"inflight_answered={t['inflight_answered']}")
        if "exposures_expected" in t:
            d = t["exposure_detail"]
            unknown = [r["label"] for r in d["gateway_runs"] if r["dropped"] is None]
            rule("exposures: logged + dropped == expected, one per answer, none for refusals or shed",
                 t["exposures_logged"] + t["exposures_dropped"] == t["exposures_expected"]
                 and not d["duplicates"] and not d["unexpected"] and not unknown,
                 f"logged={t['exposures_logged']} dropped={t['exposures_dropped']} "
                 f"expected={t['exposures_expected']} duplicates={d['duplicates']} "
                 f"unexpected={d['unexpected']} dropped unknown for runs {unknown}")
            calm = [r for r in d["gateway_runs"] if r["label"] != "enospc" and r["dropped"]]
            rule("exposures: none dropped without load (every run but the ENOSPC one)", not calm,
                 f"dropped per run: {[(r['label'], r['dropped']) for r in d['gateway_runs']]}")
        return out

    # ---------------------------------------------------------------- driver
    def run(self) -> dict:
        t0 = time.monotonic()
        try:
            self.setup()
            self.log(f"[faults] set up in {time.monotonic() - t0:.0f} s (archives "
                     f"{self.top['build_s']} s, TorchServe {self.top['torchserve_start_s']} s)")
            for name in FAULTS:
                if name == "gateway_sigterm" and "slow_version" not in self.faults:
                    continue
                t1 = time.monotonic()
                getattr(self, name)()
                self.log(f"[faults] {name} took {time.monotonic() - t1:.1f} s")
            self.account()
        finally:
            self.teardown()
        result = {"mode": "quick" if self.quick else "full", "config": asdict(self.cfg),
                  **{k: self.top.get(k) for k in ("inflight_at_sigterm", "inflight_answered",
                                                  "gateway_peak_rss_mb", "exposures_logged",
                                                  "exposures_expected", "exposures_dropped")},
                  "faults": self.faults,
                  **{k: v for k, v in self.top.items() if k not in result_keys()}}
        result["rules"] = self.rules()
        result["ok"] = all(r["ok"] for r in result["rules"])
        result["seconds"] = round(time.monotonic() - t0, 1)
        result["machine"] = machine()
        return result

    def teardown(self) -> None:
        for step in (lambda: self.gws and self.gws.stop(timeout=30),
                     lambda: self.gws and self.gws.kill(),
                     lambda: self.tmpfs and self.tmpfs.unmount(),
                     lambda: self.ts and self.ts.stop()):
            try:
                step()
            except Exception as e:  # noqa: BLE001 - tear down everything else regardless
                self.log(f"[faults] teardown: {type(e).__name__}: {e}")


def result_keys() -> tuple[str, ...]:
    return ("inflight_at_sigterm", "inflight_answered", "gateway_peak_rss_mb", "exposures_logged",
            "exposures_expected", "exposures_dropped")


def table(result: dict) -> str:
    """The per-fault figures as a plain-text table, then the rules."""
    rows = [("fault", *STATS_KEYS)]
    for name, f in result["faults"].items():
        rows.append((name, *(("skipped",) + ("",) * 5 if "skipped" in f else
                             tuple(str(f[k]) for k in STATS_KEYS))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.append("")
    lines += [f"{k}: {result.get(k)}" for k in result_keys()]
    lines.append("")
    lines += [f"[{'ok' if r['ok'] else 'FAIL'}] {r['rule']}: {r['detail']}" for r in result["rules"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path,
                   help="run folder of `make demo` (its archives are used; faults.json is written "
                        "there); with --quick any folder")
    p.add_argument("--quick", action="store_true",
                   help="small random archives, fewer requests, lower rates (the make test run)")
    p.set_defaults(fn=_run)
    return run_cli(p, argv, (SuiteError,), logs=False)


def _run(a: argparse.Namespace) -> int:
    out = a.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    suite = Suite(out, QUICK if a.quick else FULL, a.quick)

    def on_term(signum, frame):   # tear down like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        result = suite.run()
    except KeyboardInterrupt:
        print("interrupted: every process the suite started is stopped", file=sys.stderr)
        return 130
    path = out / "faults.json"
    write_json(path, result)
    print(table(result))
    print(f"wrote {path} ({result['seconds']} s)")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
