"""The gateway's HTTP seam: what a route sees and returns, whatever HTTP stack runs it.

Routes are plain ``async (Request) -> Response`` functions, so the same gateway logic runs on
aiohttp or on the httptools server (``gateway/fastserver.py``) and the benchmark can compare the
two side by side. Transport-level refusals (a body over the limit, load shed by the in-flight
budget) happen in the server *before* the body is read, through :class:`ServerLimits`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Protocol

JSON = "application/json"


@dataclass(slots=True)
class Request:
    """One request as a route sees it: ``headers`` keys are lower-case."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes = b""
    key: Any = None
    """The API key's entry when ``ServerLimits.gate`` identified it from these headers (the
    server hands the route the request object it gated), so auth does not hash the key twice."""

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = JSON


Route = Callable[[Request], Awaitable[Response]]
"""A route: ``(method, path) -> Route`` tables are what servers are given."""


class Admission(Protocol):
    """The in-flight budget (bytes of bodies being handled). ``admit(n)`` reserves ``n`` bytes
    and returns the release callable, or ``None`` when the budget is spent (the server then
    answers ``ServerLimits.shed()`` without reading the body)."""

    def admit(self, nbytes: int) -> Callable[[], None] | None: ...


@dataclass
class ServerLimits:
    """What a server enforces before a route runs, and the gateway's own answers for it."""

    max_body_bytes: int
    too_large: Callable[[int | None], Response]
    """The 413 answer; gets the declared Content-Length (None when chunked)."""
    shed: Callable[[], Response]
    """The 503 + Retry-After answer when ``admission`` refuses."""
    admission: Admission | None = None
    shed_paths: frozenset[str] = frozenset()
    """Paths whose bodies go through ``admission`` (health and metrics never shed)."""
    gate: Callable[[Request], Response | None] | None = None
    """Checked on ``shed_paths`` from the headers alone (the request has no body yet), before
    ``admission``: a refusal (no or unknown API key) is answered without admitting or reading
    the body, so a client without a key cannot hold the in-flight budget."""


class Server(Protocol):
    """A started server: its bound port, and a stop that drains requests in flight."""

    port: int

    async def close(self, grace_s: float) -> None: ...


ServerFactory = Callable[..., Awaitable[Server]]
"""``await factory(routes, host, port, limits, backlog=...)`` -> a started :class:`Server`."""

__all__ = ["Request", "Response", "Route", "Admission", "ServerLimits", "Server",
           "ServerFactory", "JSON"]
