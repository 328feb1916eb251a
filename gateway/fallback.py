"""What the gateway needs to know of a request body, and the answers it can give on its own.

The body is forwarded to TorchServe unchanged; the gateway reads only what routing, logging and
fallbacks need (:class:`RequestView`). Modes (CONTRACTS.md, "Gateway answers"):

* ``user``    top-k for a user        -> control, then the popularity list
* ``rerank``  ``candidates`` given    -> control, then the candidates in the order sent (the
                                         request's exclusions and, where the list knows an
                                         item's categories, filters applied)
* ``similar`` ``similar_to`` given    -> control, then items sharing the item's categories, most
                                         shared first, by popularity (plain popularity when they
                                         are unknown)

The popularity list is the control version's own answer for an unknown user without history
(``strategy: "popular"``), refreshed periodically and saved to ``OUT/gateway/popularity.json``
so that a gateway restarted while TorchServe is down still has one.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.ids import InvalidId, canonical_id, try_canonical_id


class BadRequest(ValueError):
    def __init__(self, reason: str, message: str, status: int = 400):
        super().__init__(message)
        self.reason, self.message, self.status = reason, message, status

    def to_dict(self) -> dict:
        kind = "PayloadTooLarge" if self.status == 413 else "BadRequest"
        return {"code": self.status, "type": kind, "reason": self.reason, "message": self.message}


@dataclass
class RequestView:
    user: str | None                 # canonical user id, None when absent
    raw_user: Any                    # as sent (echoed by fallback answers)
    mode: str                        # user | similar | rerank
    k: int = 10
    history: list = field(default_factory=list)
    exclude_seen: bool = True
    exclude: list = field(default_factory=list)
    include_categories: list | None = None
    exclude_categories: list = field(default_factory=list)
    candidates: list = field(default_factory=list)
    similar_to: Any = None


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def view_of(doc: dict) -> RequestView:
    """Read a decoded request object. Only the user id is checked here (routing needs it); the
    handler validates everything else and its 4xx passes through."""
    raw_user = doc.get("user_id")
    user = None
    if raw_user is not None:
        try:
            user = canonical_id(raw_user)
        except InvalidId as e:
            raise BadRequest("bad_user_id", f"user_id: {e}") from None
    if doc.get("similar_to") is not None:
        mode = "similar"
    elif doc.get("candidates") is not None:
        mode = "rerank"
    else:
        mode = "user"
    # the handler's defaults per mode (core/validation.py RecRequest): a candidate list is
    # answered whole, and keeps the items the user has seen unless exclude_seen is true
    k = doc.get("k")
    k = int(k) if isinstance(k, (int, float)) and not isinstance(k, bool) and 1 <= k <= 1000 else \
        (1000 if mode == "rerank" else 10)
    filters = doc.get("filters") if isinstance(doc.get("filters"), dict) else {}
    inc = filters.get("include_categories")
    seen = doc.get("exclude_seen")
    return RequestView(user=user, raw_user=raw_user, mode=mode, k=k,
                       history=_list(doc.get("history")),
                       exclude_seen=seen is True if mode == "rerank" else seen is not False,
                       exclude=_list(doc.get("exclude")),
                       include_categories=inc if isinstance(inc, list) else None,
                       exclude_categories=_list(filters.get("exclude_categories")),
                       candidates=_list(doc.get("candidates")),
                       similar_to=doc.get("similar_to"))


def mode_of(req) -> str:
    """The mode of a validated request (``core.validation.RecRequest``)."""
    return "similar" if req.similar_to is not None else \
        "rerank" if req.candidates is not None else "user"


def view_from(doc: dict, req) -> RequestView:
    """The view of a request the handler's validation accepted (``core.validation.RecRequest``:
    canonical ids, the mode's defaults applied). A fallback answer echoes the canonical user id,
    as the handler does."""
    return RequestView(user=req.user_id, raw_user=req.user_id, mode=mode_of(req), k=req.k,
                       history=list(req.history), exclude_seen=req.exclude_seen,
                       exclude=list(req.exclude),
                       include_categories=(list(req.include_categories)
                                           if req.include_categories is not None else None),
                       exclude_categories=list(req.exclude_categories),
                       candidates=list(req.candidates or ()), similar_to=req.similar_to)


def _ids(values: list) -> set[str]:
    return {c for c in (try_canonical_id(v) for v in values) if c is not None}


class Popularity:
    """The in-memory popularity list (most popular first) with each item's categories when the
    handler sends them (``items[].categories``); else categories are unknown."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self.items: list[dict] = []
        self.version: str | None = None
        self.fetched_at = 0.0

    def __len__(self) -> int:
        return len(self.items)

    def set(self, body: dict, version: str) -> None:
        items = []
        for it in body.get("items") or []:
            if isinstance(it, dict) and it.get("item_id") is not None:
                cats = it.get("categories")
                items.append({"item_id": str(it["item_id"]), "score": float(it.get("score") or 0.0),
                              "title": str(it.get("title") or ""),
                              "categories": [str(c) for c in cats] if isinstance(cats, list) else None})
        if not items:
            raise ValueError("the popularity answer has no items")
        self.items, self.version, self.fetched_at = items, str(version), time.time()
        self._index = None
        if self.path is not None:
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(json.dumps({"version": self.version, "fetched_at": self.fetched_at,
                                       "items": self.items}))
            tmp.replace(self.path)

    def load(self) -> bool:
        if self.path is None or not self.path.exists():
            return False
        try:
            d = json.loads(self.path.read_text())
            self.items, self.version = list(d["items"]), str(d["version"])
            self.fetched_at = float(d.get("fetched_at", 0.0))
            self._index = None
            return bool(self.items)
        except (OSError, ValueError, KeyError):
            return False

    @property
    def index(self) -> dict[str, dict]:
        if getattr(self, "_index", None) is None:
            self._index = {it["item_id"]: it for it in self.items}
        return self._index

    # ---- answers ---------------------------------------------------------------------------
    @staticmethod
    def _out(it: dict) -> dict:
        d = {"item_id": it["item_id"], "score": it["score"], "title": it["title"]}
        if it.get("categories") is not None:
            d["categories"] = it["categories"]
        return d

    def _filtered(self, v: RequestView, skip: set[str]) -> list[dict]:
        inc = set(map(str, v.include_categories)) if v.include_categories is not None else None
        exc = set(map(str, v.exclude_categories))
        out = []
        for it in self.items:
            if it["item_id"] in skip:
                continue
            cats = it.get("categories")
            if cats is not None:
                if inc is not None and not inc.intersection(cats):
                    continue
                if exc.intersection(cats):
                    continue
            out.append(it)
            if len(out) >= v.k:
                break
        return out

    def answer(self, v: RequestView) -> tuple[dict, str] | None:
        """(response body without the gateway's fields, strategy) or None when nothing can
        answer (empty popularity list outside rerank mode)."""
        skip = _ids(v.exclude)
        if v.exclude_seen:
            skip |= _ids(v.history)
        extra: dict[str, Any] = {}
        if v.mode == "rerank":
            items, seen = [], set()
            for c in v.candidates:
                cid = try_canonical_id(c)
                if cid is None or cid in skip or cid in seen:
                    continue
                known = self.index.get(cid) or {"item_id": cid, "title": ""}
                if not self._passes(known, v):
                    continue
                seen.add(cid)
                items.append(self._out({**known, "score": 0.0}))
                if len(items) >= v.k:
                    break
            strategy = "as_sent"
            extra["ignored_candidates"] = []  # unknown here: only the model knows its catalog
        else:
            if not self.items:
                return None
            if v.mode == "similar":
                sid = try_canonical_id(v.similar_to)
                extra["similar_to"] = sid
                if sid is not None:
                    skip = skip | {sid}
                cats = (self.index.get(sid) or {}).get("categories") if sid else None
                if cats:
                    same = set(cats)
                    pool = [it for it in self.items if it["item_id"] not in skip
                            and same.intersection(it.get("categories") or ()) and self._passes(it, v)]
                    # most categories in common first, then popularity (the list's order)
                    pool.sort(key=lambda it: -len(same.intersection(it["categories"])))
                    items = pool[: v.k]
                else:
                    items = self._filtered(v, skip)
            else:
                items = self._filtered(v, skip)
            items = [self._out(it) for it in items]
            strategy = "popular"
        body = {"user_id": v.raw_user, "model_version": self.version, "strategy": strategy,
                "items": items, "ignored_history": [], **extra}
        return body, strategy

    @staticmethod
    def _passes(it: dict, v: RequestView) -> bool:
        cats = it.get("categories")
        if cats is None:
            return True
        if v.include_categories is not None and not set(map(str, v.include_categories)) & set(cats):
            return False
        return not set(map(str, v.exclude_categories)) & set(cats)


__all__ = ["RequestView", "view_of", "view_from", "mode_of", "Popularity", "BadRequest"]
