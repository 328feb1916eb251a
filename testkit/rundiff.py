"""Is a refactor behaviour-neutral? Compare two ``make demo`` outputs, file by file and answer by answer.

    python -m testkit.rundiff BEFORE_OUT AFTER_OUT [--users 50] [--json report.json]

Checks, each reported as a list of differences (empty = identical):
* the serving artifacts (``model/*_artifact/``), byte for byte;
* the files each archive ships besides code (``artifact/`` and the pack and index under
  ``serving/``), unpacked from every ``model-store/*.mar``;
* every figure of ``eval.json`` and ``parity.json``;

What no two runs of the same code share is left out, and said so: wall-clock times, creation
times and MLflow run ids (:data:`VOLATILE_KEYS`) and the byte sizes of JSON files that hold them
(``index_files``' ``*.json`` entries), the OUT folder in paths (read as ``OUT``), and the order
of a safetensors header's ``__metadata__`` keys (the library writes them from a hash map, so two
writes of one file may differ there: a ``.safetensors`` file is compared by its parsed header
and its tensor bytes, and the raw digest of one recorded in a JSON file is left out). Every
other byte counts:
* the raw bytes TorchServe answers to the demo requests and to ``--users`` known users, their
  histories as new users and their related items, for every version: each OUT's archives are
  served in turn by a TorchServe on free ports, so the answers come from the handler code each
  archive carries.

Exit status 0 when everything is identical, 1 otherwise.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any, Iterator

from common.cli import FAILED, OK, run_cli
from core.jsonio import write_json

VOLATILE_KEYS = frozenset({"seconds", "fit_seconds", "build_s", "index_build_s", "pack_build_s",
                           "created_at", "built_at", "run_id"})
SHIPPED_PREFIXES = ("artifact/", "serving/")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _normal(doc: Any, out: str) -> Any:
    """``doc`` without :data:`VOLATILE_KEYS`, with ``out`` read as ``OUT`` in strings."""
    if isinstance(doc, dict):
        return {k: _normal(v, out) for k, v in doc.items() if k not in VOLATILE_KEYS
                and not (k.endswith(".json") and isinstance(v, int))      # a size: it holds a time
                and not (k.endswith(".safetensors") and isinstance(v, str))}  # a raw digest
    if isinstance(doc, list):
        return [_normal(v, out) for v in doc]
    return doc.replace(out, "OUT") if isinstance(doc, str) else doc


def content_digest(name: str, data: bytes, out: Path) -> str:
    """sha256 of a file's content as defined above: JSON normalized, safetensors by header and
    tensor bytes, anything else byte for byte."""
    if name.endswith(".json"):
        data = json.dumps(_normal(json.loads(data), str(out)), sort_keys=True).encode()
    elif name.endswith(".safetensors"):
        n = struct.unpack("<Q", data[:8])[0]
        data = json.dumps(json.loads(data[8:8 + n]), sort_keys=True).encode() + data[8 + n:]
    return _sha256(data)


def _tree(root: Path, out: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): content_digest(p.name, p.read_bytes(), out)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _diff_maps(name: str, a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    out = [f"{name}: {k} only in BEFORE" for k in sorted(a.keys() - b.keys())]
    out += [f"{name}: {k} only in AFTER" for k in sorted(b.keys() - a.keys())]
    out += [f"{name}: {k} differs ({a[k]!r:.80} vs {b[k]!r:.80})"
            for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]
    return out


def artifact_files(out: Path) -> dict[str, str]:
    """sha256 of every file of every serving artifact folder under ``OUT/model``."""
    found: dict[str, str] = {}
    for folder in sorted((out / "model").glob("*_artifact")):
        found.update({f"{folder.name}/{k}": v for k, v in _tree(folder, out).items()})
    return found


def shipped_files(out: Path) -> dict[str, str]:
    """sha256 of the non-code files of every archive: the artifact, the pack and the index."""
    found: dict[str, str] = {}
    for mar in sorted((out / "model-store").glob("*.mar")):
        with zipfile.ZipFile(mar) as z:
            for n in sorted(z.namelist()):
                if n.startswith(SHIPPED_PREFIXES) and not n.endswith("/"):
                    found[f"{mar.name}/{n}"] = content_digest(n, z.read(n), out)
    return found


def figures(doc: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, leaf) of a normalized JSON document; NaN as the string "NaN" (NaN != NaN)."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from figures(v, f"{path}/{k}")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from figures(v, f"{path}[{i}]")
    else:
        yield path, "NaN" if isinstance(doc, float) and math.isnan(doc) else doc


def json_figures(out: Path, name: str) -> dict[str, Any]:
    return dict(figures(_normal(json.loads((out / name).read_text()), str(out))))


def request_bodies(out: Path, users: int, model: str = "recsys") -> list[dict]:
    """The demo's requests plus, for ``users`` known users: top-k, their history as a new user,
    and the items related to their first history item."""
    from archives.build import build_info
    from archives.demo import demo_requests
    from archives.store import list_archives

    newest = max((a for a in list_archives(out) if a.model_name == model), key=lambda a: int(a.version))
    bodies = [body for _, body in demo_requests(build_info(out, model, newest.version).get("artifact", {}))]
    artifact = out / "model" / "serving_artifact"
    user_ids = (artifact / "user_ids.txt").read_text().split()[:users]
    item_ids = (artifact / "item_ids.txt").read_text().split()
    for i, user in enumerate(user_ids):
        history = item_ids[i % len(item_ids):][:5]
        bodies += [{"user_id": user, "k": 10},
                   {"user_id": f"new-{user}", "history": history, "k": 10},
                   {"similar_to": history[0], "k": 10}]
    return bodies


def answers(out: Path, bodies: list[dict], model: str = "recsys") -> dict[str, str]:
    """sha256 of TorchServe's raw answer to each body, per version, with OUT's own archives."""
    from archives.client import TorchServeClient
    from archives.store import list_archives
    from testkit.archives import running_server

    versions = {a.version: a.path.name for a in list_archives(out) if a.model_name == model}
    got: dict[str, str] = {}
    for version, mar in sorted(versions.items()):
        with running_server(out, config="dev", models={model: mar}) as state:
            client = TorchServeClient(state)
            for i, body in enumerate(bodies):
                r = client.predict(model, body)
                got[f"v{version} #{i} {json.dumps(body)[:60]}"] = f"{r.status_code} {_sha256(r.content)}"
    return got


def compare(before: Path, after: Path, users: int) -> dict[str, list[str]]:
    checks = (("artifact_files", "artifact", artifact_files),
              ("archive_files", "archive", shipped_files),
              ("eval_json", "eval.json", lambda out: json_figures(out, "eval.json")),
              ("parity_json", "parity.json", lambda out: json_figures(out, "parity.json")))
    found = {key: (read(before), read(after)) for key, _, read in checks}  # each file read once
    report = {key: _diff_maps(label, *found[key]) for key, label, _ in checks}
    bodies = request_bodies(after, users)
    got = answers(after, bodies)
    report["answers"] = _diff_maps("answer", answers(before, bodies), got)
    statuses = sorted({v.split()[0] for v in got.values()})
    report["counts"] = [f"{len(found['artifact_files'][1])} artifact files, "
                        f"{len(found['archive_files'][1])} archive files, "
                        f"{len(found['eval_json'][1])} eval.json figures, "
                        f"{len(got)} answers ({len(bodies)} requests per version; statuses "
                        f"{', '.join(statuses)})"]
    return report


def cmd_rundiff(a: argparse.Namespace) -> int:
    report = compare(a.before.resolve(), a.after.resolve(), a.users)
    for section, lines in report.items():
        state = "" if section == "counts" else (" identical" if not lines else f" {len(lines)} differences")
        print(f"{section}:{state}")
        for line in lines[:20]:
            print(f"  {line}")
    if a.json:
        write_json(a.json, report)
    return OK if not any(v for k, v in report.items() if k != "counts") else FAILED


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m testkit.rundiff", description=__doc__.split("\n\n")[0])
    p.add_argument("before", type=Path, help="OUT of the run before the change")
    p.add_argument("after", type=Path, help="OUT of the run after the change")
    p.add_argument("--users", type=int, default=50, help="known users to query (3 requests each)")
    p.add_argument("--json", type=Path, help="also write the report here")
    p.set_defaults(fn=cmd_rundiff)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(parser(), argv, (OSError, LookupError), logs=False)


if __name__ == "__main__":
    sys.exit(main())
