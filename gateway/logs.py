"""Exposure and event logs: rotating JSON lines written by one thread behind a bounded queue.

An answer never waits for the disk: the request handler appends a small item to the queue;
the queue is bounded by a count (``queue_size``) *and* by bytes (``queue_bytes``: the item's
size is estimated at submit time, or passed by the producer, which already holds the body), and
a full queue drops the record and counts it (``recsys_gateway_log_dropped_total``). The writer
thread turns items into records (parsing the upstream body, computing the user's pseudonym),
caps each record's bytes (:func:`cap_record`), writes them in batches and fsyncs every
``fsync_s`` seconds (0 = every batch).

Accounting: every submitted record ends up exactly once in ``written`` or ``dropped`` (a full
queue, a record that cannot be formatted, a write error such as ENOSPC, or ``close`` running
out of time), so after ``close`` ``submitted == written + dropped`` holds. A write error closes
the file (its partial batch is cut off again, best effort), and the next batch opens a new
file: writing resumes by itself when the disk has room again.

Files: ``OUT/gateway/exposures/exposures-<UTC time>-<pid>-<n>.jsonl`` (likewise ``events``),
rotated at ``rotate_bytes`` or ``rotate_s`` (also while idle, so a quiet log still reaches
the shipper); a reader takes ``*.jsonl`` in name order. The file being written holds an
exclusive ``flock``: :mod:`gateway.shipping` ships and deletes only files nobody holds.
Record fields: docs/contracts.md ("Gateway"); the loss windows: docs/gateway.md.

Fault injection: ``JsonlLog.opener`` (class attribute, or the ``opener`` argument) opens every
file; :class:`DiskFull` is an opener whose files fail with ENOSPC while a flag is set.
"""
from __future__ import annotations

import collections
import errno
import fcntl
import hashlib
import hmac
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import orjson

log = logging.getLogger("gateway.logs")


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


# ---- sizes ------------------------------------------------------------------------------------

_TEXT = (str, bytes, bytearray)
_SEQ = (list, tuple)


def _shallow(v: Any) -> int:
    """Bytes of a value one level down: text by length, containers by a sample of 8 entries
    (extrapolated), scalars and anything else by a constant."""
    if isinstance(v, _TEXT):
        return len(v) + 8
    if isinstance(v, dict):
        v = list(v.values())
        per_entry = 32
    elif isinstance(v, _SEQ):
        per_entry = 8
    else:
        return 16
    n = len(v)
    if not n:
        return 16
    k = n if n <= 8 else 8
    sample = 0
    for i in range(k):
        e = v[i]
        if isinstance(e, _TEXT):
            sample += len(e) + per_entry
        elif isinstance(e, (list, tuple, dict)):
            sample += 32 + 48 * len(e) + per_entry
        else:
            sample += 16 + per_entry
    return 16 + sample * n // k


def estimate_bytes(obj: Any) -> int:
    """A cheap estimate of what ``obj`` costs in the queue (a few microseconds for an exposure
    tuple): lengths of text, a constant per scalar, containers sampled; a tuple, dataclass or
    plain object is measured field by field, one level down. It only has to be proportional,
    so that a queue of huge items is bounded like one of small ones. A producer that knows the
    size (the body it holds) passes ``submit(item, nbytes)`` instead."""
    if isinstance(obj, _TEXT):
        return len(obj) + 8
    if hasattr(obj, "__dataclass_fields__"):
        obj = tuple(getattr(obj, f) for f in obj.__dataclass_fields__)
    elif isinstance(obj, dict):
        obj = tuple(obj.values()) if len(obj) <= 64 else obj
    elif hasattr(obj, "__dict__"):
        obj = tuple(vars(obj).values())
    if isinstance(obj, _SEQ):
        total = 16
        for v in obj:
            total += _shallow(v)
        return total
    return _shallow(obj)


def cap_record(rec: dict, limit: int) -> tuple[bytes, bool]:
    """(JSON line without newline, truncated?) of ``rec``, at most ``limit`` bytes.

    An oversize record is kept, not lost: every list field (``items``, ``scores``,
    ``history_items``) keeps its first n entries, n the largest that fits (parallel lists stay
    aligned), and the record gets ``"truncated": true`` and ``"truncated_lengths"`` (each cut
    list's original length). If even empty lists do not fit, strings over 256 characters are
    cut to 256 as well."""
    line = orjson.dumps(rec)
    if len(line) <= limit:
        return line, False
    lists = {k: v for k, v in rec.items() if isinstance(v, list)}
    out = dict(rec, truncated=True,
                truncated_lengths={k: len(v) for k, v in lists.items()})

    def with_n(n: int) -> bytes:
        for k, v in lists.items():
            out[k] = v[:n]
        return orjson.dumps(out)

    lo, hi = 0, max((len(v) for v in lists.values()), default=0)
    best = with_n(0)
    if len(best) <= limit:
        while lo < hi:  # largest n whose line fits
            mid = (lo + hi + 1) // 2
            if len(with_n(mid)) <= limit:
                lo = mid
            else:
                hi = mid - 1
        return with_n(lo), True
    for k, v in out.items():
        if isinstance(v, str) and len(v) > 256:
            out[k] = v[:256]
    return orjson.dumps(out), True


