"""Regressions of the control plane (issue 18, defect 9), against moto: a delete touches only its
own endpoint's resources, and auto scaling survives a failed update. moto 5.2 has no
UpdateEndpoint, so the update's answer is injected at botocore's ``before-call`` hook: the
request never leaves the client, every other call goes to moto."""
from __future__ import annotations

import json

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from recsys_sagemaker import package
from recsys_sagemaker.config import AutoScaling, Deployment, Variant
from recsys_sagemaker.control import SCALABLE_DIMENSION, Clients, ControlPlane, DeployError

from tests.sagemaker.conftest import BUCKET, IMAGE, REGION, ROLE


def clients() -> Clients:
    s = boto3.session.Session(region_name=REGION)
    return Clients(s.client("sagemaker"), s.client("application-autoscaling"), s.client("s3"),
                   s.client("sagemaker-runtime"))


def deployment(out, c: Clients, endpoint: str, versions=("3",), **kw) -> Deployment:
    variants = []
    for v in versions:
        pkg = package.package(out, v)
        pkg = package.upload(pkg, c.s3, BUCKET, package.s3_key("recsys", endpoint, pkg))
        variants.append(Variant(version=v, weight=1.0, model_data=pkg.s3_uri))
    return Deployment(endpoint=endpoint, role_arn=ROLE, image_uri=IMAGE, variants=tuple(variants),
                      **kw)


def resources(c: Clients, endpoint: str) -> dict:
    """Everything that belongs to ``endpoint``, read from the endpoint itself (not by name)."""
    d = c.sagemaker.describe_endpoint(EndpointName=endpoint)
    cfg = c.sagemaker.describe_endpoint_config(EndpointConfigName=d["EndpointConfigName"])
    rids = [f"endpoint/{endpoint}/variant/{v['VariantName']}" for v in cfg["ProductionVariants"]]
    return {"config": cfg["EndpointConfigName"],
            "models": sorted(v["ModelName"] for v in cfg["ProductionVariants"]),
            "targets": sorted(t["ResourceId"] for t in c.autoscaling.describe_scalable_targets(
                ServiceNamespace="sagemaker", ResourceIds=rids)["ScalableTargets"])}


def test_delete_leaves_the_endpoint_whose_name_extends_it(moto_aws, out_with_archives):
    """`delete("recsys")` once matched configs by prefix and took `recsys-canary`'s too."""
    c = clients()
    plane = ControlPlane(c, poll_s=0)
    for name, version in (("recsys", "3"), ("recsys-canary", "4")):
        plane.deploy(deployment(out_with_archives, c, name, (version,),
                                autoscaling=AutoScaling(1, 2)))
    mine, canary = resources(c, "recsys"), resources(c, "recsys-canary")
    assert canary["targets"] == ["endpoint/recsys-canary/variant/v4"]

    deleted = plane.delete("recsys")

    assert sorted(deleted) == sorted(["endpoint recsys", f"endpoint config {mine['config']}",
                                      *(f"model {m}" for m in mine["models"])])
    assert resources(c, "recsys-canary") == canary  # its config, Models and scaling all remain
    for m in canary["models"]:
        c.sagemaker.describe_model(ModelName=m)
    assert plane.describe("recsys") is None
    left = {x["ModelName"] for x in c.sagemaker.list_models()["Models"]}
    assert left == set(canary["models"])
    assert [x["EndpointConfigName"] for x in c.sagemaker.list_endpoint_configs()["EndpointConfigs"]] \
        == [canary["config"]]


def _scaling(c: Clients, endpoint: str) -> dict:
    """Targets and policies of an endpoint's variants, as comparable plain data."""
    targets = c.autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    policies = c.autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    prefix = f"endpoint/{endpoint}/variant/"
    return {
        "targets": sorted((t["ResourceId"], t["MinCapacity"], t["MaxCapacity"]) for t in targets
                          if t["ResourceId"].startswith(prefix)),
        "policies": sorted((p["ResourceId"], p["PolicyName"], p["PolicyType"],
                            json.dumps(p["TargetTrackingScalingPolicyConfiguration"], sort_keys=True))
                           for p in policies if p["ResourceId"].startswith(prefix))}


def _answer_update_endpoint(c: Clients, status: int, body: dict) -> None:
    """UpdateEndpoint answered by this client itself (moto lacks it): ``status`` and ``body``."""
    def answer(**_):
        return AWSResponse("https://sagemaker.invalid/", status, {}, None), body
    c.sagemaker.meta.events.register("before-call.sagemaker.UpdateEndpoint", answer)


