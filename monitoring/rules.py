"""The one source of the Prometheus rules: recording rules and alerts, rendered per RuleConfig.

Expressions are written once here with ``${name}`` placeholders for the fields of
:class:`monitoring.config.RuleConfig` (PromQL itself never uses ``${``); :func:`rule_groups`
fills them. The committed ``monitoring/prometheus/rules/recsys.rules.yaml`` is
``render_rules(RuleConfig())`` (a test keeps them equal), tests render short windows, and
:func:`prometheus_rule` wraps the same groups in a PrometheusRule for kube-prometheus-stack.

Naming follows the Prometheus convention ``level:metric:operation``. The handler's CamelCase
TorchServe labels (``ModelName``, ``ModelVersion``, ``Strategy``, ``Reason``, ``Worker``,
``Hostname``) become snake_case in every recording rule, so gateway and handler series share
``model_version`` and one dashboard variable filters both.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from monitoring.config import RuleConfig

QUANTILES = ("0.5", "0.95", "0.99")
GATEWAY_DURATION = "recsys_gateway_request_duration_seconds"
HANDLER_LABELS = {"ModelName": "model_name", "ModelVersion": "model_version",
                  "Strategy": "strategy", "Reason": "reason", "Worker": "worker",
                  "Hostname": "hostname"}
_PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\}")


@dataclass(frozen=True)
class Recording:
    record: str
    expr: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Alert:
    alert: str
    expr: str
    severity: str
    summary: str
    description: str
    for_: str | None = None


@dataclass(frozen=True)
class Group:
    name: str
    rules: tuple[Recording | Alert, ...]


def snake_labels(expr: str, labels: tuple[str, ...]) -> str:
    """Wrap ``expr`` so each CamelCase handler label in ``labels`` is renamed to snake_case."""
    for camel in labels:
        snake = HANDLER_LABELS[camel]
        expr = (f'label_replace(label_replace({expr}, "{snake}", "$1", "{camel}", "(.*)"), '
                f'"{camel}", "", "", "")')
    return expr


def _by(*labels: str) -> str:
    return ", ".join(labels)


# ----------------------------------------------------------------------------------------------
# Recording rules
# ----------------------------------------------------------------------------------------------

def _gateway_rules() -> tuple[Recording, ...]:
    rules: list[Recording] = []
    for q in QUANTILES:
        rules.append(Recording(
            f"experiment_variant:{GATEWAY_DURATION}:histogram_quantile",
            f"histogram_quantile({q}, sum by (le, experiment, variant) "
            f"(rate({GATEWAY_DURATION}_bucket[${{rate_window}}])))", {"quantile": q}))
    for q in QUANTILES:
        rules.append(Recording(
            f"model_version:{GATEWAY_DURATION}:histogram_quantile",
            f"histogram_quantile({q}, sum by (le, model_version) "
            f"(rate({GATEWAY_DURATION}_bucket[${{rate_window}}])))", {"quantile": q}))
    req = "experiment_variant:recsys_gateway_requests:rate"
    rules += [
        Recording("experiment_variant_status_class:recsys_gateway_requests:rate",
                  f"sum by (experiment, variant, status_class) "
                  f"(rate({GATEWAY_DURATION}_count[${{rate_window}}]))"),
        Recording(req, f"sum by (experiment, variant) (rate({GATEWAY_DURATION}_count[${{rate_window}}]))"),
        # "or ... * 0": a variant without any 5xx (or fallback) series gets 0, not nothing
        Recording("experiment_variant:recsys_gateway_requests_errors:ratio",
                  f'(sum by (experiment, variant) (rate({GATEWAY_DURATION}_count{{status_class="5xx"}}'
                  f"[${{rate_window}}])) or {req} * 0) / {req}"),
        Recording("experiment_variant_cause:recsys_gateway_fallbacks:rate",
                  "sum by (experiment, variant, cause) "
                  "(rate(recsys_gateway_fallbacks_total[${rate_window}]))"),
        Recording("experiment_variant:recsys_gateway_fallbacks:ratio",
                  "(sum by (experiment, variant) (rate(recsys_gateway_fallbacks_total[${rate_window}]))"
                  f" or {req} * 0) / {req}"),
        Recording("variant_kind:recsys_gateway_upstream_errors:rate",
                  "sum by (variant, kind) (rate(recsys_gateway_upstream_errors_total[${rate_window}]))"),
        Recording("experiment_variant:recsys_gateway_assignments:rate",
                  "sum by (experiment, variant) (rate(recsys_gateway_assignments_total[${rate_window}]))"),
        Recording("experiment_variant:recsys_gateway_assignments:share",
                  "experiment_variant:recsys_gateway_assignments:rate / on (experiment) group_left "
                  "sum by (experiment) (experiment_variant:recsys_gateway_assignments:rate)"),
        # max across gateway replicas (they all read the same experiment file)
        Recording("experiment_variant:recsys_gateway_variant_weight:share",
                  "max by (experiment, variant) (recsys_gateway_variant_weight) / on (experiment) "
                  "group_left sum by (experiment) (max by (experiment, variant) "
                  "(recsys_gateway_variant_weight))"),
    ]
    return tuple(rules)


def _experiment_rules() -> tuple[Recording, ...]:
    """Sample-ratio mismatch: Pearson's chi-square of assignments against the weights over
    ``srm_window``, and its critical value for (variants - 1) degrees of freedom by the
    Wilson-Hilferty approximation df * (1 - 2/(9 df) + z * sqrt(2/(9 df)))^3."""
    obs = "experiment_variant:recsys_gateway_assignments:increase_srm"
    exp = "experiment_variant:recsys_gateway_assignments:expected_srm"
    share = "experiment_variant:recsys_gateway_variant_weight:share"
    total = "experiment:recsys_gateway_assignments:increase_srm"
    n = "experiment:recsys_gateway_variants:count"
    df = f"({n} - 1)"
    return (
        # variants with a weight but no assignment yet count 0
        Recording(obs, "sum by (experiment, variant) (increase(recsys_gateway_assignments_total"
                       f"[${{srm_window}}])) or {share} * 0"),
        Recording(total, f"sum by (experiment) ({obs})"),
        Recording(exp, f"{share} * on (experiment) group_left {total}"),
        Recording("experiment:recsys_gateway_assignments:srm_chi2",
                  f"sum by (experiment) (({obs} - {exp}) ^ 2 / ({exp} > 0))"),
        Recording(n, f"count by (experiment) ({share} > 0)"),
        Recording("experiment:recsys_gateway_assignments:srm_critical",
                  f"{df} * (1 - 2 / (9 * {df}) + ${{srm_z}} * sqrt(2 / (9 * {df}))) ^ 3"),
    )


def _handler_rules() -> tuple[Recording, ...]:
    mv = ("ModelName", "ModelVersion")
    rules: list[Recording] = []
    for metric in ("RecHandlerLatencySeconds", "RecScoringLatencySeconds"):
        for q in QUANTILES:
            rules.append(Recording(
                f"model_version:{metric}:histogram_quantile",
                snake_labels(f"histogram_quantile({q}, sum by (le, ModelName, ModelVersion) "
                             f"(rate({metric}_bucket[${{rate_window}}])))", mv), {"quantile": q}))
    for q in ("0.5", "0.95"):
        rules.append(Recording(
            "model_version:RecBatchSize:histogram_quantile",
            snake_labels(f"histogram_quantile({q}, sum by (le, ModelName, ModelVersion) "
                         f"(rate(RecBatchSize_bucket[${{rate_window}}])))", mv), {"quantile": q}))
    strat = "model_version_strategy:RecRequests:rate"
    rules += [
        Recording("model_version:RecBatchSize:mean",
                  snake_labels("sum by (ModelName, ModelVersion) (rate(RecBatchSize_sum[${rate_window}]))"
                               " / sum by (ModelName, ModelVersion) "
                               "(rate(RecBatchSize_count[${rate_window}]))", mv)),
        Recording(strat, snake_labels("sum by (ModelName, ModelVersion, Strategy) "
                                      "(rate(RecRequests[${rate_window}]))", mv + ("Strategy",))),
        Recording("model_version:RecRequests:rate", f"sum by (model_name, model_version) ({strat})"),
        Recording("model_version_strategy:RecRequests:share",
                  f"{strat} / on (model_name, model_version) group_left model_version:RecRequests:rate"),
        Recording("model_version_reason:RecInvalidRequests:rate",
                  snake_labels("sum by (ModelName, ModelVersion, Reason) "
                               "(rate(RecInvalidRequests[${rate_window}]))", mv + ("Reason",))),
        Recording("model_version:RecIgnoredHistoryItems:rate",
                  snake_labels("sum by (ModelName, ModelVersion) "
                               "(rate(RecIgnoredHistoryItems[${rate_window}]))", mv)),
        Recording("model_version:RecWorkerStarts:increase",
                  snake_labels("sum by (ModelName, ModelVersion) "
                               "(increase(RecWorkerStarts[${restart_window}]))", mv)),
        # TorchServe keeps a dead worker's last RSS forever; a serving worker refreshes its own
        # every 5 s, so a value that has not moved in the window belongs to no live worker
        Recording("model_version_worker:RecWorkerRssBytes:live",
                  snake_labels("max by (ModelName, ModelVersion, Hostname, Worker) (RecWorkerRssBytes "
                               "and changes(RecWorkerRssBytes[${memory_freshness_window}]) > 0)",
                               mv + ("Hostname", "Worker"))),
        Recording("model_version:RecWorkerRssBytes:max",
                  snake_labels("max by (ModelName, ModelVersion) (RecWorkerRssBytes)", mv)),
        # TorchServe's own counters: responses by class (host level) and the mean queue time
        Recording("hostname_status_class:torchserve_requests:rate",
                  " or ".join(snake_labels(f'label_replace(sum by (Hostname) (rate(Requests{c}XX'
                                           f'[${{rate_window}}])), "status_class", "{c}xx", "", "")',
                                           ("Hostname",)) for c in "245")),
        Recording("model_version:ts_queue_latency_seconds:mean",
                  "sum by (model_name, model_version) (rate(ts_queue_latency_microseconds"
                  "[${rate_window}])) / 1e6 / sum by (model_name, model_version) "
                  "(rate(ts_inference_requests_total[${rate_window}]))"),
    ]
    return tuple(rules)


# ----------------------------------------------------------------------------------------------
# Alerts (monitoring-mixins conventions: Recsys prefix, severity, summary, description, runbook)
# ----------------------------------------------------------------------------------------------

def _alerts() -> tuple[Alert, ...]:
    return (
        Alert("RecsysRequestLatencyP99High",
              f'experiment_variant:{GATEWAY_DURATION}:histogram_quantile{{quantile="0.99"}} '
              "> ${latency_slo_seconds}", "warning",
              "P99 request latency of a variant is above the SLO.",
              "P99 latency of experiment {{ $labels.experiment }}, variant {{ $labels.variant }} "
              "is {{ $value | humanizeDuration }}, above the ${latency_slo_seconds} s SLO for "
              "${alert_for}.", "${alert_for}"),
        Alert("RecsysHandlerLatencyP99High",
              'model_version:RecHandlerLatencySeconds:histogram_quantile{quantile="0.99"} '
              "> ${handler_latency_slo_seconds}", "warning",
              "P99 handler time per batch of a model version is above its budget.",
              "P99 handler time of {{ $labels.model_name }} version {{ $labels.model_version }} is "
              "{{ $value | humanizeDuration }}, above the ${handler_latency_slo_seconds} s budget "
              "for ${alert_for}.", "${alert_for}"),
        Alert("RecsysErrorRatioHigh",
              "experiment_variant:recsys_gateway_requests_errors:ratio > ${error_ratio}", "critical",
              "A variant answers too many requests with 5xx.",
              "{{ $value | humanizePercentage }} of the requests of experiment "
              "{{ $labels.experiment }}, variant {{ $labels.variant }} got a 5xx answer "
              "(threshold ${error_ratio}) for ${alert_for}.", "${alert_for}"),
        Alert("RecsysFallbackRatioHigh",
              "experiment_variant:recsys_gateway_fallbacks:ratio > ${fallback_ratio}", "warning",
              "A variant is answered by fallbacks too often.",
              "{{ $value | humanizePercentage }} of the answers of experiment "
              "{{ $labels.experiment }}, variant {{ $labels.variant }} came from a fallback "
              "(threshold ${fallback_ratio}) for ${alert_for}.", "${alert_for}"),
        Alert("RecsysVariantNoTraffic",
              "(experiment_variant:recsys_gateway_variant_weight:share * on (experiment) group_left "
              "sum by (experiment) (increase(recsys_gateway_assignments_total[${traffic_window}]))) "
              "> ${no_traffic_min_expected} unless on (experiment, variant) sum by (experiment, "
              "variant) (increase(recsys_gateway_assignments_total[${traffic_window}])) > 0",
              "warning", "A variant with a weight above zero receives no traffic.",
              "Variant {{ $labels.variant }} of experiment {{ $labels.experiment }} got no "
              "assignment in ${traffic_window} although its weight predicts "
              "{{ $value | printf \"%.0f\" }}.", "${alert_for}"),
        Alert("RecsysSampleRatioMismatch",
              "experiment:recsys_gateway_assignments:srm_chi2 > on (experiment) "
              "experiment:recsys_gateway_assignments:srm_critical and on (experiment) "
              "experiment:recsys_gateway_assignments:increase_srm >= ${srm_min_assignments}",
              "warning", "Assignments to variants do not match the experiment's weights.",
              "Experiment {{ $labels.experiment }}: chi-square {{ $value | printf \"%.1f\" }} of "
              "the assignments in ${srm_window} against the weights is above the critical value "
              "(p < 0.001); the analysis of this experiment is not trustworthy until the cause "
              "is found.", "${slow_for}"),
        Alert("RecsysWorkerRestarts",
              "model_version:RecWorkerStarts:increase > ${restart_threshold}", "warning",
              "TorchServe workers of a model version are (re)starting.",
              "{{ $value | printf \"%.0f\" }} worker starts of {{ $labels.model_name }} version "
              "{{ $labels.model_version }} in ${restart_window}."),
        Alert("RecsysWorkerMemoryNearLimit",
              "model_version_worker:RecWorkerRssBytes:live > ${memory_ratio} * "
              "${worker_memory_limit_bytes}", "warning",
              "A TorchServe worker's memory is near its limit.",
              "Worker {{ $labels.worker }} of {{ $labels.model_name }} version "
              "{{ $labels.model_version }} on {{ $labels.hostname }} holds "
              "{{ $value | humanize1024 }}B resident, above ${memory_ratio} of its "
              "${worker_memory_limit_bytes} byte budget.", "${alert_for}"),
        Alert("RecsysDriftPsiHigh",
              "recsys_drift_psi > ${drift_psi_threshold}", "warning",
              "Live traffic has drifted away from the training data.",
              "PSI of {{ $labels.feature }} is {{ $value | printf \"%.3f\" }} (threshold "
              "${drift_psi_threshold}) for ${slow_for}: live traffic no longer looks like what "
              "the model was trained on.", "${slow_for}"),
    ) + _log_alerts()


def _log_alerts() -> tuple[Alert, ...]:
    """The gateway's A/B data: records dropped, shipping to S3 failing, the local backlog near
    the retention cap or past it (only where shipping is on: with ``ephemeral`` logs the cap is
    the plan, not an incident), and an experiment file the gateway refused."""
    return (
        Alert("RecsysGatewayLogRecordsDropped",
              "sum by (job, instance, log) (increase(recsys_gateway_log_dropped_total"
              "[${rate_window}])) > 0", "warning",
              "The gateway is dropping exposure or event records.",
              "{{ $value | printf \"%.0f\" }} {{ $labels.log }} records dropped by "
              "{{ $labels.instance }} in ${rate_window} (write queue full, write errors, or not "
              "written within the shutdown grace): the experiment's data has holes."),
        Alert("RecsysGatewayLogShippingFailing",
              "sum by (job, instance, log) (increase(recsys_gateway_log_ship_failures_total"
              "[${log_ship_window}])) > 0 unless on (job, instance, log) sum by (job, instance, "
              "log) (increase(recsys_gateway_log_shipped_files_total[${log_ship_window}])) > 0",
              "warning", "The gateway cannot ship its logs to S3.",
              "{{ $labels.instance }}: {{ $value | printf \"%.0f\" }} failed uploads of "
              "{{ $labels.log }} files and none shipped in ${log_ship_window}; the files wait on "
              "the pod's disk, where a rollout or an eviction deletes them."),
        Alert("RecsysGatewayLogBacklogNearCap",
              "sum without (log) (recsys_gateway_log_pending_bytes) > ${log_backlog_ratio} * "
              "(recsys_gateway_log_retain_bytes > 0) and recsys_gateway_log_shipping_enabled == 1",
              "warning",
              "Unshipped gateway logs are close to the retention cap.",
              "{{ $labels.instance }} holds {{ $value | humanize1024 }}B of unshipped logs, above "
              "${log_backlog_ratio} of its retention cap: past it the oldest files are deleted.",
              "${alert_for}"),
        Alert("RecsysGatewayLogRetentionDeleting",
              "sum by (job, instance, log) (increase("
              "recsys_gateway_log_deleted_unshipped_files_total[${rate_window}])) > 0 "
              "and on (job, instance) recsys_gateway_log_shipping_enabled == 1",
              "critical", "The gateway is deleting unshipped log files.",
              "{{ $labels.instance }} deleted {{ $value | printf \"%.0f\" }} unshipped "
              "{{ $labels.log }} files in ${rate_window} to stay under its retention cap: that "
              "A/B data is gone."),
        Alert("RecsysExperimentReloadFailed",
              "recsys_gateway_config_last_reload_ok == 0", "warning",
              "The gateway refused the experiment file.",
              "{{ $labels.instance }} could not load the experiment file (see "
              "recsys_gateway_config_reloads_total{result=\"error\"} and its log); it keeps "
              "serving the previous experiment, so the file in the ConfigMap is not what runs.",
              "${alert_for}"),
    )


GROUPS = (
    Group("recsys-gateway.rules", _gateway_rules()),
    Group("recsys-experiment.rules", _experiment_rules()),
    Group("recsys-handler.rules", _handler_rules()),
    Group("recsys.alerts", _alerts()),
)


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def fill(text: str, cfg: RuleConfig) -> str:
    """Replace ``${field}`` with the RuleConfig field's value; an unknown name is an error."""
    values = dataclasses.asdict(cfg)

    def sub(m: re.Match) -> str:
        if m.group(1) not in values:
            raise KeyError(f"unknown placeholder ${{{m.group(1)}}} in {text!r}")
        return _fmt(values[m.group(1)])

    return _PLACEHOLDER.sub(sub, text)


