"""Which metrics a PromQL expression reads, and what exports them.

A small lexical pass, enough for the expressions this package writes: strings, label matchers,
range selectors and grouping clauses are removed; what remains that looks like an identifier and
is not a function call, keyword or number is a metric name. Recording-rule names are expanded to
the raw metrics behind them, so a dashboard query can be traced to the exporters.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan", "e"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """Names of the series ``expr`` selects (functions, keywords, labels removed)."""
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = _GROUPING.sub(" ", s)
    names = set()
    for m in _IDENT.finditer(s):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def base_metric(series: str) -> str:
    """A histogram's ``_bucket`` / ``_sum`` / ``_count`` series -> the metric's name."""
    return re.sub(r"_(bucket|sum|count)$", "", series)


def raw_metrics(expr: str, recordings: dict[str, list[str]]) -> set[str]:
    """Raw (exported) metric names behind ``expr``, expanding recording rules recursively."""
    out: set[str] = set()
    todo, seen = list(metric_names(expr)), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in recordings:
            for e in recordings[name]:
                todo += metric_names(e)
        else:
            out.add(name)
    return out


def recordings_of(rule_groups: list[dict]) -> dict[str, list[str]]:
    """record name -> its expressions (a name may be recorded by several rules)."""
    rec: dict[str, list[str]] = {}
    for g in rule_groups:
        for r in g["rules"]:
            if "record" in r:
                rec.setdefault(r["record"], []).append(r["expr"])
    return rec


def handler_exports(metrics_yaml: Path) -> set[str]:
    """Metric names TorchServe exports with our metrics yaml (ts_metrics and model_metrics),
    histograms with their _bucket/_sum/_count series."""
    doc = yaml.safe_load(metrics_yaml.read_text())
    names = set()
    for section in ("ts_metrics", "model_metrics"):
        for kind, metrics in (doc.get(section) or {}).items():
            for m in metrics or []:
                names.add(m["name"])
                if kind == "histogram":
                    names |= {m["name"] + s for s in ("_bucket", "_sum", "_count")}
    return names


def contract_exports(contracts_md: Path) -> set[str]:
    """``recsys_*`` metric names written in a contracts page (in backticks); a name followed by
    "(histogram" also stands for its _bucket/_sum/_count series."""
    text = contracts_md.read_text()
    out = set()
    for m in re.finditer(r"`(recsys_[a-z_]+)[^`]*`( \(histogram)?", text):
        out.add(m.group(1))
        if m.group(2):
            out |= {m.group(1) + s for s in ("_bucket", "_sum", "_count")}
    return out


__all__ = ["metric_names", "raw_metrics", "recordings_of", "handler_exports", "contract_exports",
           "base_metric"]
