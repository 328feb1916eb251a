"""python -m recsys_sagemaker {package,deploy,status,shift,rollback,invoke,delete}

SageMaker endpoints for the recommender with boto3: one ``model.tar.gz`` and one SageMaker Model
per model version, one production variant per version (the first is control), weights shifted
in place for a canary and a rollback, invocations pinned to the user's variant by the gateway's
assignment hash. Walkthrough: docs/sagemaker.md. AWS region and credentials: the usual AWS_*
variables or --region.
The package is ``recsys_sagemaker``, never ``sagemaker``: that name is the AWS SDK's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from common.cli import run_cli
from recsys_sagemaker import package
from recsys_sagemaker.config import (AutoScaling, DataCapture, Deployment, Variant, parse_weights,
                                     variant_name)
from recsys_sagemaker.control import Clients, ControlPlane, DeployError


def _plane(a) -> ControlPlane:
    return ControlPlane(Clients.create(region=a.region), poll_s=a.poll)


def _variant_key(k: str) -> str:
    return k if k.startswith("v") else variant_name(k)


def _packages(a, versions: list[str]):
    clients = Clients.create(region=a.region) if a.bucket else None
    out = []
    for version in versions:
        pkg = package.package(a.out, version, model_name=a.model_name, from_mlflow=a.from_mlflow,
                        registered_model=a.registered_model, tracking_uri=a.tracking_uri)
        if clients:
            pkg = package.upload(pkg, clients.s3, a.bucket, package.s3_key(a.prefix, a.endpoint or "recsys", pkg))
        out.append(pkg)
    return out


def cmd_package(a) -> int:
    for pkg in _packages(a, [v.strip() for v in a.versions.split(",") if v.strip()]):
        print(f"v{pkg.version}: {pkg.tarball} sha256 {pkg.sha256}" + (f" -> {pkg.s3_uri}" if pkg.s3_uri else ""))
    return 0


def cmd_deploy(a) -> int:
    if not a.bucket:
        raise ValueError("deploy needs --bucket (SageMaker reads model.tar.gz from S3)")
    weights = parse_weights(a.versions)
    pkgs = {p.version: p for p in _packages(a, list(weights))}
    variants = tuple(Variant(version=v, weight=w, model_data=pkgs[v].s3_uri,
                             instance_type=a.instance_type, instance_count=a.instance_count)
                     for v, w in weights.items())
    env = dict(kv.split("=", 1) for kv in a.env or [])
    dep = Deployment(
        endpoint=a.endpoint, role_arn=a.role, image_uri=a.image, variants=variants,
        data_capture=DataCapture(a.data_capture, a.capture_percent) if a.data_capture else None,
        autoscaling=AutoScaling(a.autoscale_min, a.autoscale_max, a.autoscale_target)
        if a.autoscale_max else None, environment=env)
    d = _plane(a).deploy(dep, wait=not a.no_wait)
    print(f"endpoint {a.endpoint}: {d.get('EndpointStatus', 'submitted')} on "
          f"{d.get('EndpointConfigName')}")
    for v in d.get("ProductionVariants", []):
        print(f"  {v['VariantName']}: weight {v.get('CurrentWeight')}, "
              f"{v.get('CurrentInstanceCount')} instance(s)")
    return 0


def cmd_status(a) -> int:
    plane = _plane(a)
    d = plane.describe(a.endpoint)
    if d is None:
        print(f"endpoint {a.endpoint} does not exist")
        return 1
    print(json.dumps({"status": d["EndpointStatus"], "config": d.get("EndpointConfigName"),
                      "failure_reason": d.get("FailureReason"),
                      "variants": dict(plane.weights(a.endpoint))}, indent=2))
    return 0


def cmd_shift(a) -> int:
    weights = {_variant_key(k): w for k, w in parse_weights(a.weights).items()}
    plane = _plane(a)
    plane.shift(a.endpoint, weights, wait=not a.no_wait)
    print(f"endpoint {a.endpoint} weights: {dict(plane.weights(a.endpoint))}")
    return 0


def cmd_rollback(a) -> int:
    plane = _plane(a)
    plane.rollback(a.endpoint, _variant_key(a.to) if a.to else None, wait=not a.no_wait)
    print(f"endpoint {a.endpoint} weights: {dict(plane.weights(a.endpoint))}")
    return 0


def cmd_invoke(a) -> int:
    from recsys_sagemaker.invoke import Invoker
    c = Clients.create(region=a.region)
    body = json.loads(a.body)
    if a.user_id is not None:
        body["user_id"] = a.user_id
    inv = Invoker(a.endpoint, a.salt or a.endpoint, c.sagemaker, c.runtime)
    print(json.dumps(inv.invoke(body), indent=2, ensure_ascii=False))
    return 0


def cmd_delete(a) -> int:
    for line in _plane(a).delete(a.endpoint, keep_models=a.keep_models):
        print(f"deleted {line}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recsys_sagemaker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, endpoint_required=True):
        sp.add_argument("--endpoint", required=endpoint_required, help="SageMaker endpoint name")
        sp.add_argument("--region", default=None, help="AWS region (default: AWS_REGION / profile)")
        sp.add_argument("--poll", type=float, default=15.0, help="seconds between status reads")

    def source(sp):
        sp.add_argument("--out", required=True, help="run folder: OUT/model-store/<name>-v<N>.mar "
                                                     "(and OUT/mlflow.db with --from-mlflow)")
        sp.add_argument("--model-name", default=package.DEFAULT_MODEL_NAME, help="TorchServe model name")
        sp.add_argument("--from-mlflow", action="store_true", help="build each version's archive "
                        "from the MLflow registry first (python -m archives build)")
        sp.add_argument("--registered-model", default=None, help="MLflow registered model "
                                                                 "(default hybrid-recommender)")
        sp.add_argument("--tracking-uri", default=None, help="MLflow store (default "
                        "$MLFLOW_TRACKING_URI, else sqlite:///OUT/mlflow.db)")
        sp.add_argument("--bucket", help="S3 bucket for model.tar.gz (package: upload only "
                                         "when given)")
        sp.add_argument("--prefix", default="recsys/sagemaker", help="S3 key prefix")

    pk = sub.add_parser("package", help="model.tar.gz per version (and upload with --bucket)")
    common(pk, endpoint_required=False)
    source(pk)
    pk.add_argument("--versions", required=True, help="comma-separated model versions, e.g. 3,4")
    pk.set_defaults(fn=cmd_package)

    d = sub.add_parser("deploy", help="package, upload, one Model per version, endpoint config "
                                      "with one variant per version, create or update, wait")
    common(d)
    source(d)
    d.add_argument("--versions", required=True, help="VERSION=WEIGHT,... control first, e.g. "
                                                     "3=0.9,4=0.1")
    d.add_argument("--role", required=True, help="SageMaker execution role ARN")
    d.add_argument("--image", required=True, help="image URI in ECR (make image, then push)")
    d.add_argument("--instance-type", default="ml.m5.large")
    d.add_argument("--instance-count", type=int, default=1)
    d.add_argument("--data-capture", help="s3:// prefix: capture requests and responses there")
    d.add_argument("--capture-percent", type=int, default=100)
    d.add_argument("--autoscale-min", type=int, default=1)
    d.add_argument("--autoscale-max", type=int, default=None,
                   help="enable target tracking on invocations per instance up to this many")
    d.add_argument("--autoscale-target", type=float, default=200.0,
                   help="invocations per instance per minute to track (default 200)")
    d.add_argument("--env", nargs="*", metavar="KEY=VALUE", help="container variables (e.g. "
                   "SAGEMAKER_MODEL_SERVER_WORKERS=2)")
    d.add_argument("--no-wait", action="store_true")
    d.set_defaults(fn=cmd_deploy)

    s = sub.add_parser("status", help="status, config and current weights")
    common(s)
    s.set_defaults(fn=cmd_status)

    sh = sub.add_parser("shift", help="set variant weights in place (UpdateEndpointWeightsAndCapacities)")
    common(sh)
    sh.add_argument("--weights", required=True, help="VARIANT=WEIGHT,... (v3=0.5,v4=0.5; a bare "
                                                     "version means v<version>)")
    sh.add_argument("--no-wait", action="store_true")
    sh.set_defaults(fn=cmd_shift)

    r = sub.add_parser("rollback", help="all traffic to control (or --to), the others weight 0")
    common(r)
    r.add_argument("--to", help="variant (or version) to keep; default the first (control)")
    r.add_argument("--no-wait", action="store_true")
    r.set_defaults(fn=cmd_rollback)

    i = sub.add_parser("invoke", help="one request, TargetVariant from the assignment hash")
    common(i)
    i.add_argument("--user-id", help="the user (canonicalized as everywhere: core/ids.py)")
    i.add_argument("--body", default='{"k": 10}', help="JSON request for the handler")
    i.add_argument("--salt", default=os.environ.get("RECSYS_ASSIGNMENT_SALT"),
                   help="assignment salt (default $RECSYS_ASSIGNMENT_SALT, else the endpoint "
                        "name); use the gateway experiment's salt for the same arms")
    i.set_defaults(fn=cmd_invoke)

    x = sub.add_parser("delete", help="auto scaling, endpoint, its configs and Models")
    common(x)
    x.add_argument("--keep-models", action="store_true")
    x.set_defaults(fn=cmd_delete)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(parser(), argv, (DeployError, ValueError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