# ---- fault injection ------------------------------------------------------------------------

class _FailingFile:
    """A real file whose writes fail with ENOSPC while ``full()`` is true."""

    def __init__(self, f: BinaryIO, full: Callable[[], bool]):
        self._f, self._full = f, full

    def write(self, data) -> int:
        if self._full():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._f.write(data)

    def __getattr__(self, name: str):
        return getattr(self._f, name)


class DiskFull:
    """An opener (``JsonlLog.opener = DiskFull(flag)``) whose files fail every write with
    ENOSPC while the file ``flag`` exists (or, without a flag, while ``self.full`` is set).
    It lets a test or the fault suite fill "the disk" of a running gateway from outside."""

    def __init__(self, flag: str | Path | None = None):
        self.flag = Path(flag) if flag is not None else None
        self.full = threading.Event()

    def is_full(self) -> bool:
        return self.full.is_set() or (self.flag is not None and self.flag.exists())

    def __call__(self, path: Path) -> BinaryIO:
        return _FailingFile(open(path, "ab", buffering=0), self.is_full)  # type: ignore[return-value]


def _open_append(path: Path) -> BinaryIO:
    return open(path, "ab", buffering=0)


def open_private(path: Path) -> BinaryIO:
    """An opener for logs that hold raw user ids (the training-event log): mode 0600 from the
    first byte (created so, not chmod-ed after)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, "ab", buffering=0)


# ---- the log ----------------------------------------------------------------------------------

class JsonlLog:
    """One rotating JSON-lines log with a writer thread."""

    opener: Callable[[Path], BinaryIO] = staticmethod(_open_append)  # type: ignore[assignment]
    """Opens each new file (binary, append, unbuffered). Replace it to inject write faults."""

    def __init__(self, directory: Path, prefix: str, fmt: Callable[[Any], dict],
                 queue_size: int = 100_000, rotate_bytes: int = 64 * 2**20,
                 rotate_s: float = 3600.0, on_drop: Callable[[], None] | None = None,
                 on_write: Callable[[int], None] | None = None, *,
                 queue_bytes: int = 32 * 2**20, max_record_bytes: int = 64 * 2**10,
                 fsync_s: float = 1.0, sizer: Callable[[Any], int] = estimate_bytes,
                 opener: Callable[[Path], BinaryIO] | None = None,
                 on_error: Callable[[], None] | None = None,
                 on_truncate: Callable[[], None] | None = None,
                 on_rotate: Callable[[Path], None] | None = None,
                 batch_s: float = 0.05, wake_at: int = 512):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefix, self.fmt = prefix, fmt
        self.rotate_bytes, self.rotate_s = rotate_bytes, rotate_s
        self.queue_size, self.queue_bytes = queue_size, queue_bytes
        self.max_record_bytes, self.fsync_s = max_record_bytes, fsync_s
        self.sizer = sizer
        # The writer wakes every batch_s (or once wake_at records wait), not for each record:
        # waking a thread per answer costs more CPU than formatting the record (a futex wake
        # and a GIL hand-over per request); records wait at most ~2 x batch_s in the queue.
        # A log that stayed empty for a whole tick stops ticking (an idle events log would
        # otherwise wake 20 times a second for nothing): the writer sleeps until a record
        # arrives (submit wakes it: ``_idle``) or an fsync or rotation is due, and writes that
        # record at once.
        self.batch_s, self.wake_at = batch_s, max(1, wake_at)
        self._idle = False
        if opener is not None:
            self.opener = opener  # type: ignore[assignment]
        self.on_drop, self.on_write, self.on_error = on_drop, on_write, on_error
        self.on_truncate, self.on_rotate = on_truncate, on_rotate
        self.submitted = 0
        self.dropped = 0
        self.written = 0
        self.errors = 0      # write errors (one per failed batch), not records
        self.truncated = 0
        self.queued_bytes = 0
        self._reserved_n = 0        # room held by reserve() and not yet filled or released
        self._reserved_bytes = 0
        self._q: collections.deque = collections.deque()
        self._cv = threading.Condition(threading.Lock())
        self._closing = False
        self._abandoned = False
        self._inflight = 0  # records the writer has taken off the queue and not yet resolved
        self._file: BinaryIO | None = None
        self.path: Path | None = None
        self._size = 0
        self._opened = 0.0
        self._synced = 0.0
        self._dirty = False
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name=f"log-{prefix}", daemon=True)
        self._thread.start()

    # ---- producer side (event loop) --------------------------------------------------------
    def submit(self, item: Any, nbytes: int | None = None) -> bool:
        """Queue one record; False (dropped and counted) when the queue is full by count or
        bytes, or the log is closing. Never blocks."""
        n = self.sizer(item) if nbytes is None else nbytes
        with self._cv:
            self.submitted += 1
            if self._closing or len(self._q) + self._reserved_n >= self.queue_size or \
                    self.queued_bytes + self._reserved_bytes + n > self.queue_bytes:
                ok = False
                self.dropped += 1
            else:
                ok = True
                self._q.append((item, n))
                self.queued_bytes += n
                if self._idle or len(self._q) == self.wake_at:
                    self._idle = False
                    self._cv.notify()
        if not ok and self.on_drop:
            self.on_drop()
        return ok

    def reserve(self, n: int, nbytes: int) -> bool:
        """Hold room for ``n`` records of ``nbytes`` in all, or nothing (False): a batch of
        events is queued whole or refused whole, so a refusal never half-logs a batch that the
        client then sends again. Fill the room with :meth:`submit_reserved`, give back what
        is not used with :meth:`release`."""
        with self._cv:
            if self._closing or len(self._q) + self._reserved_n + n > self.queue_size or \
                    self.queued_bytes + self._reserved_bytes + nbytes > self.queue_bytes:
                return False
            self._reserved_n += n
            self._reserved_bytes += nbytes
            return True

    def release(self, n: int, nbytes: int) -> None:
        with self._cv:
            self._reserved_n -= n
            self._reserved_bytes -= nbytes

    def submit_reserved(self, item: Any, nbytes: int) -> None:
        """Queue one record into room held by :meth:`reserve` (never refused, even while
        closing: the close writes what was promised)."""
        with self._cv:
            self._reserved_n -= 1
            self._reserved_bytes -= nbytes
            self.submitted += 1
            self._q.append((item, nbytes))
            self.queued_bytes += nbytes
            if self._idle or len(self._q) == self.wake_at:
                self._idle = False
                self._cv.notify()

    def _count_dropped(self, n: int) -> None:
        """Under the lock: ``n`` records are lost."""
        self.dropped += n
        if self.on_drop:
            for _ in range(n):
                self.on_drop()

    def stop_accepting(self) -> None:
        """Refuse (drop, count) new records and let the writer finish what is queued, close its
        file and stop; ``close`` waits for that."""
        with self._cv:
            self._closing = True
            self._cv.notify()

    def close(self, timeout: float = 60.0) -> bool:
        """Write what is queued within ``timeout`` seconds, close the file (fsynced; it is then
        a rotated file the shipper may take) and stop the thread. What is not written in time
        is counted as dropped. Blocks: call it off the event loop. True when it finished."""
        self.stop_accepting()
        self._thread.join(max(0.0, timeout))
        if not self._thread.is_alive():
            return True
        with self._cv:
            self._abandoned = True
            left = len(self._q) + self._inflight
            self._q.clear()
            self.queued_bytes = 0
            self._count_dropped(left)
        log.error("%s log: close timed out after %.1f s; %d records dropped", self.prefix,
                  timeout, left)
        return False

    @property
    def pending(self) -> int:
        """Records accepted but not yet written or dropped."""
        return self.submitted - self.written - self.dropped

    # ---- writer thread -----------------------------------------------------------------------
    def _open(self) -> None:
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = self.dir / f"{self.prefix}-{stamp}-{os.getpid()}-{self._seq:04d}.jsonl"
        f = self.opener(path)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise
        self._file, self.path = f, path
        self._size = 0
        self._opened = self._synced = time.monotonic()
        self._dirty = False

    def _close_file(self, sync: bool = True) -> None:
        f, path = self._file, self.path
        self._file, self.path = None, None
        if f is None:
            return
        try:
            if sync and self._dirty:
                os.fsync(f.fileno())
        finally:
            try:
                f.close()
            except OSError:
                pass
        if self.on_rotate and path is not None:
            self.on_rotate(path)

    def _sync_if_due(self, now: float) -> None:
        if self._file is not None and self._dirty and now - self._synced >= self.fsync_s:
            os.fsync(self._file.fileno())
            self._synced, self._dirty = now, False

    def _rotate_if_due(self, now: float) -> None:
        if self._file is not None and (self._size >= self.rotate_bytes or
                                       now - self._opened >= self.rotate_s):
            self._close_file()

    def _wait_s(self, now: float) -> float | None:
        """How long the idle writer may sleep before an fsync or a rotation is due."""
        if self._file is None:
            return None
        due = self._opened + self.rotate_s
        if self._dirty:
            due = min(due, self._synced + self.fsync_s)
        return max(0.0, due - now)

    def _format(self, batch: list) -> list[bytes]:
        lines, bad = [], 0
        for item, _ in batch:
            try:
                line, cut = cap_record(self.fmt(item), self.max_record_bytes)
            except Exception:  # noqa: BLE001 - one bad record must not stop the log
                bad += 1
                log.exception("could not format a %s record", self.prefix)
                continue
            if cut:
                self.truncated += 1
                if self.on_truncate:
                    self.on_truncate()
            lines.append(line + b"\n")
        if bad:
            with self._cv:
                if not self._abandoned:
                    self._count_dropped(bad)
                    self._inflight -= bad  # resolved: a timed-out close must not count them again
        return lines

    def _write(self, data: bytes) -> None:
        if self._file is None:
            self._open()
        f = self._file
        start = self._size
        try:
            view = memoryview(data)
            while view:
                n = f.write(view)
                if not n:
                    raise OSError(errno.EIO, "short write")
                view = view[n:]
        except OSError:
            try:  # cut the partial batch off again, so the file stays whole JSON lines
                f.truncate(start)
            except OSError:
                pass
            raise
        self._size += len(data)
        self._dirty = True

    def _run(self) -> None:
        error_streak = 0
        while True:
            with self._cv:
                taken_by = time.monotonic() + self.batch_s  # the queued records' latest pick-up
                empty_ticks = 0
                while not self._closing and len(self._q) < self.wake_at:
                    now = time.monotonic()
                    if self._q and now >= taken_by:
                        break
                    wait = self._wait_s(now)
                    if wait == 0.0:
                        break
                    if self._q:
                        tick = taken_by - now
                    elif empty_ticks:
                        # a whole tick without a record: sleep until submit wakes us (then
                        # taken_by has passed, so that record is written at once) or until
                        # an fsync or a rotation is due
                        self._idle = True
                        self._cv.wait(wait)
                        self._idle = False
                        continue
                    else:
                        taken_by, tick = now + self.batch_s, self.batch_s
                        empty_ticks += 1
                    self._cv.wait(tick if wait is None else min(wait, tick))
                batch = []
                while self._q and len(batch) < 2000:
                    batch.append(self._q.popleft())
                self._inflight = len(batch)
                self.queued_bytes -= sum(n for _, n in batch)
                stop = self._closing and not self._q and not batch
            if stop:
                break
            lines = self._format(batch) if batch else []
            try:
                if lines:
                    self._write(b"".join(lines))
                now = time.monotonic()
                if self.fsync_s <= 0 and self._file is not None and self._dirty:
                    os.fsync(self._file.fileno())
                    self._synced, self._dirty = now, False
                self._sync_if_due(now)
                self._rotate_if_due(now)
                ok = True
            except OSError as e:
                ok = False
                self.errors += 1
                if self.on_error:
                    self.on_error()
                if error_streak == 0 or error_streak % 1000 == 0:
                    log.error("%s log: could not write %d records (%s); they are dropped and the "
                              "file is reopened for the next batch", self.prefix, len(lines), e)
                error_streak += 1
                try:
                    self._close_file(sync=False)
                except OSError:
                    pass
            with self._cv:
                self._inflight = 0
                if self._abandoned:
                    continue
                if ok:
                    self.written += len(lines)
                else:
                    self._count_dropped(len(lines))
            if ok:
                if error_streak:
                    log.warning("%s log: writing again after %d failed batches", self.prefix,
                                error_streak)
                error_streak = 0
                if lines and self.on_write:
                    self.on_write(len(lines))
        try:
            self._close_file()
        except OSError as e:
            self.errors += 1
            if self.on_error:
                self.on_error()
            log.error("%s log: final fsync/close failed: %s", self.prefix, e)


def read_jsonl(paths: Iterable[str | Path],
               on_bad: Callable[[Path, int], None] | None = None) -> Iterator[dict]:
    """JSON-object records of JSON-lines files or folders of them (``*.jsonl`` in name order).

    A line that is not a JSON object raises, unless ``on_bad(file, line_number)`` is given: then
    it is reported there and skipped (a log being written may end in half a line)."""
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
                        rec = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        rec = None
                    if isinstance(rec, dict):
                        yield rec
                    elif on_bad is None:
                        raise ValueError(f"{f}:{n}: not a JSON object line")
                    else:
                        on_bad(f, n)


__all__ = ["JsonlLog", "Pseudonymizer", "DiskFull", "read_jsonl", "cap_record", "estimate_bytes"]
