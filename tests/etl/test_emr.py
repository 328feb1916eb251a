"""EMR submission against moto (no real AWS). moto records steps but never runs them."""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import boto3
import moto

from etl.config import EmrConfig
from etl import emr as emr_mod

REGION = "us-east-1"
BUCKET = "recsys-test-bucket"
EVENTS = "s3://data-bucket/raw/events/"
CATALOG = "s3://data-bucket/raw/catalog.csv"
OUT = "s3://data-bucket/runs/r1"
REPO_ROOT = Path(emr_mod.__file__).resolve().parent.parent


@pytest.fixture
def aws_env(monkeypatch):
    """Fake credentials so nothing can ever reach a real account."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SECURITY_TOKEN": "testing", "AWS_SESSION_TOKEN": "testing",
                        "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def aws(aws_env):
    with moto.mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        emr = boto3.client("emr", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        yield s3, emr


def _start_cluster(emr) -> str:
    resp = emr.run_job_flow(
        Name="long-running", ReleaseLabel="emr-7.9.0", Applications=[{"Name": "Spark"}],
        Instances={"MasterInstanceType": "m6i.xlarge", "SlaveInstanceType": "m6i.xlarge",
                   "InstanceCount": 3, "KeepJobFlowAliveWhenNoSteps": True},
        JobFlowRole="EMR_EC2_DefaultRole", ServiceRole="EMR_DefaultRole")
    return resp["JobFlowId"]


SPARK4_RELEASE = "emr-spark4-example"  # moto accepts any label; a real run names a Spark-4 release


def _cfg(**kw) -> EmrConfig:
    base = dict(bucket=BUCKET, prefix="team/recsys", region=REGION, release_label=SPARK4_RELEASE)
    base.update(kw)
    return EmrConfig(**base)


def _expected_args(result: dict, extra: list[str]) -> list[str]:
    return ["spark-submit", "--deploy-mode", "cluster", "--master", "yarn",
            "--py-files", result["code_uri"], result["entry_uri"],
            "prepare", "--events", EVENTS, "--catalog", CATALOG, "--out", OUT,
            *extra, "--spark-master", "yarn"]


def _get(s3, uri: str) -> bytes:
    assert uri.startswith(f"s3://{BUCKET}/")
    return s3.get_object(Bucket=BUCKET, Key=uri[len(f"s3://{BUCKET}/"):])["Body"].read()


# --------------------------------------------------------------------------- packaging

def test_package_code_is_deterministic(tmp_path):
    a = emr_mod.package_code(tmp_path / "a")
    b = emr_mod.package_code(tmp_path / "b")
    assert a.name == b.name
    assert a.read_bytes() == b.read_bytes()
    sha = hashlib.sha256(a.read_bytes()).hexdigest()
    assert a.name == f"recsys-etl-{sha[:12]}.zip"


def test_package_code_contents(tmp_path):
    path = emr_mod.package_code(tmp_path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        infos = zf.infolist()
        assert zf.read("etl/emr.py") == (REPO_ROOT / "etl" / "emr.py").read_bytes()
    files = [n for n in names if not n.endswith("/")]
    dirs = [n for n in names if n.endswith("/")]
    assert names == sorted(names)
    assert {"etl/emr.py", "etl/emr_entry.py", "etl/config.py", "common/dataclass_args.py", "common/schema.py", "core/storage.py"} <= set(files)
    assert all(n.endswith(".py") for n in files)
    assert {"core/", "common/", "etl/"} <= set(dirs)  # needed by zipimport for namespace packages
    assert all(n.split("/")[0] in ("core", "common", "etl") for n in names)
    assert not any("__pycache__" in n for n in names)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}


def test_code_zip_is_importable(tmp_path):
    """The zip alone (as --py-files puts it on sys.path) provides etl.* and common.*."""
    path = emr_mod.package_code(tmp_path)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "import common.dataclass_args, etl.emr; "
            "assert common.dataclass_args.__file__.startswith(sys.argv[1]), "
            "common.dataclass_args.__file__; "
            "assert etl.emr.__file__.startswith(sys.argv[1]), etl.emr.__file__")
    proc = subprocess.run([sys.executable, "-I", "-c", code, str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_entry_script_runs_cli_from_zip(tmp_path):
    """What spark-submit does on the cluster: entry script + zip on the path, no checkout."""
    path = emr_mod.package_code(tmp_path / "code")
    entry = tmp_path / "emr_entry.py"
    entry.write_bytes((REPO_ROOT / "etl" / "emr_entry.py").read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(path)
    proc = subprocess.run([sys.executable, str(entry), "prepare", "--help"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--events" in proc.stdout and "--spark-master" in proc.stdout


def test_entry_script_with_stub_cli(tmp_path):
    """The entry script hands argv to etl.__main__.main and exits with its return code."""
    root = tmp_path / "src"
    for pkg in ("core", "common", "etl"):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "stub_marker.py").write_text("")
    (root / "etl" / "__main__.py").write_text(
        "import json\n"
        "def main(argv):\n"
        "    print(json.dumps(argv))\n"
        "    return 3\n")
    zip_path = tmp_path / "code.zip"
    zip_path.write_bytes(emr_mod.build_code_zip(root))
    entry = tmp_path / "emr_entry.py"
    entry.write_bytes((REPO_ROOT / "etl" / "emr_entry.py").read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(zip_path)
    argv = ["prepare", "--events", EVENTS, "--out", OUT, "--spark-master", "yarn"]
    proc = subprocess.run([sys.executable, str(entry), *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert json.loads(proc.stdout) == argv


# --------------------------------------------------------------------------- existing cluster

def test_submit_to_existing_cluster(aws):
    s3, emr = aws
    cluster_id = _start_cluster(emr)
    extra = ["--seed", "7", "--min-user-positives", "3"]
    result = emr_mod.submit_prepare(_cfg(cluster_id=cluster_id), EVENTS, CATALOG, OUT, extra,
                                    s3=s3, emr=emr)

    assert result["cluster_id"] == cluster_id
    assert result["code_uri"].startswith(f"s3://{BUCKET}/team/recsys/code/recsys-etl-")
    assert result["code_uri"].endswith(".zip")
    assert result["entry_uri"] == f"s3://{BUCKET}/team/recsys/code/emr_entry.py"
    assert result["args_uri"] == \
        f"s3://{BUCKET}/team/recsys/jobs/{result['job_id']}/args.json"

    steps = emr.list_steps(ClusterId=cluster_id)["Steps"]
    assert [s["Id"] for s in steps] == [result["step_id"]]
    step = steps[0]
    assert step["Name"] == "recsys-prepare"
    assert step["ActionOnFailure"] == "CONTINUE"
    assert step["Config"]["Jar"] == "command-runner.jar"
    assert step["Config"]["Args"] == _expected_args(result, extra)

    # Uploaded code: the zip is the package_code() zip and holds our modules.
    data = _get(s3, result["code_uri"])
    assert result["code_uri"].endswith(f"recsys-etl-{hashlib.sha256(data).hexdigest()[:12]}.zip")
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert "etl/emr.py" in names and "etl/config.py" in names
    assert _get(s3, result["entry_uri"]) == (REPO_ROOT / "etl" / "emr_entry.py").read_bytes()

    record = json.loads(_get(s3, result["args_uri"]))
    assert record["job_id"] == result["job_id"]
    assert record["events_uri"] == EVENTS
    assert record["catalog_uri"] == CATALOG
    assert record["output_uri"] == OUT
    assert record["prepare_args"] == extra
    assert record["transient"] is False
    assert record["code_uri"] == result["code_uri"]
    assert record["code_sha256"] == hashlib.sha256(data).hexdigest()
    assert record["step"]["HadoopJarStep"]["Args"] == _expected_args(result, extra)
    assert record["emr"]["cluster_id"] == cluster_id


def test_resubmitting_same_code_reuses_zip(aws):
    s3, emr = aws
    cfg = _cfg(cluster_id=_start_cluster(emr))
    r1 = emr_mod.submit_prepare(cfg, EVENTS, CATALOG, OUT, [], s3=s3, emr=emr)
    r2 = emr_mod.submit_prepare(cfg, EVENTS, CATALOG, OUT, [], s3=s3, emr=emr)
    assert r1["code_uri"] == r2["code_uri"]
    assert r1["job_id"] != r2["job_id"] and r1["args_uri"] != r2["args_uri"]
    assert r1["step_id"] != r2["step_id"]
    code = s3.list_objects_v2(Bucket=BUCKET, Prefix="team/recsys/code/")["Contents"]
    assert sorted(o["Key"].rsplit("/", 1)[1] for o in code) == \
        sorted(["emr_entry.py", r1["code_uri"].rsplit("/", 1)[1]])


def test_empty_prefix_puts_objects_at_bucket_root(aws):
    s3, emr = aws
    result = emr_mod.submit_prepare(_cfg(prefix="", cluster_id=_start_cluster(emr)),
                                    EVENTS, CATALOG, OUT, [], s3=s3, emr=emr)
    assert result["entry_uri"] == f"s3://{BUCKET}/code/emr_entry.py"
    assert result["args_uri"].startswith(f"s3://{BUCKET}/jobs/")


# --------------------------------------------------------------------------- transient

def test_transient_cluster(aws):
    s3, emr = aws
    cfg = _cfg(instance_type="r6i.2xlarge", core_instances=3, log_uri=f"s3://{BUCKET}/logs/")
    result = emr_mod.submit_prepare(cfg, EVENTS, CATALOG, OUT, ["--seed", "1"], transient=True,
                                    s3=s3, emr=emr)
    clusters = emr.list_clusters()["Clusters"]
    assert [c["Id"] for c in clusters] == [result["cluster_id"]]

    cluster = emr.describe_cluster(ClusterId=result["cluster_id"])["Cluster"]
    assert cluster["ReleaseLabel"] == SPARK4_RELEASE
    assert [a["Name"] for a in cluster["Applications"]] == ["Spark"]
    assert cluster["AutoTerminate"] is True  # KeepJobFlowAliveWhenNoSteps=False
    assert cluster["LogUri"] == f"s3://{BUCKET}/logs/"
    assert cluster["ServiceRole"] == "EMR_DefaultRole"
    assert cluster["Ec2InstanceAttributes"]["IamInstanceProfile"] == "EMR_EC2_DefaultRole"

    groups = {g["InstanceGroupType"]: g
              for g in emr.list_instance_groups(ClusterId=result["cluster_id"])["InstanceGroups"]}
    assert groups["MASTER"]["RequestedInstanceCount"] == 1
    assert groups["CORE"]["RequestedInstanceCount"] == 3
    assert {g["InstanceType"] for g in groups.values()} == {"r6i.2xlarge"}

    steps = emr.list_steps(ClusterId=result["cluster_id"])["Steps"]
    assert [s["Id"] for s in steps] == [result["step_id"]]
    assert steps[0]["Name"] == "recsys-prepare"
    assert steps[0]["ActionOnFailure"] == "TERMINATE_CLUSTER"
    assert steps[0]["Config"]["Jar"] == "command-runner.jar"
    assert steps[0]["Config"]["Args"] == _expected_args(result, ["--seed", "1"])

    assert json.loads(_get(s3, result["args_uri"]))["transient"] is True


def test_transient_cluster_needs_a_release_label():
    with pytest.raises(ValueError, match="Spark is 4.x"):
        emr_mod.job_flow_request(EmrConfig(bucket=BUCKET), {}, "job-1")


def test_transient_request_shape():
    cfg = EmrConfig(bucket=BUCKET, core_instances=0, release_label=SPARK4_RELEASE)
    step = emr_mod.prepare_step(["spark-submit"], transient=True)
    req = emr_mod.job_flow_request(cfg, step, "job-1")
    assert [g["InstanceRole"] for g in req["Instances"]["InstanceGroups"]] == ["MASTER"]
    assert req["Instances"]["KeepJobFlowAliveWhenNoSteps"] is False
    assert req["Steps"] == [step]
    assert "LogUri" not in req


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("bucket", ["", "   "])
def test_missing_bucket(aws, bucket):
    s3, emr = aws
    with pytest.raises(ValueError, match="bucket"):
        emr_mod.submit_prepare(_cfg(bucket=bucket, cluster_id="j-1"), EVENTS, CATALOG, OUT, [],
                               s3=s3, emr=emr)


def test_nonexistent_bucket(aws):
    s3, emr = aws
    with pytest.raises(ValueError, match="does not exist"):
        emr_mod.submit_prepare(_cfg(bucket="no-such-bucket", cluster_id=_start_cluster(emr)),
                               EVENTS, CATALOG, OUT, [], s3=s3, emr=emr)


def test_missing_cluster_id(aws):
    s3, emr = aws
    with pytest.raises(ValueError, match="cluster_id"):
        emr_mod.submit_prepare(_cfg(), EVENTS, CATALOG, OUT, [], s3=s3, emr=emr)
    # nothing was uploaded before failing
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0


def test_unknown_cluster(aws):
    s3, emr = aws
    with pytest.raises(ValueError, match="not found"):
        emr_mod.submit_prepare(_cfg(cluster_id="j-DOESNOTEXIST"), EVENTS, CATALOG, OUT, [],
                               s3=s3, emr=emr)
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0


def test_terminated_cluster(aws):
    s3, emr = aws
    cluster_id = _start_cluster(emr)
    emr.terminate_job_flows(JobFlowIds=[cluster_id])
    with pytest.raises(ValueError, match="TERMINAT"):
        emr_mod.submit_prepare(_cfg(cluster_id=cluster_id), EVENTS, CATALOG, OUT, [],
                               s3=s3, emr=emr)


@pytest.mark.parametrize("which", ["events", "catalog", "out"])
@pytest.mark.parametrize("bad", ["/local/path", "s3a://b/k", "file:///x", "s3://", "s3:///k",
                                 "hdfs:///x"])
def test_non_s3_uris(aws, which, bad):
    s3, emr = aws
    uris = {"events": EVENTS, "catalog": CATALOG, "out": OUT}
    uris[which] = bad
    with pytest.raises(ValueError, match="s3://"):
        emr_mod.submit_prepare(_cfg(cluster_id="j-1"), uris["events"], uris["catalog"],
                               uris["out"], [], s3=s3, emr=emr)


def test_non_s3_log_uri(aws):
    s3, emr = aws
    with pytest.raises(ValueError, match="log_uri"):
        emr_mod.submit_prepare(_cfg(log_uri="/tmp/logs"), EVENTS, CATALOG, OUT, [],
                               transient=True, s3=s3, emr=emr)


@pytest.mark.parametrize("extra", [["--out", "s3://x/y"], ["--spark-master=local[2]"],
                                   ["--events", "s3://a/b"], ["--seed", "1", "--ou", "x"],
                                   ["--spark-mast", "local"]])
def test_reserved_prepare_args(aws, extra):
    s3, emr = aws
    with pytest.raises(ValueError, match="set by the EMR step"):
        emr_mod.submit_prepare(_cfg(cluster_id="j-1"), EVENTS, CATALOG, OUT, extra,
                               s3=s3, emr=emr)


# --------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="etl")
    emr_mod.add_cli(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_parses_emr_config_and_remainder():
    args = _parser().parse_args([
        "emr-submit", "--events", EVENTS, "--catalog", CATALOG, "--out", OUT,
        "--emr-bucket", BUCKET, "--emr-cluster-id", "j-ABC", "--emr-core-instances", "8",
        "--", "--seed", "3", "--vocab-size", "100"])
    assert args.func is emr_mod.cmd_emr_submit and args.fn is emr_mod.cmd_emr_submit
    assert args.emr_bucket == BUCKET and args.emr_cluster_id == "j-ABC"
    assert args.emr_core_instances == 8
    assert args.emr_release_label == EmrConfig().release_label
    assert args.transient is False
    assert args.prepare_args == ["--", "--seed", "3", "--vocab-size", "100"]


def test_cli_end_to_end(aws, capsys):
    s3, emr = aws
    cluster_id = _start_cluster(emr)
    args = _parser().parse_args([
        "emr-submit", "--events", EVENTS, "--catalog", CATALOG, "--out", OUT,
        "--emr-bucket", BUCKET, "--emr-cluster-id", cluster_id, "--emr-region", REGION,
        "--", "--seed", "3"])
    assert emr_mod.cmd_emr_submit(args) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert set(result) >= {"cluster_id", "step_id", "code_uri", "entry_uri", "args_uri"}
    assert result["cluster_id"] == cluster_id
    assert result["step_id"] in captured.err and cluster_id in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    step = emr.list_steps(ClusterId=cluster_id)["Steps"][0]
    assert step["Config"]["Args"] == _expected_args(result, ["--seed", "3"])


def test_cli_transient(aws, capsys):
    s3, emr = aws
    args = _parser().parse_args([
        "emr-submit", "--events", EVENTS, "--catalog", CATALOG, "--out", OUT,
        "--emr-bucket", BUCKET, "--transient", "--emr-release-label", SPARK4_RELEASE])
    assert emr_mod.cmd_emr_submit(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["transient"] is True
    assert [c["Id"] for c in emr.list_clusters()["Clusters"]] == [result["cluster_id"]]


def test_cli_transient_without_release_label_is_a_config_error(aws, capsys):
    s3, _ = aws
    args = _parser().parse_args(["emr-submit", "--events", EVENTS, "--catalog", CATALOG,
                                 "--out", OUT, "--emr-bucket", BUCKET, "--transient"])
    assert emr_mod.cmd_emr_submit(args) == 2
    assert "Spark is 4.x" in capsys.readouterr().err
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0  # nothing uploaded


def test_cli_reports_config_errors(aws, capsys):
    args = _parser().parse_args(["emr-submit", "--events", EVENTS, "--catalog", CATALOG,
                                 "--out", OUT, "--emr-bucket", BUCKET])
    assert emr_mod.cmd_emr_submit(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "cluster_id" in captured.err


def test_emr_config_fields_all_exposed():
    args = _parser().parse_args(["emr-submit", "--events", EVENTS, "--catalog", CATALOG,
                                 "--out", OUT])
    for f in dataclasses.fields(EmrConfig):
        assert getattr(args, "emr_" + f.name) == f.default


def test_etl_main_emr_submit(aws, capsys):
    """`python -m etl emr-submit ...` goes through etl.__main__.main to cmd_emr_submit."""
    from etl.__main__ import main

    s3, emr = aws
    cluster_id = _start_cluster(emr)
    rc = main(["emr-submit", "--events", EVENTS, "--catalog", CATALOG, "--out", OUT,
               "--emr-bucket", BUCKET, "--emr-cluster-id", cluster_id, "--", "--seed", "5"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    step = emr.list_steps(ClusterId=cluster_id)["Steps"][0]
    assert step["Config"]["Args"] == _expected_args(result, ["--seed", "5"])
