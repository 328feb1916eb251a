"""The exposure/event log writer (gateway/logs.py): a queue bounded by bytes as well as by count,
a cap on a record's bytes, write errors (injected and a real full tmpfs) that drop and count
but never stop the writer, fsync cadence, a close bounded in time, and the identity
submitted == written + dropped after close."""
from __future__ import annotations

import errno
import os
import threading
import time

import orjson
import pytest

from gateway import logs
from gateway.config import GatewayConfig
from gateway.logs import DiskFull, JsonlLog, cap_record, estimate_bytes, read_jsonl
from tests.gateway.diskfull import small_tmpfs


def _wait(cond, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def _identity(lg: JsonlLog) -> None:
    assert lg.submitted == lg.written + lg.dropped, (lg.submitted, lg.written, lg.dropped)


class Gate:
    """A record formatter that blocks the writer until released (so the queue fills)."""

    def __init__(self):
        self.open = threading.Event()

    def __call__(self, item):
        self.open.wait(30)
        return {"n": item[0], "blob": item[1]}


def test_queue_is_bounded_by_bytes_not_only_by_count(tmp_path):
    gate = Gate()
    drops = []
    lg = JsonlLog(tmp_path / "x", "x", gate, queue_size=100_000, queue_bytes=100_000,
                  on_drop=lambda: drops.append(1))
    blob = "b" * 10_000
    results = [lg.submit((i, blob)) for i in range(50)]   # ~500 kB offered, 100 kB allowed
    # the first item may already sit in the writer's hands; the rest waits in the queue
    assert 9 <= results.count(True) <= 11 and results.count(False) == len(drops) == lg.dropped
    assert lg.queued_bytes <= 100_000
    # small records still fit beside big ones: the bound is bytes, the count is far away
    assert lg.submit((99, "s"), nbytes=10) and lg.queued_bytes <= 100_000
    gate.open.set()
    assert lg.close(30)
    rows = list(read_jsonl([tmp_path / "x"]))
    assert len(rows) == lg.written == results.count(True) + 1
    _identity(lg)
    assert lg.queued_bytes == 0


def test_estimate_is_proportional_to_the_payload():
    small = (1.0, "rid", "exp", "v", "1", "u", "user", b'{"items":[]}', False, None, None,
             3, ["1", "2", "3"], 200, False)
    big = small[:7] + (b"x" * 1_000_000,) + small[8:]
    assert estimate_bytes(small) < 1000 < 1_000_000 < estimate_bytes(big) < 1_100_000
    hist = ["abc" * 80] * 50
    assert estimate_bytes((hist,)) >= 50 * 240
    assert estimate_bytes({"items": [{"item_id": "1", "score": 0.5}] * 1000}) > 10_000


def test_oversize_record_is_truncated_validly_never_lost(tmp_path):
    limit = 8192
    lg = JsonlLog(tmp_path / "x", "x", lambda r: r, max_record_bytes=limit)
    big = {"request_id": "r1", "items": [f"item-{i:06d}" for i in range(5000)],
           "scores": [i / 7 for i in range(5000)], "history_items": ["h" * 200] * 50,
           "history_len": 50}
    small = {"request_id": "r2", "items": ["1", "2"], "scores": [0.5, 0.25], "history_items": []}
    assert lg.submit(big) and lg.submit(small)
    assert lg.close(30)
    raw = b"".join(p.read_bytes() for p in sorted((tmp_path / "x").glob("*.jsonl")))
    lines = raw.splitlines()
    assert len(lines) == 2 and all(len(line) <= limit for line in lines)
    cut, kept = orjson.loads(lines[0]), orjson.loads(lines[1])
    assert cut["truncated"] is True and cut["request_id"] == "r1"
    assert cut["truncated_lengths"] == {"items": 5000, "scores": 5000, "history_items": 50}
    n = len(cut["items"])
    assert 0 < n < 5000 and cut["items"] == big["items"][:n] and cut["scores"] == big["scores"][:n]
    assert cut["history_items"] == big["history_items"][:n]
    assert kept == small and "truncated" not in kept
    assert lg.truncated == 1 and lg.written == 2
    _identity(lg)


def test_cap_record_largest_prefix_that_fits_and_long_strings():
    rec = {"items": list(range(1000))}
    line, cut = cap_record(rec, 1000)
    assert cut and len(line) <= 1000
    n = len(orjson.loads(line)["items"])
    assert len(cap_record({"items": list(range(n + 1))}, 1000)[0]) <= 1000  # n+1 fits untruncated
    assert len(orjson.dumps({"items": list(range(n + 1)), "truncated": True,
                             "truncated_lengths": {"items": 1000}})) > 1000
    line, cut = cap_record({"strategy": "s" * 10_000, "items": []}, 4096)
    assert cut and len(line) <= 4096 and orjson.loads(line)["strategy"] == "s" * 256


def test_injected_enospc_drops_counts_and_writing_resumes(tmp_path):
    disk = DiskFull()
    errors, drops = [], []
    lg = JsonlLog(tmp_path / "x", "x", lambda t: {"n": t}, opener=disk, fsync_s=0,
                  on_error=lambda: errors.append(1), on_drop=lambda: drops.append(1))
    for i in range(100):
        assert lg.submit(i)
    _wait(lambda: lg.written == 100)
    disk.full.set()
    for i in range(100, 200):
        lg.submit(i)
    _wait(lambda: lg.dropped == 100)
    assert lg.errors >= 1 and len(errors) == lg.errors and len(drops) == 100
    assert lg._thread.is_alive()
    disk.full.clear()
    for i in range(200, 300):
        assert lg.submit(i)
    assert lg.close(30)
    ns = sorted(r["n"] for r in read_jsonl([tmp_path / "x"]))  # no half line anywhere
    assert ns == list(range(100)) + list(range(200, 300))
    assert lg.written == 200
    _identity(lg)
    assert len(list((tmp_path / "x").glob("*.jsonl"))) >= 2   # reopened a new file


def test_injected_enospc_by_flag_file_for_a_gateway_process(tmp_path):
    flag = tmp_path / "disk_full"
    disk = DiskFull(flag)
    f = disk(tmp_path / "a.jsonl")
    f.write(b"ok\n")
    flag.touch()
    with pytest.raises(OSError) as e:
        f.write(b"no\n")
    assert e.value.errno == errno.ENOSPC
    flag.unlink()
    f.write(b"ok again\n")
    f.close()
    assert (tmp_path / "a.jsonl").read_bytes() == b"ok\nok again\n"


def test_real_full_tmpfs_drops_counts_and_recovers(tmp_path):
    mnt = tmp_path / "small"
    try:
        ctx = small_tmpfs(mnt, 256 * 1024)
        ctx.__enter__()
    except PermissionError as e:
        pytest.fail(str(e))
    try:
        lg = JsonlLog(mnt, "x", lambda t: {"n": t, "pad": "p" * 200}, rotate_bytes=64 * 1024,
                      fsync_s=0)
        sent = 0
        while lg.errors == 0 and sent < 20_000:   # ~2,300 records fill 256 KiB
            for _ in range(50):
                lg.submit(sent)
                sent += 1
            _wait(lambda: lg.pending == 0)
        assert lg.errors >= 1 and lg.dropped >= 1 and lg._thread.is_alive()
        before = lg.written
        for p in sorted(mnt.glob("*.jsonl"))[:2]:   # what a shipper or retention frees
            p.unlink()
        for _ in range(100):
            lg.submit(sent)
            sent += 1
        assert lg.close(30)
        assert lg.written == before + 100
        _identity(lg)
        rows = list(read_jsonl([mnt]))   # every file still whole JSON lines
        assert rows and rows[-1]["n"] == sent - 1
    finally:
        ctx.__exit__(None, None, None)


def test_close_is_bounded_and_counts_what_it_could_not_write(tmp_path):
    gate = Gate()
    lg = JsonlLog(tmp_path / "x", "x", gate)
    for i in range(100):
        assert lg.submit((i, "b"))
    assert lg.close(0.5) is False
    assert lg.written == 0 and lg.dropped == 100
    _identity(lg)
    assert not lg.submit((100, "late")) and lg.dropped == 101   # closed: dropped, counted
    gate.open.set()
    lg._thread.join(30)
    assert lg.dropped == 101 and lg.written == 0               # counted once, not again
    _identity(lg)


def test_fsync_cadence(tmp_path, monkeypatch):
    calls = []
    real = os.fsync

    def counting(fd):
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(logs.os, "fsync", counting)
    every = JsonlLog(tmp_path / "a", "a", lambda t: {"n": t}, fsync_s=0)
    for i in range(5):
        every.submit(i)
        _wait(lambda: every.written == i + 1)
    assert len(calls) >= 5
    assert every.close(30)
    calls.clear()
    rare = JsonlLog(tmp_path / "b", "b", lambda t: {"n": t}, fsync_s=3600)
    for i in range(5):
        rare.submit(i)
        _wait(lambda: rare.written == i + 1)
    assert calls == []            # nothing synced between batches ...
    assert rare.close(30)
    assert len(calls) == 1        # ... only at close


def test_an_idle_file_is_rotated_by_time_and_announced(tmp_path):
    rotated = []
    lg = JsonlLog(tmp_path / "x", "x", lambda t: {"n": t}, rotate_s=0.2,
                  on_rotate=rotated.append)
    lg.submit(1)
    _wait(lambda: len(rotated) == 1)      # no further write needed
    assert lg.path is None and rotated[0].exists()
    assert lg.close(30)


def test_config_log_fields_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GATEWAY_LOG_SHIP_URI", "s3://bkt-logs/gw")
    monkeypatch.setenv("GATEWAY_LOG_RETAIN_BYTES", str(1 << 30))
    monkeypatch.setenv("GATEWAY_LOG_FSYNC_S", "0")
    monkeypatch.setenv("GATEWAY_SHUTDOWN_GRACE_S", "12.5")
    cfg = GatewayConfig.from_env(tmp_path)
    assert (cfg.log_ship_uri, cfg.log_retain_bytes, cfg.log_fsync_s, cfg.shutdown_grace_s) == \
        ("s3://bkt-logs/gw", 1 << 30, 0.0, 12.5)
    monkeypatch.setenv("GATEWAY_LOG_SHIP_URI", "bkt-logs/gw")
    with pytest.raises(ValueError, match="log_ship_uri"):
        GatewayConfig.from_env(tmp_path)
    monkeypatch.delenv("GATEWAY_LOG_SHIP_URI")
    monkeypatch.setenv("GATEWAY_LOG_RETAIN_BYTES", str(10 << 20))
    with pytest.raises(ValueError, match="log_retain_bytes"):
        GatewayConfig.from_env(tmp_path)        # below twice the 64 MiB rotation
    monkeypatch.setenv("GATEWAY_LOG_RETAIN_BYTES", "0")
    monkeypatch.setenv("GATEWAY_SHUTDOWN_GRACE_S", "x")
    with pytest.raises(ValueError, match="GATEWAY_SHUTDOWN_GRACE_S"):
        GatewayConfig.from_env(tmp_path)
    d = GatewayConfig()
    assert (d.log_ship_uri, d.log_retain_bytes, d.log_fsync_s, d.shutdown_grace_s) == \
        ("", 0, 1.0, 25.0)
