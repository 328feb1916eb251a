"""What moto cannot play: UpdateEndpoint (moto 5.2 does not implement it) and AWS failures
(throttling, a role SageMaker cannot assume, an endpoint that ends Failed, an update that
SageMaker rolls back), with botocore's Stubber answering exactly as the AWS API does."""
from __future__ import annotations

import datetime as dt

import boto3
import pytest
from botocore.stub import ANY, Stubber

from recsys_sagemaker import control
from recsys_sagemaker.config import AutoScaling, Deployment, Variant
from recsys_sagemaker.control import Clients, ControlPlane, DeployError

from tests.sagemaker.conftest import IMAGE, REGION, ROLE

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
ARN = "arn:aws:sagemaker:us-east-1:123456789012"
NEW_CONFIG = "recsys-prod-1790000000000"
OLD_CONFIG = "recsys-prod-1780000000000"


@pytest.fixture
def stubbed(aws_env, monkeypatch):
    monkeypatch.setattr(control.time, "time", lambda: 1790000000.0)  # the new config's name
    s = boto3.session.Session(region_name=REGION)
    c = Clients(s.client("sagemaker"), s.client("application-autoscaling"), s.client("s3"))
    with Stubber(c.sagemaker) as sm, Stubber(c.autoscaling) as aas:
        yield c, sm, aas
        sm.assert_no_pending_responses()
        aas.assert_no_pending_responses()


def dep(*variants: tuple[str, float], autoscaling=None) -> Deployment:
    return Deployment("recsys-prod", ROLE, IMAGE,
                      tuple(Variant(v, w, model_data=f"s3://b/recsys-prod/v{v}/model.tar.gz")
                            for v, w in variants), autoscaling=autoscaling)


def endpoint(status, config, variants=(("v3", 1.0),), reason=None) -> dict:
    d = {"EndpointName": "recsys-prod", "EndpointArn": f"{ARN}:endpoint/recsys-prod",
         "EndpointConfigName": config, "EndpointStatus": status, "CreationTime": NOW,
         "LastModifiedTime": NOW,
         "ProductionVariants": [{"VariantName": n, "CurrentWeight": w, "DesiredWeight": w,
                                 "CurrentInstanceCount": 1} for n, w in variants]}
    if reason:
        d["FailureReason"] = reason
    return d


def model_exists(sm, version):
    name = control.model_name("recsys-prod", IMAGE, dep((version, 1)).variants[0], ROLE)
    sm.add_response("describe_model", {"ModelName": name, "ModelArn": f"{ARN}:model/{name}",
                                       "CreationTime": NOW, "ExecutionRoleArn": ROLE},
                    {"ModelName": name})
    return name


def no_scaling(aas, variant):
    aas.add_response("describe_scalable_targets", {"ScalableTargets": []},
                     {"ServiceNamespace": "sagemaker",
                      "ResourceIds": [f"endpoint/recsys-prod/variant/{variant}"],
                      "ScalableDimension": control.SCALABLE_DIMENSION})


