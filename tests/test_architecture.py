"""The import direction between the top-level packages: every import of every module (module
level or inside a function, ``import x`` and ``from x import y``, relative imports resolved)
must be an edge of :data:`ALLOWED`, and :data:`ALLOWED` itself only points down :data:`ORDER`,
so no back edge and no cycle between packages can come back unnoticed.

A new edge is a design decision: add it to :data:`ALLOWED` (and to the README's architecture
table) only when it points to a package earlier in :data:`ORDER`; otherwise move the shared
piece down (into ``core/`` or ``common/``). Tests may import anything and are not walked.
"""
from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The data flow, bottom up: a package may import only packages before it.
ORDER = ("core", "common", "etl", "training", "archives", "handlers", "realtime",
         "gateway", "recsys_sagemaker", "monitoring", "testkit", "benchmarks")

# package -> the packages it may import (besides itself). Keep in step with the README.
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),                       # the served core: imports no package of ours
    "common": frozenset({"core"}),
    "etl": frozenset({"core", "common"}),
    "training": frozenset({"core", "common", "etl"}),
    "archives": frozenset({"core", "common", "etl", "training"}),
    "handlers": frozenset({"core"}),           # ships in the .mar with core/ only
    # the recent-event store and merge rule (gateway), the offline replay (engine + splits)
    "realtime": frozenset({"core", "common", "training", "archives"}),
    "gateway": frozenset({"core", "common", "archives", "realtime"}),
    "recsys_sagemaker": frozenset({"core", "common", "archives"}),
    "monitoring": frozenset({"core", "common", "archives", "gateway"}),
    # helpers that start our services for tests and benchmarks; in no image
    "testkit": frozenset({"core", "common", "archives", "realtime", "gateway"}),
    "benchmarks": frozenset({"core", "common", "etl", "training", "archives", "realtime", "gateway",
                             "testkit"}),
}

# Folders at the top of the repository that hold Python but are no package of ours.
NOT_PACKAGES = {"tests", "docs"}


def package_dir(name: str) -> Path:
    """Where package ``name`` lives: ``REPO/name`` (one folder down is searched too, so that a
    package moved into a subfolder is still found, and found once)."""
    found = [d for d in [REPO / name, *sorted(REPO.glob(f"*/{name}"))]
             if (d / "__init__.py").is_file() and ".venv" not in d.parts and d.parent.name != "tests"]
    assert len(found) == 1, f"package {name!r}: expected one folder with __init__.py, found {found}"
    return found[0]


def module_name(package: str, root: Path, path: Path) -> list[str]:
    """Dotted name parts of the module in ``path`` (a package's ``__init__`` is the package)."""
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_modules(tree: ast.AST, module: list[str], is_package: bool):
    """(line, absolute module name, source text) of every import in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            names = ", ".join(a.name for a in node.names)
            if node.level:
                here = module if is_package else module[:-1]
                base = here[: len(here) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
                text = f"from {'.' * node.level}{node.module or ''} import {names}"
            else:
                name, text = node.module or "", f"from {node.module} import {names}"
            yield node.lineno, name, text


def package_edges() -> list[tuple[str, str, str, int, str]]:
    """(importer, imported, file relative to the repo, line, import text) of every import of a
    top-level package by another one."""
    edges = []
    for package in ORDER:
        root = package_dir(package)
        for path in sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            module = module_name(package, root, path)
            for line, name, text in imported_modules(tree, module, path.name == "__init__.py"):
                top = name.split(".")[0]
                if top in ALLOWED and top != package:
                    edges.append((package, top, str(path.relative_to(REPO)), line, text))
    return edges


def test_the_table_points_down_the_order_and_has_no_cycle():
    assert list(ALLOWED) == list(ORDER)
    up = [f"{a} -> {b}" for a, deps in ALLOWED.items() for b in deps
          if b not in ORDER or ORDER.index(b) >= ORDER.index(a)]
    assert not up, f"ALLOWED has edges that do not point to an earlier package of ORDER: {up}"
    try:
        order = list(graphlib.TopologicalSorter(ALLOWED).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"ALLOWED has a cycle: {' -> '.join(e.args[1])}")
    assert set(order) == set(ORDER)


def test_every_top_level_package_is_in_the_table():
    found = {d.name for d in REPO.iterdir()
             if d.is_dir() and not d.name.startswith(".") and (d / "__init__.py").is_file() and d.name not in NOT_PACKAGES}
    found |= {d.parent.name for d in REPO.glob("*/*/__init__.py")
              if d.parent.parent.name not in NOT_PACKAGES | set(ORDER)
              and not d.parent.parent.name.startswith(".") and not (d.parent.parent / "__init__.py").exists()}
    assert found <= set(ORDER), f"packages missing from ORDER/ALLOWED: {sorted(found - set(ORDER))}"
    for package in ORDER:
        package_dir(package)


def test_imports_follow_the_allowed_edges():
    edges = package_edges()
    assert edges, "no import between packages found: the walk itself is broken"
    bad = [f"{file}:{line}: {a} -> {b} ({text}) is not in ALLOWED[{a!r}]"
           for a, b, file, line, text in edges if b not in ALLOWED[a]]
    assert not bad, "imports against the package order (move the shared piece down into " \
                    "core/ or common/ instead):\n" + "\n".join(bad)


def test_the_walk_sees_function_level_and_relative_imports():
    """The walker itself: an import inside a function and a relative one both count."""
    source = "def f():\n    from training.tracking import start_run\nfrom .server import x\n"
    found = list(imported_modules(ast.parse(source), ["archives", "build"], is_package=False))
    assert sorted((line, name) for line, name, _ in found) == [(2, "training.tracking"),
                                                               (3, "archives.server")]
    found = list(imported_modules(ast.parse("from .. import core\n"), ["archives", "sub"],
                                  is_package=True))
    assert [name for _, name, _ in found] == ["archives"]
