"""Validation of recommendation requests: pure Python (standard library only).

The TorchServe handler ships this file inside the model archive; tests import it directly,
without TorchServe or torch. The contract is documented by ``request.schema.json`` next to
this file (a test checks that both accept and reject the same bodies).

A body reaches the handler in one of three shapes, depending on the request's Content-Type
(TorchServe's worker decodes ``application/json`` itself and passes other types through):

* ``bytes`` / ``bytearray``: the raw body (any Content-Type other than exactly
  ``application/json`` and ``text/*``, or JSON the worker failed to decode);
* ``str``: a ``text/*`` body (raw text) -- or, under ``application/json``, a decoded JSON string;
* ``dict`` / ``list`` / number / ...: JSON TorchServe already decoded.

Every problem raises :class:`InvalidRequest` with an HTTP status (400, or 413 for an oversized
body), a short machine-readable ``reason`` (the label of the invalid-request metric) and a
message meant for the caller.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from core.ids import MAX_ID_CHARS, InvalidId, canonical_id

# Limits (documented in docs/serving.md and request.schema.json). The largest valid request --
# 5,000 history ids of 256 characters, about 1.3 MB as ASCII, 3.9 MB as 3-byte UTF-8 -- fits
# under our limit, which stays under TorchServe's max_request_size (6 MiB, archives/config).
MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_K = 10
MIN_K, MAX_K = 1, 1000
MAX_HISTORY = 5000
MAX_EXCLUDE = 5000
MAX_CATEGORIES = 100
MAX_CATEGORY_CHARS = 128
MAX_CANDIDATES = 1000
ID_RULE = (f"ids are strings of 1-{MAX_ID_CHARS} characters without control characters and not "
           "only white space (emails, UUIDs, names in any script), or non-negative integers")

# The deepest nesting the schema allows: the body object > filters object > category array.
# Anything deeper is refused before any recursive parse (check_depth), so no decoder's or
# encoder's recursion limit is ever what stands between a body and the worker's stack.
MAX_DEPTH = 3

FIELDS = ("user_id", "k", "history", "exclude_seen", "filters", "exclude", "similar_to",
          "candidates", "diversity", "catalog")
# The catalog mode pages the model's item ids (the gateway learns what it may store). A page
# must stay under TorchServe's max_response_size (6,553,500 bytes, archives/config): an id of
# 256 characters is at most 256 x 6 = 1,536 bytes as JSON (\uXXXX escapes) plus 4 for quotes
# and comma, so 4,000 ids are at most 6.16 MB; typical ids are a few bytes.
MAX_CATALOG_PAGE = 4000
FILTER_FIELDS = ("include_categories", "exclude_categories")

# Reasons (metric label values).
TOO_LARGE = "too_large"
TOO_DEEP = "too_deep"
NOT_JSON = "not_json"
NOT_OBJECT = "not_object"
UNKNOWN_FIELD = "unknown_field"
MISSING_USER_ID = "missing_user_id"
BAD_USER_ID = "bad_user_id"
BAD_K = "bad_k"
BAD_HISTORY = "bad_history"
BAD_EXCLUDE_SEEN = "bad_exclude_seen"
BAD_FILTERS = "bad_filters"
BAD_EXCLUDE = "bad_exclude"
BAD_SIMILAR_TO = "bad_similar_to"
BAD_CANDIDATES = "bad_candidates"
BAD_DIVERSITY = "bad_diversity"
BAD_CATALOG = "bad_catalog"
CONFLICTING_FIELDS = "conflicting_fields"
UNKNOWN_ITEM = "unknown_item"  # 404 from the engine: a similar_to item the model does not know
REASONS = (TOO_LARGE, TOO_DEEP, NOT_JSON, NOT_OBJECT, UNKNOWN_FIELD, MISSING_USER_ID, BAD_USER_ID, BAD_K,
           BAD_HISTORY, BAD_EXCLUDE_SEEN, BAD_FILTERS, BAD_EXCLUDE, BAD_SIMILAR_TO, BAD_CANDIDATES,
           BAD_DIVERSITY, BAD_CATALOG, CONFLICTING_FIELDS, UNKNOWN_ITEM)


class InvalidRequest(ValueError):
    """A request we refuse: ``status`` (4xx), ``reason`` (metric label), ``message`` (for humans)."""

    def __init__(self, reason: str, message: str, status: int = 400):
        super().__init__(message)
        self.reason, self.message, self.status = reason, message, int(status)

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body (same keys as TorchServe's own errors, plus ``reason``)."""
        kind = {413: "PayloadTooLarge", 404: "NotFound"}.get(self.status, "BadRequest")
        return {"code": self.status, "type": kind, "reason": self.reason, "message": self.message}


