"""The experiment file: schema-checked YAML -> an immutable :class:`Experiment`.

Decision (docs/gateway.md): **one experiment at a time**. Every user with an id is in the
running experiment; there are no layers. A file that describes several experiments (a list, or
an ``experiments:`` key) is refused with a message saying so. Running a second test means
ending the first (or making it a variant of one multi-arm experiment), which keeps the
analysis simple: no user is ever in two tests, and a weight change moves a known number of
buckets (logged).

Assignment is imported from ``common/assignment.py`` (the contract's hash and ranges).
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from common.assignment import N_BUCKETS, Split, changed_buckets

SCHEMA_PATH = Path(__file__).with_name("experiment.schema.json")
SCHEMA = json.loads(SCHEMA_PATH.read_text())
_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


class ExperimentError(ValueError):
    """An experiment we refuse; the message names the field."""


@dataclass(frozen=True)
class Variant:
    name: str
    model_version: str
    weight: float


@dataclass(frozen=True)
class Experiment:
    name: str
    salt: str
    control: str
    variants: tuple[Variant, ...]
    split: Split
    digest: str                      # sha256 of the canonical JSON (reload detection)
    description: str = ""

    # computed once per experiment, not per request (the experiment is immutable); do not
    # mutate the returned dict
    @functools.cached_property
    def by_name(self) -> dict[str, Variant]:
        return {v.name: v for v in self.variants}

    @functools.cached_property
    def control_variant(self) -> Variant:
        return self.by_name[self.control]

    @property
    def versions(self) -> list[str]:
        """Model versions named, control's first, without repeats."""
        out: list[str] = []
        for v in [self.control_variant, *self.variants]:
            if v.model_version not in out:
                out.append(v.model_version)
        return out

    def assign(self, canonical_user_id: str) -> Variant:
        name, _ = self.split.assign(self.salt, canonical_user_id)
        return self.by_name[name]

    def fractions(self) -> dict[str, float]:
        return self.split.fractions()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "salt": self.salt, "control": self.control}
        if self.description:
            d["description"] = self.description
        d["variants"] = [{"name": v.name, "model_version": v.model_version,
                          "weight": int(v.weight) if float(v.weight).is_integer() else v.weight}
                         for v in self.variants]
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def _where(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def parse(doc: Any, source: str = "experiment") -> Experiment:
    """Validate a decoded document (YAML or JSON) and build the experiment."""
    if isinstance(doc, list) or (isinstance(doc, dict) and "experiments" in doc):
        raise ExperimentError(f"{source}: one experiment at a time: the file must describe a "
                              "single experiment (name, salt, control, variants), not several")
    if not isinstance(doc, dict):
        raise ExperimentError(f"{source}: expected a mapping with name, salt, control, variants; "
                              f"got {type(doc).__name__}")
    errors = sorted(_VALIDATOR.iter_errors(doc), key=lambda e: (len(e.path), list(map(str, e.path))))
    if errors:
        e = errors[0]
        field = _where(e.path)
        if e.validator == "required":
            missing = e.message.split("'")[1] if "'" in e.message else e.message
            field = f"{field}.{missing}" if e.path else missing
            raise ExperimentError(f"{source}: {field}: required field is missing")
        if e.validator == "additionalProperties":
            raise ExperimentError(f"{source}: {field}: {e.message}")
        raise ExperimentError(f"{source}: {field}: {e.message}")
    variants = tuple(Variant(str(v["name"]), str(v["model_version"]), float(v["weight"]))
                     for v in doc["variants"])
    names = [v.name for v in variants]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ExperimentError(f"{source}: variants: names must be unique, repeated: {dup}")
    if doc["control"] not in names:
        raise ExperimentError(f"{source}: control: {doc['control']!r} is not one of the variants "
                              f"{names}")
    if sum(v.weight for v in variants) <= 0:
        raise ExperimentError(f"{source}: variants[].weight: weights must not all be zero")
    try:
        split = Split.of([(v.name, v.weight) for v in variants], doc["control"])
    except ValueError as e:
        raise ExperimentError(f"{source}: variants: {e}") from None
    canonical = {"name": doc["name"], "salt": doc["salt"], "control": doc["control"],
                 "variants": [[v.name, v.model_version, v.weight] for v in variants]}
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()
    return Experiment(name=doc["name"], salt=doc["salt"], control=doc["control"],
                      variants=variants, split=split, digest=digest,
                      description=str(doc.get("description") or ""))


def loads(text: str, source: str = "experiment") -> Experiment:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ExperimentError(f"{source}: not valid YAML: {e}") from None
    return parse(doc, source)


def load(path: str | Path) -> Experiment:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ExperimentError(f"{p}: cannot read: {e.strerror or e}") from None
    return loads(text, str(p))


def write(path: str | Path, exp: Experiment) -> None:
    """Atomically replace ``path`` (a reader never sees half a file)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(exp.to_yaml())
    tmp.replace(p)


def moved_buckets(old: Experiment | None, new: Experiment) -> int | None:
    """Buckets that change owner (None when the salt or the experiment changes: everyone)."""
    if old is None or old.name != new.name or old.salt != new.salt:
        return None
    return changed_buckets(old.split, new.split)


def simple(name: str, versions: list[str], weights: list[float] | None = None,
           names: list[str] | None = None, salt: str | None = None) -> Experiment:
    """An experiment over ``versions`` (the first is control), equal weights by default."""
    weights = weights or [N_BUCKETS / len(versions)] * len(versions)
    names = names or (["control"] + [f"treatment{i}" if len(versions) > 2 else "treatment"
                                     for i in range(1, len(versions))])
    if not (len(names) == len(versions) == len(weights)):
        raise ExperimentError("versions, weights and names must have the same length")
    return parse({"name": name, "salt": salt or name, "control": names[0],
                  "variants": [{"name": n, "model_version": str(v), "weight": w}
                               for n, v, w in zip(names, versions, weights)]})


__all__ = ["Experiment", "Variant", "ExperimentError", "parse", "loads", "load", "write",
           "moved_buckets", "simple", "SCHEMA"]
