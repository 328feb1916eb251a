"""User and item identifiers as our users have them: one canonicalization for every stage.

Standard library only, so the TorchServe handler ships it (archives/build.py's import closure)
and the gateway and the SageMaker client import it without torch. The ETL applies the same rule
as a Spark column expression (``etl/validate.py``); both are tested against :data:`CASES`.

Rule (``../shared/CONTRACTS.md``, "Identifiers"):

* a JSON integer >= 0 becomes its decimal string;
* a string of ASCII digits loses its leading zeros (``"007"`` is ``"7"``, ``"000"`` is ``"0"``);
* any other string is kept as written after Unicode NFC normalization (no trimming: ``" a"``
  and ``"a"`` are two ids);
* valid: 1-256 code points after that, no Unicode control character (category Cc: NUL, tab,
  line breaks, DEL, C1 controls), and not only white space (:data:`WHITESPACE`).

Emails, UUIDs, non-Latin names (``"Jürgen"``, ``"用户42"``) and long hashes are ids; booleans,
floats with a fraction, negative numbers, ``null``, lists and objects are not.
"""
from __future__ import annotations

import unicodedata
from typing import Any

MAX_ID_CHARS = 256

# The Unicode White_Space property (25 code points, Unicode 15): a Spark (Java regex) character
# class and Python agree on this explicit set, where str.isspace() and Java's \s differ. The
# controls among them (tab, line breaks, U+0085) are refused as controls first.
WHITESPACE = ("\u0009\u000a\u000b\u000c\u000d\u0020\u0085\u00a0\u1680\u2000\u2001\u2002\u2003"
              "\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
# Java-regex spelling of the same set (for etl/validate.py).
WHITESPACE_JAVA_CLASS = "[" + "".join(f"\\x{{{ord(c):04x}}}" for c in WHITESPACE) + "]"

# Why an id is refused (quarantine reasons in the ETL, part of the 400 message in serving).
EMPTY = "empty"
TOO_LONG = "too_long"
CONTROL_CHARACTER = "control_character"
ONLY_WHITESPACE = "only_whitespace"
NEGATIVE = "negative_integer"
NOT_AN_ID = "not_a_string_or_integer"


class InvalidId(ValueError):
    """An id we refuse; ``why`` is one of the reason constants above."""

    def __init__(self, why: str, message: str):
        super().__init__(message)
        self.why = why


def canonical_id(value: Any) -> str:
    """The canonical string of an id (a JSON value), or :class:`InvalidId`.

    Floats that are whole numbers (``3.0``) are integers, as JSON Schema's ``integer`` says.
    """
    if isinstance(value, bool) or value is None:
        raise InvalidId(NOT_AN_ID, f"expected a string or a non-negative integer, got {value!r}")
    if isinstance(value, float):
        if not (value == value and value not in (float("inf"), float("-inf"))) or not value.is_integer():
            raise InvalidId(NOT_AN_ID, f"expected a string or a non-negative integer, got {value!r}")
        value = int(value)
    if isinstance(value, int):
        if value < 0:
            raise InvalidId(NEGATIVE, f"integer ids must be >= 0, got {value}")
        text = str(value)
    elif isinstance(value, str):
        text = canonical_string(value)
    else:
        raise InvalidId(NOT_AN_ID, f"expected a string or a non-negative integer, got "
                                   f"{type(value).__name__}")
    check_id(text)
    return text


def canonical_string(text: str) -> str:
    """The canonical form of an id given as a string (not yet checked for validity)."""
    if text and text.isascii():
        return (text.lstrip("0") or "0") if text.isdigit() else text  # ASCII is NFC already
    return unicodedata.normalize("NFC", text)


def check_id(text: str) -> None:
    """Raise :class:`InvalidId` unless the canonical string ``text`` is a valid id."""
    if not text:
        raise InvalidId(EMPTY, "ids must not be empty")
    if len(text) > MAX_ID_CHARS:
        raise InvalidId(TOO_LONG, f"ids have at most {MAX_ID_CHARS} characters, got {len(text)}")
    if text.isascii() and text.isprintable() and text.strip(" "):
        # the common case at C speed: an ASCII string is printable exactly when it has no
        # control character (Cc), and space is its only printable white space
        return
    bad = next((c for c in text if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise InvalidId(CONTROL_CHARACTER, f"ids must not contain control characters, found "
                                           f"U+{ord(bad):04X}")
    if all(c in WHITESPACE for c in text):
        raise InvalidId(ONLY_WHITESPACE, "ids must not be only white space")


def try_canonical_id(value: Any) -> str | None:
    """:func:`canonical_id`, or None for an invalid id."""
    try:
        return canonical_id(value)
    except InvalidId:
        return None


# The table both implementations are tested against: (raw string as logged, canonical or None).
# Strings only: the ETL reads every raw column as a string (JSON integers reach it as digits).
CASES: tuple[tuple[str, str | None], ...] = (
    ("42", "42"),
    ("007", "7"),
    ("000", "0"),
    ("0", "0"),
    ("18446744073709551616000", "18446744073709551616000"),   # beyond 64 bits: still an id
    ("anna@example.com", "anna@example.com"),
    ("Jürgen", "Jürgen"),                                      # precomposed ü
    ("Ju\u0308rgen", "Jürgen"),                                # u + combining diaeresis -> NFC
    ("用户42", "用户42"),
    ("0x1F", "0x1F"),
    ("-5", "-5"),                                              # not digits only: a string id
    ("3.0", "3.0"),
    ("\u0661\u0662", "\u0661\u0662"),                           # Arabic-Indic digits: not ASCII
    ("550e8400-e29b-41d4-a716-446655440000", "550e8400-e29b-41d4-a716-446655440000"),
    ("0" * 300, "0"),                                          # length counts after canonicalization
    ("1" + "0" * 300, None),
    ("a" * 256, "a" * 256),
    ("a" * 257, None),
    ("用" * 256, "用" * 256),
    (" padded ", " padded "),                                  # kept as written
    ("", None),
    ("   ", None),
    ("\u3000\u00a0", None),                                    # ideographic + no-break space
    ("line\nbreak", None),
    ("tab\there", None),
    ("nul\x00", None),
    ("del\x7f", None),
    ("c1\x85", None),
    ("sep\u2028ok", "sep\u2028ok"),                            # Zl, not Cc: valid, not whitespace only
    ("\u2028", None),
)


__all__ = ["canonical_id", "canonical_string", "check_id", "try_canonical_id", "InvalidId",
           "MAX_ID_CHARS", "WHITESPACE", "WHITESPACE_JAVA_CLASS", "CASES"]
