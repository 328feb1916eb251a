"""The model store: where archives live under ``OUT`` and which ones are there.

``OUT/model-store/<name>-v<version>.mar`` holds the archives (python -m archives build); a model's
name and version come from each archive's MANIFEST, so a renamed file still reads right.
"""
from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

MAR_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*?)-v(?P<version>[A-Za-z0-9_.]+)\.mar$")


class ArchiveNotFound(LookupError):
    """No archive of the asked model name and version in the store."""


def model_store(out: str | Path) -> Path:
    return Path(out).expanduser().resolve() / "model-store"


def mar_name(model_name: str, version: str | int) -> str:
    return f"{model_name}-v{version}.mar"


@dataclass(frozen=True)
class ArchiveInfo:
    path: Path
    model_name: str
    version: str
    reused: bool = False  # build found the same archive already built

    @property
    def file_name(self) -> str:
        return self.path.name


def version_key(v: str):
    """Sort key of a version string: numeric parts as numbers ("10" after "9")."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[._]", v))


def read_manifest(mar: Path) -> dict:
    with zipfile.ZipFile(mar) as z:
        return json.loads(z.read("MAR-INF/MANIFEST.json"))


def list_archives(out: str | Path) -> list[ArchiveInfo]:
    """Archives in ``OUT/model-store`` (name and version from each MANIFEST), oldest first."""
    return archives_in(model_store(out))


def archives_in(folder: Path, recursive: bool = False) -> list[ArchiveInfo]:
    """The readable ``.mar`` files in ``folder`` (name and version from each MANIFEST), oldest
    version first per model name; files that are not archives are skipped."""
    found = []
    pattern = "**/*.mar" if recursive else "*.mar"
    for p in sorted(folder.glob(pattern)) if folder.is_dir() else []:
        try:
            m = read_manifest(p)["model"]
        except (KeyError, zipfile.BadZipFile, json.JSONDecodeError):
            continue
        found.append(ArchiveInfo(p, m["modelName"], str(m["modelVersion"])))
    return sorted(found, key=lambda a: (a.model_name, version_key(a.version)))


def latest_archives(out: str | Path) -> dict[str, ArchiveInfo]:
    """The newest archive of each model name."""
    latest: dict[str, ArchiveInfo] = {}
    for a in list_archives(out):
        latest[a.model_name] = a  # sorted ascending: the last one wins
    return latest


def find_archive(out: str | Path, model_name: str, version: str | int) -> ArchiveInfo:
    for a in list_archives(out):
        if a.model_name == model_name and a.version == str(version):
            return a
    raise ArchiveNotFound(f"no archive of {model_name} version {version} in {model_store(out)} "
                          f"(build it with: python -m archives build --out {out} ...)")


__all__ = ["MAR_RE", "ArchiveNotFound", "ArchiveInfo", "model_store", "mar_name", "version_key",
           "read_manifest", "list_archives", "archives_in", "latest_archives", "find_archive"]
