"""Invoke an endpoint with a sticky ``TargetVariant``: the gateway's assignment, on SageMaker.

The variant is chosen by ``common.assignment`` (the one hash the gateway uses) over the
endpoint's *current* weights (``DescribeEndpoint``, re-read every ``refresh_s`` seconds), with
the user id canonicalized by ``core.ids``; control is the endpoint's first variant. With the
same salt as the gateway's experiment, a user lands on the same arm on both paths. A variant at
weight 0 owns no buckets, so after a rollback everyone is on control.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from common.assignment import Split
from core.ids import canonical_id

from recsys_sagemaker.control import DeployError, explain


@dataclass
class Invoker:
    endpoint: str
    salt: str
    sagemaker: Any                     # boto3 "sagemaker" client (DescribeEndpoint)
    runtime: Any                       # boto3 "sagemaker-runtime" client (InvokeEndpoint)
    refresh_s: float = 30.0
    _split: Split | None = field(default=None, repr=False)
    _read_at: float = field(default=0.0, repr=False)

    def split(self) -> Split:
        """The endpoint's variants and weights as bucket ranges (cached ``refresh_s``)."""
        if self._split is None or time.monotonic() - self._read_at > self.refresh_s:
            try:
                d = self.sagemaker.describe_endpoint(EndpointName=self.endpoint)
            except Exception as e:
                raise explain(e, f"describe endpoint {self.endpoint}") from e
            pairs = [(v["VariantName"], float(v.get("CurrentWeight", v.get("DesiredWeight", 0))))
                     for v in d.get("ProductionVariants", [])]
            if not pairs:
                raise DeployError(f"endpoint {self.endpoint} has no production variants "
                                  f"(status {d.get('EndpointStatus')})")
            self._split = Split.of(pairs, control=pairs[0][0])
            self._read_at = time.monotonic()
        return self._split

    def assign(self, user_id: Any) -> tuple[str, int, str]:
        """(variant, bucket, canonical id) of a user."""
        uid = canonical_id(user_id)
        variant, b = self.split().assign(self.salt, uid)
        return variant, b, uid

    def invoke(self, body: dict) -> dict:
        """POST ``body`` (the handler's request) to /invocations of the user's variant."""
        payload = dict(body)
        kw: dict[str, Any] = {}
        if payload.get("user_id") is not None:
            variant, b, uid = self.assign(payload["user_id"])
            payload["user_id"] = uid
            kw["TargetVariant"] = variant
        else:  # no user: control serves it (CONTRACTS "Assignment")
            variant, b = self.split().control, None
            kw["TargetVariant"] = variant
        try:
            r = self.runtime.invoke_endpoint(EndpointName=self.endpoint, Body=json.dumps(payload),
                                             ContentType="application/json",
                                             Accept="application/json", **kw)
        except Exception as e:
            raise explain(e, f"invoke {self.endpoint} (variant {variant})") from e
        raw = r["Body"].read()
        try:
            answer: Any = json.loads(raw)
        except ValueError:
            answer = raw.decode("utf-8", "replace")
        return {"target_variant": variant, "invoked_variant": r.get("InvokedProductionVariant"),
                "bucket": b, "answer": answer}


__all__ = ["Invoker"]
