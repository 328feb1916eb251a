"""Bad values are refused before anything reaches a cluster, with a message that names the
value: by values.schema.json (types, unknown keys, formats) or by the chart's own checks
(what a schema cannot say: cross references, file names, time budgets)."""
from __future__ import annotations

import helm_python
import pytest

from core.validation import MAX_BODY_BYTES
from tests.helm.chart import SHA_A, chart, merge, model, render, version_set_a

SCHEMA_CASES = {
    "unknown top-level key": ({"replicas": 3}, "additional properties 'replicas'"),
    "unknown nested key": ({"torchserve": {"replicas": 2}}, "/torchserve': additional properties 'replicas'"),
    "typo in a probe": ({"torchserve": {"readinessProbe": {"period": 5}}}, "/torchserve/readinessProbe"),
    "replicas as a string": ({"torchserve": {"replicaCount": "2"}}, "/torchserve/replicaCount': got string, want integer"),
    "version as a number": ({"models": [{"version": 4, "uri": "s3://mm/recsys-v4.mar", "sha256": SHA_A}]},
                            "/models/0/version': got number, want string"),
    "short sha256": ({"models": [{"version": "4", "uri": "s3://mm/recsys-v4.mar", "sha256": "abc"}]},
                     "/models/0/sha256"),
    "not an s3 uri": ({"models": [{"version": "4", "uri": "https://x/recsys-v4.mar", "sha256": SHA_A}]},
                      "/models/0/uri"),
    "s3 without sha256": ({"models": [{"version": "4", "uri": "s3://mm/recsys-v4.mar"}]},
                          "missing property 'sha256'"),
    "no models": ({"models": []}, "/models': minItems"),
    "negative weight": ({"experiment": {"variants": [{"name": "c", "model_version": "1", "weight": -5}]}},
                        "/experiment/variants/0/weight': minimum"),
    "unknown variant key": ({"experiment": {"variants": [{"name": "c", "model_version": "1", "weight": 1,
                                                          "traffic": 5}]}}, "additional properties 'traffic'"),
    "unknown store": ({"modelStore": {"source": "gcs"}}, "/modelStore/source': value must be one of"),
    "workers as words": ({"torchserve": {"workersPerVersion": "many"}}, "/torchserve/workersPerVersion"),
    "port out of range": ({"gateway": {"ports": {"api": 70000}}}, "/gateway/ports/api': maximum"),
    "key right unknown": ({"gateway": {"auth": {"existingSecret": "", "keyHashes": [
        {"id": "x", "sha256": SHA_A, "rights": ["root"]}]}}}, "/gateway/auth/keyHashes/0/rights/0"),
    "a key instead of a hash": ({"gateway": {"auth": {"existingSecret": "", "keyHashes": [
        {"id": "x", "sha256": "my-secret-key", "rights": ["recommend"]}]}}}, "/gateway/auth/keyHashes/0/sha256"),
    "bool as string": ({"monitoring": {"enabled": "yes"}}, "/monitoring/enabled': got string, want boolean"),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_schema_refuses_with_a_message(case):
    values, message = SCHEMA_CASES[case]
    with pytest.raises(helm_python.HelmValuesError) as e:
        chart().validate_schema(values)
    assert message in str(e.value), str(e.value)
    with pytest.raises(helm_python.HelmError):  # an install/upgrade renders: refused there too
        render(values)


def test_defaults_and_examples_pass_the_schema():
    chart().validate_schema({})
    chart().validate_schema(version_set_a())


def _variants(*pairs):
    return [{"name": n, "model_version": v, "weight": w} for n, v, w in pairs]


TEMPLATE_CASES = {
    "version listed twice": ({"models": [model("3"), model("3")]}, "version \"3\" is listed twice"),
    "archive name is not <model>-v<version>.mar": (
        {"models": [{"version": "3", "uri": "s3://mm/archives/latest.mar", "sha256": SHA_A}]},
        "s3://mm/archives/latest.mar must name the archive recsys-v3.mar"),
    "variant routes to an unlisted version": (
        {"experiment": {"variants": _variants(("control", "3", 9000), ("treatment", "9", 1000))}},
        "experiment.variants[1] (treatment): model_version 9 is not in models (listed: 3)"),
    "control is not a variant": ({"experiment": {"control": "baseline"}},
                                 "experiment.control \"baseline\" is not one of the variants"),
    "variant name twice": ({"experiment": {"variants": _variants(("control", "3", 1), ("control", "3", 1))}},
                           "variant name \"control\" is used twice"),
    "volume store without a volume": ({"modelStore": {"source": "volume"}},
                                      "modelStore.source is volume but modelStore.volume is empty"),
    "no gateway keys": ({"gateway": {"auth": {"existingSecret": ""}}}, "gateway.auth: set existingSecret"),
    "both key sources": ({"gateway": {"auth": {"keyHashes": [{"id": "a", "sha256": SHA_A,
                                                              "rights": ["recommend"]}]}}},
                         "set existingSecret or keyHashes, not both"),
    "grace period shorter than the drain": (
        {"torchserve": {"terminationGracePeriodSeconds": 20}},
        "torchserve.terminationGracePeriodSeconds 20 is shorter than"),
    "a property the chart owns": ({"torchserve": {"extraProperties": {"disable_token_authorization": "false"}}},
                                  "torchserve.extraProperties.disable_token_authorization is set by the chart"),
    "request size not above the handler's": ({"torchserve": {"maxRequestSize": 65536}},
                                         f"torchserve.maxRequestSize must be above {MAX_BODY_BYTES}"),
}


@pytest.mark.parametrize("case", sorted(TEMPLATE_CASES))
def test_chart_checks_refuse_with_a_message(case):
    values, message = TEMPLATE_CASES[case]
    with pytest.raises(helm_python.HelmRenderError) as e:
        render(merge(version_set_a(), values))
    assert message in str(e.value), str(e.value)
