"""Markdown tables and generated blocks: results in the docs are rendered, never typed by hand."""
from __future__ import annotations

from typing import Any, Collection, Sequence


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
          right: Collection[int] | None = None, pad: bool = True) -> str:
    """A Markdown table. Numbers get thousands separators (strings are taken as they are).

    ``right``: the columns aligned right (default: those whose every cell is a number).
    ``pad``: pad every column to one width, for reading in a terminal; ``False`` gives the
    compact ``| a | b |`` form of the generated doc blocks.
    """
    cells = [[_cell(v) for v in r] for r in rows]
    if right is None:
        right = {i for i in range(len(headers))
                 if rows and all(isinstance(r[i], (int, float)) for r in rows)}
    if not pad:
        sep = ["---:" if i in right else "---" for i in range(len(headers))]
        lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "|".join(sep) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h))
              for i, h in enumerate(headers)]
    numeric = [i in right for i in range(len(headers))]

    def line(vals: Sequence[str]) -> str:
        return "| " + " | ".join(v.rjust(w) if n else v.ljust(w)
                                 for v, w, n in zip(vals, widths, numeric)) + " |"
    sep_line = "|" + "|".join(("-" * (w + 1) + ":") if n else ("-" * (w + 2))
                              for w, n in zip(widths, numeric)) + "|"
    return "\n".join([line([str(h) for h in headers]), sep_line, *(line(r) for r in cells)])


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with the lines between ``<!-- name -->`` and ``<!-- /name -->`` replaced by
    ``content``: the tables of docs/results.md are generated from results files, never typed by hand."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    a, b = text.find(start), text.find(end)
    if a < 0 or b < a:
        raise ValueError(f"no block {start} ... {end} in the text")
    return text[:a + len(start)] + "\n" + content.rstrip("\n") + "\n" + text[b:]


__all__ = ["table", "replace_block"]
