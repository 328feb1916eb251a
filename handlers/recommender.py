"""TorchServe handler of the hybrid recommender (the archive's entry point).

``BaseHandler.handle`` is kept (it emits ``HandlerTime``); this class overrides ``initialize``,
``preprocess`` (validation, per request), ``inference`` (the batch, one matrix product) and
``postprocess`` (JSON bodies and per-request HTTP status).

Request/response contract: docs/serving.md and core/request.schema.json. An invalid
request in a batch (or one the engine cannot answer: an unknown ``similar_to`` item is a 404)
gets its own 4xx (``context.set_response_status(code, message, idx)``) and
a JSON body ``{code, type, reason, message}``; the others in the batch are answered normally.
Any other exception is isolated the same way: one raised while reading or formatting a request
is that request's own error (a 500, or a 400 for nesting too deep), and when the batched engine
call fails its halves are scored apart until the failing request(s) alone get a 500
(reason ``internal_error``). Faults can be injected in test archives only (core/faults.py).
Every answered request carries the headers ``X-Batch-Size`` (how many requests the handler
received together) and ``X-Handler-Ms`` (the batch's time inside the handler: validation,
scoring, formatting), so a client can split its round trip into handler and frontend time.
"""
from __future__ import annotations

import json
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from core import validation
from core.faults import HEADER as FAULT_HEADER
from core.faults import InjectedFault, parse_faults
from core.engine import BatchState as _Batch
from core.artifact_adapter import load_recommender

log = logging.getLogger(__name__)

JSON = "application/json"
INTERNAL_ERROR = "internal_error"  # reason of a 500 body
METRIC_DEFS = {  # name -> (unit, extra dimension, type); must match archives/metrics.yaml
    "RecRequests": ("Count", "Strategy", MetricTypes.COUNTER),
    "RecInvalidRequests": ("Count", "Reason", MetricTypes.COUNTER),
    "RecIgnoredHistoryItems": ("Count", None, MetricTypes.COUNTER),
    "RecScoringLatencySeconds": ("s", None, MetricTypes.HISTOGRAM),
    "RecHandlerLatencySeconds": ("s", None, MetricTypes.HISTOGRAM),
    "RecBatchSize": ("Count", None, MetricTypes.HISTOGRAM),
    "RecWorkerStarts": ("Count", None, MetricTypes.COUNTER),
    "RecWorkerRssBytes": ("Bytes", "Worker", MetricTypes.GAUGE),
}
RSS_EVERY_S = 5.0  # how often a serving worker refreshes RecWorkerRssBytes


