"""The in-flight budget: bytes of request bodies being handled at once.

Why bytes: a body's cost in memory (the bytes, their parse, the validated request, the
forwarded copy and the answer) grows with its size, so a byte budget bounds the gateway's
memory where a request count cannot (32 requests of 4 MiB and 32 of 200 bytes differ 20,000
times). Bodies are charged their declared length before they are read; a refusal is shed load:
a 503 with ``Retry-After``, counted under ``status_class="shed"`` and outside the error ratio.
"""
from __future__ import annotations

from typing import Callable


class ByteBudget:
    """``admit(n)`` reserves ``n`` bytes (the release callable) or refuses (None).

    One request is always admitted when nothing else is in flight, so a budget smaller than
    the largest body cannot lock that body out for good.
    """

    __slots__ = ("limit", "in_flight", "on_change")

    def __init__(self, limit: int, on_change: Callable[[int], None] | None = None):
        if limit <= 0:
            raise ValueError("the in-flight budget must be > 0 bytes")
        self.limit = limit
        self.in_flight = 0
        self.on_change = on_change

    def admit(self, nbytes: int) -> Callable[[], None] | None:
        n = max(0, int(nbytes))
        if self.in_flight and self.in_flight + n > self.limit:
            return None
        self.in_flight += n
        if self.on_change is not None:
            self.on_change(self.in_flight)
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self.in_flight -= n
                if self.on_change is not None:
                    self.on_change(self.in_flight)
        return release


__all__ = ["ByteBudget"]
