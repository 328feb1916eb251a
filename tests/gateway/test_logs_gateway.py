"""A real gateway process (`python -m gateway serve`) in front of a real TorchServe ships its
rotated logs to S3 (moto's server stands in for S3 only), configured by the chart's variables
(GATEWAY_LOG_SHIP_URI, GATEWAY_LOG_RETAIN_BYTES, GATEWAY_LOG_FSYNC_S,
GATEWAY_SHUTDOWN_GRACE_S). S3 is missing at first (uploads fail, files stay, counted), then
the bucket appears; on SIGTERM every exposure and event is in S3, none left on the pod's disk,
and submitted == written + dropped with nothing dropped."""
from __future__ import annotations


import boto3
import orjson
import pytest

from common.net import wait_until
from common.schema import RAW_EVENT_COLUMNS
from common.promtext import metric_value
from testkit.archives import running_server
from testkit.gateway import GatewayProc
from tests.gateway.conftest import (MODEL, Client, build_versions, register, setup_keys,
                                    write_experiment)

pytestmark = pytest.mark.timeout(600)
BUCKET = "recsys-gw-logs"


def _wait(cond, timeout: float = 60.0) -> None:
    wait_until(lambda: cond() or None, timeout=timeout, what="the condition")


def test_gateway_ships_rotated_logs_and_everything_left_on_sigterm(java, tmp_path, monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
                     "GATEWAY_LOG_SHIP_URI": f"s3://{BUCKET}/prod",
                     "GATEWAY_TRAINING_LOG_SHIP_URI": f"s3://{BUCKET}/training",
                     "GATEWAY_LOG_RETAIN_BYTES": str(1 << 30), "GATEWAY_LOG_FSYNC_S": "0",
                     "GATEWAY_SHUTDOWN_GRACE_S": "20"}.items():
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        out = build_versions(tmp_path / "run")
        keys = setup_keys(out)
        write_experiment(out)
        with running_server(out, config="dev", models={MODEL: f"{MODEL}-v1.mar"}) as ts:
            register(ts, "2")
            gw = GatewayProc(out, ["--log-rotate-bytes", "4000"]).start()
            try:
                c = Client(gw, keys["client"])
                for i in range(60):
                    assert c.rec({"user_id": str(i % 30), "k": 3}).status_code == 200
                    assert c.event({"type": "click", "item_id": "5",
                                    "user_id": str(i % 30)}).status_code == 202
                # no bucket yet: uploads fail, the rotated files stay, failures are counted
                _wait(lambda: metric_value(gw.metrics(),
                                           "recsys_gateway_log_ship_failures_total") > 0)
                local = list(gw.paths.exposures.glob("*.jsonl"))
                assert len(local) > 1
                m = gw.metrics()
                assert metric_value(m, "recsys_gateway_log_shipped_files_total") == 0
                assert metric_value(m, "recsys_gateway_log_pending_bytes",
                                    log="exposures") >= sum(p.stat().st_size for p in local[:-1])
                assert metric_value(m, "recsys_gateway_log_shipping_enabled") == 1
                s3.create_bucket(Bucket=BUCKET)
                for i in range(60, 100):
                    assert c.rec({"user_id": str(i % 30), "k": 3}).status_code == 200
                m = gw.metrics()
            finally:
                assert gw.stop(timeout=60) == 0, gw.log()[-3000:]
        for name, n in (("exposures", 100), ("events", 60)):
            assert m and list(getattr(gw.paths, name).glob("*.jsonl")) == [], name
            rows = []
            for page in s3.get_paginator("list_objects_v2").paginate(
                    Bucket=BUCKET, Prefix=f"prod/{name}/"):
                for o in page.get("Contents", []):
                    assert o["Key"].count("/") == 3       # prod/<log>/<hostname>/<file>
                    body = s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
                    rows += [orjson.loads(line) for line in body.splitlines()]
            assert len(rows) == n and len({r["request_id"] for r in rows if name == "exposures"}) \
                == (n if name == "exposures" else 0)
        # the training-event log: its own prefix, raw user ids, the ETL's raw events format
        rows = []
        for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=BUCKET, Prefix="training/training-events/"):
            for o in page.get("Contents", []):
                rows += [orjson.loads(line) for line in
                         s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read().splitlines()]
        assert sorted((r["user_id"], r["item_id"], r["event_type"]) for r in rows) == \
            sorted((str(i % 30), "5", "click") for i in range(60))
        assert all(set(r) == set(RAW_EVENT_COLUMNS) for r in rows)
        assert list(gw.paths.out.joinpath("training-events").glob("*.jsonl")) == []
        assert "0 dropped" in gw.log()
    finally:
        server.stop()
