"""Concise progress logging and plain-text tables, the same for every stage's CLI."""
from __future__ import annotations

import argparse  # for the annotation
import logging
import sys
from typing import Any, Sequence


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("py4j", "urllib3", "botocore", "alembic", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown-compatible table, numbers right-aligned with thousands separators."""
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return str(v)
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, float):
            return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h))
              for i, h in enumerate(headers)]
    numeric = [all(isinstance(r[i], (int, float)) for r in rows) if rows else False
               for i in range(len(headers))]
    def line(vals: Sequence[str]) -> str:
        return "| " + " | ".join(v.rjust(w) if n else v.ljust(w)
                                 for v, w, n in zip(vals, widths, numeric)) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if n else ("-" * (w + 2))
                         for w, n in zip(widths, numeric)) + "|"
    return "\n".join([line([str(h) for h in headers]), sep, *(line(r) for r in cells)])


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with the lines between ``<!-- name -->`` and ``<!-- /name -->`` replaced by
    ``content``: README tables are generated from results files, never typed by hand."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    a, b = text.find(start), text.find(end)
    if a < 0 or b < a:
        raise ValueError(f"no block {start} ... {end} in the text")
    return text[:a + len(start)] + "\n" + content.rstrip("\n") + "\n" + text[b:]


def run_cli(parser: "argparse.ArgumentParser", argv: Sequence[str] | None,
            errors: tuple[type[BaseException], ...], code: int = 1) -> int:
    """Every stage's ``main``: parse, run the chosen command (``args.fn``), and turn the
    stage's expected errors into one ``error: ...`` line on stderr and exit ``code`` (no
    traceback for a user's mistake)."""
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return code
