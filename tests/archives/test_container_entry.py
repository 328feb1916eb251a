"""The container entry point's pieces on the host: fetch-models against moto's S3 (sha256
verified, all or nothing), SageMaker port selection, model staging order. The image itself is
run in tests/container."""
from __future__ import annotations

import hashlib
import json

import boto3
import pytest

from archives import container as K
from archives import s3fetch
from archives import server as S
from archives.properties import CONFIGS
from archives.store import archives_in
from common.net import free_port, free_ports, port_in_use, wait_until

BUCKET = "recsys-model-store"


@pytest.fixture
def s3(moto_aws):
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


def put(s3, key: str, data: bytes) -> str:
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    return hashlib.sha256(data).hexdigest()


def test_fetch_verifies_and_installs(s3, tmp_path, capsys):
    d2 = put(s3, "archives/recsys-v2.mar", b"two" * 1000)
    d3 = put(s3, "archives/recsys-v3.mar", b"three" * 1000)
    dest = tmp_path / "store"
    code = K.main(["fetch-models", "--dest", str(dest), f"s3://{BUCKET}/archives/recsys-v2.mar={d2}",
                   f"s3://{BUCKET}/archives/recsys-v3.mar={d3.upper()}"])
    assert code == 0
    assert sorted(p.name for p in dest.iterdir()) == ["recsys-v2.mar", "recsys-v3.mar"]
    assert s3fetch.file_sha256(dest / "recsys-v3.mar") == d3
    assert f"sha256 {d2}" in capsys.readouterr().out
    # a restart finds them in place and downloads nothing
    s3.delete_object(Bucket=BUCKET, Key="archives/recsys-v2.mar")
    assert s3fetch.fetch([s3fetch.parse_ref(f"s3://{BUCKET}/archives/recsys-v2.mar={d2}")], dest, client=s3)


def test_a_mismatch_installs_nothing_and_says_why(s3, tmp_path, caplog):
    good = put(s3, "a/recsys-v2.mar", b"good")
    put(s3, "a/recsys-v3.mar", b"tampered")
    dest = tmp_path / "store"
    manifest = tmp_path / "models.json"
    manifest.write_text(json.dumps({"models": [
        {"uri": f"s3://{BUCKET}/a/recsys-v2.mar", "sha256": good},
        {"uri": f"s3://{BUCKET}/a/recsys-v3.mar", "sha256": "0" * 64},
        {"uri": f"s3://{BUCKET}/a/recsys-v4.mar", "sha256": "1" * 64}]}))
    assert K.main(["fetch-models", "--dest", str(dest), "--manifest", str(manifest)]) == 1
    assert list(dest.iterdir()) == []  # not even the good one, no partial files
    text = caplog.text
    assert "refusing to start" in text
    assert f"recsys-v3.mar: sha256 mismatch: expected {'0' * 64}, got " \
           f"{hashlib.sha256(b'tampered').hexdigest()}" in text
    assert "recsys-v4.mar: no such object" in text


@pytest.mark.parametrize("bad, why", [
    ("s3://b/k.mar", "expected s3://bucket/key.mar=<64 hex"),
    ("s3://b/k.mar=abc", "expected s3://bucket/key.mar=<64 hex"),
    ("https://b/k.mar=" + "a" * 64, "not an s3://bucket/key URI"),
    ("s3://b/k.tar.gz=" + "a" * 64, "not a TorchServe archive"),
])
def test_bad_references_are_refused(bad, why):
    with pytest.raises(ValueError, match=why.replace("(", r"\(")):
        s3fetch.parse_ref(bad)


def test_sync_a_prefix_checks_sidecar_digests(s3, tmp_path):
    d = put(s3, "store/recsys-v5.mar", b"five")
    s3.put_object(Bucket=BUCKET, Key="store/recsys-v5.mar.sha256", Body=f"{d}  recsys-v5.mar\n".encode())
    put(s3, "store/recsys-v6.mar", b"six")   # no sidecar: taken as is
    put(s3, "store/notes.txt", b"ignored")
    refs = s3fetch.list_prefix(f"s3://{BUCKET}/store/", client=s3)
    assert [(r.file_name, r.sha256) for r in refs] == [("recsys-v5.mar", d), ("recsys-v6.mar", None)]
    s3fetch.fetch(refs, tmp_path, client=s3)
    assert (tmp_path / "recsys-v6.mar").read_bytes() == b"six"
    s3.put_object(Bucket=BUCKET, Key="store/recsys-v5.mar.sha256", Body=b"f" * 64)
    with pytest.raises(s3fetch.FetchError, match="sha256 mismatch"):
        s3fetch.fetch(s3fetch.list_prefix(f"s3://{BUCKET}/store/", client=s3), tmp_path / "other", client=s3)
    with pytest.raises(s3fetch.FetchError, match="no .mar archives under"):
        s3fetch.list_prefix(f"s3://{BUCKET}/empty/", client=s3)


def test_serve_ports_come_from_variables_or_the_safe_range():
    cfg = K.ContainerConfig.from_env({"SAGEMAKER_BIND_TO_PORT": "18700"})
    ports, grpc = K.serve_ports(cfg, {})
    assert ports == {"inference": 18700, "management": 8081, "metrics": 8082}
    lo = free_port()
    lo = lo if lo < 65000 else 40000
    cfg = K.ContainerConfig.from_env({"SAGEMAKER_BIND_TO_PORT": str(lo),
                                      "SAGEMAKER_SAFE_PORT_RANGE": f"{lo}-{lo + 30}"})
    ports, grpc = K.serve_ports(cfg, {"TS_METRICS_PORT": "18799"})
    assert ports["inference"] == lo and ports["metrics"] == 18799
    inside = [ports["management"], grpc["inference"], grpc["management"]]
    assert all(lo < p <= lo + 30 for p in inside) and len(set(inside)) == 3
    with pytest.raises(ValueError, match="no free port left"):
        K.serve_ports(K.ContainerConfig.from_env({"SAGEMAKER_BIND_TO_PORT": str(lo),
                                                  "SAGEMAKER_SAFE_PORT_RANGE": f"{lo}-{lo + 1}"}), {})
    for env, why in [({"SAGEMAKER_SAFE_PORT_RANGE": "10"}, "LOW-HIGH"),
                     ({"SAGEMAKER_BIND_TO_PORT": "x"}, "not a port number"),
                     ({"SAGEMAKER_MODEL_SERVER_WORKERS": "0"}, "must be > 0")]:
        with pytest.raises(ValueError, match=why):
            K.ContainerConfig.from_env(env)


