"""TorchServe in the foreground as a container's main process, with a drain on SIGTERM.

TorchServe's own launcher (``python -m ts.model_server --foreground``) ignores SIGTERM as PID 1,
and its Java frontend, when signalled, closes every connection at once: requests in flight get
no answer (measured with 0.12). So the entry point stays in front of it:

* it renders the run folder (:func:`archives.server.prepare_run_dir`), starts the launcher in
  its own process group with stdout piped, and copies every line to the container's stdout;
* once ``/ping`` is healthy it scales each registered version to the requested workers and
  makes the highest version the default (it is registered first, so it already is);
* on SIGTERM / SIGINT it *drains*: TorchServe keeps serving while requests are in flight, i.e.
  while ``ts_inference_requests_total`` (requests received, metrics API) is ahead of the
  inference responses seen in TorchServe's access log, or a model's job queue is not empty;
  then it signals Java, waits, and kills what is left after ``stop_timeout``. Drain and stop
  together stay under the 30 s SageMaker and Kubernetes give by default.

The container image runs this under ``tini`` (PID 1 reaps orphans and forwards signals).
"""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil
import requests

from archives import server as S
from archives.client import TorchServeClient
from archives.properties import address_host
from archives.store import archives_in, model_store

log = logging.getLogger("recsys.container")

# Inference routes as they appear in TorchServe's access log (not /ping, not management).
INFERENCE_LINE = re.compile(
    r'ACCESS_LOG - \S+ "[A-Z]+ (?:/invocations|/predictions/|/explanations/|/v[12]/models/'
    r'|/models/[^/ ]+(?:/[^/ ]+)?/invoke)')
RECEIVED_METRIC = re.compile(r"^ts_inference_requests_total\{[^}]*\}\s+([0-9.eE+]+)", re.M)


@dataclass
class Launch:
    """What to start: a run root laid out like ``OUT`` (model-store/, torchserve/)."""

    out: Path
    base_config: Path
    ports: dict[str, int]                   # inference / management / metrics
    models: list[tuple[str, str]]           # (model name, archive file), registration order
    host: str | None = None                 # None: each address keeps the base config's host
    grpc_ports: dict[str, int] | None = None
    workers: int | None = None              # scale every version to this once healthy
    defaults: dict[str, str] = field(default_factory=dict)  # model name -> default version
    ready_timeout: float = 600.0
    drain_timeout: float = 15.0
    stop_timeout: float = 10.0


class LogPump(threading.Thread):
    """Copies TorchServe's output to ours, counting the inference responses it logs."""

    def __init__(self, stream: IO[bytes], sink: IO[bytes]):
        super().__init__(name="torchserve-log", daemon=True)
        self.stream, self.sink = stream, sink
        self.answered = 0
        self.lock = threading.Lock()

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            try:
                self.sink.write(raw)
                self.sink.flush()
            except (OSError, ValueError):
                pass
            if b"ACCESS_LOG" in raw and INFERENCE_LINE.search(raw.decode("utf-8", "replace")):
                with self.lock:
                    self.answered += 1


def _received(client: TorchServeClient) -> float | None:
    try:
        text = client.metrics(["ts_inference_requests_total"])
    except (requests.RequestException, OSError):
        return None
    return sum(float(x) for x in RECEIVED_METRIC.findall(text))


def _pending(client: TorchServeClient, names: set[str]) -> int | None:
    total = 0
    try:
        for name in names:
            for d in client.describe(name, "all"):
                total += int((d.get("jobQueueStatus") or {}).get("pendingRequests", 0))
    except (requests.RequestException, OSError, ValueError):
        return None
    return total


