"""The chart, rendered by real Helm and started: `podman kube play` of the rendered Deployments,
ConfigMaps and the gateway's key Secret with the real image (`make image`), then an upgrade
replayed with `--replace`.

Local values: `modelStore.source: volume` (a hostPath holding two archives built from random
artifacts; init containers do not run under Podman 4.3), one replica each, every port a free
loopback port (host network), the gateway's keys in a Secret made as `kubectl create secret
generic --from-file` makes it (docs/kubernetes.md, step 4). Readiness is waited for by running
the rendered probe commands in the containers; answers come through the gateway with a client
key. What Podman does differently from Kubernetes, and how the played copy is adapted:
tests/helm/play.py. Always taken down, also on failure."""
from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path

import pytest
import requests
from common.assignment import Split
from common.net import free_ports
from core.ids import canonical_id
from gateway import auth
from gateway.config import GatewayPaths
from testkit.archives import build_random_versions
from tests.container.engine import build_image, engine
from tests.helm.chart import render
from tests.helm.play import (KubePlay, for_podman, require_pause, secret_volumes_decode,
                             write_secret_folder)

pytestmark = pytest.mark.timeout(1800)  # a first `make image` included

MODEL = "recsys"
READY_TIMEOUT_S = 300
USERS = [str(u) for u in range(1, 201)]  # 1..40 are known to the archives, the rest are new


