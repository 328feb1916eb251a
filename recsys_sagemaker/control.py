"""The SageMaker control plane through boto3 (the SDK v3 dropped Model/Predictor).

* one SageMaker Model per model version (``<endpoint>-v<version>-<digest>``: a re-deploy of the
  same archive and image reuses it, a different one gets a new Model);
* an endpoint config per deployment (immutable in SageMaker), one production variant per
  version, the first one control;
* create or update the endpoint and wait for it; a failed update is reported with SageMaker's
  reason, and SageMaker keeps the endpoint on its previous config (checked and said);
* weights: UpdateEndpointWeightsAndCapacities (canary shift, rollback) without a redeploy;
* optional data capture to S3, optional target tracking on invocations per instance; an update
  takes it off the old variants first (it names them) and, whatever the update's outcome, the
  variants that serve afterwards get theirs: the deployment's after a success, their own saved
  settings after a failure;
* delete: scaling targets, endpoint, its configs and Models, chosen by the ``recsys:endpoint``
  tag put on everything created here (untagged configs of older releases: by the exact name
  pattern ``<endpoint>-<milliseconds>``), never by a name prefix that another endpoint shares.

Every AWS error becomes a :class:`DeployError` with one sentence a person can act on.
"""
from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

from botocore.config import Config
from botocore.exceptions import ClientError, NoCredentialsError, WaiterError

from recsys_sagemaker.config import AutoScaling, Deployment, Variant, check_name

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8  # botocore's standard retry mode (throttling and transient errors)
RETRIES = Config(retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS})
THROTTLING = {"ThrottlingException", "Throttling", "TooManyRequestsException",
              "RequestLimitExceeded", "SlowDown"}
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
TAG_CONTROL = "recsys:control"
TAG_ENDPOINT = "recsys:endpoint"  # on every Model and endpoint config: whose it is, for delete
# keys of a described scaling policy that PutScalingPolicy takes back unchanged
POLICY_CONFIGS = ("TargetTrackingScalingPolicyConfiguration", "StepScalingPolicyConfiguration",
                  "PredictiveScalingPolicyConfiguration")


class DeployError(RuntimeError):
    """A control-plane step failed; the message says what to do."""


def explain(e: Exception, action: str) -> DeployError:
    """A clear message for an AWS failure during ``action``."""
    if isinstance(e, DeployError):
        return e
    if isinstance(e, NoCredentialsError):
        return DeployError(f"{action}: no AWS credentials (set AWS_PROFILE or the AWS_* variables)")
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        code, msg = err.get("Code", ""), err.get("Message", str(e))
        if code in THROTTLING:
            return DeployError(f"{action}: AWS throttled the request ({code}) even after "
                               f"{MAX_ATTEMPTS} attempts; retry in a minute, "
                               "or ask for a higher API quota")
        if "assume" in msg.lower() and "role" in msg.lower() or code == "AccessDeniedException" \
                and "role" in msg.lower():
            return DeployError(f"{action}: SageMaker cannot use the execution role ({msg}). The "
                               "role must exist, trust sagemaker.amazonaws.com, and allow reading "
                               "the model's S3 object and pulling the image from ECR")
        if code in ("AccessDeniedException", "AccessDenied", "UnauthorizedOperation"):
            return DeployError(f"{action}: access denied ({msg}); your identity needs the "
                               "sagemaker:* / s3 / application-autoscaling permissions used here")
        if code == "ResourceLimitExceeded":
            return DeployError(f"{action}: account quota reached ({msg}); ask for a higher "
                               "instance quota or use fewer / smaller instances")
        if code == "ValidationException" and "Could not find" in msg:
            return DeployError(f"{action}: {msg}")
        return DeployError(f"{action}: {code or type(e).__name__}: {msg}")
    if isinstance(e, WaiterError):
        return DeployError(f"{action}: {e}")
    return DeployError(f"{action}: {type(e).__name__}: {e}")


