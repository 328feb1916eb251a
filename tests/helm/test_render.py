"""helm/recsys rendered by real Helm (in-process), linted, and every object validated against
the Kubernetes schemas of 1.30 and of the newest release kubernetes-validate knows; then what
each toggle renders."""
from __future__ import annotations

import json
import shutil

import helm_python
import kubernetes_validate as kv
import pytest
import yaml

from tests.helm.chart import CHART, REPO, RELEASE, SHA_A, merge, model, render, version_set_b

KUBE_VERSIONS = ("1.30.0", kv.latest_version())
# Custom resources of the Prometheus operator have no schema in kubernetes-validate: they are
# checked below (structure, promtool for the rules).
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
KEY_HASHES = [{"id": "client", "sha256": SHA_A, "rights": ["recommend", "events"]},
              {"id": "admin", "sha256": "c" * 64, "rights": ["recommend", "events", "admin"],
               "rate_per_s": 50, "burst": 100}]

TOGGLES = {
    "defaults": {},
    "two-versions": version_set_b(),
    "volume-store": {"modelStore": {"source": "volume",
                                    "volume": {"persistentVolumeClaim": {"claimName": "archives"}}}},
    "monitoring": {"monitoring": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
    "autoscaling": {"torchserve": {"autoscaling": {"enabled": True}},
                    "gateway": {"autoscaling": {"enabled": True, "customMetrics": [
                        {"type": "Pods", "pods": {"metric": {"name": "recsys_gateway_requests_per_second"},
                                                  "target": {"type": "AverageValue", "averageValue": "200"}}}]}}},
    "no-policies": {"networkPolicy": {"enabled": False}, "torchserve": {"pdb": {"enabled": False},
                    "topologySpread": False}, "gateway": {"pdb": {"enabled": False}}},
    "retraining": {"retraining": {"enabled": True}},
    "chart-made-keys": {"gateway": {"auth": {"existingSecret": "", "keyHashes": KEY_HASHES}}},
    "irsa-and-logs": {"serviceAccount": {"annotations": {
                          "eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/recsys"}},
                      "gateway": {"logs": {"perPodSubPath": True, "volume": {
                          "persistentVolumeClaim": {"claimName": "gateway-logs"}}}}},
    # issue 18: a pinned image, log shipping with the gateway's own IRSA identity, the model API
    "digest-shipping-model-api": {
        "image": {"digest": "sha256:" + "ab" * 32},
        "retraining": {"enabled": True, "image": {"digest": "sha256:" + "cd" * 32}},
        "torchserve": {"enableModelApi": True, "allowedUrls": [r"https://models\.example\.com/.*"]},
        "gateway": {"logs": {"ephemeral": False, "fsyncSeconds": 0.5, "shipping": {
            "enabled": True, "s3Uri": "s3://ab-logs/recsys", "region": "eu-west-1",
            "roleArn": "arn:aws:iam::111122223333:role/recsys-gateway-logs"}}}},
}


@pytest.mark.parametrize("toggle", sorted(TOGGLES))
def test_lint_is_clean(toggle):
    for version in KUBE_VERSIONS:
        report = helm_python.lint(str(CHART), TOGGLES[toggle], strict=True,
                                  kube_version=f"v{version}")
        serious = [m for m in report["messages"] if m["severity"] >= 2]
        assert not serious and not report["errors"], (version, serious, report["errors"])


@pytest.mark.parametrize("toggle", sorted(TOGGLES))
def test_every_object_validates(toggle):
    r = render(TOGGLES[toggle])
    assert r.objs
    for (kind, name), doc in r.objs.items():
        if kind in CRD_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        for version in KUBE_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as e:
                pytest.fail(f"{kind}/{name} invalid for Kubernetes {version}: {e.message} at "
                            f"{list(e.path)}")


def _containers(r, component):
    spec = r.deployment(component)["spec"]["template"]["spec"]
    return spec, spec.get("initContainers", []) + spec["containers"]


def test_security_context_everywhere():
    r = render(TOGGLES["retraining"])
    pod_specs = [r.deployment(c)["spec"]["template"]["spec"] for c in ("torchserve", "gateway")]
    pod_specs.append(r.get("CronJob", f"{RELEASE}-retraining")["spec"]["jobTemplate"]["spec"]
                     ["template"]["spec"])
    for spec in pod_specs:
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        writable = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert mounts["/tmp"] in writable and mounts["/home/recsys"] in writable
            assert c["resources"]["limits"] and c["resources"]["requests"]


def test_torchserve_probes_wait_for_every_version_and_liveness_is_lenient():
    r = render(version_set_b())
    c = r.container("torchserve")
    for probe in ("startupProbe", "readinessProbe"):
        cmd = c[probe]["exec"]["command"]
        assert cmd[:4] == ["python", "-m", "archives.probe", "torchserve-ready"]
        assert cmd[cmd.index("--versions") + 1:] == ["3", "4"]
        assert "http://127.0.0.1:8081" in cmd  # management API on loopback
    # the startup window covers the supervisor's ready timeout (model load)
    sp = c["startupProbe"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert sp["periodSeconds"] * sp["failureThreshold"] == int(env["RECSYS_READY_TIMEOUT_S"]) >= 300
    live = c["livenessProbe"]
    assert live["exec"]["command"][3:6] == ["alive", "--url", "http://127.0.0.1:8080/ping"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 120 and live["timeoutSeconds"] >= 10
    # drain: preStop sleep, then SIGTERM drains and stops within the grace period
    grace = r.deployment("torchserve")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert grace >= sleep + int(env["RECSYS_DRAIN_TIMEOUT_S"]) + int(env["RECSYS_STOP_TIMEOUT_S"])
    g = r.container("gateway")
    assert g["readinessProbe"]["exec"]["command"][3:] == ["http", "--url", "http://127.0.0.1:8090/readyz"]


@pytest.mark.parametrize("cpu,workers", [("2", 2), (4, 4), (2.5, 2), ("1500m", 1), ("250m", 1),
                                         ("3000m", 3)])
def test_workers_follow_the_cpu_limit(cpu, workers):
    r = render({"torchserve": {"resources": {"limits": {"cpu": cpu, "memory": "4Gi"}}}})
    props = r.config_properties()
    assert props["default_workers_per_model"] == str(workers)
    snap = json.loads(props["model_snapshot"])["models"]["recsys"]["1"]
    assert snap["minWorkers"] == snap["maxWorkers"] == workers


def test_explicit_workers_and_a_missing_cpu_limit():
    r = render({"torchserve": {"workersPerVersion": 3}})
    assert r.config_properties()["default_workers_per_model"] == "3"
    with pytest.raises(helm_python.HelmRenderError, match="limits.cpu is not set"):
        render({"torchserve": {"resources": {"limits": {"cpu": None}}}})  # null deletes a default


def test_config_properties_hold_every_version_with_the_values_settings():
    r = render(merge(version_set_b(), {"torchserve": {"batchSize": 16, "maxBatchDelayMs": 7,
                                                      "responseTimeoutSeconds": 30,
                                                      "extraProperties": {"netty_client_threads": "4"}}}))
    props = r.config_properties()
    assert props["disable_token_authorization"] == "true"
    assert props["enable_model_api"] == "false"
    assert props["inference_address"] == "http://0.0.0.0:8080"
    assert props["grpc_inference_address"] == "127.0.0.1"
    assert props["load_models"] == "recsys-v3.mar,recsys-v4.mar"
    assert props["netty_client_threads"] == "4"
    snap = json.loads(props["model_snapshot"])
    assert snap["modelCount"] == 2
    versions = snap["models"]["recsys"]
    assert {v: (d["marName"], d["batchSize"], d["maxBatchDelay"], d["responseTimeout"])
            for v, d in versions.items()} == {"3": ("recsys-v3.mar", 16, 7, 30),
                                              "4": ("recsys-v4.mar", 16, 7, 30)}
    # the control's version is the default (requests without a version)
    assert [v for v, d in versions.items() if d["defaultVersion"]] == ["3"]


def test_s3_fetch_step_and_volume_store():
    r = render(version_set_b())
    spec = r.deployment("torchserve")["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    assert init["args"][:3] == ["fetch-models", "--dest", "/models"]
    assert init["args"][3:] == [f"s3://models/archives/recsys-v3.mar={SHA_A}",
                                f"s3://models/archives/recsys-v4.mar={'b' * 64}"]
    models = next(v for v in spec["volumes"] if v["name"] == "models")
    assert "emptyDir" in models
    r = render(TOGGLES["volume-store"])
    spec = r.deployment("torchserve")["spec"]["template"]["spec"]
    assert "initContainers" not in spec
    models = next(v for v in spec["volumes"] if v["name"] == "models")
    assert models == {"name": "models", "persistentVolumeClaim": {"claimName": "archives"}}
    mount = next(m for m in r.container("torchserve")["volumeMounts"] if m["name"] == "models")
    assert mount == {"name": "models", "mountPath": "/models", "readOnly": True}


def test_irsa_annotation_and_no_credentials_anywhere():
    r = render(TOGGLES["irsa-and-logs"])
    sa = r.get("ServiceAccount", RELEASE)
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("role/recsys")
    for component in ("torchserve", "gateway"):
        spec = r.deployment(component)["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] == RELEASE
    text = "\n".join(r.files.values())
    assert "AWS_SECRET_ACCESS_KEY" not in text and "AWS_ACCESS_KEY_ID" not in text


def test_gateway_wiring():
    r = render()
    c = r.container("gateway")
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["GATEWAY_UPSTREAM_URL"] == "http://recsys-torchserve:8080"
    args = c["args"]
    opt = {args[i]: args[i + 1] for i in range(1, len(args) - 1, 2)}
    assert opt["--experiment-file"] == "/etc/recsys/experiment/experiment.yaml"
    assert opt["--keys-file"] == "/etc/recsys/gateway-keys/keys.json"
    assert opt["--pseudonym-secret-file"] == "/etc/recsys/gateway-keys/pseudonym_secret"
    assert opt["--model-name"] == "recsys" and opt["--host"] == "0.0.0.0"
    spec = r.deployment("gateway")["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["keys"]["secret"]["secretName"] == "recsys-gateway-keys"
    assert vols["keys"]["secret"]["optional"] is False  # said explicitly for Podman 4.3 (test_play)
    assert vols["experiment"]["configMap"]["name"] == "recsys-experiment"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    # a folder mount, never subPath: ConfigMap updates must reach the file the gateway rereads
    assert "subPath" not in mounts["experiment"] and mounts["experiment"]["readOnly"]
    # the gateway's pods carry no annotation that an experiment change would alter
    assert "annotations" not in r.deployment("gateway")["spec"]["template"]["metadata"]
    other = render({"gateway": {"upstreamUrl": "http://ts.other:8080"}}).container("gateway")
    assert {e["name"]: e.get("value") for e in other["env"]}["GATEWAY_UPSTREAM_URL"] == "http://ts.other:8080"
    logs = render(TOGGLES["irsa-and-logs"]).container("gateway")
    run = next(m for m in logs["volumeMounts"] if m["name"] == "run")
    assert run["subPathExpr"] == "$(POD_NAME)"


def test_experiment_configmap_is_what_the_gateway_accepts():
    from gateway import experiment as E
    r = render(version_set_b())
    text = r.get("ConfigMap", f"{RELEASE}-experiment")["data"]["experiment.yaml"]
    exp = E.loads(text, "configmap")
    assert (exp.name, exp.control) == ("hp", "control")
    assert [(v.name, v.model_version) for v in exp.variants] == [("control", "3"), ("treatment", "4")]
    assert exp.split.counts == {"control": 9000, "treatment": 1000}


def test_chart_made_key_secret_is_read_by_the_gateway(tmp_path):
    import base64

    from gateway.auth import KeyStore
    r = render(TOGGLES["chart-made-keys"])
    secret = r.get("Secret", f"{RELEASE}-gateway-keys")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    (tmp_path / "keys.json").write_bytes(data["keys.json"])
    store = KeyStore.load(tmp_path / "keys.json")
    assert [(e.id, e.rights, e.rate_per_s) for e in store.entries] == [
        ("client", ("recommend", "events"), 1000.0), ("admin", ("recommend", "events", "admin"), 50.0)]
    assert len(data["pseudonym_secret"]) >= 32
    # new key hashes roll the gateway (keys.json is read at start)
    ann = r.deployment("gateway")["spec"]["template"]["metadata"]["annotations"]
    other = render(merge(TOGGLES["chart-made-keys"], {"gateway": {"auth": {"keyHashes": KEY_HASHES[:1]}}}))
    assert other.deployment("gateway")["spec"]["template"]["metadata"]["annotations"]["checksum/keys"] \
        != ann["checksum/keys"]
    # by default no Secret is rendered: the gateway mounts the one the user made
    assert ("Secret", f"{RELEASE}-gateway-keys") not in render().objs


def test_network_policies():
    r = render()
    ts = r.get("NetworkPolicy", f"{RELEASE}-torchserve")["spec"]
    rules = {rule["ports"][0]["port"]: rule["from"] for rule in ts["ingress"]}
    assert set(rules) == {"inference", "management", "metrics"}
    assert rules["inference"] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "recsys", "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": "gateway"}}}]
    assert rules["management"] == [{"podSelector": {"matchLabels": {"recsys.io/deployer": "true"}}}]
    assert rules["metrics"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}]
    gw = r.get("NetworkPolicy", f"{RELEASE}-gateway")["spec"]
    api = next(rule for rule in gw["ingress"] if rule["ports"][0]["port"] == "http")
    assert "from" not in api  # clients from anywhere (the ingress) unless gatewayClients says
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}]
    r = render({"networkPolicy": {"gatewayClients": peers, "deployerNamespaceLabels": {"team": "ml"}}})
    gw = r.get("NetworkPolicy", f"{RELEASE}-gateway")["spec"]
    assert next(rule for rule in gw["ingress"] if rule["ports"][0]["port"] == "http")["from"] == peers
    ts = r.get("NetworkPolicy", f"{RELEASE}-torchserve")["spec"]
    mgmt = next(rule for rule in ts["ingress"] if rule["ports"][0]["port"] == "management")
    assert mgmt["from"][0]["namespaceSelector"] == {"matchLabels": {"team": "ml"}}
    # the named ports exist on the pods the policies select
    for component in ("torchserve", "gateway"):
        names = {p["name"] for p in r.container(component)["ports"]}
        assert names >= ({"inference", "management", "metrics"} if component == "torchserve"
                         else {"http", "metrics"})
    assert "NetworkPolicy" not in render(TOGGLES["no-policies"]).kinds()


