"""Shipping rotated logs to S3 (moto stands in for S3 only): real JsonlLog writers rotate real
files, the shipper uploads, verifies (size + sha256) and only then deletes; a failing upload
keeps files until the retention cap deletes the oldest (counted); an upload that does not
verify is never deleted; close ships what is left within its deadline."""
from __future__ import annotations

import hashlib
import time

import boto3
import orjson
import pytest

from gateway.config import GatewayConfig
from gateway.logs import JsonlLog, read_jsonl
from gateway.metrics import Metrics
from gateway.shipping import LogShipper, open_logs, parse_s3_uri

BUCKET = "recsys-logs-test"


@pytest.fixture
def s3(moto_aws):
    return boto3.client("s3", region_name="us-east-1")


def _write(lg: JsonlLog, n: int, chunk: int = 10) -> None:
    """n records in batches of ``chunk`` (a file rotates after the batch that fills it)."""
    for i in range(n):
        assert lg.submit({"n": i, "pad": "p" * 100})
        if (i + 1) % chunk == 0 or i + 1 == n:
            end = time.monotonic() + 20
            while lg.pending:
                assert time.monotonic() < end
                time.sleep(0.005)


def _objects(s3, prefix: str = "") -> dict[str, bytes]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
    return out


def _val(m: Metrics, name: str, log: str) -> float:
    return m.registry.get_sample_value(name, {"log": log}) or 0.0


def test_parse_uri():
    assert parse_s3_uri("s3://b/p/q/") == ("b", "p/q") and parse_s3_uri("s3://b") == ("b", "")
    with pytest.raises(ValueError):
        parse_s3_uri("https://b/p")


