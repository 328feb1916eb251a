"""The SageMaker control plane against moto (``mock_aws``): packaging and upload, Models, an
endpoint with two variants, data capture, auto scaling, a canary shift, a rollback, sticky
invocations and delete. moto's invoke_endpoint answers a canned body, so the data path (a real
request through the image's TorchServe) is proven by tests/container, not here."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from common.assignment import Split
from core.ids import canonical_id
from recsys_sagemaker import package
from recsys_sagemaker.__main__ import main
from recsys_sagemaker.config import AutoScaling, DataCapture, Deployment, Variant, parse_weights
from recsys_sagemaker.control import Clients, ControlPlane, DeployError
from recsys_sagemaker.invoke import Invoker

from tests.sagemaker.conftest import BUCKET, IMAGE, REGION, ROLE

REPO = Path(__file__).resolve().parents[2]


def clients() -> Clients:
    s = boto3.session.Session(region_name=REGION)
    return Clients(s.client("sagemaker"), s.client("application-autoscaling"), s.client("s3"),
                   s.client("sagemaker-runtime"))


def deployment(out, c, weights=(("3", 0.9), ("4", 0.1)), **kw) -> Deployment:
    variants = []
    for v, w in weights:
        pkg = package.upload(package.package(out, v), c.s3, BUCKET, package.s3_key("recsys", "recsys-prod", package.package(out, v)))
        variants.append(Variant(version=v, weight=w, model_data=pkg.s3_uri))
    return Deployment(endpoint="recsys-prod", role_arn=ROLE, image_uri=IMAGE,
                      variants=tuple(variants), **kw)


def test_package_is_deterministic_and_uploaded_once(moto_aws, out_with_archives):
    c = clients()
    a = package.package(out_with_archives, "3")
    b = package.package(out_with_archives, "3")
    assert a.sha256 == b.sha256 and a.tarball == out_with_archives / "sagemaker/v3/model.tar.gz"
    with tarfile.open(a.tarball) as t:
        assert t.getnames() == ["recsys-v3.mar"]
        assert t.extractfile("recsys-v3.mar").read() == (out_with_archives / "model-store/recsys-v3.mar").read_bytes()
    key = package.s3_key("recsys", "recsys-prod", a)
    first = package.upload(a, c.s3, BUCKET, key)
    stamp = c.s3.head_object(Bucket=BUCKET, Key=key)["LastModified"]
    again = package.upload(b, c.s3, BUCKET, key)
    assert first.s3_uri == again.s3_uri == f"s3://{BUCKET}/{key}"
    assert c.s3.head_object(Bucket=BUCKET, Key=key)["LastModified"] == stamp  # not uploaded twice
    assert c.s3.head_object(Bucket=BUCKET, Key=key)["Metadata"]["sha256"] == a.sha256
    with pytest.raises(FileNotFoundError, match="python -m archives build"):
        package.package(out_with_archives, "9")


def test_deploy_shift_rollback_invoke_delete(moto_aws, out_with_archives):
    c = clients()
    plane = ControlPlane(c, poll_s=0)
    dep = deployment(out_with_archives, c, data_capture=DataCapture(f"s3://{BUCKET}/capture", 20),
                     autoscaling=AutoScaling(1, 3, 150.0))
    d = plane.deploy(dep)
    assert d["EndpointStatus"] == "InService"
    assert plane.weights("recsys-prod") == [("v3", 0.9), ("v4", 0.1)]

    # one Model per version, pointing at its own model.tar.gz, in the configured image
    cfg = c.sagemaker.describe_endpoint_config(EndpointConfigName=d["EndpointConfigName"])
    models = {v["VariantName"]: c.sagemaker.describe_model(ModelName=v["ModelName"])
              for v in cfg["ProductionVariants"]}
    assert set(models) == {"v3", "v4"}
    data = {v.name: v.model_data for v in dep.variants}
    for name, m in models.items():
        assert m["PrimaryContainer"]["Image"] == IMAGE and m["ExecutionRoleArn"] == ROLE
        assert m["PrimaryContainer"]["ModelDataUrl"] == data[name]
        bucket, key = data[name][5:].split("/", 1)
        version = name[1:]
        assert key.startswith(f"recsys/recsys-prod/v{version}/")
        assert c.s3.head_object(Bucket=bucket, Key=key)["Metadata"]["sha256"] == \
            package.package(out_with_archives, version).sha256
    assert cfg["DataCaptureConfig"]["DestinationS3Uri"] == f"s3://{BUCKET}/capture"
    assert cfg["DataCaptureConfig"]["InitialSamplingPercentage"] == 20

    targets = c.autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert sorted(t["ResourceId"] for t in targets) == ["endpoint/recsys-prod/variant/v3",
                                                        "endpoint/recsys-prod/variant/v4"]
    assert all((t["MinCapacity"], t["MaxCapacity"]) == (1, 3) for t in targets)
    policies = c.autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    assert len(policies) == 2
    spec = policies[0]["TargetTrackingScalingPolicyConfiguration"]
    assert spec["PredefinedMetricSpecification"]["PredefinedMetricType"] == \
        "SageMakerVariantInvocationsPerInstance" and spec["TargetValue"] == 150.0

    # sticky invocations: the variant is the gateway's assignment over the current weights
    inv = Invoker("recsys-prod", "exp-salt", c.sagemaker, c.runtime)
    split = Split.of([("v3", 0.9), ("v4", 0.1)], control="v3")
    with Stubber(c.runtime) as stub:
        for uid in ("007", "7", "anna@example.com"):
            want = split.assign("exp-salt", canonical_id(uid))[0]
            stub.add_response("invoke_endpoint", {"Body": _body({"ok": True}), "InvokedProductionVariant": want},
                              {"EndpointName": "recsys-prod", "ContentType": "application/json",
                               "Accept": "application/json", "TargetVariant": want,
                               "Body": json.dumps({"user_id": canonical_id(uid), "k": 5})})
            r = inv.invoke({"user_id": uid, "k": 5})
            assert r["target_variant"] == r["invoked_variant"] == want and r["answer"] == {"ok": True}
        stub.assert_no_pending_responses()
    assert inv.assign("007")[:2] == inv.assign(7)[:2]

    # canary ramp, then rollback: weights read back from DescribeEndpoint
    plane.shift("recsys-prod", {"v3": 0.5, "v4": 0.5})
    assert plane.weights("recsys-prod") == [("v3", 0.5), ("v4", 0.5)]
    plane.rollback("recsys-prod")
    assert plane.weights("recsys-prod") == [("v3", 1.0), ("v4", 0.0)]
    inv.refresh_s = 0
    assert {inv.assign(f"user-{i}")[0] for i in range(200)} == {"v3"}  # everyone on control
    with pytest.raises(DeployError, match="no variant"):
        plane.shift("recsys-prod", {"v9": 1.0})

    deleted = plane.delete("recsys-prod")
    assert "endpoint recsys-prod" in deleted and sum(x.startswith("model ") for x in deleted) == 2
    assert plane.describe("recsys-prod") is None
    assert c.sagemaker.list_models()["Models"] == []
    assert c.autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []


def test_cli_deploy_status_shift_rollback_invoke_delete(moto_aws, out_with_archives, capsys):
    base = ["--endpoint", "recsys-prod", "--poll", "0"]
    assert main(["deploy", *base, "--out", str(out_with_archives), "--versions", "3=0.9,4=0.1",
                 "--role", ROLE, "--image", IMAGE, "--bucket", BUCKET]) == 0
    assert "v4: weight 0.1" in capsys.readouterr().out
    assert main(["shift", *base, "--weights", "3=0.8,v4=0.2"]) == 0
    assert "{'v3': 0.8, 'v4': 0.2}" in capsys.readouterr().out
    assert main(["rollback", *base]) == 0
    assert "{'v3': 1.0, 'v4': 0.0}" in capsys.readouterr().out
    assert main(["status", *base]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "InService"
    assert main(["invoke", *base, "--user-id", "42"]) == 0  # moto answers a canned body
    assert json.loads(capsys.readouterr().out)["target_variant"] == "v3"  # after the rollback
    assert main(["deploy", *base, "--out", str(out_with_archives), "--versions", "3=1",
                 "--role", "not-an-arn", "--image", IMAGE, "--bucket", BUCKET]) == 1
    assert "not an IAM role ARN" in capsys.readouterr().err
    assert main(["delete", *base]) == 0
    assert main(["status", *base]) == 1


def _body(obj):
    from botocore.response import StreamingBody
    import io
    raw = json.dumps(obj).encode()
    return StreamingBody(io.BytesIO(raw), len(raw))


def test_weights_and_names_are_validated():
    assert parse_weights("3=0.9, 4=0.1") == {"3": 0.9, "4": 0.1}
    with pytest.raises(ValueError, match="VERSION=WEIGHT"):
        parse_weights("3")
    with pytest.raises(ValueError, match="once"):
        Deployment("ep", ROLE, IMAGE, (Variant("3", 1), Variant("3", 1)))
    with pytest.raises(ValueError, match="not all 0"):
        Deployment("ep", ROLE, IMAGE, (Variant("3", 0),))
    with pytest.raises(ValueError, match="SageMaker names"):
        Deployment("bad_name", ROLE, IMAGE, (Variant("3", 1),))


@pytest.mark.parametrize("cmd", ["package", "deploy", "status", "shift", "rollback", "invoke", "delete"])
def test_cli_help_from_the_repo_root(cmd):
    """`python -m recsys_sagemaker` resolves from the repo root like every other stage; no
    package of ours is named `sagemaker` (it would shadow the AWS SDK)."""
    import os
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "recsys_sagemaker", cmd, "--help"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and f"python -m recsys_sagemaker {cmd}" in r.stdout, r.stderr
    assert not (REPO / "sagemaker").exists()
