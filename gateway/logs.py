"""Exposure and event logs: rotating JSON lines written by one thread behind a bounded queue.

An answer never waits for the disk: the request handler puts a small tuple on a
``queue.Queue(maxsize)`` (``put_nowait``); a full queue drops the record and counts it
(``recsys_gateway_log_dropped_total``). The writer thread turns tuples into records (parsing the
upstream body, computing the user's pseudonym), writes them in batches and flushes. ``close()``
puts a sentinel and joins the thread, so a clean shutdown writes everything accepted.

Files: ``OUT/gateway/exposures/exposures-<UTC time>-<pid>-<n>.jsonl`` (likewise ``events``),
rotated at ``rotate_bytes`` or ``rotate_s``; a reader takes ``*.jsonl`` in name order.
Record fields: docs/contracts.md ("Gateway").
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import orjson

log = logging.getLogger("gateway.logs")
_STOP = object()


class Pseudonymizer:
    """Keyed pseudonym of a canonical user id: HMAC-SHA256 with the gateway's secret, 128 bits
    in hex. The same user gets the same pseudonym across restarts (the report joins on it);
    without the secret it cannot be reversed or recomputed."""

    def __init__(self, secret: bytes):
        if len(secret) < 16:
            raise ValueError("the pseudonym secret must be at least 16 bytes")
        self.secret = secret

    def __call__(self, user: str | None) -> str | None:
        if user is None:
            return None
        return hmac.new(self.secret, user.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


class JsonlLog:
    """One rotating JSON-lines log with a writer thread."""

    def __init__(self, directory: Path, prefix: str, fmt: Callable[[Any], dict],
                 queue_size: int = 100_000, rotate_bytes: int = 64 * 2**20,
                 rotate_s: float = 3600.0, on_drop: Callable[[], None] | None = None,
                 on_write: Callable[[int], None] | None = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefix, self.fmt = prefix, fmt
        self.rotate_bytes, self.rotate_s = rotate_bytes, rotate_s
        self.q: queue.Queue = queue.Queue(maxsize=queue_size)
        self.on_drop, self.on_write = on_drop, on_write
        self.dropped = 0
        self.written = 0
        self.errors = 0
        self._file = None
        self._opened = 0.0
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name=f"log-{prefix}", daemon=True)
        self._thread.start()

    # ---- producer side (event loop) --------------------------------------------------------
    def submit(self, item: Any) -> bool:
        try:
            self.q.put_nowait(item)
            return True
        except queue.Full:
            self.dropped += 1
            if self.on_drop:
                self.on_drop()
            return False

    def close(self, timeout: float = 60.0) -> None:
        """Write everything queued, then stop the thread (blocks: call it off the loop)."""
        self.q.put(_STOP)
        self._thread.join(timeout)

    # ---- writer thread -----------------------------------------------------------------------
    def _open(self) -> None:
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = self.dir / f"{self.prefix}-{stamp}-{os.getpid()}-{self._seq:04d}.jsonl"
        self._file = open(path, "ab")
        self._opened = time.monotonic()

    def _rotate_if_due(self) -> None:
        if self._file is None:
            return
        if self._file.tell() >= self.rotate_bytes or \
                time.monotonic() - self._opened >= self.rotate_s:
            self._file.close()
            self._file = None

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self.q.get()]
            while len(batch) < 2000:
                try:
                    batch.append(self.q.get_nowait())
                except queue.Empty:
                    break
            lines = []
            for item in batch:
                if item is _STOP:
                    stop = True
                    continue
                try:
                    lines.append(orjson.dumps(self.fmt(item)) + b"\n")
                except Exception:  # noqa: BLE001 - one bad record must not stop the log
                    self.errors += 1
                    log.exception("could not format a %s record", self.prefix)
            if lines:
                try:
                    if self._file is None:
                        self._open()
                    self._file.write(b"".join(lines))
                    self._file.flush()
                    self.written += len(lines)
                    if self.on_write:
                        self.on_write(len(lines))
                    self._rotate_if_due()
                except OSError:
                    self.errors += len(lines)
                    log.exception("could not write %d %s records", len(lines), self.prefix)
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def read_jsonl(paths: Iterable[str | Path]) -> Iterator[dict]:
    """Records of JSON-lines files or folders of them (``*.jsonl`` in name order)."""
    for p in paths:
        p = Path(p)
        files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
        for f in files:
            with open(f, "rb") as fh:
                for n, line in enumerate(fh, 1):
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        yield orjson.loads(line)
                    except orjson.JSONDecodeError:
                        raise ValueError(f"{f}:{n}: not a JSON line") from None


__all__ = ["JsonlLog", "Pseudonymizer", "read_jsonl"]