def test_staging_registers_the_highest_version_first(tmp_path):
    from archives.build import ArchiveConfig, build_from_folder
    from testkit.archives import make_random_artifact
    src = tmp_path / "opt-ml-model"
    for v in ("2", "10"):
        art = make_random_artifact(tmp_path / f"art{v}", n_users=5, n_items=20, model_version=v)
        info = build_from_folder(art, tmp_path / "b", version=v, archive_format="zip-store",
                                 config=ArchiveConfig(min_workers=1, max_workers=1))
        (src / f"sub{v}").mkdir(parents=True)
        info.path.rename(src / f"sub{v}" / info.path.name)  # nested, as a model.tar.gz may be
    found = archives_in(src, recursive=True)
    order, defaults = K.stage_models(found, tmp_path / "run")
    assert order == [("recsys", "recsys-v10.mar"), ("recsys", "recsys-v2.mar")]
    assert defaults == {"recsys": "10"}
    assert (tmp_path / "run/model-store/recsys-v2.mar").resolve() == (src / "sub2/recsys-v2.mar").resolve()
    assert K.usable_cpus() >= 1


@pytest.mark.timeout(600)
def test_torchserve_command_syncs_s3_and_stops_cleanly_on_sigterm(java, tmp_path):
    """EKS mode on the host: the prod config (token auth on), the model store synced from an S3
    prefix (moto's server) at start, every archive registered, workers from RECSYS_WORKERS over
    the archive's model-config.yaml, SIGTERM -> drain -> exit 0."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import requests
    from moto.server import ThreadedMotoServer

    from archives.build import ArchiveConfig, build_from_folder
    from testkit.archives import make_random_artifact

    art = make_random_artifact(tmp_path / "art", n_users=5, n_items=20, model_version="4")
    mar = build_from_folder(art, tmp_path / "b", version="4", archive_format="zip-store",
                            config=ArchiveConfig(min_workers=1, max_workers=1)).path
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    proc = None
    try:
        host, port = server.get_host_and_port()
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}",
               "RECSYS_RUN_ROOT": str(tmp_path / "run")}
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket=BUCKET)
        s3.upload_file(str(mar), BUCKET, "eks/recsys-v4.mar")
        s3.put_object(Bucket=BUCKET, Key="eks/recsys-v4.mar.sha256", Body=s3fetch.file_sha256(mar).encode())
        inf, mgt, met = free_ports(3)
        env.update(TS_INFERENCE_PORT=str(inf), TS_MANAGEMENT_PORT=str(mgt), TS_METRICS_PORT=str(met),
                   RECSYS_WORKERS="2")  # the archive says 1: the variable wins
        proc = subprocess.Popen([sys.executable, "-m", "archives.container", "torchserve",
                                 "--config", str(CONFIGS["prod"]), "--model-store",
                                 f"s3://{BUCKET}/eks/"], env=env, cwd=S.PACKAGE_DIR.parent,
                                stdout=open(tmp_path / "console.log", "wb"), stderr=subprocess.STDOUT)
        key_file = tmp_path / "run" / "torchserve" / "key_file.json"
        deadline = time.monotonic() + 240

        def answered() -> requests.Response | None:
            try:  # TorchServe may be writing the key file
                key = json.loads(key_file.read_text())["inference"]["key"]
                r = requests.post(f"http://127.0.0.1:{inf}/predictions/recsys",
                                  json={"user_id": "2", "k": 2}, timeout=5,
                                  headers={"Authorization": f"Bearer {key}"})
            except (OSError, requests.RequestException, ValueError, KeyError):
                return None
            return r if r.status_code == 200 else None

        r = wait_until(answered, timeout=240, interval=0.5, proc=proc,
                       log=tmp_path / "console.log", what="the container entry point")
        assert r.json()["model_version"] == "4"
        assert requests.get(f"http://127.0.0.1:{inf}/ping", timeout=5).status_code == 400  # token on
        hc = subprocess.run([sys.executable, "-m", "archives.container", "healthcheck"], env=env,
                            cwd=S.PACKAGE_DIR.parent, capture_output=True, text=True, timeout=30)
        assert hc.returncode == 0, hc.stderr  # the health check sends the inference key
        while "recsys.container: ready in" not in (tmp_path / "console.log").read_text():  # configured
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        mkey = json.loads(key_file.read_text())["management"]["key"]
        desc = requests.get(f"http://127.0.0.1:{mgt}/models/recsys/4", timeout=10,
                            headers={"Authorization": f"Bearer {mkey}"}).json()[0]
        assert desc["minWorkers"] == 2 and [w["status"] for w in desc["workers"]] == ["READY"] * 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
        log = (tmp_path / "console.log").read_text()
        assert "recsys-v4.mar: " in log and "SIGTERM: draining" in log and "drained" in log
        assert not port_in_use("127.0.0.1", inf)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        S.stop(tmp_path / "run")  # TorchServe, if the entry point did not get to stop it
        server.stop()
