"""Render helm/recsys with real Helm (helm-python-sdk: Helm v4's Go library in-process) and
index the objects, for the chart tests."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from helm_python import Chart

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "recsys"
RELEASE, NAMESPACE = "recsys", "recsys"
SHA_A, SHA_B = "a" * 64, "b" * 64


def merge(base: dict, over: dict) -> dict:
    """Deep merge (over wins), like stacked -f files."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def model(version: str, sha: str = SHA_A, bucket: str = "models") -> dict:
    return {"version": version, "uri": f"s3://{bucket}/archives/recsys-v{version}.mar", "sha256": sha}


def version_set_a() -> dict:
    """One version, all traffic."""
    return {"models": [model("3")],
            "experiment": {"name": "hp", "salt": "hp-1", "control": "control",
                           "variants": [{"name": "control", "model_version": "3", "weight": 10000}]}}


def version_set_b() -> dict:
    """A second version at 10%."""
    return {"models": [model("3"), model("4", SHA_B)],
            "experiment": {"name": "hp", "salt": "hp-1", "control": "control",
                           "variants": [{"name": "control", "model_version": "3", "weight": 9000},
                                        {"name": "treatment", "model_version": "4", "weight": 1000}]}}


class Rendered:
    """The manifests of one render: ``objs[(kind, name)]`` and the NOTES text."""

    def __init__(self, manifests: dict[str, str]):
        self.files = manifests
        self.notes = manifests.get(f"{CHART.name}/templates/NOTES.txt", "")
        self.objs: dict[tuple[str, str], dict] = {}
        for path, text in manifests.items():
            if path.endswith("NOTES.txt"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    key = (doc["kind"], doc["metadata"]["name"])
                    assert key not in self.objs, f"{key} rendered twice"
                    self.objs[key] = doc

    def get(self, kind: str, name: str) -> dict:
        return self.objs[(kind, name)]

    def kinds(self) -> set[str]:
        return {k for k, _ in self.objs}

    def deployment(self, component: str) -> dict:
        return self.get("Deployment", f"{RELEASE}-{component}")

    def container(self, component: str, name: str | None = None) -> dict:
        spec = self.deployment(component)["spec"]["template"]["spec"]
        return next(c for c in spec["containers"] if c["name"] == (name or component))

    def config_properties(self) -> dict[str, str]:
        text = self.get("ConfigMap", f"{RELEASE}-torchserve")["data"]["config.properties"]
        return dict(line.split("=", 1) for line in text.splitlines()
                    if line.strip() and not line.startswith("#"))


_chart: Chart | None = None


def chart() -> Chart:
    global _chart
    if _chart is None:
        _chart = Chart.load(str(CHART))
    return _chart


def render(values: dict[str, Any] | None = None, *, name: str = RELEASE,
           namespace: str = NAMESPACE) -> Rendered:
    return Rendered(chart().render(values or {}, name=name, namespace=namespace))
