"""The lane table of tests/conftest.py names fixtures that exist: a renamed fixture would
otherwise drop its tests into the fast lane without a word."""
from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import INTEGRATION_FIXTURES

TESTS = Path(__file__).resolve().parent
FIXTURE_DEF = re.compile(r"^@pytest\.fixture\b[^\n]*\n(?:@[^\n]*\n)*def (\w+)\(", re.M)


def test_every_integration_fixture_is_defined_in_tests():
    defined = {name for path in TESTS.rglob("*.py") for name in FIXTURE_DEF.findall(path.read_text())}
    assert "spark" in defined and "model_dir" in defined  # the pattern finds fixtures
    assert sorted(set(INTEGRATION_FIXTURES) - defined) == []
