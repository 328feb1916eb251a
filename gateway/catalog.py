"""The catalog of the versions the gateway serves, read from TorchServe's inference API.

The handler answers ``{"catalog": {"offset": o, "limit": n}}`` with a page of its item ids, the
total and a digest of the whole list (docs/serving.md). The gateway pages through each served
version's catalog with the popularity list's refresh (items added with ``add-items`` change the
digest, so they reach it), and keeps the union: an event on an item no served version knows is
logged but not stored. Only the inference API is used, which is all the gateway may reach on
Kubernetes. An archive too old to answer ``catalog`` leaves the catalog unknown (every item is
stored, as before).
"""
from __future__ import annotations

import logging

import orjson

from core.validation import MAX_CATALOG_PAGE

log = logging.getLogger("gateway.catalog")
PAGE = MAX_CATALOG_PAGE


class CatalogUnavailable(RuntimeError):
    pass


async def fetch(upstream, version: str, known_digest: str | None = None,
                timeout_s: float = 10.0) -> tuple[str, frozenset[str] | None]:
    """(digest, item ids) of ``version``; ids None when its digest is ``known_digest`` (only
    the first page is read then). Raises :class:`CatalogUnavailable`."""
    items: list[str] = []
    offset, digest = 0, None
    while True:
        body = orjson.dumps({"catalog": {"offset": offset, "limit": PAGE}})
        a = await upstream.predict(version, body, timeout_s)
        if a.kind != "ok":
            raise CatalogUnavailable(f"v{version}: {a.kind} {bytes(a.body[:200])!r}")
        try:
            d = orjson.loads(a.body)
            page, total, page_digest = d["items"], int(d["total"]), str(d["digest"])
        except (ValueError, KeyError, TypeError) as e:
            raise CatalogUnavailable(f"v{version}: not a catalog answer ({e})") from None
        if digest is None:
            digest = page_digest
            if digest == known_digest:
                return digest, None
        elif page_digest != digest:  # the catalog changed while paging: start over
            items, offset, digest = [], 0, None
            continue
        items.extend(str(i) for i in page)
        offset += len(page)
        if not page or offset >= total:
            return digest, frozenset(items)


class Catalogs:
    """Per served version: its digest and ids; :attr:`union` is what the store checks."""

    def __init__(self) -> None:
        self.by_version: dict[str, tuple[str, frozenset[str]]] = {}
        self.union: frozenset[str] | None = None

    async def refresh(self, upstream, versions: list[str]) -> frozenset[str] | None:
        """Re-read changed catalogs; the union over ``versions``, or None when any version's
        catalog is unavailable (then every item counts as known)."""
        complete, changed = True, self.union is None
        for v in versions:
            held = self.by_version.get(v)
            try:
                digest, ids = await fetch(upstream, v, held[0] if held else None)
            except CatalogUnavailable as e:
                log.warning("catalog of v%s unknown: %s", v, e)
                complete = False
                continue
            if ids is not None:
                self.by_version[v] = (digest, ids)
                changed = True
                log.info("catalog of v%s: %d items", v, len(ids))
        for v in list(self.by_version):
            if v not in versions:
                del self.by_version[v]
                changed = True
        if not complete:
            self.union = None
        elif changed:  # a union of 1M ids takes a while: only when a catalog changed
            union: set[str] = set()
            for _, ids in self.by_version.values():
                union |= ids
            self.union = frozenset(union)
        return self.union


__all__ = ["Catalogs", "fetch", "CatalogUnavailable", "PAGE"]