@pytest.fixture(scope="module")
def image():
    name = build_image()
    require_pause()
    return name


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A model store with recsys-v1.mar and recsys-v2.mar (one worker, small batches)."""
    root = tmp_path_factory.mktemp("play-store")
    out = build_random_versions(root, (("1", 1), ("2", 2)), n_users=40, n_items=120, batch_size=4,
                                delay_ms=5)
    return out / "model-store"


class Release:
    """One release's names, ports, keys and values; :meth:`docs` renders a version set."""

    def __init__(self, root: Path, store: Path):
        self.tag = uuid.uuid4().hex[:8]
        self.fullname = f"play-{self.tag}"
        self.root = root
        self.store = store
        inf, mgt, met, api, gmet = free_ports(5)
        self.ports = {"inference": inf, "management": mgt, "metrics": met, "api": api,
                      "gateway_metrics": gmet}
        self.url = f"http://127.0.0.1:{api}"
        self.ts_url = f"http://127.0.0.1:{inf}"
        self.mgmt_url = f"http://127.0.0.1:{mgt}"
        paths = GatewayPaths.under(root / "keys")
        auth.init_keys(paths)
        self.client_key = auth.read_key(paths.client_key)
        self.admin_key = auth.read_key(paths.admin_key)
        self.secret_name = f"{self.fullname}-keys"
        # as `kubectl create secret generic NAME --from-file=keys.json=... --from-file=pseudonym_secret=...`
        self.secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                       "metadata": {"name": self.secret_name},
                       "data": {"keys.json": base64.b64encode(paths.key_hashes.read_bytes()).decode(),
                                "pseudonym_secret": base64.b64encode(paths.pseudonym_secret.read_bytes()).decode()}}
        self.ts = f"{self.fullname}-torchserve-pod-0-torchserve"   # Podman's container names
        self.gw = f"{self.fullname}-gateway-pod-0-gateway"

    def values(self, versions: list[str], variants: list[tuple[str, str, int]]) -> dict:
        p = self.ports
        return {
            "fullnameOverride": self.fullname,
            "image": {"repository": "localhost/recsys", "tag": "latest", "pullPolicy": "IfNotPresent"},
            "models": [{"version": v} for v in versions],
            "experiment": {"name": "play", "salt": "play-1", "control": variants[0][0],
                           "variants": [{"name": n, "model_version": v, "weight": w}
                                        for n, v, w in variants]},
            "modelStore": {"source": "volume",
                           "volume": {"hostPath": {"path": str(self.store), "type": "Directory"}}},
            "torchserve": {"replicaCount": 1, "bindAddress": "127.0.0.1",
                           "ports": {"inference": p["inference"], "management": p["management"],
                                     "metrics": p["metrics"]},
                           # workersPerVersion auto: one worker per version from the CPU limit
                           "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                                         "limits": {"cpu": "1", "memory": "3Gi"}}},
            "gateway": {"replicaCount": 1, "bindAddress": "127.0.0.1",
                        "ports": {"api": p["api"], "metrics": p["gateway_metrics"]},
                        "upstreamUrl": self.ts_url,
                        # a busy shared machine: measure routing, not latency (no fallbacks)
                        "deadlineMs": 5000,
                        "auth": {"existingSecret": self.secret_name}},
        }

    def render(self, versions, variants):
        return render(self.values(versions, variants))


def _docs(rendered) -> list[dict]:
    return list(rendered.objs.values())


def _probe_command(rendered, deployment: str, probe: str) -> list[str]:
    spec = rendered.get("Deployment", deployment)["spec"]["template"]["spec"]
    return spec["containers"][0][probe]["exec"]["command"]


def wait_until(container: str, command: list[str], timeout: float = READY_TIMEOUT_S) -> str:
    """Run a rendered exec probe in the container until it passes (as the kubelet would)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        state = engine("inspect", "-f", "{{.State.Status}} {{.RestartCount}}", container,
                       check=False).stdout.strip()
        r = engine("exec", container, *command, check=False, timeout=60)
        if r.returncode == 0:
            return r.stdout.strip()
        last = (r.stdout + r.stderr).strip()
        if time.monotonic() > deadline:
            logs = engine("logs", "--tail", "60", container, check=False)
            raise AssertionError(f"{container} not ready after {timeout:.0f} s ({state}): {last}\n"
                                 f"{(logs.stdout + logs.stderr)[-5000:]}")
        time.sleep(1)


@pytest.fixture(scope="module")
def release(image, store, tmp_path_factory):
    """Version set A played (v1 takes all traffic) and ready; taken down at the end."""
    root = tmp_path_factory.mktemp("play")
    rel = Release(root, store)
    decodes, mounted = secret_volumes_decode(root)
    rel.secret_decoded, rel.secret_mounted = decodes, mounted
    # Podman 4.3 mounts Secret data still base64-encoded: the same files from a host folder
    folders = None if decodes else {rel.secret_name: write_secret_folder(rel.secret, root / "secret")}
    play = KubePlay(root / "release.yaml",
                    volumes=[rel.secret_name, f"{rel.fullname}-experiment", f"{rel.fullname}-torchserve"],
                    secrets=[rel.secret_name], tag=rel.tag)
    rel.play, rel.folders = play, folders
    t0 = time.monotonic()
    try:
        rel.a = rel.render(["1"], [("control", "1", 10000)])
        play.play([rel.secret] + for_podman(_docs(rel.a), rel.tag, folders))
        rel.ready_a = wait_until(rel.ts, _probe_command(rel.a, f"{rel.fullname}-torchserve", "startupProbe"))
        wait_until(rel.gw, _probe_command(rel.a, f"{rel.fullname}-gateway", "startupProbe"))
        wait_until(rel.gw, _probe_command(rel.a, f"{rel.fullname}-gateway", "readinessProbe"))
        rel.start_s = time.monotonic() - t0
        print(f"play to ready (TorchServe and gateway): {rel.start_s:.1f} s")
        yield rel
    finally:
        t1 = time.monotonic()
        problems = play.down()
        print(f"kube down: {time.monotonic() - t1:.1f} s")
        left = engine("ps", "-a", "--format", "{{.Names}}", check=False).stdout.split()
        assert not [n for n in left if rel.fullname in n], left
        assert not problems, problems


def recommend(rel, user: str, key: str | None = None, **body) -> requests.Response:
    headers = {"Authorization": f"Bearer {key or rel.client_key}"}
    return requests.post(f"{rel.url}/v1/recommendations", json={"user_id": user, "k": 5, **body},
                         headers=headers, timeout=30)


def test_podman_secret_volumes(release):
    """What this Podman does with a Secret volume, recorded: a Podman that mounts the decoded
    data, as Kubernetes does, makes the release fixture play the Secret volume as rendered."""
    version = engine("--version").stdout.strip()
    if release.secret_decoded:
        assert release.folders is None
    else:  # Podman 4.3: the file holds the base64 text of the value, not the value
        assert base64.b64decode(release.secret_mounted) == b'{"keys": []}\n', (version, release.secret_mounted)
    # the Secret object itself is played either way (Podman keeps it as a secret of that name)
    assert engine("secret", "inspect", release.secret_name).returncode == 0


def test_ready_and_recommendations_through_the_gateway(release):
    assert "v1 1/1" in release.ready_a, release.ready_a   # workers from the CPU limit (1)
    r = recommend(release, "3")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "1" and body["variant"] == "control" and not body["fallback"]
    assert body["experiment"] == "play" and len(body["items"]) == 5
    # the keys are the Secret's: none, or an unknown key, is refused
    assert requests.post(f"{release.url}/v1/recommendations", json={"user_id": "3"}, timeout=30).status_code == 401
    assert recommend(release, "3", key="not-a-key").status_code == 401
    # the gateway's view of the experiment: the ConfigMap's file
    d = requests.get(f"{release.url}/v1/admin/experiment", timeout=30,
                     headers={"Authorization": f"Bearer {release.admin_key}"}).json()
    assert d["file"] == "/etc/recsys/experiment/experiment.yaml"
    assert d["experiment"]["name"] == "play" and d["fractions"] == {"control": 1.0}


def test_experiment_configmap_is_mounted_read_only(release):
    new = {"name": "play", "salt": "play-1", "control": "control",
           "variants": [{"name": "control", "model_version": "1", "weight": 10000}]}
    r = requests.put(f"{release.url}/v1/admin/experiment", json=new, timeout=30,
                     headers={"Authorization": f"Bearer {release.admin_key}"})
    assert r.status_code == 409 and r.json()["reason"] == "experiment_read_only", r.text
    # a client key is not enough to try
    r = requests.put(f"{release.url}/v1/admin/experiment", json=new, timeout=30,
                     headers={"Authorization": f"Bearer {release.client_key}"})
    assert r.status_code == 403, r.text


def test_security_context_and_health_check(release):
    for ctr in (release.ts, release.gw):
        assert engine("exec", ctr, "id", "-u").stdout.strip() == "10001"
        assert engine("inspect", "-f", "{{.HostConfig.ReadonlyRootfs}}", ctr).stdout.strip() == "true"
        mounts = {line.split()[1]: line.split()[3].split(",") for line in
                  engine("exec", ctr, "cat", "/proc/mounts").stdout.splitlines()}
        assert "ro" in mounts["/"], mounts["/"]
        assert engine("exec", ctr, "touch", "/tmp/x").returncode == 0          # the tmp emptyDir
    # the emptyDirs are the pod's own: TorchServe's /tmp is not the gateway's
    assert engine("exec", release.gw, "test", "-e", "/tmp/recsys/torchserve", check=False).returncode != 0
    assert engine("exec", release.ts, "touch", "/etc/recsys/torchserve/x", check=False).returncode != 0
    assert engine("exec", release.ts, "touch", "/models/x", check=False).returncode != 0
    # Podman 4.3 turns the liveness probe (only that one: startup and readiness probes are not
    # run) into the container's health check, replacing the image's HEALTHCHECK; with no systemd
    # here its timer does not run, so `podman healthcheck run` runs it on demand
    for ctr, deployment in ((release.ts, "torchserve"), (release.gw, "gateway")):
        hc = json.loads(engine("inspect", "-f", "{{json .Config.Healthcheck}}", ctr).stdout)
        spec = release.a.get("Deployment", f"{release.fullname}-{deployment}")["spec"]["template"]["spec"]
        liveness = spec["containers"][0]["livenessProbe"]
        assert hc["Test"] == ["CMD-SHELL", *liveness["exec"]["command"], "||", "exit", "1"], hc
        assert (hc["Interval"], hc["Timeout"], hc["Retries"]) == (
            liveness["periodSeconds"] * 10**9, liveness["timeoutSeconds"] * 10**9,
            liveness["failureThreshold"]), hc
        r = engine("healthcheck", "run", ctr, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        health = json.loads(engine("inspect", "-f", "{{json .State.Health}}", ctr).stdout)
        assert health["Status"] == "healthy", health


def test_upgrade_to_a_second_version_at_50_percent(release):
    """Last: replays the release. TorchServe then holds both versions, and the gateway splits
    users between them by the shared assignment hash."""
    variants = [("control", "1", 5000), ("treatment", "2", 5000)]
    b = release.render(["1", "2"], variants)
    a_sum = release.a.get("Deployment", f"{release.fullname}-torchserve")["spec"]["template"]["metadata"]["annotations"]
    b_sum = b.get("Deployment", f"{release.fullname}-torchserve")["spec"]["template"]["metadata"]["annotations"]
    assert a_sum["checksum/config"] != b_sum["checksum/config"]   # on a cluster: a rolling update
    t0 = time.monotonic()
    release.play.play([release.secret] + for_podman(_docs(b), release.tag, release.folders))
    ready = wait_until(release.ts, _probe_command(b, f"{release.fullname}-torchserve", "readinessProbe"))
    wait_until(release.gw, _probe_command(b, f"{release.fullname}-gateway", "readinessProbe"))
    print(f"replay to ready: {time.monotonic() - t0:.1f} s")
    assert "v1 1/1" in ready and "v2 1/1" in ready, ready

    # the TorchServe pod serves both versions; the control's is the default
    for v in ("1", "2"):
        r = requests.post(f"{release.ts_url}/predictions/{MODEL}/{v}", json={"user_id": "3", "k": 3}, timeout=30)
        assert r.status_code == 200 and r.json()["model_version"] == v, r.text
    d = requests.get(f"{release.mgmt_url}/models/{MODEL}", timeout=30).json()
    assert d[0]["modelVersion"] == "1", d

    split = Split.of([(n, w) for n, _, w in variants], "control")
    version_of = {n: v for n, v, _ in variants}
    seen = {"control": 0, "treatment": 0}
    for user in USERS:
        r = recommend(release, user)
        assert r.status_code == 200, r.text
        body = r.json()
        want, _ = split.assign("play-1", canonical_id(user))
        assert body["variant"] == want and not body["fallback"], (user, body)
        assert body["model_version"] == version_of[want], (user, body)
        seen[want] += 1
    print(f"split of {len(USERS)} users: {seen}")
    assert 0.3 < seen["treatment"] / len(USERS) < 0.7, seen
    release.b, release.treated = b, {u for u in USERS
                                     if split.assign("play-1", canonical_id(u))[0] == "treatment"}


def test_a_weights_change_reaches_the_running_gateway(release):
    """A weights-only upgrade changes only the experiment ConfigMap: on a cluster the kubelet
    rewrites the mounted file and the gateway rereads it, no pod restarts. Here the new file the
    chart renders is written into the ConfigMap's volume (what the kubelet does, minus its
    symlink swap) and the same gateway container routes by it; treated users stay treated."""
    if not hasattr(release, "b"):
        pytest.skip("needs the upgrade above")
    variants = [("control", "1", 2000), ("treatment", "2", 8000)]
    c = release.render(["1", "2"], variants)
    assert c.get("Deployment", f"{release.fullname}-gateway") == release.b.get("Deployment", f"{release.fullname}-gateway")
    assert c.get("Deployment", f"{release.fullname}-torchserve") == release.b.get("Deployment", f"{release.fullname}-torchserve")
    text = c.get("ConfigMap", f"{release.fullname}-experiment")["data"]["experiment.yaml"]
    started = engine("inspect", "-f", "{{.State.StartedAt}}", release.gw).stdout
    folder = Path(engine("volume", "inspect", "-f", "{{.Mountpoint}}", f"{release.fullname}-experiment").stdout.strip())
    tmp = folder / ".experiment.yaml.new"
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(folder / "experiment.yaml")
    admin = {"Authorization": f"Bearer {release.admin_key}"}
    deadline = time.monotonic() + 30
    while True:
        d = requests.get(f"{release.url}/v1/admin/experiment", headers=admin, timeout=30).json()
        if d["fractions"] == {"control": 0.2, "treatment": 0.8}:
            break
        assert time.monotonic() < deadline, d
        time.sleep(0.5)
    assert engine("inspect", "-f", "{{.State.StartedAt}}", release.gw).stdout == started
    split = Split.of([(n, w) for n, _, w in variants], "control")
    treated = set()
    for user in USERS:
        body = recommend(release, user).json()
        assert body["variant"] == split.assign("play-1", canonical_id(user))[0], (user, body)
        treated |= {user} if body["variant"] == "treatment" else set()
    assert release.treated <= treated and len(treated) > len(release.treated), (len(release.treated), len(treated))