@dataclass(frozen=True)
class RecRequest:
    """A validated, normalized request. Ids are strings (integers are converted).

    Modes: top-k for a user (the default); ``similar_to`` (related items; ``user_id`` optional);
    ``candidates`` (the user's ranking of these items, in the order sent for equal scores)."""

    user_id: str | None
    k: int = None  # type: ignore[assignment]  # None: DEFAULT_K, or every candidate
    history: tuple[str, ...] = ()
    exclude_seen: bool = None  # type: ignore[assignment]  # None: true, false with candidates
    include_categories: tuple[str, ...] | None = None  # None: no include filter
    exclude_categories: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    similar_to: str | None = None
    candidates: tuple[str, ...] | None = None  # None: rank the catalog
    diversity: float = 0.0                     # 0: plain ranking; > 0: maximal marginal relevance
    catalog: tuple[int, int] | None = None     # (offset, limit): a page of the item ids

    def __post_init__(self) -> None:
        """The mode-dependent defaults, in one place: a candidate list is answered whole and
        keeps the items the user has seen (the caller chose it)."""
        if self.k is None:
            object.__setattr__(self, "k", MAX_K if self.candidates is not None else DEFAULT_K)
        if self.exclude_seen is None:
            object.__setattr__(self, "exclude_seen", self.candidates is None)


# --------------------------------------------------------------------------------------------
# Body -> JSON value
# --------------------------------------------------------------------------------------------

def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _too_large(n: int, limit: int) -> InvalidRequest:
    return InvalidRequest(TOO_LARGE, f"request body is {n} bytes; the limit is {limit} bytes",
                          status=413)


def _too_deep(max_depth: int) -> InvalidRequest:
    return InvalidRequest(TOO_DEEP, f"request body nests arrays/objects deeper than {max_depth} "
                                    "levels; the request schema allows at most that "
                                    '(e.g. {"filters": {"include_categories": ["Comedy"]}})')


_STRING = re.compile(rb'"[^"]*"')
_OPEN = b"("
# bytes.translate: drop every byte but brackets and quotes, and write brackets as "(" and ")"
_BRACKETS = bytes.maketrans(b"[{]}", b"(())")
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')


def check_depth(body: bytes | bytearray | memoryview | str, max_depth: int = MAX_DEPTH) -> None:
    """Refuse JSON text that nests arrays/objects deeper than ``max_depth`` (400 ``too_deep``)
    without parsing it. The gateway calls it before its own parse; the handler before json.loads.

    A scan that ignores string contents, made of C-speed bytes operations (``count``,
    ``replace``, ``translate``; no per-byte Python loop): microseconds for a normal request,
    a few milliseconds for a 4 MiB list of ids. Quotes, backslashes and brackets are ASCII, and
    UTF-8 never uses ASCII bytes inside a multi-byte character, so the scan is exact on UTF-8.
    Malformed text is left to the parser's own error unless its unbalanced brackets could still
    nest deeper than ``max_depth`` (refused here too), so no parser ever recurses past about
    ``2 * max_depth`` levels.
    """
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return  # no more openers than the limit: cannot be deeper (most requests stop here)
    if b"\\" in raw:
        # only \\ and \" change where strings end; pairs of backslashes go first, so a run of
        # backslashes leaves its last one only when odd, which then escapes the next byte
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    seq = raw.translate(_BRACKETS, _NOT_STRUCTURE)
    # Two adjacent quotes are an empty string, or the end of one string and the start of the
    # next with no bracket outside between them: dropping them never moves a bracket in or out
    # of a string. Usually no quote is left: only strings that hold brackets remain.
    seq = seq.replace(b'""', b"")
    if b'"' in seq:
        seq = _STRING.sub(b"", seq)
        cut = seq.find(b'"')  # an unterminated string: the rest is inside it
        if cut >= 0:
            seq = seq[:cut]
    if seq.count(_OPEN) <= max_depth:
        return
    if _OPEN * (max_depth + 1) in seq:  # that many openers in a row: the usual deep attack
        raise _too_deep(max_depth)
    # Each pass removes every innermost pair "()", so a balanced sequence of depth d is empty
    # after d passes; a pair still present after max_depth passes sits deeper than max_depth.
    for _ in range(max_depth):
        seq = seq.replace(b"()", b"")
        if not seq:
            return
    if b"()" in seq or seq.count(_OPEN) > max_depth:
        raise _too_deep(max_depth)


