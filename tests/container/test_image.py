"""The real image, built by `make image` and run with Podman (host network, free loopback ports):
the data path of SageMaker's `serve` (ping, invocations, a 400 with a reason, non-root, the
management API closed, the health check, a drain on SIGTERM), the `gateway` command of the same
image, and `fetch-models` against moto's S3 server. The control plane is tests/sagemaker."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
import uuid

import pytest
import requests
from common.net import free_ports, port_in_use
from testkit.archives import build_random_versions
from testkit.container_engine import run_serve, wait_for_container
from tests.container.engine import IMAGE, REPO, build_image, engine

pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def image():
    return build_image()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """/opt/ml/model as SageMaker lays it out: two versions' archives. batchSize 4 with a 1.5 s
    maxBatchDelay keeps a lone request in flight long enough to stop the container under it."""
    root = tmp_path_factory.mktemp("container")
    out = build_random_versions(root, (("1", 1), ("2", 2)), n_users=10, n_items=50, batch_size=4,
                                delay_ms=1500)
    return out / "model-store"


@pytest.fixture(scope="module")
def served(image, model_dir):
    box = run_serve(image, model_dir, prefix="recsys-test")
    print(f"cold start (container start to first /ping 200): {box.cold_start_s:.1f} s")
    try:
        yield {"name": box.name, "url": box.url, "management": f"http://127.0.0.1:{box.management}",
               "cold_s": box.cold_start_s}
    finally:
        box.remove()


def test_ping_and_invocations_answer_with_the_newest_version(served):
    r = requests.get(f"{served['url']}/ping", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "Healthy"  # no token needed
    r = requests.post(f"{served['url']}/invocations", json={"user_id": "3", "k": 4}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "2" and body["strategy"] == "personalized"
    assert len(body["items"]) == 4 and all({"item_id", "score", "title"} <= set(i) for i in body["items"])


def test_a_bad_body_gets_a_400_with_a_reason(served):
    r = requests.post(f"{served['url']}/invocations", json={"user_id": "3", "k": "many"}, timeout=30)
    assert r.status_code == 400 and r.json()["reason"] == "bad_k", r.text
    r = requests.post(f"{served['url']}/invocations", data=b"{not json",
                      headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and r.json().get("reason"), r.text


def test_runs_as_non_root_with_the_management_api_closed(served):
    name = served["name"]
    assert engine("exec", name, "id", "-u").stdout.strip() == "10001"
    assert engine("inspect", "-f", "{{.Config.User}}", name).stdout.strip() == "10001:10001"
    # the SageMaker CLI ships in the image too (recsys_sagemaker under /opt/recsys)
    assert "deploy" in engine("exec", name, "python", "-m", "recsys_sagemaker", "--help").stdout
    cfg = engine("exec", name, "cat", "/tmp/recsys/torchserve/config.properties").stdout
    props = dict(line.split("=", 1) for line in cfg.splitlines() if "=" in line and not line.startswith("#"))
    assert props["management_address"].startswith("http://127.0.0.1:")   # loopback only
    assert props["inference_address"].startswith("http://0.0.0.0:")
    assert props["enable_model_api"] == "false" and props["disable_token_authorization"] == "true"
    # management routes are not served on the SageMaker port, and no model can be (un)registered
    assert requests.get(f"{served['url']}/models", timeout=10).status_code in (404, 405)
    r = requests.post(f"{served['management']}/models", params={"url": "x.mar"}, timeout=10)
    assert r.status_code == 405, r.text
    r = requests.delete(f"{served['management']}/models/recsys/1", timeout=10)
    assert r.status_code == 405, r.text
    # the image's HEALTHCHECK survives (--format docker) and passes
    meta = json.loads(engine("image", "inspect", IMAGE).stdout)[0]
    hc = meta.get("Healthcheck") or meta["Config"].get("Healthcheck")  # Podman / Docker layout
    assert hc["Test"][-1] == "healthcheck", hc
    labels = meta.get("Labels") or meta["Config"].get("Labels")
    assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert labels["org.opencontainers.image.revision"]
    assert engine("healthcheck", "run", name, check=False).returncode == 0


@pytest.mark.skipif(not (REPO / "gateway" / "__main__.py").exists(),
                    reason="the gateway package (gateway/, issue: gateway) is not on this branch "
                           "yet; the image's `gateway` command is wired to `python -m gateway serve`")
def test_gateway_command_of_the_same_image(served, image, tmp_path):
    import sys
    out = tmp_path / "gw"
    run = lambda *a: subprocess.run([sys.executable, "-m", "gateway", *a], cwd=REPO,  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    for args in (["keys", "init", "--out", str(out)],
                 ["experiment", "write", "--out", str(out), "--versions", "2"]):
        r = run(*args)
        assert r.returncode == 0, r.stdout + r.stderr
    os.chmod(out, 0o777)
    for p in out.rglob("*"):
        os.chmod(p, 0o777 if p.is_dir() else 0o666)
    port, mport = free_ports(2)
    name = f"recsys-gw-{uuid.uuid4().hex[:8]}"
    engine("run", "-d", "--name", name, "--network=host", "-v", f"{out}:/data",
           "-e", f"GATEWAY_UPSTREAM_URL={served['url']}", image, "gateway", "--out", "/data",
           "--port", str(port), "--metrics-port", str(mport))
    try:
        wait_for_container(name, f"http://127.0.0.1:{port}/healthz", 60, interval=0.3)
        key = (out / "gateway" / "client_key").read_text().strip()
        r = requests.post(f"http://127.0.0.1:{port}/v1/recommendations", json={"user_id": "3", "k": 3},
                          headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert r.status_code == 200 and r.json()["model_version"] == "2", r.text
    finally:
        engine("rm", "-f", name, check=False)


def test_fetch_models_with_a_plain_run_against_moto(image, model_dir, tmp_path):
    from moto.server import ThreadedMotoServer
    import boto3
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="models")
        mar = model_dir / "recsys-v2.mar"
        s3.upload_file(str(mar), "models", "prod/recsys-v2.mar")
        digest = hashlib.sha256(mar.read_bytes()).hexdigest()
        dest = tmp_path / "store"
        dest.mkdir()
        os.chmod(dest, 0o777)  # the image's user (10001) writes there, as into a pod's emptyDir
        envs = [x for k, v in creds.items() for x in ("-e", f"{k}={v}")]

        def fetch(ref):
            return engine("run", "--rm", "--network=host", *envs, "-v", f"{dest}:/models", image,
                          "fetch-models", "--dest", "/models", ref, check=False, timeout=120)
        bad = fetch(f"s3://models/prod/recsys-v2.mar={'0' * 64}")
        assert bad.returncode == 1 and "sha256 mismatch" in bad.stderr, bad.stderr
        assert list(dest.iterdir()) == []
        ok = fetch(f"s3://models/prod/recsys-v2.mar={digest}")
        assert ok.returncode == 0, ok.stderr
        assert hashlib.sha256((dest / "recsys-v2.mar").read_bytes()).hexdigest() == digest
    finally:
        server.stop()


def test_make_serve_container_and_stop_container(image, model_dir):
    """The Makefile's targets: `recsys-serve` on loopback PORT with OUT's archives, then removed."""
    if engine("container", "exists", "recsys-serve", check=False).returncode == 0:
        pytest.skip("a container named recsys-serve is already running on this machine")
    port = free_ports(1)[0]
    try:
        r = subprocess.run(["make", "serve-container", f"OUT={model_dir.parent}", f"PORT={port}"],
                           cwd=REPO, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert requests.get(f"http://127.0.0.1:{port}/ping", timeout=10).status_code == 200
        r = requests.post(f"http://127.0.0.1:{port}/invocations", json={"user_id": "1", "k": 1}, timeout=30)
        assert r.status_code == 200 and r.json()["model_version"] == "2"
    finally:
        r = subprocess.run(["make", "stop-container"], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert r.returncode == 0, r.stderr
    assert engine("container", "exists", "recsys-serve", check=False).returncode == 1
    assert not port_in_use("127.0.0.1", port)


def test_sigterm_drains_the_request_in_flight_and_exits_in_time(served):
    """Last: it stops the container. A lone request waits 1.5 s for its batch; SIGTERM arrives
    while it does, the answer still comes, and the container exits 0 well within 30 s."""
    result = {}

    def slow_request():
        r = requests.post(f"{served['url']}/invocations", json={"user_id": "4", "k": 2}, timeout=60)
        result["status"], result["body"] = r.status_code, r.text

    t = threading.Thread(target=slow_request)
    t.start()
    time.sleep(0.4)
    t0 = time.monotonic()
    engine("stop", "-t", "30", served["name"], timeout=60)
    stop_s = time.monotonic() - t0
    t.join(timeout=60)
    print(f"SIGTERM to exit: {stop_s:.1f} s")
    assert result.get("status") == 200, result
    assert json.loads(result["body"])["model_version"] == "2"
    assert stop_s < 30
    assert engine("inspect", "-f", "{{.State.ExitCode}}", served["name"]).stdout.strip() == "0"
    logs = engine("logs", served["name"]).stderr + engine("logs", served["name"]).stdout
    assert "SIGTERM: draining" in logs and "drained" in logs
