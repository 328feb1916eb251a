"""Run the drift check once (``python -m monitoring drift --out OUT``) or as a daemon that
exports the gauges for Prometheus (``--daemon``).

Once: reads the window of logs that ends at the newest record, writes
``OUT/monitoring/drift.json`` and prints a table. Daemon: every ``interval_s`` seconds recomputes
the window that ends now and serves, on ``DRIFT_METRICS_PORT`` (8092):

    recsys_drift_psi{feature}              PSI (absent while a feature has too few samples)
    recsys_drift_unknown_share{kind}       share of unknown users / history items / event items
    recsys_drift_samples{feature}          live observations behind each PSI
    recsys_drift_last_run_timestamp_seconds, recsys_drift_runs_total{result}
"""
from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from monitoring.config import DriftConfig
from monitoring.drift import DriftReport, compute
from monitoring.drift_sources import (Reference, newest_ts, parse_duration, read_log,
                                      reference_from_artifact, reference_from_etl,
                                      reference_scores, within)

log = logging.getLogger("monitoring.drift")


def artifact_dir(out: Path) -> Path:
    return out / "model" / "serving_artifact"


def build_reference(out: Path, cfg: DriftConfig, source: str = "auto",
                    artifact: Path | None = None) -> Reference:
    """The training-side reference. ``source``: ``artifact`` (item popularity of the serving
    artifact), ``etl`` (the ETL split's train + valid pairs), ``auto`` (artifact when present).
    Score reference: always from the artifact (``artifact`` or ``OUT/model/serving_artifact``)."""
    art = Path(artifact) if artifact else artifact_dir(out)
    if source == "auto":
        if not (art / "config.json").exists() and not (out / "etl").is_dir():
            raise FileNotFoundError(f"no training side to compare with: neither a serving artifact "
                                    f"({art}) nor an ETL output ({out / 'etl'})")
        source = "artifact" if (art / "config.json").exists() else "etl"
    if source == "artifact":
        if not (art / "config.json").exists():
            raise FileNotFoundError(f"no serving artifact at {art} (train first: python -m training "
                                    f"run --out {out}, or pass --artifact)")
        ref = reference_from_artifact(art)
    elif source == "etl":
        if not (out / "etl").is_dir():
            raise FileNotFoundError(f"no ETL output at {out / 'etl'} (python -m etl run --out {out})")
        ref = reference_from_etl(out)
    else:
        raise ValueError(f"reference source must be auto, artifact or etl, not {source!r}")
    if (art / "config.json").exists():
        t0 = time.perf_counter()
        ref.scores, ref.score_note = reference_scores(art, cfg.top_k, cfg.reference_users, cfg.seed)
        if ref.model_version is None:
            from core.artifact import load_artifact
            ref.model_version = load_artifact(art).version or None
        log.info("reference scores: %d in %.1f s", len(ref.scores), time.perf_counter() - t0)
    else:
        ref.score_note = f"no serving artifact at {art}: score drift not computed"
    return ref


def run_once(out: Path, ref: Reference, cfg: DriftConfig, threshold: float,
             now: float | None = None) -> DriftReport:
    """Read the logs and compute. ``now=None``: the window ends at the newest record."""
    span = parse_duration(cfg.window)
    gw = out / "gateway"
    since = None if span is None or now is None else now - span
    exposures = read_log(gw / "exposures", since)
    events = read_log(gw / "events", since)
    if span is not None and now is None:
        end = newest_ts(exposures, events)
        since = end - span if end is not None else None
        exposures, events = within(exposures, since), within(events, since)
    rep = compute(exposures, events, ref, cfg, threshold)
    rep.window = {"span": cfg.window, "since": since, "until": now}
    return rep


def table(rep: DriftReport) -> str:
    lines = [f"exposures {rep.exposures}, events {rep.events}, unreadable lines {rep.bad_lines}; "
             f"reference: {rep.reference['source']}", "",
             "| feature | PSI | live samples | |", "|---|---:|---:|---|"]
    for f, v in sorted(rep.psi.items()):
        flag = "above threshold" if v is not None and v > rep.threshold else ""
        lines.append(f"| {f} | {'n/a' if v is None else f'{v:.4f}'} | {rep.samples.get(f, 0)} | {flag} |")
    lines += ["", "| unknown | share | unknown / total |", "|---|---:|---:|"]
    for k, v in sorted(rep.unknown_share.items()):
        u, t = rep.unknown_counts[k]
        lines.append(f"| {k} | {'n/a' if v is None else f'{v:.4f}'} | {u} / {t} |")
    return "\n".join(lines)


class DriftExporter:
    """The daemon's gauges on their own registry, refreshed by :meth:`update`."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.psi = Gauge("recsys_drift_psi", "Population stability index of live traffic against "
                         "the training data", ["feature"], registry=r)
        self.unknown = Gauge("recsys_drift_unknown_share", "Share of unknown users / history items "
                             "/ event items in live traffic", ["kind"], registry=r)
        self.samples = Gauge("recsys_drift_samples", "Live observations behind each PSI",
                             ["feature"], registry=r)
        self.last = Gauge("recsys_drift_last_run_timestamp_seconds",
                          "When the drift check last completed", registry=r)
        self.runs = Counter("recsys_drift_runs_total", "Drift computations by result", ["result"],
                            registry=r)

    def update(self, rep: DriftReport) -> None:
        for feature, value in rep.psi.items():
            self.samples.labels(feature).set(rep.samples.get(feature, 0))
            if value is None:
                try:
                    self.psi.remove(feature)
                except KeyError:
                    pass
            else:
                self.psi.labels(feature).set(value)
        for kind, value in rep.unknown_share.items():
            if value is None:
                try:
                    self.unknown.remove(kind)
                except KeyError:
                    pass
            else:
                self.unknown.labels(kind).set(value)
        self.last.set_to_current_time()
        self.runs.labels("ok").inc()


def serve(out: Path, ref: Reference, cfg: DriftConfig, threshold: float, port: int,
          host: str = "127.0.0.1", stop: threading.Event | None = None) -> None:
    """Export the gauges on ``host:port`` and recompute every ``cfg.interval_s`` until ``stop``
    is set or SIGTERM/SIGINT arrives."""
    stop = stop or threading.Event()
    exporter = DriftExporter()
    server, thread = start_http_server(port, addr=host, registry=exporter.registry)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    log.info("drift exporter on http://%s:%d/metrics, every %.0f s, window %s", host, port,
             cfg.interval_s, cfg.window)
    last = None
    try:
        while not stop.is_set():
            try:
                rep = run_once(out, ref, cfg, threshold, now=time.time())
                exporter.update(rep)
                state = json.dumps({"psi": rep.psi, "unknown": rep.unknown_share})
                (log.info if state != last else log.debug)("drift: %s", state)  # log changes only
                last = state
            except Exception:  # noqa: BLE001 - a bad file must not stop the exporter
                exporter.runs.labels("error").inc()
                log.exception("drift computation failed")
            stop.wait(cfg.interval_s)
    finally:
        server.shutdown()
        server.server_close()


__all__ = ["build_reference", "run_once", "serve", "table", "DriftExporter", "artifact_dir"]