class RecommenderHandler(BaseHandler):
    def __init__(self):
        super().__init__()
        self.engine = None  # core.engine.Recommender, built in initialize
        self.model_name = "recsys"
        self.model_version = "0"
        self._metrics: dict[str, Any] = {}
        self._rss_at = 0.0
        self.faults = None  # core.faults.Faults of a test archive; None: no faults, no header read

    # ---- start-up ---------------------------------------------------------------------------
    def initialize(self, context):
        t0 = time.perf_counter()
        self.context = context
        self.manifest = context.manifest
        props = context.system_properties
        model_dir = Path(props.get("model_dir") or ".")
        cfg = dict((getattr(context, "model_yaml_config", None) or {}).get("handler") or {})
        torch.set_num_threads(max(1, int(cfg.get("torch_threads", os.environ.get("RECSYS_TORCH_THREADS", 1)))))
        self.model_name = context.model_name
        self.model_version = str(self.manifest.get("model", {}).get("modelVersion", "0"))
        artifact_dir = model_dir / str(cfg.get("artifact_dir", "artifact"))
        pack = model_dir / str(cfg.get("pack", "serving/pack.safetensors"))
        self.engine = load_recommender(artifact_dir, scoring=str(cfg.get("scoring", "auto")),
                                       pack_path=pack, threads=torch.get_num_threads())
        # The archive version is the registry version: report it, not what the artifact says.
        self.engine.data.model_version = self.model_version
        if cfg.get("faults") is not None:
            self.faults = parse_faults(cfg["faults"])
            log.warning("!!! FAULT INJECTION IS ON for %s v%s: %s. This archive was built with "
                        "--faults for testing; never ship it. !!!", self.model_name,
                        self.model_version, json.dumps(self.faults.to_dict()))
        self._init_metrics(context)
        self._emit("RecWorkerStarts", 1)
        self._emit_rss(force=True)
        self.initialized = True
        rss = _memory()
        log.info("recommender %s v%s ready in %.2f s: %d items, %d users, scoring=%s, threads=%d, "
                 "memory %s", self.model_name, self.model_version, time.perf_counter() - t0,
                 self.engine.data.n_items, len(self.engine.data.user_index),
                 self.engine.data.info.get("scoring"), torch.get_num_threads(), rss)

    def _init_metrics(self, context) -> None:
        cache = context.metrics
        for name, (unit, extra, mtype) in METRIC_DEFS.items():
            dims = ["ModelName", "ModelVersion", "Level"] + ([extra] if extra else [])
            try:
                metric = cache.get_metric(name, mtype)
            except Exception:  # noqa: BLE001 - not declared in the metrics yaml: log-only metric
                metric = cache.add_metric_to_cache(name, unit, dims, mtype)
            self._metrics[name] = metric

    def _emit(self, name: str, value: float, extra: str | None = None) -> None:
        metric = self._metrics.get(name)
        if metric is None:
            return
        dims = [self.model_name, self.model_version, "Model"] + ([extra] if extra is not None else [])
        try:
            metric.add_or_update(value, dims)
        except Exception:  # noqa: BLE001 - metrics must never fail a request
            log.debug("metric %s not emitted", name, exc_info=True)

    # ---- the three steps ----------------------------------------------------------------------
    def _content_type(self, idx: int, param: str | None) -> str | None:
        try:
            rp = self.context.request_processor[idx]
            if param:
                prop = rp.get_request_property(param)
                if isinstance(prop, dict) and prop.get("content-type"):
                    return prop["content-type"]
            return rp.get_request_property("Content-Type") or rp.get_request_property("content-type")
        except Exception:  # noqa: BLE001
            return None

    def _header(self, idx: int, name: str) -> str | None:
        """A request header, whatever case the client wrote it in."""
        try:
            rp = self.context.request_processor[idx]
            value = rp.get_request_property(name) or rp.get_request_property(name.lower())
            if value is None:
                want = name.lower()
                value = next((v for k, v in (rp.get_request_properties() or {}).items()
                              if str(k).lower() == want), None)
            return value.decode("latin-1") if isinstance(value, bytes) else value
        except Exception:  # noqa: BLE001
            return None

    def preprocess(self, data):
        batch = _Batch(n=len(data), started=time.perf_counter())
        for idx, row in enumerate(data):
            try:
                batch.requests[idx] = self._parse_one(idx, row)
            except validation.InvalidRequest as e:
                batch.errors[idx] = e
            except RecursionError:  # the request's nesting, whatever check let it through
                batch.errors[idx] = validation.InvalidRequest(validation.TOO_DEEP, "request body nests too deeply "
                                                                 "to be read")
            except Exception:  # noqa: BLE001 - this request's own 500, never the batch's
                log.error("reading request %d of a batch of %d failed:\n%s", idx, batch.n,
                          traceback.format_exc())
                batch.failures[idx] = "internal error while reading the request; see the model log"
        if self.faults is not None and batch.requests:
            batch.faulty, batch.fault_sleep_s = self.faults.plan(
                {i: r.user_id for i, r in batch.requests.items()},
                lambda i: self._header(i, FAULT_HEADER))
        return batch

    def _parse_one(self, idx: int, row: Any) -> validation.RecRequest:
        body, param = validation.body_of(row or {})
        ctype = self._content_type(idx, param)
        if param not in ("body", "data") and ctype and "form-urlencoded" in ctype.lower():
            raise validation.InvalidRequest(validation.NOT_JSON, "the body was sent as a form "
                                               "(application/x-www-form-urlencoded, curl -d's "
                                               "default); send it with Content-Type: "
                                               "application/json")
        return validation.parse_request(body, ctype)

    def inference(self, batch: _Batch, *args, **kwargs):
        if not batch.requests:
            return batch
        if batch.fault_sleep_s > 0:
            time.sleep(batch.fault_sleep_s)
        t0 = time.perf_counter()
        outcomes = self._score(batch, sorted(batch.requests))
        self._emit("RecScoringLatencySeconds", time.perf_counter() - t0)
        for i, o in outcomes.items():
            if o.error is not None:  # e.g. 404 unknown_item: answered like an invalid request
                batch.errors[i] = o.error
                continue
            batch.bodies[i] = o.body
            self._emit("RecRequests", 1, o.strategy)
            if o.ignored_history:
                self._emit("RecIgnoredHistoryItems", o.ignored_history)
        return batch

    def _score(self, batch: _Batch, idxs: list[int]) -> dict[int, Any]:
        """Outcomes of ``idxs`` scored together. When the batched call fails, its halves are
        scored apart (recursively), so only the request(s) that fail alone get a 500."""
        try:
            outcomes = self._recommend(batch, idxs)
            if len(outcomes) != len(idxs):
                raise RuntimeError(f"the engine answered {len(outcomes)} of {len(idxs)} requests")
            return dict(zip(idxs, outcomes))
        except Exception as e:  # noqa: BLE001 - isolate the failing request(s)
            if len(idxs) > 1:
                log.warning("scoring %d requests together failed (%s: %s); scoring them apart",
                            len(idxs), type(e).__name__, e)
                mid = len(idxs) // 2
                return {**self._score(batch, idxs[:mid]), **self._score(batch, idxs[mid:])}
            if isinstance(e, InjectedFault):
                log.warning("request %d of a batch of %d: %s", idxs[0], batch.n, e)
                batch.failures[idxs[0]] = f"internal error while scoring: {e}"
            else:
                log.error("scoring request %d of a batch of %d failed:\n%s", idxs[0], batch.n,
                          traceback.format_exc())
                batch.failures[idxs[0]] = "internal error while scoring this request; see the model log"
            return {}

    def _recommend(self, batch: _Batch, idxs: list[int]) -> list[Any]:
        """The engine step (where injected errors are raised, so they take the real path)."""
        hit = [i for i in idxs if i in batch.faulty]
        if hit:
            raise InjectedFault(f"injected fault (handler.faults) for request(s) {hit} of the batch")
        return self.engine.recommend([batch.requests[i] for i in idxs])

    def postprocess(self, batch: _Batch):
        out: list[str] = []
        handler_ms = f"{(time.perf_counter() - batch.started) * 1e3:.3f}"
        for idx in range(batch.n):
            try:
                text = self._answer(batch, idx)
            except Exception:  # noqa: BLE001 - this request's own 500, never the batch's
                log.error("formatting the answer to request %d of a batch of %d failed:\n%s", idx,
                          batch.n, traceback.format_exc())
                text = self._failure(idx, "internal error while formatting the answer; see the "
                                          "model log")
            try:
                self.context.set_response_content_type(idx, JSON)
                self.context.set_response_header(idx, "X-Batch-Size", str(batch.n))
                self.context.set_response_header(idx, "X-Handler-Ms", handler_ms)
            except Exception:  # noqa: BLE001 - headers are informative; the answer still goes
                log.debug("response headers of request %d not set", idx, exc_info=True)
            out.append(text)
        self._emit("RecBatchSize", batch.n)
        self._emit("RecHandlerLatencySeconds", time.perf_counter() - batch.started)
        self._emit_rss()
        return out

    def _answer(self, batch: _Batch, idx: int) -> str:
        """One request's JSON body, its status set (4xx, 500 or the default 200)."""
        if idx in batch.errors:
            e = batch.errors[idx]
            self.context.set_response_status(e.status, e.message, idx)
            self._emit("RecInvalidRequests", 1, e.reason)
            return json.dumps(e.to_dict())
        if idx in batch.failures:
            return self._failure(idx, batch.failures[idx])
        if idx not in batch.bodies:
            raise RuntimeError(f"request {idx} was neither answered nor refused")
        return json.dumps(batch.bodies[idx])

    def _failure(self, idx: int, message: str) -> str:
        try:
            self.context.set_response_status(500, message, idx)
        except Exception:  # noqa: BLE001
            log.debug("status of request %d not set", idx, exc_info=True)
        return json.dumps({"code": 500, "type": "InternalServerError", "reason": INTERNAL_ERROR,
                           "message": message})

    def _emit_rss(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._rss_at >= RSS_EVERY_S:
            self._rss_at = now
            try:
                import psutil

                self._emit("RecWorkerRssBytes", psutil.Process().memory_info().rss, str(os.getpid()))
            except Exception:  # noqa: BLE001 - metrics must never fail a request
                log.debug("RSS not emitted", exc_info=True)


def _memory() -> str:
    try:
        import psutil

        m = psutil.Process().memory_full_info()
        return f"rss={m.rss / 2**20:.0f}MiB uss={m.uss / 2**20:.0f}MiB pss={m.pss / 2**20:.0f}MiB"
    except Exception:  # noqa: BLE001
        return "n/a"


__all__ = ["RecommenderHandler"]