@dataclass
class Clients:
    sagemaker: Any
    autoscaling: Any
    s3: Any
    runtime: Any = None

    @classmethod
    def create(cls, region: str | None = None, session=None) -> "Clients":
        import boto3
        session = session or boto3.session.Session(region_name=region)
        return cls(sagemaker=session.client("sagemaker", config=RETRIES),
                   autoscaling=session.client("application-autoscaling", config=RETRIES),
                   s3=session.client("s3", config=RETRIES),
                   runtime=session.client("sagemaker-runtime", config=RETRIES))


def model_name(endpoint: str, image_uri: str, variant: Variant, role_arn: str) -> str:
    digest = hashlib.sha256(f"{image_uri}\n{variant.model_data}\n{role_arn}".encode()).hexdigest()[:8]
    return check_name("model", f"{endpoint}-{variant.name}-{digest}"[:63].rstrip("-"))


class ControlPlane:
    """The calls of one account and region (clients injectable: moto and Stubber in tests)."""

    def __init__(self, clients: Clients, *, poll_s: float = 15.0, timeout_s: float = 3600.0,
                 sleep: Callable[[float], None] = time.sleep):
        self.c = clients
        self.poll_s, self.timeout_s, self.sleep = poll_s, timeout_s, sleep

    # ---- models -----------------------------------------------------------------------------
    def ensure_model(self, dep: Deployment, v: Variant) -> str:
        """Create the SageMaker Model of one version (or reuse the identical one)."""
        name = model_name(dep.endpoint, dep.image_uri, v, dep.role_arn)
        try:
            self.c.sagemaker.describe_model(ModelName=name)
            log.info("model %s exists (same image, data and role)", name)
            return name
        except ClientError as e:
            if "Could not find" not in e.response.get("Error", {}).get("Message", "") and \
                    e.response.get("Error", {}).get("Code") not in ("ValidationException",):
                raise explain(e, f"describe model {name}") from e
        env = dict(dep.environment)
        try:
            self.c.sagemaker.create_model(
                ModelName=name, ExecutionRoleArn=dep.role_arn,
                PrimaryContainer={"Image": dep.image_uri, "ModelDataUrl": v.model_data,
                                  "Environment": env},
                Tags=[{"Key": "recsys:version", "Value": v.version},
                      {"Key": TAG_ENDPOINT, "Value": dep.endpoint},
                      *[{"Key": k, "Value": val} for k, val in dep.tags.items()]])
        except Exception as e:
            raise explain(e, f"create model {name} (version {v.version})") from e
        log.info("created model %s <- %s", name, v.model_data)
        return name

    # ---- endpoint config ----------------------------------------------------------------------
    def create_endpoint_config(self, dep: Deployment, models: dict[str, str]) -> str:
        name = check_name("endpoint config", f"{dep.endpoint}-{int(time.time() * 1000)}"[:63])
        variants = [{"VariantName": v.name, "ModelName": models[v.name],
                     "InitialInstanceCount": v.instance_count, "InstanceType": v.instance_type,
                     "InitialVariantWeight": float(v.weight)} for v in dep.variants]
        kw: dict[str, Any] = {"EndpointConfigName": name, "ProductionVariants": variants,
                              "Tags": [{"Key": TAG_CONTROL, "Value": dep.variants[0].name},
                                       {"Key": TAG_ENDPOINT, "Value": dep.endpoint}]}
        if dep.data_capture:
            kw["DataCaptureConfig"] = {
                "EnableCapture": True,
                "InitialSamplingPercentage": int(dep.data_capture.sampling_percent),
                "DestinationS3Uri": dep.data_capture.destination,
                "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}}
        try:
            self.c.sagemaker.create_endpoint_config(**kw)
        except Exception as e:
            raise explain(e, f"create endpoint config {name}") from e
        log.info("created endpoint config %s: %s", name,
                 ", ".join(f"{v.name} ({v.weight:g})" for v in dep.variants))
        return name

    # ---- endpoint -----------------------------------------------------------------------------
    def describe(self, endpoint: str) -> dict | None:
        try:
            return self.c.sagemaker.describe_endpoint(EndpointName=endpoint)
        except ClientError as e:
            if "Could not find" in e.response.get("Error", {}).get("Message", ""):
                return None
            raise explain(e, f"describe endpoint {endpoint}") from e

    def wait(self, endpoint: str, *, expect_config: str | None = None,
             previous_config: str | None = None) -> dict:
        """Until the endpoint leaves Creating/Updating/SystemUpdating. Raises when it is Failed,
        or when an update ended with the endpoint back on ``previous_config``."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            d = self.describe(endpoint)
            if d is None:
                raise DeployError(f"endpoint {endpoint} disappeared while waiting for it")
            status = d["EndpointStatus"]
            if status == "InService":
                if expect_config and d.get("EndpointConfigName") != expect_config:
                    raise DeployError(
                        f"the update of {endpoint} to {expect_config} failed: "
                        f"{d.get('FailureReason') or 'no reason given'}; SageMaker rolled it back "
                        f"and it still serves {d.get('EndpointConfigName')}")
                return d
            if status == "Failed":
                where = (f"; it still serves {previous_config}" if previous_config and
                         d.get("EndpointConfigName") == previous_config else "")
                raise DeployError(
                    f"endpoint {endpoint} is Failed: {d.get('FailureReason') or 'no reason given'}"
                    f"{where}. The container's logs are in CloudWatch, log group "
                    f"/aws/sagemaker/Endpoints/{endpoint}")
            if status in ("OutOfService", "Deleting"):
                raise DeployError(f"endpoint {endpoint} is {status}")
            if time.monotonic() > deadline:
                raise DeployError(f"endpoint {endpoint} still {status} after {self.timeout_s:.0f} s")
            log.info("endpoint %s: %s", endpoint, status)
            self.sleep(self.poll_s)

    def deploy(self, dep: Deployment, *, wait: bool = True) -> dict:
        """Models, a new endpoint config, then create the endpoint or update it to that config."""
        models = {v.name: self.ensure_model(dep, v) for v in dep.variants}
        config = self.create_endpoint_config(dep, models)
        current = self.describe(dep.endpoint)
        previous = current.get("EndpointConfigName") if current else None
        if current is None:
            try:
                self.c.sagemaker.create_endpoint(EndpointName=dep.endpoint, EndpointConfigName=config,
                                                 Tags=[{"Key": k, "Value": v} for k, v in dep.tags.items()])
            except Exception as e:
                raise explain(e, f"create endpoint {dep.endpoint}") from e
            log.info("creating endpoint %s with %s", dep.endpoint, config)
        else:
            if current["EndpointStatus"] not in ("InService", "Failed"):
                raise DeployError(f"endpoint {dep.endpoint} is {current['EndpointStatus']}; "
                                  "wait until it is InService before updating it")
            return self._update(dep, config, current, wait=wait)
        if not wait:
            return {"EndpointName": dep.endpoint, "EndpointConfigName": config}
        d = self.wait(dep.endpoint, expect_config=config, previous_config=previous)
        if dep.autoscaling:
            self.add_autoscaling(dep.endpoint, [v.name for v in dep.variants], dep.autoscaling)
        return d

    def _update(self, dep: Deployment, config: str, current: dict, *, wait: bool) -> dict:
        """UpdateEndpoint to ``config``. Scaling targets name variants, so they come off the old
        variants first; ``finally`` gives the variants that serve afterwards theirs back: on a
        failure (refused, rolled back) the old variants their own saved settings."""
        previous = current.get("EndpointConfigName")
        saved = self.scaling_of(dep.endpoint, [v["VariantName"] for v in
                                               current.get("ProductionVariants", [])])
        updated = False
        try:
            self.remove_saved_scaling(dep.endpoint, saved)
            try:
                self.c.sagemaker.update_endpoint(EndpointName=dep.endpoint, EndpointConfigName=config,
                                                 RetainAllVariantProperties=False)
            except Exception as e:
                raise explain(e, f"update endpoint {dep.endpoint} (it still serves {previous})") from e
            log.info("updating endpoint %s: %s -> %s", dep.endpoint, previous, config)
            if not wait:
                updated = True  # the outcome is unknown here: scaling is the caller's, see docs
                if saved or dep.autoscaling:
                    log.warning("endpoint %s is updating without waiting: auto scaling is off "
                                "until a deploy that waits", dep.endpoint)
                return {"EndpointName": dep.endpoint, "EndpointConfigName": config}
            d = self.wait(dep.endpoint, expect_config=config, previous_config=previous)
            updated = True
        finally:
            if not updated:
                self._restore_scaling(dep.endpoint, saved)
        if dep.autoscaling:
            self.add_autoscaling(dep.endpoint, [v.name for v in dep.variants], dep.autoscaling)
        return d

    def _restore_scaling(self, endpoint: str, saved: dict[str, "SavedScaling"]) -> None:
        """Put back the saved scaling of the variants that still serve after a failed update.
        Runs while that failure propagates, so its own errors are logged, never raised over it."""
        if not saved:
            return
        try:
            d = self.describe(endpoint)
            serving = {v["VariantName"] for v in (d or {}).get("ProductionVariants", [])}
        except DeployError as e:
            log.warning("%s; restoring the auto scaling of every old variant", e)
            serving = set(saved)
        for name in sorted(set(saved) & serving):
            try:
                self.apply_scaling(endpoint, name, saved[name])
                log.info("restored auto scaling of %s variant %s after the failed update",
                         endpoint, name)
            except DeployError as e:
                log.error("could not restore auto scaling of %s variant %s: %s; re-apply it "
                          "with a deploy", endpoint, name, e)

    # ---- weights ------------------------------------------------------------------------------
    def weights(self, endpoint: str) -> list[tuple[str, float]]:
        """(variant, current weight) in the endpoint's order (the first is control)."""
        d = self.describe(endpoint)
        if d is None:
            raise DeployError(f"endpoint {endpoint} does not exist")
        return [(v["VariantName"], float(v.get("CurrentWeight", v.get("DesiredWeight", 0))))
                for v in d.get("ProductionVariants", [])]

    def shift(self, endpoint: str, weights: dict[str, float], *, wait: bool = True) -> dict:
        """Set variant weights (canary, ramp, rollback); variants not named keep theirs."""
        current = dict(self.weights(endpoint))
        unknown = sorted(set(weights) - set(current))
        if unknown:
            raise DeployError(f"endpoint {endpoint} has no variant {unknown}; it has {sorted(current)}")
        new = {**current, **weights}
        if any(w < 0 for w in new.values()) or sum(new.values()) <= 0:
            raise DeployError(f"weights must be >= 0 and not all 0, got {new}")
        try:
            self.c.sagemaker.update_endpoint_weights_and_capacities(
                EndpointName=endpoint,
                DesiredWeightsAndCapacities=[{"VariantName": n, "DesiredWeight": float(w)}
                                             for n, w in weights.items()])
        except Exception as e:
            raise explain(e, f"shift weights of {endpoint} (weights unchanged: {current})") from e
        log.info("endpoint %s weights: %s -> %s", endpoint, current, new)
        return self.wait(endpoint) if wait else {"EndpointName": endpoint}

    def rollback(self, endpoint: str, to: str | None = None, *, wait: bool = True) -> dict:
        """All traffic to ``to`` (default: control, the first variant), the others weight 0."""
        names = [n for n, _ in self.weights(endpoint)]
        target = to or names[0]
        if target not in names:
            raise DeployError(f"endpoint {endpoint} has no variant {target!r}; it has {names}")
        return self.shift(endpoint, {n: (1.0 if n == target else 0.0) for n in names}, wait=wait)

    # ---- auto scaling -------------------------------------------------------------------------
    def add_autoscaling(self, endpoint: str, variants: list[str], cfg: AutoScaling) -> None:
        for name in variants:
            rid = f"endpoint/{endpoint}/variant/{name}"
            try:
                self.c.autoscaling.register_scalable_target(
                    ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=SCALABLE_DIMENSION,
                    MinCapacity=cfg.min_capacity, MaxCapacity=cfg.max_capacity)
                self.c.autoscaling.put_scaling_policy(
                    PolicyName=f"{endpoint}-{name}-invocations", ServiceNamespace="sagemaker",
                    ResourceId=rid, ScalableDimension=SCALABLE_DIMENSION,
                    PolicyType="TargetTrackingScaling",
                    TargetTrackingScalingPolicyConfiguration={
                        "TargetValue": float(cfg.invocations_per_instance),
                        "PredefinedMetricSpecification": {
                            "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                        "ScaleInCooldown": cfg.scale_in_cooldown_s,
                        "ScaleOutCooldown": cfg.scale_out_cooldown_s})
            except Exception as e:
                raise explain(e, f"auto scaling of {rid}") from e
            log.info("auto scaling %s: %d-%d instances, target %.0f invocations/instance/min",
                     rid, cfg.min_capacity, cfg.max_capacity, cfg.invocations_per_instance)

    def scaling_of(self, endpoint: str, variants: list[str]) -> dict[str, "SavedScaling"]:
        """The scaling target and policies of each variant that has one, as they are now."""
        out: dict[str, SavedScaling] = {}
        for name in variants:
            rid = f"endpoint/{endpoint}/variant/{name}"
            try:
                found = self.c.autoscaling.describe_scalable_targets(
                    ServiceNamespace="sagemaker", ResourceIds=[rid],
                    ScalableDimension=SCALABLE_DIMENSION)["ScalableTargets"]
                if not found:
                    continue
                policies = self.c.autoscaling.describe_scaling_policies(
                    ServiceNamespace="sagemaker", ResourceId=rid,
                    ScalableDimension=SCALABLE_DIMENSION)["ScalingPolicies"]
            except Exception as e:
                raise explain(e, f"read auto scaling of {rid}") from e
            t = found[0]
            out[name] = SavedScaling(
                target={k: t[k] for k in ("MinCapacity", "MaxCapacity", "SuspendedState") if k in t},
                policies=[{"PolicyName": p["PolicyName"], "PolicyType": p["PolicyType"],
                           **{k: p[k] for k in POLICY_CONFIGS if k in p}} for p in policies])
        return out

    def apply_scaling(self, endpoint: str, variant: str, saved: "SavedScaling") -> None:
        """Register a variant's target and put its policies, as :meth:`scaling_of` read them."""
        rid = f"endpoint/{endpoint}/variant/{variant}"
        where = {"ServiceNamespace": "sagemaker", "ResourceId": rid,
                 "ScalableDimension": SCALABLE_DIMENSION}
        try:
            self.c.autoscaling.register_scalable_target(**where, **saved.target)
            for p in saved.policies:
                self.c.autoscaling.put_scaling_policy(**where, **p)
        except Exception as e:
            raise explain(e, f"auto scaling of {rid}") from e

    def remove_autoscaling(self, endpoint: str, variants: list[str]) -> dict[str, "SavedScaling"]:
        """Take auto scaling off these variants; returns what it was (see :meth:`apply_scaling`)."""
        saved = self.scaling_of(endpoint, variants)
        self.remove_saved_scaling(endpoint, saved)
        return saved

    def remove_saved_scaling(self, endpoint: str, saved: dict[str, "SavedScaling"]) -> None:
        """Policies, then the target (AWS drops the policies with the target itself; deleting
        them first leaves nothing behind wherever that is not so)."""
        for name, scaling in saved.items():
            rid = f"endpoint/{endpoint}/variant/{name}"
            where = {"ServiceNamespace": "sagemaker", "ResourceId": rid,
                     "ScalableDimension": SCALABLE_DIMENSION}
            try:
                for policy in scaling.policies:
                    self.c.autoscaling.delete_scaling_policy(PolicyName=policy["PolicyName"], **where)
                self.c.autoscaling.deregister_scalable_target(**where)
            except Exception as e:
                raise explain(e, f"remove auto scaling of {rid}") from e
            log.info("removed auto scaling of %s", rid)

    # ---- delete -------------------------------------------------------------------------------
    def delete(self, endpoint: str, *, keep_models: bool = False) -> list[str]:
        """Scaling targets, the endpoint, every endpoint config and Model it used. Returns what
        was deleted."""
        d = self.describe(endpoint)
        if d is None:
            raise DeployError(f"endpoint {endpoint} does not exist")
        done: list[str] = []
        variants = [v["VariantName"] for v in d.get("ProductionVariants", [])]
        self.remove_autoscaling(endpoint, variants)
        sm = self.c.sagemaker
        configs = {d["EndpointConfigName"]} | self._configs_of(endpoint)
        models: set[str] = set()
        for name in sorted(configs):
            try:
                cfg = sm.describe_endpoint_config(EndpointConfigName=name)
                models |= {v["ModelName"] for v in cfg["ProductionVariants"]
                           if self._model_owner(v["ModelName"]) in (endpoint, None)}
            except ClientError:
                pass
        try:
            sm.delete_endpoint(EndpointName=endpoint)
            done.append(f"endpoint {endpoint}")
            for name in sorted(configs):
                sm.delete_endpoint_config(EndpointConfigName=name)
                done.append(f"endpoint config {name}")
            if not keep_models:
                for name in sorted(models):
                    sm.delete_model(ModelName=name)
                    done.append(f"model {name}")
        except Exception as e:
            raise explain(e, f"delete {endpoint} (done so far: {done})") from e
        return done

    def _configs_of(self, endpoint: str) -> set[str]:
        """The endpoint configs of ``endpoint``: tagged with it, or (untagged, from a release
        before the tag) named exactly ``<endpoint>-<milliseconds>``. ``recsys-canary-17...``
        contains ``recsys`` but is tagged ``recsys-canary`` and does not fit that pattern."""
        legacy = re.compile(rf"{re.escape(endpoint)}-[0-9]+")
        found: set[str] = set()
        try:
            for page in self.c.sagemaker.get_paginator("list_endpoint_configs").paginate(
                    NameContains=endpoint):
                for c in page["EndpointConfigs"]:
                    name = c["EndpointConfigName"]
                    owner = self._owner(c["EndpointConfigArn"])
                    if owner == endpoint or owner is None and legacy.fullmatch(name):
                        found.add(name)
        except Exception as e:
            raise explain(e, f"list endpoint configs of {endpoint}") from e
        return found

    def _owner(self, arn: str) -> str | None:
        """The ``recsys:endpoint`` tag of a resource, or None (untagged)."""
        try:
            tags = self.c.sagemaker.list_tags(ResourceArn=arn).get("Tags", [])
        except Exception as e:
            raise explain(e, f"read the tags of {arn}") from e
        return next((t["Value"] for t in tags if t["Key"] == TAG_ENDPOINT), None)

    def _model_owner(self, name: str) -> str | None:
        """The endpoint a Model is tagged with (None: untagged); ``""`` when it is gone already,
        so delete skips it."""
        try:
            arn = self.c.sagemaker.describe_model(ModelName=name)["ModelArn"]
        except ClientError as e:
            if "Could not find" in e.response.get("Error", {}).get("Message", ""):
                return ""
            raise explain(e, f"describe model {name}") from e
        return self._owner(arn)


@dataclass(frozen=True)
class SavedScaling:
    """A variant's scaling target (capacities) and policies, in the calls' own argument names."""

    target: dict[str, Any]
    policies: list[dict[str, Any]]


__all__ = ["ControlPlane", "Clients", "DeployError", "SavedScaling", "explain", "model_name",
           "RETRIES", "TAG_ENDPOINT"]
