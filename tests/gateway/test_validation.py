"""gateway/validation.py against the handler's own validation, in process (no servers)."""
from __future__ import annotations

import json

import pytest

from gateway import validation
from core.validation import MAX_HISTORY, InvalidRequest, parse_request


def _outcome(fn, body):
    try:
        r = fn(body)
        return ("ok", r if not isinstance(r, tuple) else r[1])
    except InvalidRequest as e:
        return (e.status, e.reason)


def test_the_depth_limit_comes_from_the_schema():
    assert validation.MAX_DEPTH == 3  # the request, filters, a category list
    assert validation.schema_depth({"type": "array", "items": {"type": "array"}}) == 2


@pytest.mark.parametrize("body", [
    b'{"user_id": "a\\\\", "history": ["x\\"]", "[[[["]}',          # escapes around quotes
    b'{"user_id": "\\ud800"}',                                       # a lone surrogate escape
    b'\xef\xbb\xbf{"user_id": "1"}',                                 # a UTF-8 byte order mark
    b'{"user_id": 18446744073709551616}', b'{"user_id": 1e21}', b'{"user_id": 1E400}',
    b'{"user_id": "1", "k": 10.0}', b'{"user_id": "1", "k": 1e400}',
    b'{"user_id": "1", "history": [18446744073709551617, "007"]}',
    b'{"user_id": "1", "diversity": Infinity}', b'{"user_id": "1"} x',
    b'{"user_id": "1", "filters": {"include_categories": ["[[", "{{"]}}',
    b'{"user_id": "' + b",".join([b"a"] * 120) + b'", "history": ["' + b",[" * 12000 + b'"]}',
])
def test_same_outcome_as_the_handler(body):
    assert _outcome(validation.check, body) == _outcome(parse_request, body)


def test_big_integer_ids_keep_their_digits():
    for n in (2**64, 2**64 + 1, 2**70 + 1):
        _, req = validation.check(b'{"user_id": %d, "similar_to": %d}' % (n, n + 2))
        assert (req.user_id, req.similar_to) == (str(n), str(n + 2))


def test_oversized_structures_are_refused_before_a_parse():
    many = json.dumps({"user_id": "1", "history": ["1"] * (validation.MAX_VALUES + 1)}).encode()
    with pytest.raises(InvalidRequest) as e:
        validation.precheck(many)
    assert e.value.reason == validation.TOO_MANY_VALUES
    keys = json.dumps({f"k{i}": 1 for i in range(validation.MAX_VALUES + 1)}).encode()
    with pytest.raises(InvalidRequest) as e:
        validation.precheck(keys)
    assert e.value.reason == validation.TOO_MANY_VALUES
    # the largest valid lists pass
    validation.check(json.dumps({"user_id": "1", "history": ["1,2"] * MAX_HISTORY,
                        "exclude": ["[{"] * MAX_HISTORY}).encode())
    for deep in (b"[" * 5 + b"]" * 5, b'{"a": [[[{}]]]}', b"{" * 50_000):
        with pytest.raises(InvalidRequest) as e:
            validation.precheck(deep)
        assert e.value.reason == validation.TOO_DEEP


def test_the_depth_limit_is_the_schemas():
    """One depth rule: the handler's MAX_DEPTH is what its request schema allows."""
    from gateway.validation import SCHEMA, schema_depth
    from core.validation import MAX_DEPTH
    assert schema_depth(SCHEMA) == MAX_DEPTH
