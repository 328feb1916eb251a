"""Dashboard panels to PNG without Grafana: each panel's queries through Prometheus's
``query_range``, drawn with matplotlib the way the timeseries panel would (legend from the
panel's legend format, the alert threshold as a dashed line)."""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from monitoring.dashboard import PanelSpec
from monitoring.promserver import PrometheusServer

_LEGEND = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
UNIT_SCALE = {"s": (1e3, "ms"), "bytes": (2**-20, "MiB"), "percentunit": (100.0, "%"),
              "percent": (1.0, "%"), "reqps": (1.0, "req/s"), "short": (1.0, "")}


def expand(expr: str, variables: dict[str, str]) -> str:
    """Grafana variables (``$name`` / ``${name}``) replaced by the given values."""
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return expr


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def legend(fmt: str, labels: dict[str, str]) -> str:
    return _LEGEND.sub(lambda m: labels.get(m.group(1), ""), fmt) or str(labels)


def render_panel(prom: PrometheusServer, spec: PanelSpec, start: float, end: float, step: float,
                 path: Path, variables: dict[str, str]) -> int:
    """Draw one panel into ``path``; returns the number of series drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale, unit = UNIT_SCALE.get(spec.unit, (1.0, spec.unit))
    fig, ax = plt.subplots(figsize=(9, 4), dpi=100)
    n = 0
    for q in spec.queries:
        for series in prom.query_range(expand(q.expr, variables), start, end, step):
            pts = [(float(t), float(v)) for t, v in series["values"] if v not in ("NaN", "+Inf", "-Inf")]
            if not pts:
                continue
            times = [dt.datetime.fromtimestamp(t) for t, _ in pts]
            ax.plot(times, [v * scale for _, v in pts], label=legend(q.legend, series["metric"]),
                    linewidth=1.4)
            n += 1
    if spec.threshold is not None:
        ax.axhline(spec.threshold * scale, color="red", linestyle="--", linewidth=1,
                   label=f"threshold {spec.threshold * scale:g} {unit}".rstrip())
    ax.set_title(spec.title)
    ax.set_ylabel(unit)
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    if n or spec.threshold is not None:
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    if not n:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return n


def render_panels(prom: PrometheusServer, specs: list[PanelSpec], start: float, end: float,
                  out_dir: Path, variables: dict[str, str], step: float | None = None) -> dict[str, int]:
    """Every panel of ``specs`` to ``out_dir/<slug>.png``; {file name: series drawn}."""
    step = step or max(1.0, (end - start) / 300)
    return {f"{slug(s.title)}.png": render_panel(prom, s, start, end, step, out_dir / f"{slug(s.title)}.png",
                                                 variables) for s in specs}


__all__ = ["render_panel", "render_panels", "expand", "slug", "legend"]
