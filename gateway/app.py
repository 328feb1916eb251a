"""The gateway's composition and lifecycle: the pieces built, started, run and stopped.

The jobs live in their own modules (docs/gateway.md, "Code layout"):

* ``gateway/routes.py``: the routes, plain ``async (Request) -> Response`` functions;
* ``gateway/middleware.py``: auth (keys, rights, suspension, rate limits) around the routes;
* ``gateway/http.py``: the seam a server implements; ``gateway/aioserver.py`` (aiohttp) and
  ``gateway/fastserver.py`` (httptools) enforce the body limit and the in-flight budget
  (``gateway/admission.py``) before a body is read;
* ``gateway/validation.py``: the handler's own request validation, cheap and memory-safe;
* ``gateway/records.py``: the exposure and event records;
* here: :class:`Gateway` (config -> keys, upstream, logs, experiment; hot reload with warm-up
  first; background loops) and :func:`serve` (servers, signals, SIGTERM drain).
"""
from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import os
import signal
import time
from pathlib import Path

import orjson

from core.jsonio import write_json
from gateway import experiment as E
from gateway.admission import ByteBudget
from gateway.auth import KeyStore, ensure_secret
from gateway.config import GatewayConfig
from gateway.fallback import Popularity
from gateway.http import Response, ServerFactory, ServerLimits
from gateway.logs import Pseudonymizer
from gateway.shipping import open_logs
from gateway.metrics import Metrics
from gateway.middleware import error, key_gate
from gateway.catalog import Catalogs
from gateway.intake import Intake
from gateway.recent import RecentEvents
from gateway.records import event_dict, exposure_dict, training_event_dict
from gateway.routes import Routes, splice as _splice
from gateway.upstream import TokenKeeper, Upstream

