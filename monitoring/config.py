"""Every tunable of monitoring in one typed place (rules, drift, the local Prometheus).

The CLI exposes these fields as ``--flag-name`` options (``common.dataclass_args.add_dataclass_args``),
so a default lives here and nowhere else. The committed rule files are rendered from
``RuleConfig()``; tests render the same rules with short windows.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common.net import parse_port

PACKAGE_DIR = Path(__file__).resolve().parent
PROMETHEUS_DIR = PACKAGE_DIR / "prometheus"
RULES_FILE = PROMETHEUS_DIR / "rules" / "recsys.rules.yaml"
SCRAPE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
GRAFANA_DIR = PACKAGE_DIR / "grafana"
DASHBOARD_FILE = GRAFANA_DIR / "dashboards" / "recsys.json"

# Ports: the contract's defaults, each overridable by its variable (docs/contracts.md).
PORT_DEFAULTS = {"TS_METRICS_PORT": 8082, "GATEWAY_METRICS_PORT": 8091,
                 "DRIFT_METRICS_PORT": 8092, "PROMETHEUS_PORT": 9090}


def port(variable: str) -> int:
    """The port named by ``variable`` (environment first, then the contract's default)."""
    return parse_port(os.environ.get(variable) or PORT_DEFAULTS[variable], variable)


@dataclass(frozen=True)
class RuleConfig:
    """Windows and thresholds of the recording and alerting rules."""

    rate_window: str = "5m"
    """Window of every rate()/increase() behind the recording rules (tests use seconds)."""
    alert_for: str = "5m"
    """How long a latency / error / fallback condition must hold before it fires."""
    slow_for: str = "15m"
    """``for`` of the slower signals: sample-ratio mismatch, drift, memory."""
    latency_slo_seconds: float = 0.1
    """P99 of gateway requests (per experiment variant) that the SLO allows."""
    handler_latency_slo_seconds: float = 0.05
    """P99 of the handler's time per batch (per model version)."""
    error_ratio: float = 0.01
    """Share of 5xx answers per variant above which RecsysErrorRatioHigh fires."""
    fallback_ratio: float = 0.05
    """Share of fallback answers per variant above which RecsysFallbackRatioHigh fires."""
    traffic_window: str = "10m"
    """Window in which a variant with weight > 0 must get at least one assignment."""
    no_traffic_min_expected: float = 20.0
    """Only alert on a silent variant when its weight predicts at least this many assignments in
    ``traffic_window`` (Poisson: P(0 | 20 expected) = 2e-9)."""
    srm_window: str = "1h"
    """Window of assignment counts tested against the weights (chi-square)."""
    srm_min_assignments: float = 1000.0
    """Minimum assignments in ``srm_window`` before the sample-ratio test may fire."""
    srm_z: float = 3.09
    """Normal quantile of the test's significance (3.09 = p < 0.001), used in the Wilson-Hilferty
    approximation of the chi-square critical value."""
    restart_window: str = "15m"
    """Window of RecWorkerStarts increases counted as restarts."""
    restart_threshold: float = 0.0
    """Alert when more worker starts than this happen in ``restart_window``."""
    worker_memory_limit_bytes: float = 2 * 2**30
    """Memory budget of one TorchServe worker (pod limit / workers in Kubernetes)."""
    memory_ratio: float = 0.9
    """RecsysWorkerMemoryNearLimit fires above this share of the budget."""
    memory_freshness_window: str = "10m"
    """A worker's RSS gauge that has not changed in this window is treated as gone (TorchServe
    keeps a dead worker's last value)."""
    drift_psi_threshold: float = 0.2
    log_ship_window: str = "15m"
    """RecsysGatewayLogShippingFailing: uploads failed and none succeeded in this window."""
    log_backlog_ratio: float = 0.8
    """RecsysGatewayLogBacklogNearCap: unshipped local log bytes above this share of the
    gateway's retention cap (``recsys_gateway_log_retain_bytes``)."""
    runbook_base_url: str = "docs/monitoring.md"
    """Runbook links are ``<base>#<alert name in lower case>``. The repository has no public
    address yet, so the default is the page's path in the repository; a deployment sets its
    browsable URL (``--runbook-base-url``)."""


@dataclass(frozen=True)
class DriftConfig:
    """How live traffic is compared with the training data (monitoring/drift.py)."""

    window: str = "1h"
    """Only exposures/events whose ts is within this window before the newest one (``all``: every
    record)."""
    bins: int = 10
    """Popularity bins: training items sorted by popularity, cut into bins holding equal shares
    of the training interactions."""
    score_bins: int = 10
    """Score bins: deciles of the reference score distribution."""
    top_k: int = 10
    """Only the first top_k scores of each answer (the reference is computed at this k)."""
    reference_users: int = 500
    """Known users sampled for the reference score distribution."""
    min_samples: int = 200
    """A PSI is reported only with at least this many live observations."""
    epsilon: float = 1e-4
    """Floor of a bin's share in the PSI (an empty bin would give log(0))."""
    seed: int = 0
    interval_s: float = 60.0
    """Daemon: seconds between recomputations."""


@dataclass(frozen=True)
class PrometheusConfig:
    """The local Prometheus of tests and ``make monitor``."""

    scrape_interval: str = "2s"
    evaluation_interval: str = "2s"
    rate_window: str = "20s"
    """The rule files' windows for a short local session (production: RuleConfig.rate_window)."""
    retention: str = "1d"
    ready_timeout_s: float = 30.0


__all__ = ["RuleConfig", "DriftConfig", "PrometheusConfig", "port", "PORT_DEFAULTS",
           "PACKAGE_DIR", "PROMETHEUS_DIR", "RULES_FILE", "SCRAPE_CONFIG", "GRAFANA_DIR",
           "DASHBOARD_FILE"]
