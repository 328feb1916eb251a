"""The gateway's request check: the handler's own validation, made cheap and memory-safe.

One definition of a valid request: ``core/validation.py`` (what the TorchServe handler runs)
and ``core/request.schema.json`` (its documented contract). The gateway imports both (they
are standard-library only, no torch), so with TorchServe down it refuses exactly what the model
would refuse instead of answering ``{"k": "ten"}`` from the popularity list.

Before any parse, two cheap checks bound what a parse can cost (a 4 MiB body of short strings
is 60-100 MiB of Python objects when parsed in full):

* nesting deeper than the schema allows is a 400 ``too_deep`` without a recursive parse: the
  handler's own check (``core.validation.check_depth``, ``MAX_DEPTH``; a test holds it
  equal to :func:`schema_depth` of the schema);
* more JSON values than the largest valid request holds (:data:`MAX_VALUES`) is a 400
  ``too_many_values``; the handler refuses those bodies too (400, naming the list that is too
  long).

Both scans run at C speed (``bytes.count``); only a body with more commas or brackets than any
valid request has outside its strings pays for a regular expression that strips the strings.

Ids have no upper bound, but orjson reads integers above 2^64-1 as floats: a body with a float
where an id belongs is decoded again with the handler's own decoder (the standard library's,
exact), so the gateway and the handler hash the same digits.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import orjson

from core import validation as core_validation
from core.validation import InvalidRequest, RecRequest

SCHEMA_PATH = Path(core_validation.__file__).with_name("request.schema.json")
TOO_DEEP = core_validation.TOO_DEEP
TOO_MANY_VALUES = "too_many_values"


def schema_depth(node: Any, defs: dict | None = None) -> int:
    """How many containers (objects, arrays) deep a document valid against ``node`` can be."""
    if not isinstance(node, dict):
        return 0
    defs = node.get("$defs", {}) if defs is None else defs
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return schema_depth(defs[ref.rsplit("/", 1)[1]], defs)
    types = node.get("type", ())
    types = (types,) if isinstance(types, str) else tuple(types)
    depth = max((schema_depth(b, defs) for k in ("anyOf", "oneOf", "allOf")
                 for b in node.get(k, ())), default=0)
    if "object" in types:
        inner = [schema_depth(p, defs) for p in node.get("properties", {}).values()]
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            inner.append(schema_depth(extra, defs))
        depth = max(depth, 1 + max(inner, default=0))
    if "array" in types:
        depth = max(depth, 1 + schema_depth(node.get("items"), defs))
    return depth


SCHEMA = json.loads(SCHEMA_PATH.read_text())
MAX_DEPTH = core_validation.MAX_DEPTH
"""3: the request object, ``filters``, a category list (the handler's; == schema_depth(SCHEMA))."""
MAX_VALUES = (1 + len(core_validation.FIELDS) + core_validation.MAX_HISTORY + core_validation.MAX_EXCLUDE + core_validation.MAX_CANDIDATES
              + 2 * (1 + core_validation.MAX_CATEGORIES))
"""Every JSON value a valid request can hold (each list at its limit), the root included."""

_PLAIN_STRING = re.compile(rb'"[^"]*+"')
_MAX_KEYS = len(core_validation.FIELDS) + len(core_validation.FILTER_FIELDS)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_BOM = b"\xef\xbb\xbf"
_ID_LISTS = ("history", "exclude", "candidates")


def precheck(body: bytes, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES) -> None:
    """Refuse (``InvalidRequest``) a body nested deeper than the schema allows (the handler's
    own depth check) or holding more values than any valid request, without parsing it.

    Every step but the last is a C-speed ``bytes`` method; the last strips strings with a
    regular expression only once the body is known to hold few of them."""
    opened = body.count(b"[") + body.count(b"{")
    if opened <= max_depth and opened + body.count(b",") <= max_values:
        return  # the common case: no string-aware scan needed
    core_validation.check_depth(body, max_depth)
    # without its escape pairs (an escaped backslash first, then an escaped quote), every
    # quote left in the body opens or closes a string
    plain = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    if plain.count(b'"') // 2 > max_values + _MAX_KEYS:
        raise _too_many(max_values)  # strings alone (keys included) are too many
    skeleton = _PLAIN_STRING.sub(b"", plain)  # structure only: brackets, commas, numbers, literals
    brackets = skeleton.translate(None, _NOT_BRACKET)
    opened = brackets.count(b"[") + brackets.count(b"{")
    if opened + skeleton.count(b",") > max_values:
        raise _too_many(max_values)


def _too_many(max_values: int) -> InvalidRequest:
    return InvalidRequest(TOO_MANY_VALUES, f"the request holds more than {max_values} JSON "
                                           "values; no valid request does (history and exclude "
                                           f"hold at most {core_validation.MAX_HISTORY} ids each, candidates "
                                           f"{core_validation.MAX_CANDIDATES})")


def _inexact(doc: Any) -> bool:
    """True when a float sits where an id belongs (orjson's reading of an integer > 2^64-1)."""
    if not isinstance(doc, dict):
        return False
    if type(doc.get("user_id")) is float or type(doc.get("similar_to")) is float:
        return True
    for name in _ID_LISTS:
        values = doc.get(name)
        if type(values) is list and any(type(v) is float for v in values):
            return True
    return False


def decode(body: bytes, max_bytes: int = core_validation.MAX_BODY_BYTES) -> Any:
    """The body's JSON value as the handler reads it, or the handler's ``InvalidRequest``."""
    if len(body) > max_bytes:
        return core_validation.decode_body(body, max_bytes=max_bytes)  # raises the handler's 413
    precheck(body)
    try:
        doc = orjson.loads(body[3:] if body.startswith(_BOM) else body)
    except orjson.JSONDecodeError:
        # rare and refused anyway: the handler's decoder gives the handler's exact answer (and
        # accepts the few texts orjson does not, e.g. lone surrogate escapes)
        return core_validation.decode_body(body, max_bytes=max_bytes)
    if _inexact(doc):
        return core_validation.decode_body(body, max_bytes=max_bytes)
    return doc


def check(body: bytes, max_bytes: int = core_validation.MAX_BODY_BYTES) -> tuple[Any, RecRequest]:
    """(decoded body, the handler's validated request) or the handler's ``InvalidRequest``."""
    doc = decode(body, max_bytes)
    return doc, core_validation.validate_request(doc)


__all__ = ["check", "decode", "precheck", "schema_depth", "MAX_DEPTH", "MAX_VALUES", "TOO_DEEP",
           "TOO_MANY_VALUES", "InvalidRequest", "RecRequest"]
