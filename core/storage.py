"""Paths that may be local folders or object-store URIs (``s3://bucket/key``).

``pathlib.Path("s3://b/k")`` collapses the double slash, so URIs get their own small path
type with the few operations the stages use (join, name, parent, with_name).
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath


class UriPath:
    """A ``scheme://authority/key`` path joined like a POSIX path."""

    def __init__(self, uri: str):
        scheme, sep, rest = uri.partition("://")
        if not sep:
            raise ValueError(f"not a URI: {uri!r}")
        authority, _, key = rest.partition("/")
        self.scheme, self.authority = scheme, authority
        self.key = PurePosixPath("/" + key)

    def _with_key(self, key: PurePosixPath) -> "UriPath":
        return UriPath(f"{self.scheme}://{self.authority}{key}")

    def __truediv__(self, other: str) -> "UriPath":
        return self._with_key(self.key / other)

    @property
    def name(self) -> str:
        return self.key.name

    @property
    def parent(self) -> "UriPath":
        return self._with_key(self.key.parent)

    def with_name(self, name: str) -> "UriPath":
        return self._with_key(self.key.with_name(name))

    def relative_to(self, other: "UriPath") -> PurePosixPath:
        return self.key.relative_to(other.key)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}{self.key}".rstrip("/")

    def __repr__(self) -> str:
        return f"UriPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UriPath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


AnyPath = Path | UriPath


def as_path(value: str | Path | UriPath) -> AnyPath:
    """A local ``Path`` for plain paths and ``file://`` URIs, a ``UriPath`` for the rest."""
    if isinstance(value, (Path, UriPath)):
        return value
    if value.startswith("file:"):  # file:///x, and Hadoop's file:/x
        return Path("/" + value[len("file:"):].lstrip("/"))
    if "://" in value:
        return UriPath(value)
    return Path(value)


def is_local(path: AnyPath) -> bool:
    return isinstance(path, Path)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a local file, streamed (``hashlib.file_digest``)."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
