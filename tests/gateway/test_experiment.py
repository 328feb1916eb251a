"""The experiment file and assignment as the gateway uses them (no server needed)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from common.assignment import N_BUCKETS
from gateway import experiment as E

GOOD = """
name: homepage-v4
salt: 2026-12-hp
control: control
variants:
  - {name: control, model_version: "3", weight: 9000}
  - {name: treatment, model_version: 4, weight: 1000}
"""


def test_good_file_parses():
    exp = E.loads(GOOD)
    assert exp.control == "control" and exp.versions == ["3", "4"]
    assert exp.split.ranges == {"control": (0, 9000), "treatment": (9000, 10000)}
    assert exp.fractions() == {"control": 0.9, "treatment": 0.1}
    # round trip through YAML keeps the experiment (and its digest)
    assert E.loads(exp.to_yaml()).digest == exp.digest


@pytest.mark.parametrize("text,field", [
    ("name: x\nsalt: s\ncontrol: a\n", "variants"),
    ("salt: s\ncontrol: a\nvariants: [{name: a, model_version: '1', weight: 1}]", "name"),
    ("name: x\nsalt: s\ncontrol: a\nvariants: [{name: a, model_version: '1', weight: -1}]",
     "variants[0].weight"),
    ("name: x\nsalt: s\ncontrol: a\nvariants: [{name: a, model_version: '1'}]",
     "variants[0].weight: required"),
    ("name: x\nsalt: s\ncontrol: a\nvariants: [{name: a, model_version: '1', weight: 1, "
     "colour: red}]", "variants[0]"),
    ("name: x\nsalt: s\ncontrol: b\nvariants: [{name: a, model_version: '1', weight: 1}]",
     "control"),
    ("name: x\nsalt: s\ncontrol: a\nvariants: [{name: a, model_version: '1', weight: 1}, "
     "{name: a, model_version: '2', weight: 1}]", "variants"),
    ("name: 'bad name!'\nsalt: s\ncontrol: a\nvariants: [{name: a, model_version: '1', weight: 1}]",
     "name"),
    ("name: x\nsalt: s\ncontrol: a\nvariants: [{name: a, model_version: '1', weight: 0}]",
     "weight"),
    ("name: x\nsalt: s\ncontrol: a\nvariants: [{name: a, model_version: 'v 1', weight: 1}]",
     "variants[0].model_version"),
    ("name: [unclosed", "YAML"),
])
def test_bad_files_name_the_field(text, field):
    with pytest.raises(E.ExperimentError) as e:
        E.loads(text, "exp.yaml")
    assert field in str(e.value), str(e.value)
    assert str(e.value).startswith("exp.yaml")


def test_several_experiments_are_refused():
    for text in (f"experiments:\n  - {GOOD.strip()}", "- name: a\n- name: b"):
        with pytest.raises(E.ExperimentError, match="one experiment at a time"):
            E.loads(text)


def _ids(n: int) -> list[str]:
    # real-looking ids of several shapes (integers, emails, non-Latin): the hash must not care
    shapes = (lambda i: str(i), lambda i: f"user{i}@example.com", lambda i: f"用户{i}",
              lambda i: f"{i:08x}-ab")
    return [shapes[i % 4](i) for i in range(n)]


@pytest.mark.parametrize("weights", [(5000, 5000), (9000, 1000), (7000, 2000, 1000)])
def test_assignment_counts_match_weights_chi_square(weights):
    """100,000 ids through the gateway's own assignment path (Experiment.assign)."""
    names = ["control", "a", "b"][: len(weights)]
    exp = E.simple("ratio", [str(i + 1) for i in range(len(weights))], list(weights), names)
    ids = _ids(100_000)
    counts = {n: 0 for n in names}
    for u in ids:
        counts[exp.assign(u).name] += 1
    observed = np.array([counts[n] for n in names])
    expected = np.array(weights) / N_BUCKETS * len(ids)
    chi2, p = stats.chisquare(observed, expected)
    assert p > 0.001, (counts, chi2, p)
    # and a deliberately wrong expectation is rejected: the test has power
    wrong = expected.copy()
    wrong[0] *= 1.03
    wrong[-1] = len(ids) - wrong[:-1].sum()
    assert stats.chisquare(observed, wrong)[1] < 0.001


def test_sticky_across_instances_and_reloads():
    a, b = E.loads(GOOD), E.loads(GOOD)
    ids = _ids(2000)
    assert [a.assign(u).name for u in ids] == [b.assign(u).name for u in ids]
    # canonical ids: the gateway canonicalizes before hashing ("007" is "7")
    from core.ids import canonical_id
    assert a.assign(canonical_id("007")) == a.assign(canonical_id(7))


def test_ramp_keeps_everyone_already_in_treatment():
    ids = _ids(50_000)
    exp10 = E.simple("ramp", ["3", "4"], [9000, 1000])
    exp50 = E.simple("ramp", ["3", "4"], [5000, 5000])
    before = {u for u in ids if exp10.assign(u).name == "treatment"}
    after = {u for u in ids if exp50.assign(u).name == "treatment"}
    assert before and before <= after
    assert 0.45 < len(after) / len(ids) < 0.55
    assert E.moved_buckets(exp10, exp50) == 4000
    # a new salt reshuffles everyone: reported as None
    assert E.moved_buckets(exp10, E.simple("ramp", ["3", "4"], [9000, 1000], salt="other")) is None


def test_fraction_weights_are_normalized():
    exp = E.simple("f", ["1", "2", "3"], [0.5, 0.25, 0.25], ["control", "a", "b"])
    assert exp.split.counts == {"control": 5000, "a": 2500, "b": 2500}
