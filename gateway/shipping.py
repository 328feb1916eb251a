"""Rotated exposure/event log files to S3, verified, then deleted locally; a retention cap on
what stays behind.

On Kubernetes the logs live in an ``emptyDir``: a rollout deletes it and the kubelet evicts a
pod that fills it. So one thread (:class:`LogShipper`) takes every *closed* file of the log
folders (the file a writer holds has an exclusive ``flock``; see :mod:`gateway.logs`), oldest
first, and

1. uploads it with ``put_object(ChecksumAlgorithm="SHA256")`` to
   ``s3://bucket/prefix/<exposures|events>/<hostname>/<file name>`` (S3 checks the body
   against the checksum botocore sends with it); credentials come from boto3's default chain
   (IRSA on EKS);
2. verifies it: ``head_object(ChecksumMode="ENABLED")`` must report the local size and the
   SHA-256 computed locally before the upload;
3. deletes the local file only then.

A failed or unverified upload keeps the file, is counted, and the shipper backs off (doubling
from ``interval_s`` to ``backoff_max_s``). Whether shipping is on or not, when the folders
together hold more than ``retain_bytes`` the oldest closed files are deleted first and counted
(``recsys_gateway_log_deleted_unshipped_*``): losing the oldest records beats an eviction that
loses all of them. :class:`GatewayLogs` composes the two logs and their shipper for the gateway
and closes them within the shutdown grace.
"""
from __future__ import annotations

import base64
import fcntl
import hashlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from gateway.logs import JsonlLog, open_private

