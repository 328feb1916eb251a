"""The upgrade path, as `helm upgrade` and `helm rollback` would apply it: version set A, then
B (a second version at 10%), then A again. What changes: TorchServe's config and its checksum
(a rolling update of TorchServe), the init step's archive list, the experiment ConfigMap. What
must not: selectors (immutable), Service names and ports, the gateway's pod template (the
gateway reloads the experiment in place), and A rendered again equals A."""
from __future__ import annotations

import json

from tests.helm.chart import RELEASE, render, version_set_a, version_set_b


def _pod_template(r, component):
    return r.deployment(component)["spec"]["template"]


def _checksum(r):
    return _pod_template(r, "torchserve")["metadata"]["annotations"]["checksum/config"]


def test_a_to_b_to_a():
    a, b, a2 = render(version_set_a()), render(version_set_b()), render(version_set_a())

    # --- what changes -------------------------------------------------------------------------
    assert _checksum(a) != _checksum(b)
    assert json.loads(a.config_properties()["model_snapshot"])["models"]["recsys"].keys() == {"3"}
    assert json.loads(b.config_properties()["model_snapshot"])["models"]["recsys"].keys() == {"3", "4"}
    init = lambda r: _pod_template(r, "torchserve")["spec"]["initContainers"][0]["args"][3:]  # noqa: E731
    assert len(init(a)) == 1 and len(init(b)) == 2
    exp = lambda r: r.get("ConfigMap", f"{RELEASE}-experiment")["data"]["experiment.yaml"]  # noqa: E731
    assert exp(a) != exp(b)
    readiness = lambda r: r.container("torchserve")["readinessProbe"]["exec"]["command"]  # noqa: E731
    assert readiness(b)[-2:] == ["3", "4"] and readiness(a)[-1:] == ["3"]

    # --- what must not ------------------------------------------------------------------------
    for component in ("torchserve", "gateway"):
        assert a.deployment(component)["spec"]["selector"] == b.deployment(component)["spec"]["selector"]
        assert a.get("Service", f"{RELEASE}-{component}") == b.get("Service", f"{RELEASE}-{component}")
        assert a.deployment(component)["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert _pod_template(a, "gateway") == _pod_template(b, "gateway"), \
        "a new experiment must not roll the gateway (it reloads the ConfigMap)"
    assert set(a.objs) == set(b.objs)  # the same objects: nothing deleted or added

    # --- rollback: A again is exactly A -----------------------------------------------------------
    assert a2.files == a.files


def test_weights_only_change_rolls_nothing():
    """90/10 -> 50/50 on the same versions: only the experiment ConfigMap changes."""
    b = render(version_set_b())
    fifty = version_set_b()
    fifty["experiment"]["variants"][0]["weight"] = 5000
    fifty["experiment"]["variants"][1]["weight"] = 5000
    c = render(fifty)
    changed = {key for key in b.objs if b.objs[key] != c.objs[key]}
    assert changed == {("ConfigMap", f"{RELEASE}-experiment")}


def test_canary_ramp_never_moves_a_treated_user_out():
    """The experiment files of the walkthrough (10% -> 50%): users in the treatment stay there
    (the gateway's assignment, common/assignment.py, read from the rendered ConfigMaps)."""
    from gateway import experiment as E
    ten = E.loads(render(version_set_b()).get("ConfigMap", f"{RELEASE}-experiment")["data"]["experiment.yaml"], "10")
    fifty_values = version_set_b()
    fifty_values["experiment"]["variants"][0]["weight"] = 5000
    fifty_values["experiment"]["variants"][1]["weight"] = 5000
    fifty = E.loads(render(fifty_values).get("ConfigMap", f"{RELEASE}-experiment")["data"]["experiment.yaml"], "50")
    users = [str(u) for u in range(2000)]
    treated10 = {u for u in users if ten.assign(u).name == "treatment"}
    treated50 = {u for u in users if fifty.assign(u).name == "treatment"}
    assert treated10 and treated10 <= treated50 and len(treated50) > 3 * len(treated10)