def runbook_anchor(alert: str) -> str:
    """GitHub's anchor of a ``### <alert>`` heading in docs/monitoring.md."""
    return alert.lower()


def rule_groups(cfg: RuleConfig = RuleConfig()) -> list[dict[str, Any]]:
    """The rule groups as Prometheus rule-file dicts, placeholders filled from ``cfg``."""
    out = []
    for g in GROUPS:
        rules = []
        for r in g.rules:
            if isinstance(r, Recording):
                d: dict[str, Any] = {"record": r.record, "expr": fill(r.expr, cfg)}
                if r.labels:
                    d["labels"] = dict(r.labels)
            else:
                d = {"alert": r.alert, "expr": fill(r.expr, cfg)}
                if r.for_:
                    d["for"] = fill(r.for_, cfg)
                d["labels"] = {"severity": r.severity}
                d["annotations"] = {
                    "summary": fill(r.summary, cfg), "description": fill(r.description, cfg),
                    "runbook_url": f"{cfg.runbook_base_url}#{runbook_anchor(r.alert)}"}
            rules.append(d)
        out.append({"name": g.name, "rules": rules})
    return out


HEADER = ("# GENERATED by `python -m monitoring generate` from monitoring/rules.py "
          "(RuleConfig defaults). Do not edit by hand.\n")


def render_rules(cfg: RuleConfig = RuleConfig()) -> str:
    """The rule file's text."""
    return HEADER + yaml.safe_dump({"groups": rule_groups(cfg)}, sort_keys=False, width=4096,
                                   allow_unicode=True)


def prometheus_rule(cfg: RuleConfig = RuleConfig(), name: str = "recsys",
                    labels: dict[str, str] | None = None) -> str:
    """The same groups as a PrometheusRule manifest (kube-prometheus-stack's rule selector
    usually wants ``labels={"release": <its release name>}``)."""
    doc = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
           "metadata": {"name": name, "labels": dict(labels or {})},
           "spec": {"groups": rule_groups(cfg)}}
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=4096, allow_unicode=True)


def recording_names() -> set[str]:
    return {r.record for g in GROUPS for r in g.rules if isinstance(r, Recording)}


def alert_names() -> list[str]:
    return [r.alert for g in GROUPS for r in g.rules if isinstance(r, Alert)]


__all__ = ["GROUPS", "Recording", "Alert", "Group", "rule_groups", "render_rules", "prometheus_rule",
           "recording_names", "alert_names", "fill", "snake_labels", "runbook_anchor", "QUANTILES"]
