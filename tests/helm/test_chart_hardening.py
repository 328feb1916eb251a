"""Issue 18, defect 10: what the chart must refuse or render so that a release stays what it
claims to be. The pseudonym secret survives every render path or the render fails, TorchServe's
model API fetches only from allowed URLs, images can be pinned by digest, and the chart's own
checks report every problem of a values file at once."""
from __future__ import annotations

import helm_python
import pytest

from core.validation import MAX_BODY_BYTES
from tests.helm.chart import NAMESPACE, RELEASE, SHA_A, chart, merge, render, version_set_a
from tests.helm.chart import Rendered

KEY_HASHES = [{"id": "client", "sha256": SHA_A, "rights": ["recommend", "events"]}]
CHART_MADE_KEYS = {"gateway": {"auth": {"existingSecret": "", "keyHashes": KEY_HASHES}}}
DIGEST = "sha256:" + "0123456789abcdef" * 4


def render_upgrade(values: dict) -> Rendered:
    """A render as `helm upgrade` would make it with no cluster to read (`helm template
    --is-upgrade`, `--dry-run`, a GitOps renderer): `lookup` answers nothing."""
    return Rendered(chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=False,
                                   is_upgrade=True))


# --- the pseudonym secret -------------------------------------------------------------------------

def test_an_upgrade_that_cannot_read_the_pseudonym_secret_fails():
    with pytest.raises(helm_python.HelmRenderError) as e:
        render_upgrade(CHART_MADE_KEYS)
    message = str(e.value)
    assert f"cannot read the Secret {NAMESPACE}/{RELEASE}-gateway-keys" in message, message
    assert "gateway.auth.existingSecret" in message and "--dry-run=server" in message


def test_the_install_makes_the_pseudonym_secret_once():
    """An install (nothing to keep yet) makes it; the Secret outlives the release."""
    secret = render(CHART_MADE_KEYS).get("Secret", f"{RELEASE}-gateway-keys")
    assert len(secret["data"]["pseudonym_secret"]) >= 64
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


@pytest.mark.parametrize("upgrade", [False, True])
def test_existing_secret_renders_nothing_random(upgrade):
    values = {"gateway": {"auth": {"existingSecret": "team-gateway-keys"}}}
    r = render_upgrade(values) if upgrade else render(values)
    assert "Secret" not in r.kinds()
    spec = r.deployment("gateway")["spec"]["template"]["spec"]
    keys = next(v for v in spec["volumes"] if v["name"] == "keys")
    assert keys["secret"]["secretName"] == "team-gateway-keys"
    assert {i["key"] for i in keys["secret"]["items"]} == {"keys.json", "pseudonym_secret"}
    # and two renders are identical: nothing random anywhere
    again = render_upgrade(values) if upgrade else render(values)
    assert again.files == r.files


# --- TorchServe's allowed_urls ---------------------------------------------------------------------

MODEL_VOLUME = "file:///models/[A-Za-z0-9_-][A-Za-z0-9_.-]*[.]mar"


@pytest.mark.parametrize("model_api", [True, False])
def test_allowed_urls_are_restricted_to_the_model_volume(model_api):
    props = render({"torchserve": {"enableModelApi": model_api}}).config_properties()
    assert props["enable_model_api"] == str(model_api).lower()
    assert props["allowed_urls"] == MODEL_VOLUME


def test_allowed_urls_add_the_configured_patterns_escaped_for_properties():
    props = render({"torchserve": {"enableModelApi": True, "allowedUrls": [
        r"https://models\.example\.com/recsys/.*"]}}).config_properties()
    # Java's Properties.load turns `\\.` back into `\.`
    assert props["allowed_urls"] == MODEL_VOLUME + r",https://models\\.example\\.com/recsys/.*"


@pytest.mark.parametrize("key", ["allowed_urls", "enable_model_api"])
def test_allowed_urls_are_the_charts_own(key):
    with pytest.raises(helm_python.HelmRenderError, match=f"torchserve.extraProperties.{key} is set by the chart"):
        render({"torchserve": {"extraProperties": {key: "true"}}})
    with pytest.raises(helm_python.HelmValuesError, match="allowedUrls/0"):
        chart().validate_schema({"torchserve": {"allowedUrls": ["a,b"]}})  # comma: the list separator


# --- image.digest ----------------------------------------------------------------------------------

def _images(r: Rendered) -> list[str]:
    out = []
    for component in ("torchserve", "gateway"):
        spec = r.deployment(component)["spec"]["template"]["spec"]
        out += [c["image"] for c in spec.get("initContainers", []) + spec["containers"]]
    return out


def test_image_digest_pins_every_pod():
    r = render(merge(version_set_a(), {"image": {"repository": "1111.dkr.ecr.eu-west-1.amazonaws.com/recsys",
                                                 "digest": DIGEST},
                                       "retraining": {"enabled": True, "image": {"digest": DIGEST}}}))
    images = _images(r)
    assert len(images) == 3  # fetch-models, torchserve, gateway
    assert set(images) == {f"1111.dkr.ecr.eu-west-1.amazonaws.com/recsys@{DIGEST}"}
    job = r.get("CronJob", f"{RELEASE}-retraining")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert job["containers"][0]["image"] == f"1111.dkr.ecr.eu-west-1.amazonaws.com/recsys@{DIGEST}"
    # without a digest: repository:tag, as before
    r = render({"retraining": {"enabled": True}})
    assert set(_images(r)) == {"localhost/recsys:latest"}
    job = r.get("CronJob", f"{RELEASE}-retraining")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert job["containers"][0]["image"] == "localhost/recsys:training"


@pytest.mark.parametrize("digest", ["sha256:abc", "latest", "sha512:" + "0" * 128, DIGEST.upper(),
                                    "recsys@" + DIGEST])
def test_image_digest_format_is_checked(digest):
    for values, where in (({"image": {"digest": digest}}, "'/image/digest': "),
                          ({"retraining": {"image": {"digest": digest}}}, "'/retraining/image/digest': ")):
        with pytest.raises(helm_python.HelmValuesError) as e:
            chart().validate_schema(values)
        assert f"at {where}" in str(e.value) and "does not match pattern" in str(e.value), str(e.value)
    chart().validate_schema({"image": {"digest": DIGEST}, "retraining": {"image": {"digest": DIGEST}}})


# --- recsys.validate reports every problem ---------------------------------------------------------

def test_every_problem_is_reported_at_once():
    values = merge(version_set_a(), {
        "experiment": {"variants": [{"name": "control", "model_version": "3", "weight": 1},
                                    {"name": "control", "model_version": "9", "weight": 1}]},
        "torchserve": {"terminationGracePeriodSeconds": 20, "maxRequestSize": 65536},
        "gateway": {"logs": {"ephemeral": False}},
    })
    with pytest.raises(helm_python.HelmRenderError) as e:
        render(values)
    message = str(e.value)
    expected = ['variant name "control" is used twice',
                "experiment.variants[1] (control): model_version 9 is not in models",
                "torchserve.terminationGracePeriodSeconds 20 is shorter than",
                f"torchserve.maxRequestSize must be above {MAX_BODY_BYTES}",
                "gateway.logs.ephemeral is false but gateway.logs.shipping.enabled is false"]
    missing = [m for m in expected if m not in message]
    assert not missing, (missing, message)
    assert f"{len(expected)} problem(s) in the values" in message
