"""The gateway service (aiohttp): routing, assignment, fallbacks, security, logs, metrics.

Endpoints (docs/gateway.md):

* ``POST /v1/recommendations`` (right ``recommend``): the handler's request body, forwarded
  unchanged to ``/predictions/<model>/<version>`` of the user's variant; the answer is the
  handler's body with ``experiment``, ``variant``, ``fallback``, ``request_id`` spliced in
  (``model_version`` is already there).
* ``POST /v1/events`` (right ``events``): an outcome ``{type, item_id, request_id | user_id}``.
* ``GET|PUT /v1/admin/experiment`` (right ``admin``): read / replace variants and weights.
* ``GET /healthz``, ``GET /readyz`` (no key): liveness and readiness.
* Metrics on their own port: ``GET /metrics``.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from gateway import experiment as E
from gateway.auth import KeyStore, bearer, ensure_secret
from gateway.config import GatewayConfig
from gateway.fallback import BadRequest, Popularity, RequestView, view_of
from gateway.logs import Pseudonymizer
from gateway.shipping import open_logs
from gateway.metrics import Metrics
from common.ids import try_canonical_id
from gateway.upstream import Attempt, TokenKeeper, Upstream

log = logging.getLogger("gateway")
JSON = "application/json"
_RID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def _err(status: int, reason: str, message: str, headers: dict | None = None) -> web.Response:
    kind = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
            413: "PayloadTooLarge", 429: "TooManyRequests", 503: "ServiceUnavailable"}.get(
        status, "BadRequest")
    body = orjson.dumps({"code": status, "type": kind, "reason": reason, "message": message})
    return web.Response(body=body, status=status, content_type=JSON, headers=headers)


def resolve_upstream(cfg: GatewayConfig) -> tuple[str, str, Path | None]:
    """(inference URL, management URL, key file or None) from the config, else from the run
    folder ``OUT/torchserve/server.json`` that ``python -m archives serve`` wrote."""
    inference, management = cfg.upstream_url, cfg.management_url
    token_auth = cfg.token_auth
    state_path = cfg.paths.torchserve_dir / "server.json"
    if (not inference or token_auth is None) and state_path.exists():
        st = json.loads(state_path.read_text())
        host = st.get("host", "127.0.0.1")
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else host
        inference = inference or f"http://{host}:{st['ports']['inference']}"
        management = management or f"http://{host}:{st['ports']['management']}"
        if token_auth is None:
            token_auth = bool(st.get("token_auth"))
    if not inference:
        raise RuntimeError(f"no upstream: set GATEWAY_UPSTREAM_URL / --upstream-url, or start "
                           f"TorchServe first (python -m archives serve --out {cfg.out}); "
                           f"{state_path} is missing")
    key_file = None
    if token_auth:
        key_file = Path(cfg.key_file) if cfg.key_file else cfg.paths.torchserve_dir / "key_file.json"
    return inference, management, key_file


class Gateway:
    def __init__(self, cfg: GatewayConfig):
        self.cfg = cfg
        paths = cfg.paths
        paths.root.mkdir(parents=True, exist_ok=True)
        self.metrics = m = Metrics()
        self.keys = KeyStore.load(cfg.keys_path, cfg.default_rate_per_s, cfg.default_burst)
        self.pseudo = Pseudonymizer(self._pseudonym_secret())
        inference, management, key_file = resolve_upstream(cfg)
        self.tokens = TokenKeeper(key_file, management, m)
        self.upstream = Upstream(inference, cfg.model_name, connections=cfg.upstream_connections,
                                 per_version=cfg.per_version_concurrency, tokens=self.tokens)
        self.popularity = Popularity(paths.popularity)
        self.experiment: E.Experiment | None = None
        self._file_digest: str | None = None
        self.logs = open_logs(cfg, m, self._exposure_record, self._event_record)
        self.exposures, self.events = self.logs.exposures, self.logs.events
        self._tasks: list[asyncio.Task] = []
        self.ready = False

    def _pseudonym_secret(self) -> bytes:
        """A secret file named in the config must exist (replicas share it); the default one
        under OUT/gateway is created on first use."""
        path = self.cfg.pseudonym_secret_file
        if path is None:
            return ensure_secret(self.cfg.paths.pseudonym_secret)
        try:
            secret = Path(path).read_text().strip().encode()
        except OSError as e:
            raise FileNotFoundError(f"pseudonym secret {path}: {e.strerror or e}") from None
        if not secret:
            raise ValueError(f"pseudonym secret {path} is empty")
        return secret

    # =========================================================================== experiment
    def load_experiment_file(self, source: str = "file") -> bool:
        """(Re)read the experiment file; a bad file keeps the running experiment."""
        path = self.cfg.experiment_path
        try:
            raw = path.read_bytes()
        except OSError as e:
            if self.experiment is None:
                raise E.ExperimentError(f"{path}: cannot read: {e.strerror or e}") from None
            self._reload_failed(f"{path}: cannot read: {e.strerror or e}", source)
            return False
        digest = hashlib.sha256(raw).hexdigest()
        if digest == self._file_digest and source == "file":
            return False
        self._file_digest = digest
        try:
            new = E.loads(raw.decode("utf-8", errors="replace"), str(path))
        except E.ExperimentError as e:
            if self.experiment is None:
                raise
            self._reload_failed(str(e), source)
            return False
        self.apply(new, source)
        return True

    def _reload_failed(self, message: str, source: str) -> None:
        self.metrics.reloads.labels("error").inc()
        self.metrics.config_ok.set(0)
        log.error("experiment reload (%s) refused, keeping %r: %s", source,
                  self.experiment.name if self.experiment else None, message)

    def apply(self, new: E.Experiment, source: str) -> int | None:
        old = self.experiment
        if old is not None and old.digest == new.digest:
            return 0
        moved = E.moved_buckets(old, new)
        self.experiment = new
        self.metrics.set_weights(new.name, new.fractions())
        self.metrics.reloads.labels("ok").inc()
        self.metrics.config_ok.set(1)
        weights = ", ".join(f"{v.name}=v{v.model_version}:{new.split.counts[v.name] / 100:g}%"
                            for v in new.variants)
        log.info("experiment %r loaded (%s): control %s; %s; %s", new.name, source, new.control,
                 weights, "all users reassigned" if moved is None else
                 f"{moved} of 10000 buckets changed owner")
        if old is not None:
            if old.control_variant.model_version != new.control_variant.model_version:
                self._spawn(self.refresh_popularity())
            fresh = [v for v in new.versions if v not in old.versions]
            if fresh:
                self._spawn(self.warm_up(E.simple("warm", fresh)))
        return moved

    # =========================================================================== records
    def _exposure_record(self, t: tuple) -> dict:
        (ts, rid, exp, variant, version, user, mode, body, fallback, cause, source, hlen, htail,
         status, override) = t
        items, scores, strategy, unknown = [], [], None, 0
        if status == 200 and body:
            d = orjson.loads(body) if isinstance(body, (bytes, bytearray)) else body
            for it in d.get("items") or []:
                items.append(it.get("item_id"))
                scores.append(it.get("score"))
            strategy = d.get("strategy")
            unknown = len(d.get("ignored_history") or [])
        return {"ts": ts, "request_id": rid, "experiment": exp, "variant": variant,
                "model_version": version, "user": self.pseudo(user), "mode": mode,
                "strategy": strategy, "items": items, "scores": scores, "fallback": fallback,
                "fallback_cause": cause, "fallback_source": source, "history_len": hlen,
                "history_items": htail, "unknown_history": unknown, "status": status,
                "override": override}

    def _event_record(self, t: tuple) -> dict:
        ts, rid, user, item, kind = t
        return {"ts": ts, "request_id": rid, "user": self.pseudo(user), "item_id": item,
                "type": kind}

    # =========================================================================== auth
    def _auth(self, request: web.Request, right: str):
        """The key's entry, or an error response (401 no/unknown key, 403 no right, 429)."""
        key = bearer(request.headers.get("Authorization"))
        if key is None:
            self.metrics.client_errors.labels("unauthorized").inc()
            return _err(401, "unauthorized", "send an API key as 'Authorization: Bearer <key>'",
                        {"WWW-Authenticate": "Bearer"})
        entry = self.keys.identify(key)
        if entry is None:
            self.metrics.client_errors.labels("unauthorized").inc()
            return _err(401, "unauthorized", "unknown API key", {"WWW-Authenticate": "Bearer"})
        if right not in entry.rights:
            self.metrics.client_errors.labels("forbidden").inc()
            return _err(403, "forbidden", f"this key lacks the {right!r} right")
        wait = self.keys.throttle(entry)
        if wait > 0:
            self.metrics.client_errors.labels("rate_limited").inc()
            retry = max(1, int(wait + 0.999))
            return _err(429, "rate_limited", f"rate limit of {entry.rate_per_s:g} requests/s "
                        f"exceeded; retry in {retry} s", {"Retry-After": str(retry)})
        return entry

    async def _body(self, request: web.Request) -> bytes:
        limit = self.cfg.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise BadRequest("too_large", f"request body is {request.content_length} bytes; the "
                             f"limit is {limit} bytes", 413)
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BadRequest("too_large", f"request body is over the limit of {limit} bytes",
                             413) from None

    async def _json(self, request: web.Request) -> tuple[bytes, Any]:
        """(raw body, its JSON value), or :class:`BadRequest` (too large, not JSON)."""
        body = await self._body(request)
        try:
            return body, orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequest("not_json", "the body is not valid JSON") from None

    # =========================================================================== recommend
    async def recommend(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        entry = self._auth(request, "recommend")
        if isinstance(entry, web.Response):
            return entry
        try:
            body, doc = await self._json(request)
            if not isinstance(doc, dict):
                raise BadRequest("not_object", "the body must be a JSON object")
            view = view_of(doc)
        except BadRequest as e:
            self.metrics.client_errors.labels(e.reason).inc()
            return web.Response(body=orjson.dumps(e.to_dict()), status=e.status, content_type=JSON)
        exp = self.experiment
        override = request.headers.get(self.cfg.override_header)
        if override is not None:
            if "admin" not in entry.rights:
                self.metrics.client_errors.labels("forbidden").inc()
                return _err(403, "forbidden", f"{self.cfg.override_header} needs an admin key")
            variant = exp.by_name.get(override)
            if variant is None:
                return _err(400, "unknown_variant", f"{self.cfg.override_header}: {override!r} "
                            f"is not a variant of {exp.name!r} ({list(exp.by_name)})")
            self.metrics.overrides.labels(exp.name, variant.name).inc()
        elif view.user is not None:
            variant = exp.assign(view.user)
            self.metrics.assigned(exp.name, variant.name)
        else:
            variant = exp.control_variant
            self.metrics.no_user.labels(exp.name).inc()
        rid = request.headers.get("X-Request-Id")
        if rid is None or not _RID.match(rid):
            rid = uuid.uuid4().hex
        deadline = t0 + self.cfg.deadline_ms / 1000.0

        status, out, version, cause, source, upstream_s = await self._serve(exp, variant, body,
                                                                            view, deadline)
        fallback = cause is not None
        if status == 200 and isinstance(out, (bytes, bytearray)):
            payload = _splice(out, exp.name, variant.name, fallback, rid)
        elif status == 200:
            payload = orjson.dumps({**out, "experiment": exp.name, "variant": variant.name,
                                    "fallback": True, "request_id": rid})
        else:
            payload = out if isinstance(out, (bytes, bytearray)) else orjson.dumps(out)
        if fallback:
            self.metrics.fallbacks.labels(exp.name, variant.name, cause).inc()
        hist = view.history
        self.exposures.submit((time.time(), rid, exp.name, variant.name, version, view.user,
                               view.mode, out if status == 200 else None, fallback, cause, source,
                               len(hist), hist[-self.cfg.history_logged:], status,
                               override is not None))
        total = time.perf_counter() - t0
        self.metrics.observe(exp.name, variant.name, version or "none", status, total)
        self.metrics.own_time.observe(max(0.0, total - upstream_s))
        headers = {"X-Request-Id": rid}
        if status == 503:
            headers["Retry-After"] = "1"
        return web.Response(body=payload, status=status, content_type=JSON, headers=headers)

    async def _serve(self, exp: E.Experiment, variant: E.Variant, body: bytes, view: RequestView,
                     deadline: float):
        """(status, body bytes or dict, served version, fallback cause, source, upstream s)."""
        chain = [variant]
        if variant.name != exp.control:
            chain.append(exp.control_variant)
        cause, upstream_s = None, 0.0
        for i, v in enumerate(chain):
            remaining = deadline - time.perf_counter()
            budget = remaining - (self.cfg.fallback_reserve_ms / 1000.0 if i + 1 < len(chain)
                                  else 0.0)
            a: Attempt = await self.upstream.predict(v.model_version, body, budget)
            upstream_s += a.seconds
            if a.kind == "ok":
                return 200, a.body, v.model_version, cause, ("control" if cause else None), \
                    upstream_s
            if a.kind == "client_error":
                return a.status, a.body, v.model_version, None, None, upstream_s
            if a.kind == "too_large":
                self.metrics.client_errors.labels("too_large").inc()
                return 413, orjson.dumps({"code": 413, "type": "PayloadTooLarge",
                                          "reason": "too_large",
                                          "message": "request body over TorchServe's limit"}), \
                    v.model_version, None, None, upstream_s
            self.metrics.upstream_errors.labels(v.name, a.kind).inc()
            cause = cause or a.kind
        answer = self.popularity.answer(view)
        if answer is None:
            return 503, {"code": 503, "type": "ServiceUnavailable", "reason": "unavailable",
                         "message": "TorchServe did not answer and no popularity list is loaded "
                                    "yet"}, None, cause, None, upstream_s
        src = "candidates" if view.mode == "rerank" else "popularity"
        return 200, answer[0], self.popularity.version, cause, src, upstream_s

    # =========================================================================== events
    async def event(self, request: web.Request) -> web.Response:
        entry = self._auth(request, "events")
        if isinstance(entry, web.Response):
            return entry
        try:
            _, doc = await self._json(request)
            docs = doc if isinstance(doc, list) else [doc]
            if len(docs) > 1000:
                raise BadRequest("too_many", "at most 1000 events per request")
            records = [self._event_of(d) for d in docs]
        except BadRequest as e:
            self.metrics.client_errors.labels(e.reason).inc()
            return web.Response(body=orjson.dumps(e.to_dict()), status=e.status, content_type=JSON)
        accepted = sum(self.events.submit(r) for r in records)
        if accepted < len(records):
            return _err(503, "log_full", f"{len(records) - accepted} of {len(records)} events "
                        "dropped: the write queue is full; send them again",
                        {"Retry-After": "1"})
        return web.Response(body=orjson.dumps({"accepted": accepted}), status=202,
                            content_type=JSON)

    @staticmethod
    def _event_of(d) -> tuple:
        if not isinstance(d, dict):
            raise BadRequest("not_object", "an event must be a JSON object")
        unknown = set(d) - {"type", "item_id", "request_id", "user_id", "ts"}
        if unknown:
            raise BadRequest("unknown_field", f"unknown event fields {sorted(unknown)}")
        kind = d.get("type")
        if not isinstance(kind, str) or not _EVENT_TYPE.match(kind):
            raise BadRequest("bad_type", "type must be a short lower-case word (click, purchase, "
                                         "...)")
        item = try_canonical_id(d.get("item_id"))
        if item is None:
            raise BadRequest("bad_item_id", "item_id must be a valid id")
        rid, user = d.get("request_id"), d.get("user_id")
        if rid is not None and (not isinstance(rid, str) or not _RID.match(rid)):
            raise BadRequest("bad_request_id", "request_id must be the id the gateway answered")
        cuser = try_canonical_id(user) if user is not None else None
        if user is not None and cuser is None:
            raise BadRequest("bad_user_id", "user_id must be a valid id")
        if rid is None and cuser is None:
            raise BadRequest("missing_subject", "an event needs request_id or user_id")
        ts = d.get("ts")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float))):
            raise BadRequest("bad_ts", "ts must be epoch seconds")
        return (float(ts) if ts is not None else time.time(), rid, cuser, item, kind)

    # =========================================================================== admin
    async def get_experiment(self, request: web.Request) -> web.Response:
        entry = self._auth(request, "admin")
        if isinstance(entry, web.Response):
            return entry
        return web.json_response(self._describe())

    def _describe(self) -> dict:
        exp = self.experiment
        return {"experiment": exp.to_dict(), "buckets": {n: list(r) for n, r in
                                                         exp.split.ranges.items()},
                "fractions": exp.fractions(), "file": str(self.cfg.experiment_path)}

    async def put_experiment(self, request: web.Request) -> web.Response:
        entry = self._auth(request, "admin")
        if isinstance(entry, web.Response):
            return entry
        try:
            _, doc = await self._json(request)
            try:
                new = E.parse(doc, "body")
            except E.ExperimentError as e:
                raise BadRequest("bad_experiment", str(e)) from None
        except BadRequest as e:
            return web.Response(body=orjson.dumps(e.to_dict()), status=e.status, content_type=JSON)
        missing = await self.unknown_versions(new)
        if missing:
            return _err(409, "unknown_model_version", f"TorchServe does not serve version(s) "
                        f"{missing} of {self.cfg.model_name!r}; register them first")
        try:
            E.write(self.cfg.experiment_path, new)
        except OSError as e:  # e.g. a Kubernetes ConfigMap mount: read-only, shared by replicas
            return _err(409, "experiment_read_only",
                        f"this gateway reads its experiment from a read-only file "
                        f"({self.cfg.experiment_path}: {e.strerror}); change it at its source "
                        "(on Kubernetes: helm upgrade with new weights, or patch the experiment "
                        "ConfigMap); every replica reloads it")
        self._file_digest = hashlib.sha256(self.cfg.experiment_path.read_bytes()).hexdigest()
        moved = self.apply(new, "admin")
        return web.json_response({**self._describe(), "moved_buckets": moved})

    async def unknown_versions(self, exp: E.Experiment) -> list[str]:
        """Versions TorchServe definitely does not hold (404); unreachable counts as unknown-not."""
        probe = orjson.dumps({"user_id": self.cfg.popularity_probe_user, "k": 1})
        missing = []
        for version in exp.versions:
            a = await self.upstream.predict(version, probe, 10.0)
            if a.kind == "http_404":
                missing.append(version)
        return missing

    # =========================================================================== health
    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        # ready = started and able to answer every request: with no popularity list yet (a fresh
        # start while TorchServe is unreachable), a fallback would have nothing to serve
        exp = self.experiment
        ready = self.ready and len(self.popularity) > 0
        body = {"ready": ready, "experiment": exp.name if exp else None,
                "popularity_items": len(self.popularity),
                "popularity_version": self.popularity.version}
        return web.json_response(body, status=200 if ready else 503)

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    # =========================================================================== background
    def _spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(t)
        t.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def refresh_popularity(self) -> bool:
        exp = self.experiment
        version = exp.control_variant.model_version
        probe = orjson.dumps({"user_id": self.cfg.popularity_probe_user,
                              "k": self.cfg.popularity_k})
        a = await self.upstream.predict(version, probe, 10.0)
        if a.kind != "ok":
            log.warning("popularity refresh from v%s failed: %s %s", version, a.kind,
                        a.body[:200])
            return False
        try:
            d = orjson.loads(a.body)
            if d.get("strategy") != "popular":
                log.warning("popularity probe answered strategy %r", d.get("strategy"))
            self.popularity.set(d, version)
        except (ValueError, OSError) as e:
            log.warning("popularity refresh from v%s unusable: %s", version, e)
            return False
        self.metrics.popularity_items.set(len(self.popularity))
        return True

    async def warm_up(self, exp: E.Experiment, rounds: int = 4) -> None:
        """A few requests per version before taking traffic: the first answers of a fresh
        TorchServe worker (page faults into the catalog, first kernels) can take longer than
        the deadline, and would otherwise be counted as fallbacks."""
        history = [it["item_id"] for it in self.popularity.items[:5]]
        for version in exp.versions:
            for i in range(rounds):
                body = {"user_id": f"{self.cfg.popularity_probe_user}-warm", "k": 10}
                if i % 2 and history:
                    body["history"] = history
                a = await self.upstream.predict(version, orjson.dumps(body), 30.0)
                if a.kind != "ok":
                    log.warning("warm-up of v%s: %s", version, a.kind)
                    break

    async def _popularity_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.popularity_refresh_s if len(self.popularity) else 2.0)
            try:
                await self.refresh_popularity()
            except Exception:  # noqa: BLE001 - the loop must survive
                log.exception("popularity refresh")

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.reload_interval_s)
            try:
                self.load_experiment_file("file")
            except Exception:  # noqa: BLE001
                log.exception("experiment reload")

    async def _token_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.token_check_interval_s)
            if self.tokens.due(self.cfg.token_renew_margin_s):
                await self.tokens.renew(self.upstream.session, "expiry")

    def sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.cfg.experiment_path)
        try:
            self.load_experiment_file("sighup")
        except Exception:  # noqa: BLE001
            log.exception("experiment reload on SIGHUP")

    # =========================================================================== lifecycle
    def api(self) -> web.Application:
        app = web.Application(client_max_size=self.cfg.max_body_bytes)
        app.router.add_post("/v1/recommendations", self.recommend)
        app.router.add_post("/v1/events", self.event)
        app.router.add_get("/v1/admin/experiment", self.get_experiment)
        app.router.add_put("/v1/admin/experiment", self.put_experiment)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        return app

    def metrics_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics_endpoint)
        return app

    async def start(self) -> None:
        self.load_experiment_file("start")
        await self.upstream.start()
        if self.tokens.enabled and self.tokens.key is None:
            log.warning("token auth is on but %s is not readable yet", self.tokens.key_file)
        have = self.popularity.load()
        fresh = await self.refresh_popularity()
        if not fresh and have:
            log.warning("serving the saved popularity list of v%s until TorchServe answers",
                        self.popularity.version)
        self.metrics.popularity_items.set(len(self.popularity))
        await self.warm_up(self.experiment)
        self._spawn(self._popularity_loop())
        self._spawn(self._reload_loop())
        if self.tokens.enabled:
            self._spawn(self._token_loop())
        self.ready = True

    async def stop(self, deadline: float | None = None) -> None:
        """``deadline`` (time.monotonic()) bounds the log close; default now + shutdown_grace_s."""
        deadline = time.monotonic() + self.cfg.shutdown_grace_s if deadline is None else deadline
        self.ready = False
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.upstream.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.logs.close, deadline)


