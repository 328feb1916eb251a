"""The gateway's routes: plain ``async (Request) -> Response`` functions, no HTTP stack types.

* ``POST /v1/recommendations`` (right ``recommend``): checked with the handler's own validation
  (``gateway/validation.py``), the user's recent events appended to its history
  (:func:`with_recent`; the body is forwarded unchanged when there are none), sent to the
  user's variant, the handler's answer with ``experiment``, ``variant``, ``fallback``,
  ``request_id`` spliced in;
* ``POST /v1/events`` (right ``events``): :mod:`gateway.intake` (checked whole, stored in the
  recent-event store, logged);
* ``GET|PUT /v1/admin/experiment`` (right ``admin``);
* ``GET /healthz``, ``GET /readyz``; ``GET /metrics`` on the metrics port.

Auth wraps the keyed routes (``gateway/middleware.py``); body size and the in-flight budget are
the server's (``gateway/http.py``). State (the running experiment, the upstream, the logs) is
the composed :class:`gateway.app.Gateway`'s.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
import secrets
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson

from core.validation import RecRequest
from gateway import experiment as E
from gateway.fallback import BadRequest, mode_of, view_from
from gateway.http import Request, Response, Route
from gateway.middleware import authorized, error
from gateway.records import ExposureRecord
from gateway.upstream import Attempt
from gateway.validation import InvalidRequest, check
from realtime.merge import merge_history

if TYPE_CHECKING:
    from gateway.app import Gateway

_RID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def _json(status: int, value: Any, headers: dict | None = None) -> Response:
    return Response(status, orjson.dumps(value), headers or {})


def splice(body: bytes, experiment: str, variant: str, fallback: bool, rid: str) -> bytes:
    """The handler's JSON object with the gateway's fields appended before its closing brace
    (no re-encoding of the handler's body)."""
    end = body.rstrip()
    if not end.endswith(b"}"):
        d = orjson.loads(body)
        return orjson.dumps({**d, "experiment": experiment, "variant": variant,
                             "fallback": fallback, "request_id": rid})
    sep = b"" if end[:-1].rstrip().endswith(b"{") else b","
    return b"".join((end[:-1], sep, b'"experiment":', orjson.dumps(experiment), b',"variant":',
                     orjson.dumps(variant), b',"fallback":', b"true" if fallback else b"false",
                     b',"request_id":', orjson.dumps(rid), b"}"))


def with_recent(doc: dict, req: RecRequest, recent: tuple[str, ...],
                limit: int) -> tuple[dict, RecRequest, bytes]:
    """The request with the user's recent events appended to its history by the one merge rule
    (:func:`realtime.merge.merge_history`), and the body TorchServe gets instead of the
    client's."""
    merged = merge_history(req.history, recent, limit)
    doc = {**doc, "history": merged}
    try:
        body = orjson.dumps(doc)
    except TypeError:  # an id beyond 64 bits, which orjson cannot write (the stdlib can)
        body = json.dumps(doc, ensure_ascii=False).encode()
    return doc, replace(req, history=tuple(merged)), body


_RID_PREFIX = secrets.token_hex(8)
_RID_SEQ = itertools.count()


def new_request_id() -> str:
    """32 hex characters like a uuid4's, unique per gateway process: a random 64-bit prefix
    drawn at start plus a counter (uuid4 reads os.urandom per request, a syscall that cost
    ~20 us here; replicas differ by their prefix)."""
    return f"{_RID_PREFIX}{next(_RID_SEQ):016x}"


class Routes:
    """The route functions over one composed gateway."""

    def __init__(self, gw: "Gateway"):
        self.gw = gw
        self.cfg = gw.cfg
        self.metrics = gw.metrics
        self._override = gw.cfg.override_header.lower()

    def table(self) -> dict[tuple[str, str], Route]:
        keys, m = self.gw.keys, self.metrics
        return {("POST", "/v1/recommendations"): authorized(keys, m, "recommend", self.recommend),
                ("POST", "/v1/events"): authorized(keys, m, "events", self.event),
                ("GET", "/v1/admin/experiment"): authorized(keys, m, "admin", self.get_experiment),
                ("PUT", "/v1/admin/experiment"): authorized(keys, m, "admin", self.put_experiment),
                ("GET", "/healthz"): self.healthz,
                ("GET", "/readyz"): self.readyz}

    def metrics_table(self) -> dict[tuple[str, str], Route]:
        return {("GET", "/metrics"): self.metrics_endpoint}

    # ======================================================================= recommend
    async def recommend(self, request: Request, entry) -> Response:
        t0 = time.perf_counter()
        gw, cfg, m = self.gw, self.cfg, self.metrics
        try:
            doc, req = check(request.body, cfg.max_body_bytes)
        except InvalidRequest as e:
            m.client_errors.labels(e.reason).inc()
            # byte for byte the handler's own refusal (handlers/recommender.py: json.dumps)
            return Response(e.status, json.dumps(e.to_dict()).encode())
        if req.catalog is not None:  # the gateway's own probe of TorchServe, not a client's
            m.client_errors.labels("bad_catalog").inc()
            return error(400, "bad_catalog", "the catalog mode is for the gateway's own requests "
                         "to TorchServe; clients ask for recommendations")
        user = req.user_id
        exp = gw.experiment
        override = request.headers.get(self._override)
        if override is not None:
            if "admin" not in entry.rights:
                m.client_errors.labels("forbidden").inc()
                return error(403, "forbidden", f"{cfg.override_header} needs an admin key")
            variant = exp.by_name.get(override)
            if variant is None:
                return error(400, "unknown_variant", f"{cfg.override_header}: {override!r} "
                             f"is not a variant of {exp.name!r} ({list(exp.by_name)})")
            m.overrides.labels(exp.name, variant.name).inc()
        elif user is not None:
            variant = exp.assign(user)
            m.assigned(exp.name, variant.name)
        else:
            variant = exp.control_variant
            m.no_user.labels(exp.name).inc()
        rid = request.headers.get("x-request-id")
        if rid is None or not _RID.match(rid):
            rid = new_request_id()
        deadline = t0 + cfg.deadline_ms / 1000.0
        body, n_recent = request.body, 0
        if user is not None:
            rt = gw.recent
            rt.remember(rid, user)  # joins a later event that carries only this request id
            if rt.enabled and req.similar_to is None:
                recent = await rt.read(user)
                if recent.items:
                    doc, req, body = with_recent(doc, req, recent.items, rt.cfg.max_history)
                    n_recent = len(recent.items)
                m.rt_history.observe(n_recent)

        status, out, version, cause, source, upstream_s = await self._serve(
            exp, variant, body, doc, req, deadline)
        fallback = cause is not None
        if status == 200 and isinstance(out, (bytes, bytearray)):
            payload = splice(out, exp.name, variant.name, fallback, rid)
        elif status == 200:
            payload = orjson.dumps({**out, "experiment": exp.name, "variant": variant.name,
                                    "fallback": True, "request_id": rid})
        else:
            payload = out if isinstance(out, (bytes, bytearray)) else orjson.dumps(out)
        if fallback:
            m.fallbacks.labels(exp.name, variant.name, cause).inc()
        answer = out if status == 200 else None
        tail = req.history[-cfg.history_logged:] if status == 200 and cfg.history_logged else ()
        # one exposure per answer with a handler status; TorchServe's own 413 (a body over
        # its max_request_size) is a refusal like the gateway's, so it gets none
        record = None if status == 413 else ExposureRecord(
            time.time(), rid, exp.name, variant.name, version, user, mode_of(req), answer,
            fallback, cause, source, len(req.history), tail, status, override is not None,
            (len(payload) if answer is not None else 0) + sum(len(h) for h in tail), n_recent)
        if record is not None:
            gw.exposures.submit(record, record.nbytes + 256)  # + the record's fixed fields
        total = time.perf_counter() - t0
        m.observe(exp.name, variant.name, version or "none", status, total)
        m.own_time.observe(max(0.0, total - upstream_s))
        headers = {"X-Request-Id": rid}
        if status == 503:
            headers["Retry-After"] = "1"
        return Response(status, payload, headers)

    async def _serve(self, exp: E.Experiment, variant: E.Variant, body: bytes,
                     doc: Any, req, deadline: float):
        """(status, body bytes or dict, served version, fallback cause, source, upstream s)."""
        gw, m = self.gw, self.metrics
        chain = [variant]
        if variant.name != exp.control:
            chain.append(exp.control_variant)
        cause, upstream_s = None, 0.0
        for i, v in enumerate(chain):
            remaining = deadline - time.perf_counter()
            budget = remaining - (self.cfg.fallback_reserve_ms / 1000.0 if i + 1 < len(chain)
                                  else 0.0)
            a: Attempt = await gw.upstream.predict(v.model_version, body, budget)
            upstream_s += a.seconds
            if a.kind == "ok":
                return 200, a.body, v.model_version, cause, ("control" if cause else None), \
                    upstream_s
            if a.kind == "client_error":
                return a.status, a.body, v.model_version, None, None, upstream_s
            if a.kind == "too_large":
                m.client_errors.labels("too_large").inc()
                return 413, orjson.dumps({"code": 413, "type": "PayloadTooLarge",
                                          "reason": "too_large",
                                          "message": "request body over TorchServe's limit"}), \
                    v.model_version, None, None, upstream_s
            m.upstream_errors.labels(v.name, a.kind).inc()
            cause = cause or a.kind
        view = view_from(doc, req)  # only a fallback needs it
        answer = gw.popularity.answer(view)
        if answer is None:
            return 503, {"code": 503, "type": "ServiceUnavailable", "reason": "unavailable",
                         "message": "TorchServe did not answer and no popularity list is loaded "
                                    "yet"}, None, cause, None, upstream_s
        src = "candidates" if view.mode == "rerank" else "popularity"
        return 200, answer[0], gw.popularity.version, cause, src, upstream_s

    # ======================================================================= events
    async def event(self, request: Request, entry) -> Response:
        return await self.gw.intake.handle(request.body)

    @staticmethod
    def _decode(body: bytes) -> Any:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequest("not_json", "the body is not valid JSON") from None

    # ======================================================================= admin
    async def get_experiment(self, request: Request, entry) -> Response:
        return _json(200, self.gw.describe())

    async def put_experiment(self, request: Request, entry) -> Response:
        gw = self.gw
        try:
            doc = self._decode(request.body)
            try:
                new = E.parse(doc, "body")
            except E.ExperimentError as e:
                raise BadRequest("bad_experiment", str(e)) from None
        except BadRequest as e:
            return _json(e.status, e.to_dict())
        missing = await gw.unknown_versions(new)
        if missing:
            return error(409, "unknown_model_version", f"TorchServe does not serve version(s) "
                         f"{missing} of {self.cfg.model_name!r}; register them first")
        path = self.cfg.experiment_path
        try:
            E.write(path, new)
        except OSError as e:  # e.g. a Kubernetes ConfigMap mount: read-only, shared by replicas
            return error(409, "experiment_read_only",
                         f"this gateway reads its experiment from a read-only file "
                         f"({path}: {e.strerror}); change it at its source "
                         "(on Kubernetes: helm upgrade with new weights, or patch the experiment "
                         "ConfigMap); every replica reloads it")
        gw.file_digest = hashlib.sha256(path.read_bytes()).hexdigest()
        moved = await gw.apply_warm(new, "admin")
        return _json(200, {**gw.describe(), "moved_buckets": moved})

    # ======================================================================= health
    async def healthz(self, request: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        # ready = started and able to answer every request: with no popularity list yet (a fresh
        # start while TorchServe is unreachable), a fallback would have nothing to serve
        gw = self.gw
        exp = gw.experiment
        ready = gw.ready and len(gw.popularity) > 0
        body = {"ready": ready, "experiment": exp.name if exp else None,
                "popularity_items": len(gw.popularity),
                "popularity_version": gw.popularity.version}
        return _json(200 if ready else 503, body)

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(200, self.metrics.exposition(), content_type=_TEXT)


__all__ = ["Routes", "splice"]