def check_value_depth(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """:func:`check_depth` for JSON TorchServe already decoded (lists and dicts), iteratively:
    no recursion however deep ``value`` is."""
    level: list[Any] = [value] if isinstance(value, (list, Mapping)) else []
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            raise _too_deep(max_depth)
        level = [c for v in level for c in (v.values() if isinstance(v, Mapping) else v)
                 if isinstance(c, (list, Mapping))]


def is_json_content_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def decode_body(body: Any, content_type: str | None = None, *,
                max_bytes: int = MAX_BODY_BYTES) -> Any:
    """The JSON value of a request body (see the module docstring for the shapes).

    ``content_type`` tells a decoded JSON string (``application/json``) from raw text; without
    it a ``str`` is parsed as JSON text.
    """
    if body is None:
        raise InvalidRequest(NOT_JSON, "request body is empty; send a JSON object such as "
                                       '{"user_id": "42", "k": 10}')
    if isinstance(body, (bytes, bytearray, memoryview)):
        raw = bytes(body)
        if len(raw) > max_bytes:
            raise _too_large(len(raw), max_bytes)
        check_depth(raw)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise InvalidRequest(NOT_JSON, f"request body is not UTF-8 text ({e.reason} at byte "
                                           f"{e.start}); send a JSON object") from None
        return _parse(text)
    if isinstance(body, str):
        if is_json_content_type(content_type):
            # TorchServe decoded the JSON already: the body was a JSON string.
            return body
        n = len(body.encode("utf-8", "surrogatepass"))
        if n > max_bytes:
            raise _too_large(n, max_bytes)
        check_depth(body)
        return _parse(body)
    # Already decoded JSON: bound its depth first (no recursion), then its size the same way
    # (compact re-encoding ~ the wire size; the depth bound keeps json.dumps off deep stacks).
    check_value_depth(body)
    try:
        n = len(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    except (TypeError, ValueError, RecursionError):
        raise InvalidRequest(NOT_JSON, "request body is not JSON") from None
    if n > max_bytes:
        raise _too_large(n, max_bytes)
    return body


def _parse(text: str) -> Any:
    if not text.strip():
        raise InvalidRequest(NOT_JSON, "request body is empty; send a JSON object such as "
                                       '{"user_id": "42", "k": 10}')
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        where = f" (line {e.lineno} column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
        raise InvalidRequest(NOT_JSON, f"request body is not valid JSON: {msg}{where}") from None


# --------------------------------------------------------------------------------------------
# JSON value -> RecRequest
# --------------------------------------------------------------------------------------------

def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, Mapping):
        return "object"
    return type(v).__name__


def _as_int(v: Any) -> int | None:
    """JSON Schema's notion of an integer: 3 and 3.0 are integers, 2.5 and true are not."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    return None


def _id(v: Any, field: str, reason: str) -> str:
    """The canonical id (core/ids.py, the ETL's rule) or a 400 naming the field and why."""
    try:
        return canonical_id(v)
    except InvalidId as e:
        raise InvalidRequest(reason, f"{field} is not a valid id: {_short(v)} ({e}; {ID_RULE})") from None


def _id_list(value: Any, field: str, reason: str, limit: int) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidRequest(reason, f"{field} must be a list of item ids, got {_json_type(value)} "
                                     f"{_short(value)}")
    if len(value) > limit:
        raise InvalidRequest(reason, f"{field} has {len(value)} entries; at most {limit} are allowed")
    return tuple(_id(v, f"{field}[{i}]", reason) for i, v in enumerate(value))


def _category_list(value: Any, field: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise InvalidRequest(BAD_FILTERS, f"filters.{field} must be a list of category names "
                                          f"(strings), got {_short(value)}")
    if len(value) > MAX_CATEGORIES:
        raise InvalidRequest(BAD_FILTERS, f"filters.{field} has {len(value)} entries; at most "
                                          f"{MAX_CATEGORIES} are allowed")
    for c in value:
        if not 1 <= len(c) <= MAX_CATEGORY_CHARS:
            raise InvalidRequest(BAD_FILTERS, f"filters.{field} entries must have 1-"
                                              f"{MAX_CATEGORY_CHARS} characters, got {_short(c)}")
    return tuple(dict.fromkeys(value))


def validate_request(obj: Any) -> RecRequest:
    """Check a decoded JSON value against the request contract and normalize it."""
    if not isinstance(obj, Mapping):
        raise InvalidRequest(NOT_OBJECT, f"request body must be a JSON object, got a JSON "
                                         f"{_json_type(obj)}; send e.g. "
                                         '{"user_id": "42", "k": 10}')
    unknown = sorted(str(k) for k in obj if k not in FIELDS)
    if unknown:
        raise InvalidRequest(UNKNOWN_FIELD, f"unknown field(s) {', '.join(map(repr, unknown))}; "
                                            f"allowed: {', '.join(FIELDS)}")
    if "catalog" in obj:
        return RecRequest(user_id=None, catalog=_catalog_page(obj))
    similar_to = None
    if obj.get("similar_to") is not None:
        similar_to = _id(obj["similar_to"], "similar_to", BAD_SIMILAR_TO)
    candidates = None
    if obj.get("candidates") is not None:
        candidates = _id_list(obj["candidates"], "candidates", BAD_CANDIDATES, MAX_CANDIDATES)
        if not candidates:
            raise InvalidRequest(BAD_CANDIDATES, "candidates must hold at least one item id "
                                                 "(leave the field out to rank the catalog)")
    if similar_to is not None and candidates is not None:
        raise InvalidRequest(CONFLICTING_FIELDS, "similar_to and candidates cannot be combined: "
                                                 "send similar_to for items like one item, or "
                                                 "user_id with candidates to rank a list for a user")
    if obj.get("user_id") is None:
        if similar_to is None:
            raise InvalidRequest(MISSING_USER_ID, "user_id is required (a string or a "
                                                  "non-negative integer) unless similar_to is given")
        user_id = None
    else:
        user_id = _id(obj["user_id"], "user_id", BAD_USER_ID)

    k_raw = obj.get("k")
    if k_raw is None:
        k = None  # RecRequest's default for the mode
    else:
        k = _as_int(k_raw)
        if k is None or not MIN_K <= k <= MAX_K:
            raise InvalidRequest(BAD_K, f"k must be an integer from {MIN_K} to {MAX_K}, got "
                                        f"{_short(k_raw)}")

    history = _id_list(obj.get("history"), "history", BAD_HISTORY, MAX_HISTORY)

    exclude_seen = obj.get("exclude_seen")
    if exclude_seen is None:
        pass  # RecRequest's default for the mode
    elif not isinstance(exclude_seen, bool):
        raise InvalidRequest(BAD_EXCLUDE_SEEN, f"exclude_seen must be true or false, got "
                                               f"{_short(exclude_seen)}")

    filters = obj.get("filters")
    include_c: tuple[str, ...] | None = None
    exclude_c: tuple[str, ...] = ()
    if filters is not None:
        if not isinstance(filters, Mapping):
            raise InvalidRequest(BAD_FILTERS, f"filters must be an object like "
                                              '{"include_categories": ["Comedy"], '
                                              '"exclude_categories": ["Horror"]}, got '
                                              f"{_json_type(filters)} {_short(filters)}")
        extra = sorted(str(f) for f in filters if f not in FILTER_FIELDS)
        if extra:
            raise InvalidRequest(BAD_FILTERS, f"unknown filter(s) {', '.join(map(repr, extra))}; "
                                              f"allowed: {', '.join(FILTER_FIELDS)}")
        include_c = _category_list(filters.get("include_categories"), "include_categories")
        exclude_c = _category_list(filters.get("exclude_categories"), "exclude_categories") or ()

    exclude = _id_list(obj.get("exclude"), "exclude", BAD_EXCLUDE, MAX_EXCLUDE)
    return RecRequest(user_id=user_id, k=k, history=history, exclude_seen=exclude_seen,
                      include_categories=include_c, exclude_categories=exclude_c, exclude=exclude,
                      similar_to=similar_to, candidates=candidates,
                      diversity=_diversity(obj.get("diversity")))


def _catalog_page(obj: Mapping[str, Any]) -> tuple[int, int]:
    """``{"catalog": {"offset": o, "limit": n}}``, alone: (offset, limit)."""
    others = sorted(str(k) for k in obj if k != "catalog")
    if others:
        raise InvalidRequest(BAD_CATALOG, f"catalog is a mode of its own: send it alone, without "
                                          f"{', '.join(map(repr, others))}")
    page = obj["catalog"]
    if page is None:
        page = {}
    if not isinstance(page, Mapping) or set(page) - {"offset", "limit"}:
        raise InvalidRequest(BAD_CATALOG, 'catalog must be an object like {"offset": 0, '
                                          f'"limit": {MAX_CATALOG_PAGE}}}, got {_short(page)}')
    offset = _as_int(page.get("offset", 0))
    limit = _as_int(page.get("limit", MAX_CATALOG_PAGE))
    if offset is None or offset < 0:
        raise InvalidRequest(BAD_CATALOG, f"catalog.offset must be an integer >= 0, got "
                                          f"{_short(page.get('offset'))}")
    if limit is None or not 1 <= limit <= MAX_CATALOG_PAGE:
        raise InvalidRequest(BAD_CATALOG, f"catalog.limit must be an integer from 1 to "
                                          f"{MAX_CATALOG_PAGE}, got {_short(page.get('limit'))}")
    return offset, limit


def _diversity(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise InvalidRequest(BAD_DIVERSITY, f"diversity must be a number from 0.0 (plain ranking) "
                                            f"to 1.0 (most diverse), got {_short(value)}")
    return float(value)


def parse_request(body: Any, content_type: str | None = None, *,
                  max_bytes: int = MAX_BODY_BYTES) -> RecRequest:
    """Body (bytes, text or decoded JSON) -> :class:`RecRequest`, or :class:`InvalidRequest`."""
    return validate_request(decode_body(body, content_type, max_bytes=max_bytes))


def body_of(row: Mapping[str, Any]) -> tuple[Any, str | None]:
    """The body of one TorchServe request row and its parameter name.

    A plain POST arrives as ``{"body": ...}``; KServe-style and form posts use ``data`` or
    another single field.
    """
    for key in ("body", "data"):
        if key in row:
            return row[key], key
    if len(row) == 1:
        key = next(iter(row))
        return row[key], str(key)
    return None, None


__all__ = ["InvalidRequest", "RecRequest", "check_depth", "check_value_depth", "decode_body", "validate_request", "parse_request",
           "body_of", "is_json_content_type", "REASONS", "MAX_BODY_BYTES", "MAX_DEPTH", "TOO_DEEP",
           "DEFAULT_K", "MIN_K", "MAX_K", "MAX_CATALOG_PAGE", "MAX_HISTORY", "MAX_EXCLUDE", "MAX_CATEGORIES",
           "MAX_CANDIDATES", "ID_RULE"]
