"""Play rendered chart manifests with `podman kube play` (Podman 4.3, host network), as far as
Podman can, and always take them down again.

What Podman 4.3 does with the chart's objects (verified here; docs/kubernetes.md, "Played with
Podman"): Deployments become pods (one replica each) whose containers run the real image with
the rendered args, env, security context, resources and ConfigMap / hostPath / emptyDir volumes;
ConfigMaps and Secrets become named volumes and secrets; Services, NetworkPolicies, PDBs, HPAs
and the ServiceAccount are accepted and ignored. Where it departs from Kubernetes, the played
copy is adapted, each adaptation for one named reason (:func:`for_podman`):

* ``containerPort`` without ``hostPort`` becomes a port mapping, which host networking refuses
  ("PortMappings can only be used with Bridge or slirp4netns networking"): the copy drops the
  ``ports`` lists (with host networking every port is the host's loopback port anyway).
* an ``emptyDir`` becomes a named volume called after the pod-spec volume, so the two
  Deployments' ``tmp`` (and anyone else's) would be one folder: the copy gives each a unique name.
* a Secret volume mounts each ``data`` value still base64-encoded (``stringData``,
  ``defaultMode`` and ``fsGroup`` are ignored): when :func:`secret_volumes_decode` says so, the
  copy mounts a host folder holding the Secret's decoded files (root:10001, 0440, read-only) in
  its place; the Secret object itself is still played.

``podman kube down`` removes the pods and their emptyDir volumes but leaves the ConfigMap and
Secret volumes and the secrets: :meth:`KubePlay.down` removes those too.
"""
from __future__ import annotations

import base64
import copy
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.container.engine import ENGINE, IMAGE, engine

# Podman 4.3 dereferences SecretVolumeSource.optional without a nil check (podman #16636): the
# chart sets `optional: false` (Kubernetes' default) so that its Secret volume can be played.


def require_pause() -> None:
    """A pod's infra container needs Podman's pause image, which Podman 4.3 builds from the
    catatonit binary (Debian: package catatonit, a Recommends of podman; .ci/run installs it)."""
    if ENGINE != "podman":
        pytest.skip("podman kube play needs Podman")
    have = shutil.which("catatonit") or Path("/usr/libexec/podman/catatonit").exists() \
        or engine("images", "-q", "--filter", "reference=localhost/podman-pause", check=False).stdout.strip()
    if not have:
        msg = ("podman kube play needs catatonit for its pause image (apt-get install catatonit; "
               ".ci/run installs it)")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def decode_secret(obj: dict) -> dict[str, bytes]:
    """A Secret's data as the files Kubernetes would mount."""
    out = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    out.update({k: v.encode() for k, v in (obj.get("stringData") or {}).items()})
    return out


def write_secret_folder(obj: dict, folder: Path, gid: int = 10001) -> Path:
    """The files of a Secret volume as the kubelet writes them: root-owned, group ``gid``
    (the pod's fsGroup), mode 0440."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in decode_secret(obj).items():
        p = folder / name
        p.write_bytes(data)
        try:
            os.chown(p, 0, gid)
            p.chmod(0o440)
        except PermissionError:  # not root: readable by everyone instead
            p.chmod(0o444)
    folder.chmod(0o755)
    return folder


def for_podman(docs: list[dict], tag: str, secret_folders: dict[str, Path] | None = None) -> list[dict]:
    """The rendered objects, adapted where Podman 4.3 departs from Kubernetes (module doc).

    ``tag`` makes emptyDir names unique; ``secret_folders`` maps a Secret's name to the host
    folder mounted in place of its volume (None: Secret volumes are played as rendered)."""
    out = []
    for doc in copy.deepcopy(docs):
        if doc["kind"] == "Deployment":
            spec = doc["spec"]["template"]["spec"]
            renamed = {}
            for vol in spec.get("volumes", []):
                if "emptyDir" in vol:
                    renamed[vol["name"]] = f"{doc['metadata']['name']}-{vol['name']}-{tag}"
                    vol["name"] = renamed[vol["name"]]
                elif "secret" in vol and secret_folders and vol["secret"]["secretName"] in secret_folders:
                    folder = secret_folders[vol["secret"]["secretName"]]
                    vol.pop("secret")
                    vol["hostPath"] = {"path": str(folder), "type": "Directory"}
            for c in spec.get("initContainers", []) + spec["containers"]:
                c.pop("ports", None)
                for m in c.get("volumeMounts", []):
                    m["name"] = renamed.get(m["name"], m["name"])
        out.append(doc)
    return out


def secret_volumes_decode(tmp: Path) -> tuple[bool, bytes]:
    """Whether this Podman mounts a Secret volume's data decoded, as Kubernetes does; also the
    bytes it mounted for a known value. Plays one tiny pod (the project image, `cat`)."""
    tag = uuid.uuid4().hex[:8]
    name = f"recsys-secret-probe-{tag}"
    value = b'{"keys": []}\n'
    docs = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
         "data": {"probe.json": base64.b64encode(value).decode()}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
         "spec": {"restartPolicy": "Never",
                  "containers": [{"name": "c", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                                  "command": ["/bin/cat", "/s/probe.json"],
                                  "volumeMounts": [{"name": "s", "mountPath": "/s", "readOnly": True}]}],
                  "volumes": [{"name": "s", "secret": {"secretName": name, "optional": False}}]}},
    ]
    with KubePlay(tmp / f"{name}.yaml", [name], [name]) as play:
        play.play(docs)
        ctr = f"{name}-c"
        deadline = time.monotonic() + 60
        while engine("inspect", "-f", "{{.State.Status}}", ctr).stdout.strip() != "exited":
            assert time.monotonic() < deadline, engine("logs", ctr, check=False).stderr
            time.sleep(0.2)
        got = engine("logs", ctr).stdout.encode()
    return got == value, got


class KubePlay:
    """``podman kube play --network host`` of one file, replayed with ``--replace``; on exit
    ``kube down`` and the named volumes and secrets that ``kube down`` leaves behind (the
    ConfigMap and Secret volumes, named after their objects, and any volume whose name ends
    with ``-<tag>``, the emptyDirs :func:`for_podman` renamed)."""

    def __init__(self, path: Path, volumes: list[str], secrets: list[str], tag: str | None = None):
        self.path, self.volumes, self.secrets, self.tag = path, volumes, secrets, tag
        self.played = False

    def play(self, docs: list[dict], timeout: float = 300) -> None:
        self.path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        args = ["kube", "play", "--network", "host"] + (["--replace"] if self.played else [])
        self.played = True  # from the first attempt on: a half-made play is taken down too
        engine(*args, str(self.path), timeout=timeout)

    def down(self) -> list[str]:
        problems = []
        if self.played:
            r = engine("kube", "down", str(self.path), timeout=180, check=False)
            if r.returncode != 0:
                problems.append(r.stderr.strip())
        names = engine("volume", "ls", "--format", "{{.Name}}", check=False).stdout.split()
        for v in names:
            if v in self.volumes or (self.tag and v.endswith(f"-{self.tag}")):
                r = engine("volume", "rm", "-f", v, check=False)
                if r.returncode != 0:
                    problems.append(r.stderr.strip())
        for s in self.secrets:
            engine("secret", "rm", s, check=False)
        return problems

    def __enter__(self) -> "KubePlay":
        return self

    def __exit__(self, *exc) -> None:
        self.down()