def drain(client: TorchServeClient, pump: LogPump, names: set[str], timeout: float) -> str:
    """Wait until no inference request is queued or unanswered (two looks 100 ms apart)."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline:
        received, pending = _received(client), _pending(client, names)
        with pump.lock:
            answered = pump.answered
        busy = (pending or 0) > 0 or (received is not None and received > answered)
        if received is None and pending is None:
            return "TorchServe does not answer"
        quiet = 0 if busy else quiet + 1
        if quiet >= 2:
            return f"drained ({answered} inference responses in all)"
        time.sleep(0.1)
    return f"drain timed out after {timeout:.0f} s"


def _java_pid(rd: Path, launcher: subprocess.Popen, timeout: float = 60.0) -> int | None:
    """TorchServe's launcher writes the Java frontend's pid into its TMPDIR."""
    pid_file = rd / "tmp" / ".model_server.pid"
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(pid_file.read_text().strip())
        except (OSError, ValueError):
            if time.monotonic() >= deadline or launcher.poll() is not None:
                return None
            time.sleep(0.05)


def configure(launch: Launch, client: TorchServeClient) -> None:
    """After /ping: workers per version, then the default version of each model."""
    for name, file in launch.models:
        version = next(a.version for a in archives_in(model_store(launch.out)) if a.file_name == file)
        if launch.workers:
            r = client.scale(name, version, launch.workers)
            if r.status_code >= 300:
                raise S.ServerError(f"scaling {name} v{version} to {launch.workers} workers: "
                                    f"HTTP {r.status_code} {r.text[:300]}")
    for name, version in launch.defaults.items():
        if client.default_version(name) != version:
            r = client.set_default(name, version)
            if r.status_code >= 300:
                raise S.ServerError(f"set-default {name} v{version}: HTTP {r.status_code} {r.text[:300]}")


def run(launch: Launch) -> int:
    """Start TorchServe in the foreground, configure it, serve until a signal, drain, stop.

    Returns the process exit code: 0 after a signal-initiated stop, TorchServe's own code
    (or 1) when it ends by itself or never becomes healthy.
    """
    stop = threading.Event()
    got: list[int] = []

    def on_signal(signum, _frame):
        got.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    out = launch.out
    rd = S.run_dir(out)
    cfg_path, props, grpc = S.prepare_run_dir(out, launch.base_config, ports=launch.ports,
                                              host=launch.host, grpc_ports=launch.grpc_ports)
    token_auth = props.get("disable_token_authorization", "false").strip().lower() != "true"
    cmd = [sys.executable, "-m", "ts.model_server", "--foreground", "--ts-config", str(cfg_path),
           "--model-store", str(model_store(out)), "--ncs"]
    if launch.models:
        cmd += ["--models", *[f"{n}={f}" for n, f in launch.models]]
    t0 = time.monotonic()
    launcher = subprocess.Popen(cmd, cwd=rd, env=S.launcher_env(rd), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    pump = LogPump(launcher.stdout, sys.stdout.buffer)
    pump.start()
    try:
        return _supervise(launch, launcher, pump, props, grpc, token_auth, stop, got, t0)
    except BaseException:  # never leave TorchServe behind: its launcher leads its process group
        try:
            os.killpg(launcher.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        raise


def _supervise(launch: Launch, launcher: subprocess.Popen, pump: LogPump, props: dict,
               grpc: dict[str, int], token_auth: bool, stop: threading.Event, got: list[int],
               t0: float) -> int:
    out = launch.out
    rd = S.run_dir(out)
    java = _java_pid(rd, launcher)
    if java is None:
        code = launcher.wait()
        log.error("TorchServe's launcher exited (%s) before starting Java", code)
        return code or 1
    host = launch.host or address_host(props.get("inference_address", "http://127.0.0.1"))
    state = S.ServerState(out=str(out), pid=java, host=host, ports=launch.ports,
                          token_auth=token_auth, config=str(launch.base_config),
                          models={n: f for n, f in launch.models}, started_at=time.time(),
                          grpc_ports=grpc)
    state.save()
    log.info("TorchServe started (java pid %d): inference %s, management %s, metrics %s, "
             "token auth %s", java, state.inference_url, state.management_url, state.metrics_url,
             "on" if token_auth else "off")
    client = TorchServeClient(state, timeout=30)

    ready = threading.Event()
    failed: list[str] = []

    def bring_up():
        try:
            S.wait_ready(state, timeout=launch.ready_timeout, models=[n for n, _ in launch.models])
            configure(launch, client)
            ready.set()
            log.info("ready in %.1f s: %s", time.monotonic() - t0,
                     ", ".join(f"{n} v{client.default_version(n)} (default)"
                               for n in sorted({n for n, _ in launch.models})) or "no models")
        except Exception as e:  # noqa: BLE001 - reported, then the main loop stops the server
            if not got:  # a stop requested meanwhile explains any error here
                failed.append(str(e))
            stop.set()

    threading.Thread(target=bring_up, name="bring-up", daemon=True).start()
    while launcher.poll() is None and not stop.wait(0.2):
        pass

    if launcher.poll() is not None and not got:
        pump.join(timeout=2)
        log.error("TorchServe exited by itself with code %s", launcher.returncode)
        return launcher.returncode or 1
    if failed:
        log.error("start-up failed: %s", failed[0])
    else:
        sig = signal.Signals(got[0]).name if got else "stop"
        log.info("%s: draining", sig)
        t1 = time.monotonic()
        result = drain(client, pump, {n for n, _ in launch.models}, launch.drain_timeout) \
            if ready.is_set() else "not ready yet, nothing to drain"
        log.info("%s in %.1f s; stopping TorchServe", result, time.monotonic() - t1)
    try:  # Java and its workers, remembered before they are reparented
        procs = [psutil.Process(java)] + psutil.Process(java).children(recursive=True)
    except psutil.Error:
        procs = []
    try:
        os.kill(java, signal.SIGTERM)  # Java stops its own workers
    except ProcessLookupError:
        pass
    try:
        launcher.wait(timeout=launch.stop_timeout)
    except subprocess.TimeoutExpired:
        log.warning("TorchServe did not stop within %.0f s: killing it", launch.stop_timeout)
        launcher.kill()
        launcher.wait(timeout=10)
    _, alive = psutil.wait_procs(procs, timeout=1)
    for p in alive:  # only the processes this server started
        try:
            p.kill()
        except psutil.Error:
            pass
    pump.join(timeout=2)
    S.state_file(out).unlink(missing_ok=True)
    return 1 if failed else 0


__all__ = ["Launch", "LogPump", "drain", "configure", "run"]
