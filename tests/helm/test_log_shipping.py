"""Issue 18, defect 4, the chart's half: the gateway's exposure and event logs are shipped to S3
(IRSA), or the values say explicitly that they are ephemeral; the gateway gets its log settings
and its shutdown bound from the values; the local retention cap fits in the volume."""
from __future__ import annotations

import helm_python
import pytest

from tests.helm.chart import RELEASE, chart, merge, render

ROLE = "arn:aws:iam::111122223333:role/recsys-gateway-logs"
SHIPPING = {"gateway": {"logs": {"shipping": {"enabled": True, "s3Uri": "s3://ab-logs/recsys/prod",
                                              "region": "eu-west-1", "roleArn": ROLE}}}}
WARNING = "THE A/B DATA IS EPHEMERAL"


def _env(r) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in r.container("gateway")["env"]}


def _sa(r, component: str) -> str:
    return r.deployment(component)["spec"]["template"]["spec"]["serviceAccountName"]


def test_default_install_is_ephemeral_said_loudly():
    r = render()
    env = _env(r)
    assert "GATEWAY_LOG_SHIP_URI" not in env and "AWS_REGION" not in env
    assert int(env["GATEWAY_LOG_RETAIN_BYTES"]) == 1536 * 2**20
    assert float(env["GATEWAY_LOG_FSYNC_S"]) == 1.0
    assert WARNING in r.notes and "DIE WITH THE POD" in r.notes
    assert "gateway.logs.shipping.enabled=true" in r.notes
    assert _sa(r, "gateway") == _sa(r, "torchserve") == RELEASE


def test_shipping_sets_the_gateways_environment_and_its_own_irsa_identity():
    r = render(merge(SHIPPING, {"gateway": {"logs": {"retainBytes": 512 * 2**20, "fsyncSeconds": 0}}}))
    env = _env(r)
    assert env["GATEWAY_LOG_SHIP_URI"] == "s3://ab-logs/recsys/prod"
    assert env["AWS_REGION"] == "eu-west-1"
    assert env["GATEWAY_LOG_RETAIN_BYTES"] == str(512 * 2**20)
    assert float(env["GATEWAY_LOG_FSYNC_S"]) == 0.0
    # only the gateway may write the logs' bucket: its own ServiceAccount carries the role
    gw_sa = r.get("ServiceAccount", f"{RELEASE}-gateway")
    assert gw_sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": ROLE}
    assert gw_sa["automountServiceAccountToken"] is False
    assert _sa(r, "gateway") == f"{RELEASE}-gateway"
    assert _sa(r, "torchserve") == RELEASE
    assert "annotations" not in r.get("ServiceAccount", RELEASE)["metadata"]
    assert WARNING not in r.notes and "s3://ab-logs/recsys/prod" in r.notes
    text = "\n".join(r.files.values())
    assert "AWS_SECRET_ACCESS_KEY" not in text and "AWS_ACCESS_KEY_ID" not in text


def test_shipping_without_a_role_uses_the_shared_service_account():
    values = merge(SHIPPING, {"gateway": {"logs": {"shipping": {"roleArn": ""}}},
                              "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": ROLE}}})
    r = render(values)
    assert ("ServiceAccount", f"{RELEASE}-gateway") not in r.objs
    assert _sa(r, "gateway") == RELEASE
    assert r.get("ServiceAccount", RELEASE)["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == ROLE


@pytest.mark.parametrize("grace,pre_stop,want", [(30, 5, 22), (60, 10, 47), (20, 5, 12)])
def test_shutdown_grace_fits_inside_the_termination_grace_period(grace, pre_stop, want):
    r = render({"gateway": {"terminationGracePeriodSeconds": grace, "preStopSleepSeconds": pre_stop}})
    bound = float(_env(r)["GATEWAY_SHUTDOWN_GRACE_S"])
    spec = r.deployment("gateway")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == grace
    # the grace period counts from preStop: the gateway must be done before the kubelet's SIGKILL
    assert bound == want and 0 < bound <= grace - pre_stop - 3


REFUSED = {
    "not ephemeral, not shipped": (
        {"gateway": {"logs": {"ephemeral": False}}},
        "gateway.logs.ephemeral is false but gateway.logs.shipping.enabled is false"),
    "shipping without a destination": (
        {"gateway": {"logs": {"shipping": {"enabled": True}}}},
        "gateway.logs.shipping.enabled is true but gateway.logs.shipping.s3Uri is empty"),
    "retention as large as the volume": (
        {"gateway": {"logs": {"retainBytes": 2 * 2**30}}},
        "gateway.logs.retainBytes 2147483648 + 256Mi"),
    "volume too small for the retention": (
        {"gateway": {"logs": {"volume": {"emptyDir": {"sizeLimit": "1700Mi"}}}}},
        "exceeds gateway.logs.volume.emptyDir.sizeLimit 1700Mi (1782579200 bytes)"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_incoherent_log_values_fail_the_render(case):
    values, message = REFUSED[case]
    with pytest.raises(helm_python.HelmRenderError) as e:
        render(values)
    assert message in str(e.value), str(e.value)


def test_coherent_log_values_render():
    assert render({"gateway": {"logs": {"ephemeral": False, **SHIPPING["gateway"]["logs"]}}})
    # a decimal quantity and a bigger volume
    r = render({"gateway": {"logs": {"retainBytes": 4 * 10**9, "volume": {"emptyDir": {"sizeLimit": "5G"}}}}})
    assert _env(r)["GATEWAY_LOG_RETAIN_BYTES"] == str(4 * 10**9)
    # a claim instead of the emptyDir (given over the default, as a -f file would): no sizeLimit
    # to check, and the claim replaces the emptyDir
    r = render({"gateway": {"logs": {"retainBytes": 50 * 2**30, "volume": {
        "persistentVolumeClaim": {"claimName": "gateway-logs"}}}}})
    run = next(v for v in r.deployment("gateway")["spec"]["template"]["spec"]["volumes"] if v["name"] == "run")
    assert run == {"name": "run", "persistentVolumeClaim": {"claimName": "gateway-logs"}}
    assert "they stay on" in r.notes and "DIE WITH THE POD" not in r.notes


@pytest.mark.parametrize("values,message", [
    ({"shipping": {"enabled": True, "s3Uri": "https://ab-logs.s3.amazonaws.com/x"}},
     "'/gateway/logs/shipping/s3Uri': 'https://ab-logs.s3.amazonaws.com/x' does not match pattern"),
    ({"shipping": {"enabled": True, "s3Uri": "s3://AB_logs/x"}}, "'/gateway/logs/shipping/s3Uri': "),
    ({"shipping": {"enabled": True, "roleArn": "recsys-gateway"}}, "'/gateway/logs/shipping/roleArn': "),
    ({"shipping": {"enabled": True, "region": "Ireland"}}, "'/gateway/logs/shipping/region': "),
    ({"shipping": {"enabled": True, "bucket": "x"}},
     "'/gateway/logs/shipping': additional properties 'bucket' not allowed"),
    ({"fsyncSeconds": -1}, "'/gateway/logs/fsyncSeconds': minimum"),
    ({"retainBytes": 1000}, "'/gateway/logs/retainBytes': minimum"),
    ({"ephemeral": "yes"}, "'/gateway/logs/ephemeral': got string, want boolean"),
])
def test_schema_refuses_malformed_log_values(values, message):
    with pytest.raises(helm_python.HelmValuesError) as e:
        chart().validate_schema({"gateway": {"logs": values}})
    assert message in str(e.value), str(e.value)
