"""Settings of a SageMaker deployment, in one typed place (the CLI fills them from flags)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # SageMaker resource names


def check_name(kind: str, name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(f"{kind} {name!r}: SageMaker names are 1-63 letters, digits and "
                         "hyphens, starting and ending with a letter or digit")
    return name


def variant_name(version: str) -> str:
    """The production variant of a model version: ``v<version>`` (dots become hyphens)."""
    return check_name("variant", "v" + str(version).replace(".", "-").replace("_", "-"))


@dataclass(frozen=True)
class Variant:
    """One model version behind the endpoint and its share of the traffic."""

    version: str
    weight: float
    model_data: str = ""       # s3://.../model.tar.gz (filled by packaging)
    instance_type: str = "ml.m5.large"
    instance_count: int = 1

    @property
    def name(self) -> str:
        return variant_name(self.version)


@dataclass(frozen=True)
class DataCapture:
    """Request/response capture to S3 (SageMaker's DataCaptureConfig)."""

    destination: str           # s3://bucket/prefix
    sampling_percent: int = 100


@dataclass(frozen=True)
class AutoScaling:
    """Application Auto Scaling target tracking on invocations per instance, per variant."""

    min_capacity: int = 1
    max_capacity: int = 4
    invocations_per_instance: float = 200.0     # target value (per minute, SageMaker's metric)
    scale_in_cooldown_s: int = 300
    scale_out_cooldown_s: int = 60


@dataclass(frozen=True)
class Deployment:
    """An endpoint with one production variant per model version (the first one is control)."""

    endpoint: str
    role_arn: str
    image_uri: str
    variants: tuple[Variant, ...]
    data_capture: DataCapture | None = None
    autoscaling: AutoScaling | None = None
    environment: dict[str, str] = field(default_factory=dict)  # container variables
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        check_name("endpoint", self.endpoint)
        if not self.variants:
            raise ValueError("a deployment needs at least one variant")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"each model version may appear once, got {names}")
        if any(v.weight < 0 for v in self.variants) or sum(v.weight for v in self.variants) <= 0:
            raise ValueError("variant weights must be >= 0 and not all 0")
        if not self.role_arn.startswith("arn:"):
            raise ValueError(f"--role {self.role_arn!r} is not an IAM role ARN "
                             "(arn:aws:iam::<account>:role/<name>)")


def parse_weights(text: str) -> dict[str, float]:
    """``"3=0.9,4=0.1"`` -> ``{"3": 0.9, "4": 0.1}`` (version=weight, file order kept)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        version, sep, w = part.partition("=")
        if not sep:
            raise ValueError(f"{part!r}: expected VERSION=WEIGHT")
        try:
            out[version.strip()] = float(w)
        except ValueError:
            raise ValueError(f"{part!r}: weight {w!r} is not a number") from None
    if not out:
        raise ValueError("no VERSION=WEIGHT pairs")
    return out


__all__ = ["Variant", "DataCapture", "AutoScaling", "Deployment", "variant_name", "check_name",
           "parse_weights"]