@pytest.mark.parametrize("failure", ["refused", "rolled_back"])
def test_a_failed_update_restores_the_serving_variants_auto_scaling(moto_aws, out_with_archives,
                                                                      failure):
    """Auto scaling is taken off before UpdateEndpoint; when the update fails (refused up front,
    or accepted and rolled back by SageMaker) the old variants serve on and get theirs back."""
    c = clients()
    plane = ControlPlane(c, poll_s=0)
    plane.deploy(deployment(out_with_archives, c, "recsys-prod", ("3",),
                            autoscaling=AutoScaling(1, 3, 150.0)))
    before = _scaling(c, "recsys-prod")
    assert before["targets"] == [("endpoint/recsys-prod/variant/v3", 1, 3)]
    assert len(before["policies"]) == 1
    if failure == "refused":
        _answer_update_endpoint(c, 400, {"Error": {
            "Code": "ResourceLimitExceeded", "Message": "ml.m5.large for endpoint usage is 2"},
            "ResponseMetadata": {"HTTPStatusCode": 400}})
        expected = "quota"
    else:  # accepted, but the endpoint stays on its previous config: SageMaker rolled it back
        _answer_update_endpoint(c, 200, {"EndpointArn": "arn:aws:sagemaker:x:1:endpoint/recsys-prod",
                                         "ResponseMetadata": {"HTTPStatusCode": 200}})
        expected = "rolled it back"

    with pytest.raises(DeployError, match=expected):
        plane.deploy(deployment(out_with_archives, c, "recsys-prod", ("3", "4"),
                                autoscaling=AutoScaling(2, 5, 300.0)))

    assert [v for v, _ in plane.weights("recsys-prod")] == ["v3"]
    assert _scaling(c, "recsys-prod") == before  # the serving variant's own settings, not the new


def test_removing_auto_scaling_takes_its_policies_too(moto_aws, out_with_archives):
    """AWS drops a target's policies with it; the control plane does so itself (moto does not),
    so a restore puts back exactly what was there."""
    c = clients()
    plane = ControlPlane(c, poll_s=0)
    plane.deploy(deployment(out_with_archives, c, "recsys-prod", ("3",),
                            autoscaling=AutoScaling(1, 3, 150.0)))
    plane.remove_autoscaling("recsys-prod", ["v3"])
    assert _scaling(c, "recsys-prod") == {"targets": [], "policies": []}
    assert c.autoscaling.describe_scalable_targets(
        ServiceNamespace="sagemaker", ScalableDimension=SCALABLE_DIMENSION)["ScalableTargets"] == []


def test_untagged_configs_of_older_releases_are_matched_by_the_exact_name(moto_aws, out_with_archives):
    """Configs made before the ``recsys:endpoint`` tag: ``recsys-<ms>`` is recsys's, while
    ``recsys-canary-<ms>`` and ``recsys-2-<ms>`` are not, whatever their names contain."""
    c = clients()
    plane = ControlPlane(c, poll_s=0)
    plane.deploy(deployment(out_with_archives, c, "recsys", ("3",)))
    model = resources(c, "recsys")["models"][0]
    for name in ("recsys-1700000000000", "recsys-canary-1700000000000", "recsys-2-1700000000000"):
        c.sagemaker.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
            "VariantName": "v3", "ModelName": model, "InitialInstanceCount": 1,
            "InstanceType": "ml.m5.large", "InitialVariantWeight": 1.0}])
    deleted = plane.delete("recsys", keep_models=True)
    assert "endpoint config recsys-1700000000000" in deleted
    assert sorted(x["EndpointConfigName"] for x in c.sagemaker.list_endpoint_configs()["EndpointConfigs"]) \
        == ["recsys-2-1700000000000", "recsys-canary-1700000000000"]


def test_a_restore_that_fails_does_not_hide_the_update_failure(moto_aws, out_with_archives, caplog):
    c = clients()
    plane = ControlPlane(c, poll_s=0)
    plane.deploy(deployment(out_with_archives, c, "recsys-prod", ("3",), autoscaling=AutoScaling(1, 3)))
    _answer_update_endpoint(c, 400, {"Error": {"Code": "ResourceLimitExceeded", "Message": "no"},
                                     "ResponseMetadata": {"HTTPStatusCode": 400}})

    def refuse(**_):
        return AWSResponse("https://autoscaling.invalid/", 400, {}, None), {
            "Error": {"Code": "AccessDeniedException", "Message": "not allowed"},
            "ResponseMetadata": {"HTTPStatusCode": 400}}
    c.autoscaling.meta.events.register(
        "before-call.application-auto-scaling.RegisterScalableTarget", refuse)
    with pytest.raises(DeployError, match="update endpoint recsys-prod .*quota"):
        plane.deploy(deployment(out_with_archives, c, "recsys-prod", ("3", "4")))
    assert "could not restore auto scaling of recsys-prod variant v3" in caplog.text


def test_a_model_tagged_for_another_endpoint_or_gone_is_not_deleted(moto_aws, out_with_archives):
    """Models come from the endpoint's configs, but one tagged with another endpoint stays, and
    one already deleted is skipped instead of failing the delete half-way."""
    c = clients()
    plane = ControlPlane(c, poll_s=0)
    for name, version in (("recsys", "3"), ("recsys-canary", "4")):
        plane.deploy(deployment(out_with_archives, c, name, (version,)))
    canary_model = resources(c, "recsys-canary")["models"][0]
    c.sagemaker.create_model(ModelName="gone", ExecutionRoleArn=ROLE,
                             PrimaryContainer={"Image": IMAGE})
    for config, model in (("recsys-1700000000000", canary_model), ("recsys-1600000000000", "gone")):
        c.sagemaker.create_endpoint_config(EndpointConfigName=config, ProductionVariants=[{
            "VariantName": "v9", "ModelName": model, "InitialInstanceCount": 1,
            "InstanceType": "ml.m5.large", "InitialVariantWeight": 1.0}])
    c.sagemaker.delete_model(ModelName="gone")
    deleted = plane.delete("recsys")
    assert "endpoint config recsys-1700000000000" in deleted and "model gone" not in deleted
    c.sagemaker.describe_model(ModelName=canary_model)
    assert resources(c, "recsys-canary")["models"] == [canary_model]
