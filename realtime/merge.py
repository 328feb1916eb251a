"""The one rule that turns a client's history and the store's recent events into the history
TorchServe sees. The gateway applies it per request; the offline replay
(:mod:`realtime.evaluate`) applies the same function, so the measured lift is the served one.

Rule: the client's history first, then the recent events oldest first: one chronological
history for the handler's single encoder. A repeated item counts once, at its latest position
(the encoder's own rule, applied here so that the cut below counts distinct items). If the
result is longer than the handler's limit it is cut oldest-first, so the merge never causes a
``bad_history``.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from core.validation import MAX_HISTORY


def merge_history(client: Sequence[str], recent: Sequence[str],
                  limit: int = MAX_HISTORY) -> list[str]:
    """``client`` then ``recent`` (both oldest first), each item at its latest position, the
    newest ``limit`` kept."""
    if not recent:
        return list(client[-limit:]) if len(client) > limit else list(client)
    return newest_distinct((*client, *recent), limit)


def newest_distinct(items: Iterable[str], limit: int) -> list[str]:
    """``items`` with each repeated item kept at its latest position, the last ``limit``."""
    seen: set[str] = set()
    out: list[str] = []
    for it in reversed(list(items)):
        if it not in seen:
            seen.add(it)
            out.append(it)
            if len(out) == limit:
                break
    out.reverse()
    return out


__all__ = ["merge_history", "newest_distinct"]
