"""The gateway's Prometheus metrics (names and labels from CONTRACTS.md, "Metrics").

One registry per gateway (tests run several in one process). Label children are cached so the
hot path does a dict lookup and an ``observe``.
"""
from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# 1 ms .. 1 s, dense where P50/P99 of a healthy gateway sit (a few ms to tens of ms).
DURATION_BUCKETS = (0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025,
                    0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0)

# 10 us .. 50 ms: the embedded store answers in tens of microseconds, Redis on loopback in a few
# hundred; the read's goal is a P99 under 1 ms, its deadline 5 ms.
READ_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                0.025, 0.05)
FRESHNESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.duration = Histogram(
            "recsys_gateway_request_duration_seconds",
            "Gateway request duration (receipt to answer), by assigned variant and the model "
            "version whose output was served", ["experiment", "variant", "model_version",
                                                "status_class"],
            buckets=DURATION_BUCKETS, registry=r)
        self.assignments = Counter("recsys_gateway_assignments_total",
                                   "Requests assigned to a variant (users with an id)",
                                   ["experiment", "variant"], registry=r)
        self.no_user = Counter("recsys_gateway_requests_without_user_total",
                               "Requests without a user id (served by control, counted apart)",
                               ["experiment"], registry=r)
        self.overrides = Counter("recsys_gateway_overrides_total",
                                 "Requests routed by the admin-only override header",
                                 ["experiment", "variant"], registry=r)
        self.weight = Gauge("recsys_gateway_variant_weight",
                            "Share of buckets (0..1) each variant owns", ["experiment", "variant"],
                            registry=r)
        self.fallbacks = Counter("recsys_gateway_fallbacks_total",
                                 "Answers served by a fallback, by assigned variant and cause",
                                 ["experiment", "variant", "cause"], registry=r)
        self.upstream_errors = Counter("recsys_gateway_upstream_errors_total",
                                       "Failed upstream attempts", ["variant", "kind"], registry=r)
        self.reloads = Counter("recsys_gateway_config_reloads_total",
                               "Experiment (re)loads by result", ["result"], registry=r)
        self.config_ok = Gauge("recsys_gateway_config_last_reload_ok",
                               "1 when the last experiment load succeeded", registry=r)
        self.log_dropped = Counter("recsys_gateway_log_dropped_total",
                                   "Exposure/event records lost: write queue full (count or bytes), "
                                   "write error, or not written within the shutdown grace",
                                   ["log"], registry=r)
        self.log_written = Counter("recsys_gateway_log_written_total",
                                   "Exposure/event records written", ["log"], registry=r)
        # ---- log durability and shipping (gateway/logs.py, gateway/shipping.py) ----------
        self.log_write_errors = Counter("recsys_gateway_log_write_errors_total",
                                        "Failed log writes (e.g. ENOSPC); their records are "
                                        "counted as dropped", ["log"], registry=r)
        self.log_truncated = Counter("recsys_gateway_log_truncated_total",
                                     "Records cut to the record byte cap (kept, marked "
                                     "truncated)", ["log"], registry=r)
        self.log_shipped_files = Counter("recsys_gateway_log_shipped_files_total",
                                         "Rotated log files uploaded to S3, verified and deleted "
                                         "locally", ["log"], registry=r)
        self.log_shipped_bytes = Counter("recsys_gateway_log_shipped_bytes_total",
                                         "Bytes of the shipped log files", ["log"], registry=r)
        self.log_ship_failures = Counter("recsys_gateway_log_ship_failures_total",
                                         "Failed or unverified uploads of a log file (kept and "
                                         "retried)", ["log"], registry=r)
        self.log_pending_bytes = Gauge("recsys_gateway_log_pending_bytes",
                                       "Bytes of local log files not shipped yet (all of them "
                                       "when shipping is off)", ["log"], registry=r)
        self.log_retain_bytes = Gauge("recsys_gateway_log_retain_bytes",
                                      "The retention cap on local log bytes (0 = none)",
                                      registry=r)
        self.log_shipping_enabled = Gauge("recsys_gateway_log_shipping_enabled",
                                          "1 when rotated logs are shipped to S3 (0: the logs "
                                          "are ephemeral by configuration)", registry=r)
        self.log_deleted_files = Counter("recsys_gateway_log_deleted_unshipped_files_total",
                                         "Unshipped log files deleted by the retention cap",
                                         ["log"], registry=r)
        self.log_deleted_bytes = Counter("recsys_gateway_log_deleted_unshipped_bytes_total",
                                         "Bytes of unshipped log files deleted by the retention "
                                         "cap", ["log"], registry=r)
        self.client_errors = Counter("recsys_gateway_client_errors_total",
                                     "Requests refused by the gateway itself",
                                     ["reason"], registry=r)
        self.own_time = Histogram("recsys_gateway_own_seconds",
                                  "Gateway time per request outside the upstream call",
                                  buckets=(0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001,
                                           0.002, 0.005, 0.01, 0.05), registry=r)
        self.token_renewals = Counter("recsys_gateway_token_renewals_total",
                                      "TorchServe inference key renewals", ["trigger", "result"],
                                      registry=r)
        self.popularity_items = Gauge("recsys_gateway_popularity_items",
                                      "Items in the in-memory popularity list", registry=r)
        self.shed_total = Counter("recsys_gateway_shed_total",
                                  "Requests shed at the in-flight budget (503 + Retry-After)",
                                  ["experiment"], registry=r)
        self.inflight_bytes = Gauge("recsys_gateway_inflight_bytes",
                                    "Bytes of request bodies being handled (the in-flight budget's "
                                    "use)", registry=r)
        # ---- real-time events (gateway/recent.py, gateway/intake.py; docs/realtime.md) -----
        self.rt_read = Histogram("recsys_gateway_realtime_read_seconds",
                                 "Recent-event store read per request that asked the store",
                                 buckets=READ_BUCKETS, registry=r)
        self.rt_reads = Counter("recsys_gateway_realtime_reads_total",
                                "Store reads by result: hit (recent events used), empty, error, "
                                "timeout (over the read deadline), skipped (store marked down)",
                                ["result"], registry=r)
        self.rt_store_errors = Counter("recsys_gateway_realtime_store_errors_total",
                                       "Recent-event store errors", ["op"], registry=r)
        self.rt_history = Histogram("recsys_gateway_realtime_history_length",
                                    "Recent events merged into a request's history",
                                    buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200), registry=r)
        self.rt_freshness = Histogram("recsys_gateway_realtime_freshness_seconds",
                                      "From an event's timestamp to the first answer on this "
                                      "replica that used it", buckets=FRESHNESS_BUCKETS,
                                      registry=r)
        self.events = Counter("recsys_gateway_events_total",
                              "Posted events by result (stored, duplicate, logged: valid but "
                              "not stored, refused) and reason", ["result", "reason"],
                              registry=r)
        self.rt_enabled = Gauge("recsys_gateway_realtime_enabled",
                                "1 when answers read the recent-event store", registry=r)
        self.rt_store_up = Gauge("recsys_gateway_realtime_store_up",
                                 "0 while the store is marked down after an error", registry=r)
        self.rt_catalog_items = Gauge("recsys_gateway_realtime_catalog_items",
                                      "Items of the served versions' catalogs (events on other "
                                      "items are logged, not stored); 0 while unknown",
                                      registry=r)
        self.rt_read_results = {k: self.rt_reads.labels(k)
                          for k in ("hit", "empty", "error", "timeout", "skipped")}
        self._dur: dict[tuple, object] = {}
        self._asg: dict[tuple, object] = {}

    def observe(self, experiment: str, variant: str, version: str, status: int,
                seconds: float) -> None:
        key = (experiment, variant, version, status // 100)
        child = self._dur.get(key)
        if child is None:
            child = self._dur[key] = self.duration.labels(experiment, variant, version,
                                                          f"{status // 100}xx")
        child.observe(seconds)

    def shed(self, experiment: str) -> None:
        """A shed request: its own status class, so the error ratio leaves it out."""
        self.shed_total.labels(experiment).inc()
        self.duration.labels(experiment, "none", "none", "shed").observe(0.0)

    def assigned(self, experiment: str, variant: str) -> None:
        key = (experiment, variant)
        child = self._asg.get(key)
        if child is None:
            child = self._asg[key] = self.assignments.labels(experiment, variant)
        child.inc()

    def set_weights(self, experiment: str, fractions: dict[str, float]) -> None:
        self.weight.clear()
        for name, f in fractions.items():
            self.weight.labels(experiment, name).set(f)

    def watch_logs(self, logs: dict[str, Any]) -> None:
        """Export each log's submitted records and queued bytes, read from the log objects at
        scrape time (nothing per request). With ``_written`` and ``_dropped`` they make the
        identity submitted = written + dropped + queued checkable from outside."""
        self.registry.register(_LogQueues(logs))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _LogQueues:
    """Collector over ``{name: JsonlLog}``."""

    def __init__(self, logs: dict[str, Any]):
        self.logs = logs

    def collect(self) -> Iterator:
        sub = CounterMetricFamily("recsys_gateway_log_submitted",
                                  "Exposure/event records submitted to the write queue", labels=["log"])
        qb = GaugeMetricFamily("recsys_gateway_log_queued_bytes",
                               "Estimated bytes of records waiting in the write queue", labels=["log"])
        for name, lg in self.logs.items():
            sub.add_metric([name], lg.submitted)
            qb.add_metric([name], lg.queued_bytes)
        yield sub
        yield qb


__all__ = ["Metrics", "DURATION_BUCKETS", "READ_BUCKETS", "FRESHNESS_BUCKETS"]
