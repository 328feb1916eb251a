"""Every value of values.yaml is documented with an `@param` line (Bitnami style) and every
`@param` names a value that exists; the docs' example values render."""
from __future__ import annotations

import re
import textwrap

import yaml

from tests.helm.chart import CHART, REPO, chart, merge, render

FREE_FORM = {  # values that are Kubernetes objects or maps: documented as a whole
    "commonLabels", "imagePullSecrets", "podSecurityContext", "containerSecurityContext",
    "serviceAccount.annotations", "modelStore.volume", "modelStore.fetch.resources",
    "modelStore.fetch.extraEnv", "torchserve.resources", "gateway.resources",
    "retraining.resources", "retraining.volume", "gateway.logs.volume",
    "networkPolicy.deployerPodLabels", "networkPolicy.deployerNamespaceLabels",
    "networkPolicy.gatewayClients", "monitoring.labels", "monitoring.dashboardLabels",
    "torchserve.extraProperties", "torchserve.extraEnv", "gateway.extraEnv", "gateway.extraArgs",
    "retraining.extraEnv", "retraining.args", "torchserve.autoscaling.customMetrics",
    "gateway.autoscaling.customMetrics", "torchserve.autoscaling.behavior",
    "gateway.autoscaling.behavior", "gateway.auth.keyHashes",
    *(f"{c}.{k}" for c in ("torchserve", "gateway") for k in (
        "podAnnotations", "podLabels", "nodeSelector", "tolerations", "affinity",
        "service.annotations")),
}


def _leaves(node, prefix=""):
    if prefix in FREE_FORM:
        yield prefix
    elif isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else k)
    elif isinstance(node, list) and node and isinstance(node[0], dict):
        for k, v in node[0].items():
            yield from _leaves(v, f"{prefix}[0].{k}")
    else:
        yield prefix


def test_every_value_is_documented_and_every_param_exists():
    text = (CHART / "values.yaml").read_text()
    params = set(re.findall(r"^\s*## @param (\S+) \S", text, re.M))
    leaves = set(_leaves(yaml.safe_load(text)))
    assert not leaves - params, f"undocumented values: {sorted(leaves - params)}"
    assert not params - leaves, f"@param for values that do not exist: {sorted(params - leaves)}"


def test_example_values_of_the_docs_render():
    """docs/kubernetes.md's values files (blocks opening with `# <name>.yaml`), stacked as the
    walkthrough's `-f` flags stack them, pass the schema and render; its commands are real."""
    doc = (REPO / "docs" / "kubernetes.md").read_text()
    files = {m.group(1): yaml.safe_load(textwrap.dedent(m.group(2)))
             for m in re.finditer(r"```yaml\n *# ([\w.-]+\.yaml)[^\n]*\n(.*?) *```", doc, re.S)}
    assert {"my-values.yaml", "my-values-v4.yaml", "my-values-90-10.yaml", "autoscaling.yaml"} <= set(files)
    stacks = [["my-values.yaml"], ["my-values.yaml", "my-values-v4.yaml"],
              ["my-values.yaml", "my-values-v4.yaml", "my-values-90-10.yaml"],
              ["my-values.yaml", "autoscaling.yaml"]]
    for stack in stacks:
        values: dict = {}
        for name in stack:
            values = merge(values, files[name])
        chart().validate_schema(values)
        r = render(values)
        assert r.deployment("torchserve")
    for cmd in ("helm upgrade --install recsys helm/recsys -f my-values.yaml",
                "helm rollback recsys", "helm history recsys"):
        assert cmd in doc, cmd