def test_update_endpoint_adds_a_canary_variant(stubbed):
    c, sm, aas = stubbed
    m3, m4 = model_exists(sm, "3"), model_exists(sm, "4")
    sm.add_response("create_endpoint_config", {"EndpointConfigArn": f"{ARN}:endpoint-config/x"},
                    {"EndpointConfigName": NEW_CONFIG, "Tags": ANY, "ProductionVariants": [
                        {"VariantName": "v3", "ModelName": m3, "InitialInstanceCount": 1,
                         "InstanceType": "ml.m5.large", "InitialVariantWeight": 0.9},
                        {"VariantName": "v4", "ModelName": m4, "InitialInstanceCount": 1,
                         "InstanceType": "ml.m5.large", "InitialVariantWeight": 0.1}]})
    sm.add_response("describe_endpoint", endpoint("InService", OLD_CONFIG), {"EndpointName": "recsys-prod"})
    # the old variant had auto scaling: it is removed before the variants change, added after
    aas.add_response("describe_scalable_targets", {"ScalableTargets": [{
        "ServiceNamespace": "sagemaker", "ResourceId": "endpoint/recsys-prod/variant/v3",
        "ScalableDimension": control.SCALABLE_DIMENSION, "MinCapacity": 1, "MaxCapacity": 2,
        "RoleARN": ROLE, "CreationTime": NOW}]}, None)
    aas.add_response("describe_scaling_policies", {"ScalingPolicies": [{
        "PolicyARN": "arn:aws:autoscaling:v3", "PolicyName": "recsys-prod-v3-invocations",
        "ServiceNamespace": "sagemaker", "ResourceId": "endpoint/recsys-prod/variant/v3",
        "ScalableDimension": control.SCALABLE_DIMENSION, "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {"TargetValue": 200.0},
        "CreationTime": NOW}]}, None)
    aas.add_response("delete_scaling_policy", {}, {
        "PolicyName": "recsys-prod-v3-invocations", "ServiceNamespace": "sagemaker",
        "ResourceId": "endpoint/recsys-prod/variant/v3", "ScalableDimension": control.SCALABLE_DIMENSION})
    aas.add_response("deregister_scalable_target", {}, {
        "ServiceNamespace": "sagemaker", "ResourceId": "endpoint/recsys-prod/variant/v3",
        "ScalableDimension": control.SCALABLE_DIMENSION})
    sm.add_response("update_endpoint", {"EndpointArn": f"{ARN}:endpoint/recsys-prod"},
                    {"EndpointName": "recsys-prod", "EndpointConfigName": NEW_CONFIG,
                     "RetainAllVariantProperties": False})
    sm.add_response("describe_endpoint", endpoint("Updating", OLD_CONFIG), {"EndpointName": "recsys-prod"})
    sm.add_response("describe_endpoint", endpoint("InService", NEW_CONFIG, (("v3", 0.9), ("v4", 0.1))),
                    {"EndpointName": "recsys-prod"})
    for v in ("v3", "v4"):
        aas.add_response("register_scalable_target", {}, None)
        aas.add_response("put_scaling_policy", {"PolicyARN": f"arn:aws:autoscaling:{v}"}, None)
    d = ControlPlane(c, poll_s=0).deploy(dep(("3", 0.9), ("4", 0.1), autoscaling=AutoScaling(1, 2)))
    assert d["EndpointConfigName"] == NEW_CONFIG and len(d["ProductionVariants"]) == 2


def test_failed_update_is_reported_and_the_endpoint_keeps_its_previous_config(stubbed):
    c, sm, aas = stubbed
    model_exists(sm, "4")
    sm.add_response("create_endpoint_config", {"EndpointConfigArn": f"{ARN}:endpoint-config/x"}, None)
    sm.add_response("describe_endpoint", endpoint("InService", OLD_CONFIG), {"EndpointName": "recsys-prod"})
    no_scaling(aas, "v3")
    sm.add_response("update_endpoint", {"EndpointArn": f"{ARN}:endpoint/recsys-prod"}, None)
    sm.add_response("describe_endpoint", endpoint("Updating", OLD_CONFIG), {"EndpointName": "recsys-prod"})
    sm.add_response("describe_endpoint", endpoint(
        "InService", OLD_CONFIG, reason="The primary container for production variant v4 did not "
                                        "pass the ping health check."), {"EndpointName": "recsys-prod"})
    with pytest.raises(DeployError) as e:
        ControlPlane(c, poll_s=0).deploy(dep(("4", 1.0)))
    msg = str(e.value)
    assert f"update of recsys-prod to {NEW_CONFIG} failed" in msg
    assert "ping health check" in msg and f"still serves {OLD_CONFIG}" in msg