def test_rotated_files_ship_verified_then_deleted_and_open_file_stays(s3, tmp_path):
    s3.create_bucket(Bucket=BUCKET)
    m = Metrics()
    d = tmp_path / "exposures"
    lg = JsonlLog(d, "exposures", lambda r: r, rotate_bytes=2000)
    _write(lg, 105)                       # ~13 KB: 5 rotated files + one open
    local = {p.name: p.read_bytes() for p in d.glob("*.jsonl")}
    assert len(local) > 3
    sh = LogShipper({"exposures": d}, uri=f"s3://{BUCKET}/gw/", metrics=m, hostname="pod-a")
    sh.run_once()
    objs = _objects(s3)
    assert lg.path is not None and lg.path.exists()          # the open file is not touched
    assert lg.path.name not in {k.rsplit("/", 1)[1] for k in objs}
    assert set(objs) == {f"gw/exposures/pod-a/{n}" for n in local if n != lg.path.name}
    for key, body in objs.items():
        assert body == local[key.rsplit("/", 1)[1]]          # byte for byte
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert head["Metadata"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert [p.name for p in d.glob("*.jsonl")] == [lg.path.name]   # shipped ones deleted
    assert _val(m, "recsys_gateway_log_shipped_files_total", "exposures") == len(objs)
    assert _val(m, "recsys_gateway_log_shipped_bytes_total", "exposures") == \
        sum(map(len, objs.values()))
    assert _val(m, "recsys_gateway_log_pending_bytes", "exposures") == lg.path.stat().st_size
    # close: the last file is rotated and shipped too; every record is in S3 exactly once
    assert lg.close(30)
    assert sh.close(time.monotonic() + 30)
    assert list(d.glob("*.jsonl")) == []
    rows = [orjson.loads(line) for body in _objects(s3).values() for line in body.splitlines()]
    assert sorted(r["n"] for r in rows) == list(range(105))
    assert _val(m, "recsys_gateway_log_pending_bytes", "exposures") == 0


def test_failed_uploads_keep_files_then_retention_deletes_oldest_and_counts(s3, tmp_path):
    # no bucket: every upload fails
    m = Metrics()
    d = tmp_path / "events"
    lg = JsonlLog(d, "events", lambda r: r, rotate_bytes=2000)
    _write(lg, 105)
    files = sorted(d.glob("*.jsonl"), key=lambda p: (p.stat().st_mtime, p.name))
    sizes = {p.name: p.stat().st_size for p in files}
    sh = LogShipper({"events": d}, uri=f"s3://{BUCKET}/gw", metrics=m, hostname="pod-a")
    sh.run_once()
    assert sorted(p.name for p in d.glob("*.jsonl")) == sorted(sizes)   # all kept
    assert sh.failures == 1 and _val(m, "recsys_gateway_log_ship_failures_total", "events") == 1
    sh.run_once()                       # backing off: no new attempt yet
    assert sh.failures == 1
    # the retention cap: keep at most ~half of what is there, oldest deleted first
    total = sum(sizes.values())
    sh.retain_bytes = total // 2
    sh.run_once()
    left = sorted(p.name for p in d.glob("*.jsonl"))
    gone = [p.name for p in files if p.name not in left]
    assert gone and gone == [p.name for p in files][:len(gone)]            # the oldest
    assert sum(sizes[n] for n in left) <= total // 2 < sum(sizes[n] for n in left) + sizes[gone[-1]]
    assert lg.path.name in left                                            # never the open one
    assert sh.deleted_files == len(gone)
    assert _val(m, "recsys_gateway_log_deleted_unshipped_files_total", "events") == len(gone)
    assert _val(m, "recsys_gateway_log_deleted_unshipped_bytes_total", "events") == \
        sum(sizes[n] for n in gone)
    assert _val(m, "recsys_gateway_log_pending_bytes", "events") == sum(sizes[n] for n in left)
    # S3 is back: the rest ships (close ignores the backoff)
    s3.create_bucket(Bucket=BUCKET)
    assert lg.close(30)
    assert sh.close(time.monotonic() + 30)
    assert list(d.glob("*.jsonl")) == []
    assert len(_objects(s3)) == len(left)


class Tampered:
    """The moto client, but every object is overwritten right after its upload (a concurrent
    writer, a corrupting proxy): what S3 then holds is not the local file."""

    def __init__(self, client, body: bytes | None):
        self.c, self.body = client, body

    def put_object(self, **kw):
        r = self.c.put_object(**kw)
        body = self.body if self.body is not None else kw["Body"].name.encode()
        self.c.put_object(Bucket=kw["Bucket"], Key=kw["Key"], Body=body)
        return r

    def __getattr__(self, name):
        return getattr(self.c, name)


@pytest.mark.parametrize("what", ["size", "sha256"])
def test_unverified_upload_is_not_deleted(s3, tmp_path, what):
    s3.create_bucket(Bucket=BUCKET)
    m = Metrics()
    d = tmp_path / "exposures"
    lg = JsonlLog(d, "exposures", lambda r: r, rotate_bytes=10**9)
    _write(lg, 20)
    assert lg.close(30)
    (f,) = d.glob("*.jsonl")
    original = f.read_bytes()
    # same size, other bytes (only the sha256 can tell) / other size
    body = bytes(reversed(original)) if what == "sha256" else original + b"\n"
    sh = LogShipper({"exposures": d}, uri=f"s3://{BUCKET}", metrics=m, hostname="pod-a",
                    client=Tampered(s3, body))
    sh.run_once(final=True)
    assert f.exists() and f.read_bytes() == original
    assert sh.failures == 1 and sh.shipped_files == 0
    assert _val(m, "recsys_gateway_log_ship_failures_total", "exposures") == 1
    # the same shipper with an honest S3 ships it
    sh._client = s3
    sh.run_once(final=True)
    assert not f.exists() and _objects(s3)[f"exposures/pod-a/{f.name}"] == original


def test_gateway_logs_close_writes_then_ships_within_the_grace(s3, tmp_path):
    s3.create_bucket(Bucket=BUCKET)
    cfg = GatewayConfig(out=tmp_path, log_ship_uri=f"s3://{BUCKET}/prod",
                        log_rotate_bytes=4096, log_retain_bytes=1 << 20, log_fsync_s=0)
    cfg.check()
    m = Metrics()
    logs = open_logs(cfg, m, lambda r: r, lambda r: r)
    for i in range(300):
        assert logs.exposures.submit({"n": i, "pad": "e" * 50})
        assert logs.events.submit({"n": i, "type": "click"})
    assert logs.close(time.monotonic() + 60)
    for lg in (logs.exposures, logs.events):
        assert lg.submitted == lg.written == 300 and lg.dropped == 0
    assert list(cfg.paths.exposures.glob("*.jsonl")) == list(cfg.paths.events.glob("*.jsonl")) == []
    objs = _objects(s3, "prod/")
    for name in ("exposures", "events"):
        rows = [orjson.loads(line) for k, body in objs.items() if k.startswith(f"prod/{name}/")
                for line in body.splitlines()]
        assert sorted(r["n"] for r in rows) == list(range(300))
    text = m.exposition().decode()
    assert 'recsys_gateway_log_submitted_total{log="exposures"} 300.0' in text
    assert 'recsys_gateway_log_written_total{log="events"} 300.0' in text


def test_without_shipping_the_retention_cap_still_holds(tmp_path):
    d = tmp_path / "exposures"
    lg = JsonlLog(d, "exposures", lambda r: r, rotate_bytes=1000)
    _write(lg, 200)
    assert lg.close(30)
    sh = LogShipper({"exposures": d}, retain_bytes=5000)
    sh.run_once()
    assert 0 < sum(p.stat().st_size for p in d.glob("*.jsonl")) <= 5000
    assert sh.deleted_files > 0 and sh.failures == 0
    rows = sorted(r["n"] for r in read_jsonl([d]))
    assert rows == list(range(200 - len(rows), 200))       # the newest records survive


def test_gateway_logs_close_is_bounded_by_the_deadline_and_counts_the_rest(tmp_path):
    """A writer stuck (a hung disk) past the grace: close returns at the deadline, what was not
    written is counted as dropped, the other log still writes everything."""
    import threading

    stuck = threading.Event()
    cfg = GatewayConfig(out=tmp_path, shutdown_grace_s=1.0)
    m = Metrics()
    logs = open_logs(cfg, m, lambda r: (stuck.wait(30), r)[1], lambda r: r)
    for i in range(50):
        assert logs.exposures.submit({"n": i}) and logs.events.submit({"n": i})
    t0 = time.monotonic()
    assert logs.close(t0 + cfg.shutdown_grace_s) is False
    assert time.monotonic() - t0 < 10          # bounded (generously: a loaded machine)
    ex, ev = logs.exposures, logs.events
    assert ex.written == 0 and ex.dropped == ex.submitted == 50
    assert ev.written == ev.submitted == 50 and ev.dropped == 0
    assert _val(m, "recsys_gateway_log_dropped_total", "exposures") == 50
    stuck.set()
