"""Auth as a wrapper around routes: API key, right, suspension and rate limit, then the route.

``authorized(keys, metrics, right, route)`` turns an ``async (Request, KeyEntry) -> Response``
into a plain route: 401 without a known key, 403 ``forbidden`` without the right, 403
``suspended`` for a key whose rate is 0, 429 with ``Retry-After`` over its rate. Body limits
and the in-flight budget are not here: the server enforces them before the body is read
(``gateway/http.py``, ``ServerLimits``).
"""
from __future__ import annotations

from typing import Awaitable, Callable

import orjson

from gateway.auth import KeyEntry, KeyStore, bearer
from gateway.http import Request, Response, Route

KeyedRoute = Callable[[Request, KeyEntry], Awaitable[Response]]

_KINDS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
          409: "Conflict", 413: "PayloadTooLarge", 429: "TooManyRequests",
          503: "ServiceUnavailable"}


def error(status: int, reason: str, message: str, headers: dict | None = None) -> Response:
    """The gateway's own JSON error answer (the handler's shape: code, type, reason, message)."""
    body = orjson.dumps({"code": status, "type": _KINDS.get(status, "BadRequest"),
                         "reason": reason, "message": message})
    return Response(status, body, dict(headers) if headers else {})


def identify(keys: KeyStore, metrics, request: Request) -> KeyEntry | Response:
    """The key's entry, or the 401 refusal (no key, unknown key)."""
    key = bearer(request.headers.get("authorization"))
    if key is None:
        metrics.client_errors.labels("unauthorized").inc()
        return error(401, "unauthorized", "send an API key as 'Authorization: Bearer <key>'",
                     {"WWW-Authenticate": "Bearer"})
    entry = keys.identify(key)
    if entry is None:
        metrics.client_errors.labels("unauthorized").inc()
        return error(401, "unauthorized", "unknown API key", {"WWW-Authenticate": "Bearer"})
    return entry


def key_gate(keys: KeyStore, metrics) -> Callable[[Request], Response | None]:
    """``ServerLimits.gate``: the 401 of a request without a known key, from its headers,
    before its body is admitted to the in-flight budget (rights and rate limits are checked
    by the route, once). A known key's entry is kept on the request (``request.key``): the
    route's :func:`check_key` does not identify it again."""
    def gate(request: Request) -> Response | None:
        entry = identify(keys, metrics, request)
        if isinstance(entry, Response):
            return entry
        request.key = entry
        return None
    return gate


def check_key(keys: KeyStore, metrics, request: Request, right: str) -> KeyEntry | Response:
    """The key's entry, or the refusal (401, 403, 429)."""
    entry = request.key  # identified by the server's gate from these headers
    if entry is None:
        entry = identify(keys, metrics, request)
        if isinstance(entry, Response):
            return entry
    if right not in entry.rights:
        metrics.client_errors.labels("forbidden").inc()
        return error(403, "forbidden", f"this key lacks the {right!r} right")
    if entry.suspended:
        metrics.client_errors.labels("suspended").inc()
        return error(403, "suspended", f"key {entry.id!r} is suspended (its rate is 0)")
    wait = keys.throttle(entry)
    if wait > 0:
        metrics.client_errors.labels("rate_limited").inc()
        retry = max(1, int(wait + 0.999))
        return error(429, "rate_limited", f"rate limit of {entry.rate_per_s:g} requests/s "
                     f"exceeded; retry in {retry} s", {"Retry-After": str(retry)})
    return entry


def authorized(keys: KeyStore, metrics, right: str, route: KeyedRoute) -> Route:
    async def guarded(request: Request) -> Response:
        entry = check_key(keys, metrics, request, right)
        if isinstance(entry, Response):
            return entry
        return await route(request, entry)
    guarded.__name__ = getattr(route, "__name__", "route")
    return guarded


__all__ = ["authorized", "check_key", "identify", "key_gate", "error", "KeyedRoute"]
