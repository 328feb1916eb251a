"""A dataclass as a group of ``--flag-name`` options, and back.

Each stage keeps its tunables in one frozen dataclass (``etl/config.py``, ``training/config.py``,
``core/config.py``, ...); these helpers expose its fields on the stage's CLI so that the
defaults live in the dataclass and nowhere else.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _field_type(cls: type, f: dataclasses.Field) -> type:
    hints = typing.get_type_hints(cls)
    return hints[f.name]


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Expose each field of ``cls`` as ``--<prefix><field-name>`` with its default and type."""
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        typ = _field_type(cls, f)
        flag = "--" + prefix + f.name.replace("_", "-")
        if typ is bool:
            group.add_argument(flag, dest=prefix.replace("-", "_") + f.name,
                               action=argparse.BooleanOptionalAction, default=f.default)
        else:
            group.add_argument(flag, dest=prefix.replace("-", "_") + f.name, type=typ,
                               default=f.default, help=f"(default: {f.default})")


def from_args(cls: type[T], args: argparse.Namespace, prefix: str = "") -> T:
    """Build ``cls`` from the options :func:`add_dataclass_args` added."""
    values = {f.name: getattr(args, prefix.replace("-", "_") + f.name) for f in dataclasses.fields(cls)}
    return cls(**values)


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain JSON values (tuples become lists), as it is recorded in a manifest."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


__all__ = ["add_dataclass_args", "from_args", "to_dict"]
