"""The Grafana dashboard as code (grafana-foundation-sdk), rendered into committed JSON.

Panels read the recording rules of monitoring/rules.py (the same numbers the alerts see) and a
few raw gauges. Every panel is declared once in :data:`ROWS` as plain data (title, unit,
queries), so tests and ``make monitor`` can walk the panels without parsing Grafana JSON, and
:func:`build` turns them into the dashboard with the SDK's builders.

Variables: ``datasource``, ``experiment`` (from ``recsys_gateway_variant_weight``) and
``model_version`` (from the handler's ``RecWorkerStarts``; recording rules carry a snake_case
``model_version`` label on both gateway and handler series).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import prometheus, timeseries
from grafana_foundation_sdk.builders.dashboard import (DatasourceVariable, Dashboard, QueryVariable,
                                                       Row, ThresholdsConfig)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models.dashboard import (DataSourceRef, Threshold, ThresholdsMode,
                                                     VariableRefresh, VariableSort)

from monitoring.config import RuleConfig

UID = "recsys-overview"
TITLE = "Recommender: traffic, latency, experiment, drift"
EXP = 'experiment=~"$experiment"'
VER = 'model_version=~"$model_version"'
VARIABLES = {"experiment": "label_values(recsys_gateway_variant_weight, experiment)",
             "model_version": "label_values(RecWorkerStarts, ModelVersion)"}


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class PanelSpec:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    threshold: float | None = None
    stacked: bool = False
    width: int = 8


@dataclass(frozen=True)
class RowSpec:
    title: str
    panels: tuple[PanelSpec, ...] = field(default_factory=tuple)


def rows(cfg: RuleConfig = RuleConfig()) -> tuple[RowSpec, ...]:
    """Every row and panel; thresholds drawn on panels come from the alerting config."""
    Q = Query
    return (
        RowSpec("Traffic and errors per variant", (
            PanelSpec("Requests per variant (gateway)",
                      "Answered requests per second by assigned variant and status class.",
                      "reqps", (Q(f"experiment_variant_status_class:recsys_gateway_requests:rate{{{EXP}}}",
                                  "{{experiment}}/{{variant}} {{status_class}}"),), stacked=True),
            PanelSpec("5xx ratio per variant (gateway)",
                      "Share of a variant's answers that were 5xx (RecsysErrorRatioHigh).",
                      "percentunit", (Q(f"experiment_variant:recsys_gateway_requests_errors:ratio{{{EXP}}}",
                                        "{{experiment}}/{{variant}}"),), threshold=cfg.error_ratio),
            PanelSpec("Upstream errors by kind (gateway)",
                      "Failed calls from the gateway to TorchServe, by variant and kind.",
                      "reqps", (Q("variant_kind:recsys_gateway_upstream_errors:rate",
                                  "{{variant}} {{kind}}"),)),
            PanelSpec("Handler requests per model version",
                      "Requests the handler answered, per model version (TorchServe).",
                      "reqps", (Q(f"model_version:RecRequests:rate{{{VER}}}", "v{{model_version}}"),)),
            PanelSpec("TorchServe responses by class",
                      "Responses of the TorchServe frontend per host and status class.",
                      "reqps", (Q("hostname_status_class:torchserve_requests:rate",
                                  "{{hostname}} {{status_class}}"),), stacked=True),
        )),
        RowSpec("Latency", (
            PanelSpec("Request latency per variant (gateway)",
                      "P50/P95/P99 of gateway requests, receipt to answer, per experiment variant.",
                      "s", (Q(f"experiment_variant:recsys_gateway_request_duration_seconds:histogram_quantile{{{EXP}}}",
                              "{{variant}} p{{quantile}}"),), threshold=cfg.latency_slo_seconds),
            PanelSpec("Request latency per model version (gateway)",
                      "P50/P95/P99 of gateway requests per model version that answered.",
                      "s", (Q(f"model_version:recsys_gateway_request_duration_seconds:histogram_quantile{{{VER}}}",
                              "v{{model_version}} p{{quantile}}"),), threshold=cfg.latency_slo_seconds),
            PanelSpec("Handler latency per model version",
                      "P50/P95/P99 of the handler's time per batch (validation, scoring, "
                      "encoding), per model version.",
                      "s", (Q(f"model_version:RecHandlerLatencySeconds:histogram_quantile{{{VER}}}",
                              "v{{model_version}} p{{quantile}}"),),
                      threshold=cfg.handler_latency_slo_seconds),
        )),
        RowSpec("Handler internals", (
            PanelSpec("Scoring latency per model version",
                      "P50/P95/P99 of scoring one batch (user vectors, catalog product, top-k).",
                      "s", (Q(f"model_version:RecScoringLatencySeconds:histogram_quantile{{{VER}}}",
                              "v{{model_version}} p{{quantile}}"),)),
            PanelSpec("Batch size",
                      "Requests per batch TorchServe handed to the handler: mean and P50/P95.",
                      "short", (Q(f"model_version:RecBatchSize:mean{{{VER}}}", "v{{model_version}} mean"),
                                Q(f"model_version:RecBatchSize:histogram_quantile{{{VER}}}",
                                  "v{{model_version}} p{{quantile}}"))),
            PanelSpec("Strategy mix",
                      "Share of answered requests per strategy: personalized (known user), "
                      "history, popular (fallback), similar, rerank.",
                      "percentunit", (Q(f"model_version_strategy:RecRequests:share{{{VER}}}",
                                        "v{{model_version}} {{strategy}}"),), stacked=True),
            PanelSpec("Invalid requests by reason",
                      "Requests the handler refused (4xx), by reason.",
                      "reqps", (Q(f"model_version_reason:RecInvalidRequests:rate{{{VER}}}",
                                  "v{{model_version}} {{reason}}"),), stacked=True),
            PanelSpec("Unknown history items",
                      "History item ids the model does not know (ignored), per second.",
                      "short", (Q(f"model_version:RecIgnoredHistoryItems:rate{{{VER}}}",
                                  "v{{model_version}}"),)),
            PanelSpec("TorchServe mean queue time",
                      "Mean time a request waited in TorchServe's queue (from its microsecond "
                      "counters; unversioned requests are labelled 'default').",
                      "s", (Q("model_version:ts_queue_latency_seconds:mean",
                              "{{model_name}} v{{model_version}}"),)),
        )),
        RowSpec("Workers and memory", (
            PanelSpec("Worker resident memory",
                      "RSS of each TorchServe worker (pid), refreshed every 5 s while it serves. "
                      "A flat line that stopped moving may be a worker that is gone.",
                      "bytes", (Q('max by (ModelVersion, Hostname, Worker) '
                                  '(RecWorkerRssBytes{ModelVersion=~"$model_version"})',
                                  "v{{ModelVersion}} {{Hostname}} pid {{Worker}}"),),
                      threshold=cfg.memory_ratio * cfg.worker_memory_limit_bytes),
            PanelSpec("Worker starts",
                      f"Worker (re)starts per model version in the last {cfg.restart_window} "
                      "(RecsysWorkerRestarts).",
                      "short", (Q(f"model_version:RecWorkerStarts:increase{{{VER}}}",
                                  "v{{model_version}}"),), threshold=cfg.restart_threshold),
            PanelSpec("Host memory utilization",
                      "TorchServe's host memory utilization (the machine's, not a cgroup's).",
                      "percent", (Q("max by (Hostname) (MemoryUtilization)", "{{Hostname}}"),)),
        )),
        RowSpec("Experiment health", (
            PanelSpec("Assignment share vs weight",
                      "Each variant's share of assignments next to its configured weight.",
                      "percentunit",
                      (Q(f"experiment_variant:recsys_gateway_assignments:share{{{EXP}}}",
                         "{{experiment}}/{{variant}} assigned"),
                       Q(f"experiment_variant:recsys_gateway_variant_weight:share{{{EXP}}}",
                         "{{experiment}}/{{variant}} weight"))),
            PanelSpec("Sample-ratio mismatch (chi-square)",
                      f"Chi-square of assignments in {cfg.srm_window} against the weights, and "
                      "its critical value at p < 0.001 (RecsysSampleRatioMismatch).",
                      "short",
                      (Q(f"experiment:recsys_gateway_assignments:srm_chi2{{{EXP}}}", "{{experiment}} chi2"),
                       Q(f"experiment:recsys_gateway_assignments:srm_critical{{{EXP}}}",
                         "{{experiment}} critical"))),
            PanelSpec("Fallback ratio per variant",
                      "Share of a variant's answers served by a fallback (RecsysFallbackRatioHigh).",
                      "percentunit", (Q(f"experiment_variant:recsys_gateway_fallbacks:ratio{{{EXP}}}",
                                        "{{experiment}}/{{variant}}"),), threshold=cfg.fallback_ratio),
            PanelSpec("Fallbacks by cause",
                      "Fallback answers per second, by assigned variant and cause.",
                      "reqps", (Q(f"experiment_variant_cause:recsys_gateway_fallbacks:rate{{{EXP}}}",
                                  "{{variant}} {{cause}}"),), stacked=True),
        )),
        RowSpec("Drift", (
            PanelSpec("Population stability index",
                      "PSI of live traffic against the training data, per feature "
                      "(python -m monitoring drift; RecsysDriftPsiHigh above the line).",
                      "short", (Q("max by (feature) (recsys_drift_psi)", "{{feature}}"),),
                      threshold=cfg.drift_psi_threshold, width=12),
            PanelSpec("Unknown share",
                      "Share of requests from users the model does not know, and of history / "
                      "event items it does not know.",
                      "percentunit", (Q("max by (kind) (recsys_drift_unknown_share)", "{{kind}}"),),
                      width=12),
        )),
    )


def panels(cfg: RuleConfig = RuleConfig()) -> list[PanelSpec]:
    return [p for r in rows(cfg) for p in r.panels]


# ----------------------------------------------------------------------------------------------
# Grafana JSON
# ----------------------------------------------------------------------------------------------

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


def _panel(spec: PanelSpec, panel_id: int) -> timeseries.Panel:
    p = (timeseries.Panel().id(panel_id).title(spec.title).description(spec.description)
         .datasource(DATASOURCE).unit(spec.unit).span(spec.width).height(8).fill_opacity(10)
         .legend(cb.VizLegendOptions().show_legend(True).display_mode(cm.LegendDisplayMode.TABLE)
                 .placement(cm.LegendPlacement.BOTTOM).calcs(["mean", "max"])))
    if spec.unit == "percentunit":
        p = p.min(0)
    if spec.stacked:
        p = p.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
    if spec.threshold is not None:
        p = (p.thresholds(ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(
            [Threshold(value=None, color="green"), Threshold(value=spec.threshold, color="red")]))
             .thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphTresholdsStyleMode.DASHED)))
    for i, q in enumerate(spec.queries):
        p = p.with_target(prometheus.Dataquery().ref_id(chr(ord("A") + i)).expr(q.expr)
                          .legend_format(q.legend).range())
    return p


def _variable(name: str, label: str, query: str) -> QueryVariable:
    return (QueryVariable(name).label(label).datasource(DATASOURCE).query(query)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True).all_value(".*"))


def build(cfg: RuleConfig = RuleConfig()) -> dict:
    """The dashboard as a JSON-ready dict."""
    d = (Dashboard(TITLE).uid(UID).tags(["recsys", "torchserve", "experiments"])
         .description("Generated by python -m monitoring generate (monitoring/dashboard.py); "
                      "edit the generator, not this JSON.")
         .refresh("30s").time("now-1h", "now").timezone("browser").editable()
         .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
         .with_variable(_variable("experiment", "Experiment", VARIABLES["experiment"]))
         .with_variable(_variable("model_version", "Model version", VARIABLES["model_version"])))
    panel_id = 1
    for row in rows(cfg):
        d = d.with_row(Row(row.title).id(panel_id))
        panel_id += 1
        for spec in row.panels:
            d = d.with_panel(_panel(spec, panel_id))
            panel_id += 1
    return json.loads(JSONEncoder(sort_keys=True).encode(d.build()))


def render_dashboard(cfg: RuleConfig = RuleConfig()) -> str:
    return json.dumps(build(cfg), indent=2, sort_keys=True) + "\n"


def dashboard_queries(dashboard: dict) -> list[tuple[str, str, str]]:
    """(row title, panel title, expr) of every target of a dashboard JSON (rows flattened the way
    Grafana stores an expanded dashboard)."""
    out, row = [], ""
    for p in dashboard["panels"]:
        if p.get("type") == "row":
            row = p["title"]
            for inner in p.get("panels") or []:  # a collapsed row nests its panels
                out += [(row, inner["title"], t["expr"]) for t in inner.get("targets", [])]
            continue
        out += [(row, p["title"], t["expr"]) for t in p.get("targets", [])]
    return out


__all__ = ["build", "render_dashboard", "rows", "panels", "dashboard_queries", "PanelSpec", "RowSpec",
           "Query", "UID", "VARIABLES"]