log = logging.getLogger("gateway.shipping")
_YOUNG_EMPTY_S = 60.0  # an empty file this young may be one a writer is just opening


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix") (prefix without slashes at
    either end, possibly '')."""
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise ValueError(f"{uri!r} is not s3://bucket[/prefix]")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


@dataclass(frozen=True)
class LocalFile:
    log: str
    path: Path
    size: int
    mtime: float


class LogShipper:
    """Ships and caps the files of ``dirs`` (``{log name: folder}``); see the module doc."""

    def __init__(self, dirs: dict[str, Path], *, uri: str = "", retain_bytes: int = 0,
                 interval_s: float = 10.0, backoff_max_s: float = 300.0, metrics: Any = None,
                 hostname: str | None = None, client: Any = None, max_age_s: float = 0.0):
        self.dirs = {name: Path(d) for name, d in dirs.items()}
        self.uri = uri
        self.bucket, self.prefix = parse_s3_uri(uri) if uri else ("", "")
        self.retain_bytes = retain_bytes
        self.max_age_s = max_age_s
        """Rotated files older than this (by mtime) are deleted, shipped or not (0 = kept): the
        retention of a log whose records must not outlive it (the training-event log)."""
        self.interval_s, self.backoff_max_s = interval_s, backoff_max_s
        self.metrics = metrics
        self.hostname = hostname or socket.gethostname()
        self._client = client
        self.shipped_files = 0
        self.shipped_bytes = 0
        self.failures = 0
        self.deleted_files = 0
        self.deleted_bytes = 0
        self._delay = interval_s
        self._next_try = 0.0
        self._lock = threading.Lock()   # one pass at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._final_deadline: float | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> "LogShipper":
        self._thread = threading.Thread(target=self._run, name="log-shipper", daemon=True)
        self._thread.start()
        return self

    def wake(self, _path: Path | None = None) -> None:
        """A file was rotated (a writer's ``on_rotate``): look now rather than at the next tick."""
        self._wake.set()

    def close(self, deadline: float) -> bool:
        """A last pass (shipping ignores the backoff, one try per file, no new upload starts
        after ``deadline``, a ``time.monotonic()`` value), then stop. True when it finished in
        time; an upload still running at the deadline is left to die with the process."""
        self._final_deadline = deadline
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            self.run_once(deadline, final=True)
            return True
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - the thread must survive anything
                log.exception("log shipper pass failed")
        try:
            self.run_once(self._final_deadline, final=True)
        except Exception:  # noqa: BLE001
            log.exception("final log shipper pass failed")

    # ---- one pass -----------------------------------------------------------------------------
    def local_files(self) -> tuple[list[LocalFile], dict[str, int]]:
        """(closed files oldest first, bytes per log of every file, open ones included)."""
        closed: list[LocalFile] = []
        totals: dict[str, int] = {}
        now = time.time()
        for name, d in self.dirs.items():
            totals[name] = 0
            try:
                paths = list(d.glob("*.jsonl"))
            except OSError:
                continue
            for p in paths:
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                totals[name] += st.st_size
                if st.st_size == 0 and now - st.st_mtime < _YOUNG_EMPTY_S:
                    continue
                if not _is_held(p):
                    closed.append(LocalFile(name, p, st.st_size, st.st_mtime))
        closed.sort(key=lambda f: (f.mtime, f.path.name))
        return closed, totals

    def run_once(self, deadline: float | None = None, final: bool = False) -> None:
        """Ship what is closed (unless backing off), then apply the retention cap, then update
        the pending-bytes gauges."""
        with self._lock:
            closed, totals = self.local_files()
            if self.uri and (final or time.monotonic() >= self._next_try):
                for f in closed:
                    if deadline is not None and time.monotonic() >= deadline:
                        break
                    if not self._ship(f):
                        if not final:
                            self._delay = min(self.backoff_max_s, self._delay * 2)
                            self._next_try = time.monotonic() + self._delay
                        break
                    totals[f.log] -= f.size
                    self._delay, self._next_try = self.interval_s, 0.0
                closed = [f for f in closed if f.path.exists()]
            if self.max_age_s > 0:
                closed = self._expire(closed, totals)
            if self.retain_bytes > 0:
                self._retain(closed, totals)
            if self.metrics is not None:
                for name, n in totals.items():
                    self.metrics.log_pending_bytes.labels(name).set(max(0, n))

    def _expire(self, closed: list[LocalFile], totals: dict[str, int]) -> list[LocalFile]:
        """Delete the rotated files past ``max_age_s``; the rest."""
        horizon, kept = time.time() - self.max_age_s, []
        for f in closed:
            if f.mtime >= horizon:
                kept.append(f)
                continue
            try:
                f.path.unlink()
            except FileNotFoundError:
                continue
            except OSError as e:
                log.error("retention could not delete %s: %s", f.path, e)
                kept.append(f)
                continue
            totals[f.log] -= f.size
            self.deleted_files += 1
            self.deleted_bytes += f.size
            if self.metrics is not None:
                self.metrics.log_deleted_files.labels(f.log).inc()
                self.metrics.log_deleted_bytes.labels(f.log).inc(f.size)
            log.info("retention: deleted %s, older than %.0f days", f.path.name,
                     self.max_age_s / 86400)
        return kept

    def _retain(self, closed: list[LocalFile], totals: dict[str, int]) -> None:
        total = sum(totals.values())
        for f in closed:
            if total <= self.retain_bytes:
                break
            try:
                f.path.unlink()
            except FileNotFoundError:
                continue
            except OSError as e:
                log.error("retention could not delete %s: %s", f.path, e)
                continue
            total -= f.size
            totals[f.log] -= f.size
            self.deleted_files += 1
            self.deleted_bytes += f.size
            if self.metrics is not None:
                self.metrics.log_deleted_files.labels(f.log).inc()
                self.metrics.log_deleted_bytes.labels(f.log).inc(f.size)
            log.warning("retention: deleted unshipped %s (%d bytes): the %s folders hold more "
                        "than %d bytes", f.path.name, f.size, "/".join(self.dirs),
                        self.retain_bytes)

    # ---- one file ---------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config
            self._client = boto3.client("s3", config=Config(
                connect_timeout=5, read_timeout=30,
                retries={"max_attempts": 3, "mode": "standard"}))
        return self._client

    def key(self, f: LocalFile) -> str:
        parts = [self.prefix] if self.prefix else []
        return "/".join(parts + [f.log, self.hostname, f.path.name])

    def _ship(self, f: LocalFile) -> bool:
        """Upload, verify, delete one file; False (counted, file kept) on any failure."""
        key = self.key(f)
        target = f"s3://{self.bucket}/{key}"
        try:
            with open(f.path, "rb") as body:
                # a shared lock: a writer that still holds the file makes this fail
                fcntl.flock(body.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                st = os.fstat(body.fileno())
                digest = hashlib.file_digest(body, "sha256").digest()
                b64 = base64.b64encode(digest).decode()
                body.seek(0)
                self.client.put_object(Bucket=self.bucket, Key=key, Body=body,
                                       ChecksumAlgorithm="SHA256",
                                       ContentType="application/x-ndjson",
                                       Metadata={"sha256": digest.hex()})
                head = self.client.head_object(Bucket=self.bucket, Key=key,
                                               ChecksumMode="ENABLED")
                size, remote = head.get("ContentLength"), head.get("ChecksumSHA256")
                if size != st.st_size or remote != b64:
                    raise _Unverified(f"{target}: S3 reports {size} bytes, sha256 {remote}; "
                                      f"the local file has {st.st_size} bytes, sha256 {b64}")
                f.path.unlink()
        except Exception as e:  # noqa: BLE001 - S3, network, credentials, the disk: all kept
            self.failures += 1
            if self.metrics is not None:
                self.metrics.log_ship_failures.labels(f.log).inc()
            log.warning("could not ship %s to %s (kept; retrying with backoff): %s",
                        f.path.name, target, _describe(e))
            return False
        self.shipped_files += 1
        self.shipped_bytes += st.st_size
        if self.metrics is not None:
            self.metrics.log_shipped_files.labels(f.log).inc()
            self.metrics.log_shipped_bytes.labels(f.log).inc(st.st_size)
        log.info("shipped %s to %s (%d bytes, verified)", f.path.name, target, st.st_size)
        return True


class _Unverified(RuntimeError):
    """The uploaded object does not match the local file."""


def _is_held(path: Path) -> bool:
    """True when some writer holds the file's exclusive lock (it is still being written)."""
    try:
        with open(path, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return True
    return False


def _describe(e: Exception) -> str:
    try:
        from botocore.exceptions import ClientError, NoCredentialsError
    except ImportError:  # pragma: no cover - boto3 is pinned
        return f"{type(e).__name__}: {e}"
    if isinstance(e, NoCredentialsError):
        return "no AWS credentials (the pod's service account / IRSA role)"
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        return f"S3 {err.get('Code', '?')}: {err.get('Message', e)}"
    return f"{type(e).__name__}: {e}"


# ---- the gateway's two logs -------------------------------------------------------------------

@dataclass
class GatewayLogs:
    """The exposure and event logs of one gateway and their shipper."""

    exposures: JsonlLog
    events: JsonlLog
    shipper: LogShipper
    training: JsonlLog | None = None
    """The training-event log (raw user ids; its own folder, mode, S3 prefix and retention)."""
    training_shipper: LogShipper | None = None

    @property
    def all(self) -> list[JsonlLog]:
        return [lg for lg in (self.exposures, self.events, self.training) if lg is not None]

    def close(self, deadline: float) -> bool:
        """Within ``deadline`` (``time.monotonic()``): write what is queued and close every
        file (its last rotation), then ship what remains. Records not written in time are
        counted as dropped. True when everything finished in time."""
        ok = True
        for lg in self.all:
            lg.stop_accepting()          # the writers finish in parallel
        for lg in self.all:
            ok = lg.close(deadline - time.monotonic()) and ok
        if self.training_shipper is not None:
            ok = self.training_shipper.close(deadline) and ok
        return self.shipper.close(deadline) and ok


def open_logs(cfg, metrics, exposure_fmt: Callable[[Any], dict],
              event_fmt: Callable[[Any], dict],
              training_fmt: Callable[[Any], dict] | None = None) -> GatewayLogs:
    """The logs of ``cfg`` (a GatewayConfig) wired to ``metrics``, and their shippers started:
    the experiment logs (exposures, events: pseudonyms) and, with ``training_fmt`` and
    ``cfg.training_log``, the training-event log (raw ids: folder 0700, files 0600, its own
    S3 URI and an age limit)."""
    paths = cfg.paths
    shipper = LogShipper({"exposures": paths.exposures, "events": paths.events},
                         uri=cfg.log_ship_uri, retain_bytes=cfg.log_retain_bytes,
                         interval_s=cfg.log_ship_interval_s,
                         backoff_max_s=cfg.log_ship_backoff_max_s, metrics=metrics)

    def one(name: str, directory: Path, fmt: Callable[[Any], dict], wake: Callable,
            **kw: Any) -> JsonlLog:
        return JsonlLog(directory, name, fmt, cfg.log_queue_size, cfg.log_rotate_bytes,
                        cfg.log_rotate_s, on_drop=metrics.log_dropped.labels(name).inc,
                        on_write=metrics.log_written.labels(name).inc,
                        queue_bytes=cfg.log_queue_bytes,
                        max_record_bytes=cfg.log_max_record_bytes, fsync_s=cfg.log_fsync_s,
                        batch_s=cfg.log_batch_s,
                        on_error=metrics.log_write_errors.labels(name).inc,
                        on_truncate=metrics.log_truncated.labels(name).inc,
                        on_rotate=wake, **kw)

    logs = GatewayLogs(one("exposures", paths.exposures, exposure_fmt, shipper.wake),
                       one("events", paths.events, event_fmt, shipper.wake), shipper)
    watched = {"exposures": logs.exposures, "events": logs.events}
    if training_fmt is not None and cfg.training_log:
        tdir = cfg.training_log_path
        tdir.mkdir(parents=True, exist_ok=True)
        tdir.chmod(0o700)
        logs.training_shipper = LogShipper(
            {TRAINING_LOG: tdir}, uri=cfg.training_log_ship_uri,
            interval_s=cfg.log_ship_interval_s, backoff_max_s=cfg.log_ship_backoff_max_s,
            metrics=metrics, max_age_s=cfg.training_log_retention_days * 86400.0)
        logs.training = one(TRAINING_LOG, tdir, training_fmt, logs.training_shipper.wake,
                            opener=open_private)
        watched[TRAINING_LOG] = logs.training
        logs.training_shipper.start()
    metrics.watch_logs(watched)
    metrics.log_retain_bytes.set(cfg.log_retain_bytes)
    metrics.log_shipping_enabled.set(1 if cfg.log_ship_uri else 0)
    shipper.start()
    return logs


TRAINING_LOG = "training-events"
"""The training-event log's name: its file prefix, metric label and S3 key part."""


__all__ = ["LogShipper", "GatewayLogs", "open_logs", "parse_s3_uri", "LocalFile", "TRAINING_LOG"]