log = logging.getLogger("gateway")
SHED_PATHS = frozenset({"/v1/recommendations", "/v1/events"})


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
        self.tokens = TokenKeeper(key_file, management, m, timeout_s=cfg.token_renew_timeout_s,
                                  backoff_s=cfg.token_backoff_s,
                                  max_backoff_s=cfg.token_max_backoff_s)
        self.upstream = Upstream(inference, cfg.model_name, connections=cfg.upstream_connections,
                                 per_version=cfg.per_version_concurrency, tokens=self.tokens,
                                 **upstream_client(cfg.upstream_client, inference,
                                                   cfg.upstream_connections))
        self.budget = (ByteBudget(cfg.inflight_bytes_budget)
                       if cfg.inflight_bytes_budget > 0 else None)
        if self.budget is not None:
            # read at scrape time, not set twice per request (a locked write each)
            budget = self.budget
            m.inflight_bytes.set_function(lambda: budget.in_flight)
        self.popularity = Popularity(paths.popularity)
        self.experiment: E.Experiment | None = None
        self.file_digest: str | None = None
        self.logs = open_logs(cfg, m, self._exposure_record, self._event_record,
                              training_event_dict)
        self.exposures, self.events = self.logs.exposures, self.logs.events
        self.recent = RecentEvents(cfg.realtime, m)
        self.catalogs = Catalogs()
        self.intake = Intake(self.recent, self.events, self.logs.training, m)
        self._tasks: list[asyncio.Task] = []
        self._apply_lock = asyncio.Lock()
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
    async def load_experiment_file(self, source: str = "file") -> bool:
        """(Re)read the experiment file; a bad file keeps the running experiment. Versions new
        to the experiment are warmed before it switches (:meth:`apply_warm`)."""
        path = self.cfg.experiment_path
        try:
            raw = path.read_bytes()
        except OSError as e:
            if self.experiment is None:
                raise E.ExperimentError(f"{path}: cannot read: {e.strerror or e}") from None
            self._reload_failed(f"{path}: cannot read: {e.strerror or e}", source)
            return False
        digest = hashlib.sha256(raw).hexdigest()
        if digest == self.file_digest and source == "file":
            return False
        self.file_digest = digest
        try:
            new = E.loads(raw.decode("utf-8", errors="replace"), str(path))
        except E.ExperimentError as e:
            if self.experiment is None:
                raise
            self._reload_failed(str(e), source)
            return False
        await self.apply_warm(new, source)
        return True

    def _reload_failed(self, message: str, source: str) -> None:
        self.metrics.reloads.labels("error").inc()
        self.metrics.config_ok.set(0)
        log.error("experiment reload (%s) refused, keeping %r: %s", source,
                  self.experiment.name if self.experiment else None, message)

    async def apply_warm(self, new: E.Experiment, source: str) -> int | None:
        """Warm the versions ``new`` adds, then switch to it: a version takes traffic only once
        its workers have answered (a cold worker's first answers can outlast the deadline and
        be logged as the treatment's fallbacks). One switch at a time."""
        async with self._apply_lock:
            old = self.experiment
            if old is not None and old.digest != new.digest:
                fresh = [v for v in new.versions if v not in old.versions]
                if fresh:
                    try:
                        await asyncio.wait_for(self.warm_up(E.simple("warm", fresh)),
                                               self.cfg.warm_up_timeout_s)
                    except asyncio.TimeoutError:
                        log.warning("warm-up of %s took over %g s; switching anyway", fresh,
                                    self.cfg.warm_up_timeout_s)
            return self.apply(new, source)

    def apply(self, new: E.Experiment, source: str) -> int | None:
        """Switch to ``new`` now (callers warm its new versions first: :meth:`apply_warm`)."""
        old = self.experiment
        if old is not None and old.digest == new.digest:
            # e.g. a bad file reverted to the running experiment: the config is good again
            self.metrics.config_ok.set(1)
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
            if set(old.versions) != set(new.versions):
                self._spawn(self.refresh_catalog())
        return moved

    # =========================================================================== records
    def _exposure_record(self, r) -> dict:
        return exposure_dict(r, self.pseudo)

    def _event_record(self, r) -> dict:
        return event_dict(r, self.pseudo)

    # =========================================================================== limits
    def limits(self) -> ServerLimits:
        """What the API server enforces before a route runs: the body limit and the in-flight
        budget (shed answers: 503 + Retry-After, status_class="shed")."""
        cfg = self.cfg

        def too_large(n: int | None) -> Response:
            self.metrics.client_errors.labels("too_large").inc()
            size = f"{n} bytes" if n is not None else "over the limit"
            return error(413, "too_large", f"request body is {size}; the limit is "
                         f"{cfg.max_body_bytes} bytes")

        def shed() -> Response:
            exp = self.experiment
            self.metrics.shed(exp.name if exp else "none")
            return error(503, "shed", "the gateway is at its in-flight budget "
                         f"({cfg.inflight_bytes_budget} bytes of requests); retry shortly",
                         {"Retry-After": str(cfg.shed_retry_after_s)})
        return ServerLimits(cfg.max_body_bytes, too_large, shed, self.budget, SHED_PATHS,
                            gate=key_gate(self.keys, self.metrics))

    def describe(self) -> dict:
        exp = self.experiment
        return {"experiment": exp.to_dict(), "buckets": {n: list(r) for n, r in
                                                         exp.split.ranges.items()},
                "fractions": exp.fractions(), "file": str(self.cfg.experiment_path)}

    async def unknown_versions(self, exp: E.Experiment) -> list[str]:
        """Versions TorchServe definitely does not hold (404); unreachable counts as unknown-not."""
        probe = orjson.dumps({"user_id": self.cfg.popularity_probe_user, "k": 1})
        missing = []
        for version in exp.versions:
            a = await self.upstream.predict(version, probe, 10.0)
            if a.kind == "http_404":
                missing.append(version)
        return missing

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
        the deadline, and would otherwise be counted as fallbacks. Sequential rounds, then one
        concurrent burst, so that more than one worker of the version is reached."""
        history = [it["item_id"] for it in self.popularity.items[:5]]

        def body(i: int) -> bytes:
            b = {"user_id": f"{self.cfg.popularity_probe_user}-warm", "k": 10}
            if i % 2 and history:
                b["history"] = history
            return orjson.dumps(b)
        for version in exp.versions:
            for i in range(rounds):
                a = await self.upstream.predict(version, body(i), 30.0)
                if a.kind != "ok":
                    log.warning("warm-up of v%s: %s", version, a.kind)
                    break
            else:
                await asyncio.gather(*(self.upstream.predict(version, body(i), 30.0)
                                       for i in range(rounds)))

    async def refresh_catalog(self) -> None:
        """The served versions' catalogs (items added with add-items included), for the
        events route: an item none of them knows is logged, not stored."""
        catalog = await self.catalogs.refresh(self.upstream, list(self.experiment.versions))
        self.recent.catalog = catalog
        self.metrics.rt_catalog_items.set(len(catalog) if catalog is not None else 0)

    async def _popularity_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.popularity_refresh_s if len(self.popularity) else 2.0)
            try:
                await self.refresh_popularity()
            except Exception:  # noqa: BLE001 - the loop must survive
                log.exception("popularity refresh")
            try:
                await self.refresh_catalog()
            except Exception:  # noqa: BLE001
                log.exception("catalog refresh")

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.reload_interval_s)
            try:
                await self.load_experiment_file("file")
            except Exception:  # noqa: BLE001
                log.exception("experiment reload")

    async def _token_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.token_check_interval_s)
            if self.tokens.due(self.cfg.token_renew_margin_s):
                await self.tokens.renew("expiry")

    def sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.cfg.experiment_path)
        self._spawn(self._reload_now("sighup"))

    async def _reload_now(self, source: str) -> None:
        try:
            await self.load_experiment_file(source)
        except Exception:  # noqa: BLE001
            log.exception("experiment reload on %s", source.upper())

    # =========================================================================== lifecycle
    def routes(self) -> Routes:
        return Routes(self)

    async def start(self) -> None:
        await self.load_experiment_file("start")
        await self.upstream.start()
        if self.tokens.enabled and self.tokens.key is None:
            log.warning("token auth is on but %s is not readable yet", self.tokens.key_file)
        have = self.popularity.load()
        fresh = await self.refresh_popularity()
        if not fresh and have:
            log.warning("serving the saved popularity list of v%s until TorchServe answers",
                        self.popularity.version)
        self.metrics.popularity_items.set(len(self.popularity))
        await self.refresh_catalog()
        if self.recent.enabled and not await self.recent.store.ping():
            log.warning("the recent-event store (%s) does not answer; answering without recent "
                        "events until it does", self.recent.store.name)
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
        await self.recent.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.logs.close, deadline)


def upstream_client(name: str, url: str, connections: int) -> dict:
    """The upstream HTTP client chosen by ``upstream_client`` (Upstream's keyword arguments)."""
    if name == "aiohttp":
        return {}  # Upstream's default: AiohttpClient
    if name == "fast":
        from gateway import fastclient  # type: ignore[attr-defined]
        return {"client": fastclient.FastClient(url, connections),
                "disconnected": (fastclient.Disconnected, fastclient.ProtocolError)}
    raise ValueError(f"unknown upstream_client {name!r}: aiohttp or fast")


def server_factory(name: str) -> ServerFactory:
    """The HTTP server chosen by ``http_server`` (both take the same arguments)."""
    if name == "aiohttp":
        from gateway.aioserver import start_aiohttp
        return start_aiohttp
    if name == "fast":
        from gateway.fastserver import start_fast  # type: ignore[import-not-found]
        return start_fast
    raise ValueError(f"unknown http_server {name!r}: aiohttp or fast")


async def serve(cfg: GatewayConfig, started=None) -> None:
    """Run until SIGTERM/SIGINT; write OUT/gateway/gateway.json with the bound ports."""
    gw = Gateway(cfg)
    await gw.start()
    _tune_gc()
    factory = server_factory(cfg.http_server)
    routes = gw.routes()
    limits = gw.limits()
    api = await factory(routes.table(), cfg.host, cfg.port, limits, backlog=2048)
    mlimits = ServerLimits(64 * 1024, limits.too_large, limits.shed)
    msrv = await factory(routes.metrics_table(), cfg.host, cfg.metrics_port, mlimits)
    port, mport = api.port, msrv.port
    state = {"pid": os.getpid(), "host": cfg.host, "port": port, "metrics_port": mport,
             "url": f"http://{_client_host(cfg.host)}:{port}",
             "metrics_url": f"http://{_client_host(cfg.host)}:{mport}/metrics",
             "upstream": gw.upstream.url, "token_auth": gw.tokens.enabled,
             "http_server": cfg.http_server,
             "realtime": {"enabled": gw.recent.enabled, "store": gw.recent.store.name},
             "experiment": gw.experiment.name, "started_at": time.time()}
    write_json(cfg.paths.state, state)
    log.info("gateway on %s (metrics %s), upstream %s, token auth %s, server %s, real-time %s",
             state["url"], state["metrics_url"], gw.upstream.url,
             "on" if gw.tokens.enabled else "off", cfg.http_server,
             f"on ({gw.recent.store.name} store)" if gw.recent.enabled else "off")
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
        # one budget from SIGTERM to exit (GATEWAY_SHUTDOWN_GRACE_S, below the pod's grace
        # period): the drain takes at most drain_grace_s of it, the log close the rest
        deadline = time.monotonic() + cfg.shutdown_grace_s
        log.info("shutting down: draining requests, flushing logs (%.0f s at most)",
                 cfg.shutdown_grace_s)
        drain_s = min(cfg.drain_grace_s, 0.6 * cfg.shutdown_grace_s)
        await api.close(drain_s)  # stops accepting, waits for in-flight requests
        await gw.stop(deadline)
        await msrv.close(max(0.0, min(1.0, deadline - time.monotonic())))
        try:
            if json.loads(cfg.paths.state.read_text()).get("pid") == os.getpid():
                cfg.paths.state.unlink()
        except (OSError, ValueError):
            pass
        training = gw.logs.training
        log.info("gateway stopped (%d exposures, %d events, %d training events written; "
                 "%d dropped)", gw.exposures.written, gw.events.written,
                 training.written if training else 0,
                 sum(lg.dropped for lg in gw.logs.all))


def _tune_gc() -> None:
    """Keep Python's cycle collector off the start-up heap. A profile under load put ~10% of
    the gateway's main thread in ``gc_collect_main``, mostly full collections walking the
    modules and settings loaded at start, which never become garbage: freeze them
    (``gc.freeze``) and collect the young generation less often. A request's objects are
    freed by reference counting; the collector only has to find rare cycles."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def run(cfg: GatewayConfig) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - pinned in requirements.txt
        asyncio.run(serve(cfg))
    else:
        uvloop.run(serve(cfg))


__all__ = ["Gateway", "serve", "run", "resolve_upstream", "server_factory", "SHED_PATHS",
           "_splice"]