def test_autoscaling_pdb_and_spread():
    r = render(TOGGLES["autoscaling"])
    for component in ("torchserve", "gateway"):
        assert "replicas" not in r.deployment(component)["spec"]
        hpa = r.get("HorizontalPodAutoscaler", f"{RELEASE}-{component}")["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                         "name": f"{RELEASE}-{component}"}
        assert hpa["metrics"][0]["resource"] == {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": 70}}
    gw = r.get("HorizontalPodAutoscaler", f"{RELEASE}-gateway")["spec"]["metrics"]
    assert gw[1]["pods"]["metric"]["name"] == "recsys_gateway_requests_per_second"
    r = render()
    assert "HorizontalPodAutoscaler" not in r.kinds()
    for component in ("torchserve", "gateway"):
        dep = r.deployment(component)["spec"]
        assert dep["replicas"] == 2
        assert dep["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        pdb = r.get("PodDisruptionBudget", f"{RELEASE}-{component}")["spec"]
        assert pdb["selector"] == dep["selector"] and pdb["maxUnavailable"] == 1
        spread = dep["template"]["spec"]["topologySpreadConstraints"]
        assert {s["topologyKey"] for s in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        assert all(s["labelSelector"] == dep["selector"] for s in spread)
    r = render(TOGGLES["no-policies"])
    assert "PodDisruptionBudget" not in {k for k, n in r.objs if "torchserve" in n}
    assert "topologySpreadConstraints" not in r.deployment("torchserve")["spec"]["template"]["spec"]


def test_services_match_their_pods():
    r = render()
    for component, ports in (("torchserve", {"inference", "management", "metrics"}),
                             ("gateway", {"http", "metrics"})):
        svc = r.get("Service", f"{RELEASE}-{component}")["spec"]
        assert svc["selector"] == r.deployment(component)["spec"]["selector"]["matchLabels"]
        named = {p["name"] for p in r.container(component)["ports"]}
        assert {p["targetPort"] for p in svc["ports"]} == ports <= named


def test_retraining_slot():
    assert "CronJob" not in render().kinds()
    job = render(TOGGLES["retraining"]).get("CronJob", f"{RELEASE}-retraining")["spec"]
    assert job["concurrencyPolicy"] == "Forbid"
    c = job["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "localhost/recsys:training"
    assert c["args"] == ["training", "run", "--out", "/data/run"]


def test_monitoring_objects():
    assert not render().kinds() & (CRD_KINDS | {"PrometheusRule"})
    r = render(TOGGLES["monitoring"])
    for component in ("torchserve", "gateway"):
        sm = r.get("ServiceMonitor", f"{RELEASE}-{component}")
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        svc = r.get("Service", f"{RELEASE}-{component}")
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    rule = r.get("PrometheusRule", RELEASE)
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    source = yaml.safe_load((REPO / "monitoring/prometheus/rules/recsys.rules.yaml").read_text())
    assert rule["spec"] == source  # verbatim: alert templates ({{ $labels... }}) untouched
    assert any("{{" in a.get("annotations", {}).get("summary", "") + a.get("annotations", {}).get(
        "description", "") for g in rule["spec"]["groups"] for a in g["rules"] if "alert" in a)
    dash = r.get("ConfigMap", f"{RELEASE}-dashboard")
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dash["data"]["recsys.json"] == (REPO / "monitoring/grafana/dashboards/recsys.json").read_text()


def test_chart_copies_match_the_monitoring_sources():
    """Helm cannot read outside the chart: `make chart-files` copies; this says when to rerun it."""
    for copy, source in (("files/recsys.rules.yaml", "monitoring/prometheus/rules/recsys.rules.yaml"),
                         ("files/recsys.json", "monitoring/grafana/dashboards/recsys.json")):
        assert (CHART / copy).read_bytes() == (REPO / source).read_bytes(), \
            f"helm/recsys/{copy} differs from {source}: run `make chart-files`"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) "
                    "is not installed; .ci/run installs it")
def test_rendered_prometheus_rule_passes_promtool(promtool, tmp_path):
    rule = render(TOGGLES["monitoring"]).get("PrometheusRule", RELEASE)
    f = tmp_path / "rules.yaml"
    f.write_text(yaml.safe_dump(rule["spec"]))
    r = promtool("check", "rules", str(f))
    assert r.returncode == 0, r.stdout + r.stderr


def test_notes():
    r = render(version_set_b())
    assert "v3" in r.notes and "v4" in r.notes and "treatment -> v4, weight 1000" in r.notes
    assert "rollout status deploy/recsys-torchserve" in r.notes
    assert "recsys-gateway-keys" in r.notes