def _splice(body: bytes, experiment: str, variant: str, fallback: bool, rid: bytes | str) -> bytes:
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


async def serve(cfg: GatewayConfig, started=None) -> None:
    """Run until SIGTERM/SIGINT; write OUT/gateway/gateway.json with the bound ports."""
    gw = Gateway(cfg)
    await gw.start()
    runner = web.AppRunner(gw.api(), access_log=None, shutdown_timeout=10.0,
                           handle_signals=False)
    mrunner = web.AppRunner(gw.metrics_app(), access_log=None, handle_signals=False)
    await runner.setup()
    await mrunner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port, backlog=2048, reuse_address=True)
    msite = web.TCPSite(mrunner, cfg.host, cfg.metrics_port, reuse_address=True)
    await site.start()
    await msite.start()
    port = site._server.sockets[0].getsockname()[1]
    mport = msite._server.sockets[0].getsockname()[1]
    state = {"pid": os.getpid(), "host": cfg.host, "port": port, "metrics_port": mport,
             "url": f"http://{_client_host(cfg.host)}:{port}",
             "metrics_url": f"http://{_client_host(cfg.host)}:{mport}/metrics",
             "upstream": gw.upstream.url, "token_auth": gw.tokens.enabled,
             "experiment": gw.experiment.name, "started_at": time.time()}
    tmp = cfg.paths.state.with_name(".gateway.json.tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(cfg.paths.state)
    log.info("gateway on %s (metrics %s), upstream %s, token auth %s", state["url"],
             state["metrics_url"], gw.upstream.url, "on" if gw.tokens.enabled else "off")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gw.sighup)
    if started is not None:
        started(gw, state)
    try:
        await stop.wait()
    finally:
        log.info("shutting down: draining requests, flushing logs")
        await runner.cleanup()       # stops accepting, waits for in-flight handlers
        await gw.stop()
        await mrunner.cleanup()
        try:
            if json.loads(cfg.paths.state.read_text()).get("pid") == os.getpid():
                cfg.paths.state.unlink()
        except (OSError, ValueError):
            pass
        log.info("gateway stopped (%d exposures, %d events written; %d dropped)",
                 gw.exposures.written, gw.events.written,
                 gw.exposures.dropped + gw.events.dropped)


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def run(cfg: GatewayConfig) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - pinned in requirements.txt
        asyncio.run(serve(cfg))
    else:
        uvloop.run(serve(cfg))


__all__ = ["Gateway", "serve", "run", "resolve_upstream"]