def test_endpoint_stuck_failed_names_the_reason_and_the_logs(stubbed):
    c, sm, _ = stubbed
    model_exists(sm, "3")
    sm.add_response("create_endpoint_config", {"EndpointConfigArn": f"{ARN}:endpoint-config/x"}, None)
    sm.add_client_error("describe_endpoint", "ValidationException",
                        'Could not find endpoint "recsys-prod".', 400)
    sm.add_response("create_endpoint", {"EndpointArn": f"{ARN}:endpoint/recsys-prod"}, None)
    sm.add_response("describe_endpoint", endpoint("Creating", NEW_CONFIG), None)
    sm.add_response("describe_endpoint", endpoint(
        "Failed", NEW_CONFIG, reason="Image size 12 GB is greater than supported size 10 GB"), None)
    with pytest.raises(DeployError) as e:
        ControlPlane(c, poll_s=0).deploy(dep(("3", 1.0)))
    assert "is Failed: Image size 12 GB" in str(e.value)
    assert "/aws/sagemaker/Endpoints/recsys-prod" in str(e.value)


def test_throttling_gets_a_clear_message(stubbed):
    c, sm, _ = stubbed
    sm.add_client_error("describe_model", "ValidationException", "Could not find model x.", 400)
    sm.add_client_error("create_model", "ThrottlingException", "Rate exceeded", 400)
    with pytest.raises(DeployError, match=r"create model .*throttled the request \(ThrottlingException\)"):
        ControlPlane(c, poll_s=0).deploy(dep(("3", 1.0)))


def test_a_role_sagemaker_cannot_assume(stubbed):
    c, sm, _ = stubbed
    sm.add_client_error("describe_model", "ValidationException", "Could not find model x.", 400)
    sm.add_client_error("create_model", "ValidationException",
                        f"Could not assume role {ROLE}. Please ensure that the role exists and "
                        "allows principal 'sagemaker.amazonaws.com' to assume the role.", 400)
    with pytest.raises(DeployError) as e:
        ControlPlane(c, poll_s=0).deploy(dep(("3", 1.0)))
    assert "cannot use the execution role" in str(e.value)
    assert "trust sagemaker.amazonaws.com" in str(e.value)


def test_an_update_refused_up_front_says_what_still_serves(stubbed):
    c, sm, aas = stubbed
    model_exists(sm, "3")
    sm.add_response("create_endpoint_config", {"EndpointConfigArn": f"{ARN}:endpoint-config/x"}, None)
    sm.add_response("describe_endpoint", endpoint("InService", OLD_CONFIG), None)
    no_scaling(aas, "v3")
    sm.add_client_error("update_endpoint", "ResourceLimitExceeded",
                        "The account-level service limit 'ml.m5.large for endpoint usage' is 2 "
                        "Instances", 400)
    with pytest.raises(DeployError) as e:
        ControlPlane(c, poll_s=0).deploy(dep(("3", 1.0)))
    assert f"it still serves {OLD_CONFIG}" in str(e.value) and "quota" in str(e.value)


def test_a_refused_weight_shift_leaves_the_weights(stubbed):
    c, sm, _ = stubbed
    sm.add_response("describe_endpoint", endpoint("InService", OLD_CONFIG, (("v3", 0.9), ("v4", 0.1))), None)
    sm.add_client_error("update_endpoint_weights_and_capacities", "ValidationException",
                        "Cannot update in-progress endpoint", 400)
    with pytest.raises(DeployError) as e:
        ControlPlane(c, poll_s=0).shift("recsys-prod", {"v4": 0.5})
    assert "weights unchanged: {'v3': 0.9, 'v4': 0.1}" in str(e.value)
    assert "in-progress" in str(e.value)


def test_updating_an_endpoint_that_is_busy_is_refused(stubbed):
    c, sm, _ = stubbed
    model_exists(sm, "3")
    sm.add_response("create_endpoint_config", {"EndpointConfigArn": f"{ARN}:endpoint-config/x"}, None)
    sm.add_response("describe_endpoint", endpoint("Updating", OLD_CONFIG), None)
    with pytest.raises(DeployError, match="is Updating; wait until it is InService"):
        ControlPlane(c, poll_s=0).deploy(dep(("3", 1.0)))
