"""The one id canonicalization (core/ids.py) on the shared table of cases and JSON values."""
from __future__ import annotations

import pytest

from core import ids


@pytest.mark.parametrize("raw,expected", ids.CASES)
def test_string_cases(raw, expected):
    assert ids.try_canonical_id(raw) == expected


@pytest.mark.parametrize("value,expected", [
    (42, "42"), (0, "0"), (3.0, "3"), (2**70, str(2**70)),
    (-1, None), (2.5, None), (True, None), (None, None), ([1], None), ({"a": 1}, None),
    (float("nan"), None), (float("inf"), None),
])
def test_json_values(value, expected):
    assert ids.try_canonical_id(value) == expected


def test_reasons_are_specific():
    for raw, why in [("", ids.EMPTY), ("x" * 257, ids.TOO_LONG), ("a\nb", ids.CONTROL_CHARACTER),
                     ("  ", ids.ONLY_WHITESPACE), (-3, ids.NEGATIVE), (1.5, ids.NOT_AN_ID)]:
        with pytest.raises(ids.InvalidId) as e:
            ids.canonical_id(raw)
        assert e.value.why == why


def test_canonical_is_idempotent():
    for raw, expected in ids.CASES:
        if expected is not None:
            assert ids.canonical_id(expected) == expected


def test_whitespace_set_is_unicode_white_space():
    # every member is white space to Python too; the set is the Unicode property, 25 code points
    assert len(set(ids.WHITESPACE)) == 25
    assert all(c.isspace() for c in ids.WHITESPACE)
