"""Command line of the monitoring stage.

    python -m monitoring generate [--check]        rule file + dashboard JSON from the generators
    python -m monitoring rules [--format ...]      rules to stdout (a RuleConfig flag changes one)
    python -m monitoring drift --out OUT           drift report (OUT/monitoring/drift.json)
    python -m monitoring drift --out OUT --daemon  the same, exported on DRIFT_METRICS_PORT
    python -m monitoring monitor --out OUT         Prometheus + load + latency PNGs (make monitor)
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from common.cli import run_cli
from core.jsonio import write_json
from common.dataclass_args import add_dataclass_args, from_args
from monitoring import config

log = logging.getLogger("monitoring")


def _generated() -> dict[Path, str]:
    from monitoring.dashboard import render_dashboard
    from monitoring.rules import render_rules

    return {config.RULES_FILE: render_rules(config.RuleConfig()), config.DASHBOARD_FILE: render_dashboard(config.RuleConfig())}


def cmd_generate(args) -> int:
    stale = []
    for path, text in _generated().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("out of date (run: python -m monitoring generate): " + ", ".join(map(str, stale)),
              file=sys.stderr)
        return 1
    return 0


def cmd_rules(args) -> int:
    from monitoring.rules import prometheus_rule, render_rules

    cfg = from_args(config.RuleConfig, args)
    if args.format == "prometheusrule":
        labels = dict(kv.split("=", 1) for kv in args.label)
        text = prometheus_rule(cfg, args.name, labels)
    else:
        text = render_rules(cfg)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_drift(args) -> int:
    from monitoring.drift_exporter import build_reference, run_once, serve, table

    out = Path(args.out).resolve()
    cfg = from_args(config.DriftConfig, args)
    ref = build_reference(out, cfg, args.reference, Path(args.artifact) if args.artifact else None)
    if args.daemon:
        port = args.port or config.port("DRIFT_METRICS_PORT")
        serve(out, ref, cfg, args.threshold, port, args.host)
        return 0
    rep = run_once(out, ref, cfg, args.threshold)
    dest = out / "monitoring" / "drift.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_json(dest, rep.to_dict())
    print(table(rep))
    print(f"\nwritten: {dest}")
    if rep.above:
        print(f"PSI above {args.threshold}: {', '.join(rep.above)}")
    return 0


def cmd_monitor(args) -> int:
    from monitoring.monitor import monitor

    cfg = from_args(config.PrometheusConfig, args, prefix="prom-")
    summary = monitor(Path(args.out), args.duration, args.rate, cfg, args.all_panels)
    for r in summary["load"]:
        print(f"load {r['path']}: {r['ok']}/{r['sent']} ok, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms")
    for name, n in summary["panels"].items():
        print(f"{Path(args.out) / 'monitoring' / name}: {n} series")
    print(f"gateway: {summary['gateway']}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m monitoring", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="write the rule file and the dashboard JSON")
    g.add_argument("--check", action="store_true", help="only check the committed files are current")
    g.set_defaults(fn=cmd_generate)

    r = sub.add_parser("rules", help="render the rules (to stdout or --output)")
    r.add_argument("--format", choices=("rulefile", "prometheusrule"), default="rulefile")
    r.add_argument("--name", default="recsys", help="PrometheusRule metadata.name")
    r.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="PrometheusRule metadata label (repeat), e.g. release=kube-prometheus-stack")
    r.add_argument("--output")
    add_dataclass_args(r, config.RuleConfig)
    r.set_defaults(fn=cmd_rules)

    d = sub.add_parser("drift", help="compare live traffic with the training data")
    d.add_argument("--out", required=True, help="run folder (OUT/gateway logs, OUT/model, OUT/etl)")
    d.add_argument("--reference", choices=("auto", "artifact", "etl"), default="auto",
                   help="item popularity from the serving artifact or the ETL split")
    d.add_argument("--artifact", help="serving artifact folder (default OUT/model/serving_artifact)")
    d.add_argument("--threshold", type=float, default=config.RuleConfig().drift_psi_threshold)
    d.add_argument("--daemon", action="store_true", help="export gauges over HTTP, recompute forever")
    d.add_argument("--port", type=int, default=0, help="daemon port (default DRIFT_METRICS_PORT, 8092)")
    d.add_argument("--host", default="127.0.0.1")
    add_dataclass_args(d, config.DriftConfig)
    d.set_defaults(fn=cmd_drift)

    m = sub.add_parser("monitor", help="Prometheus + load against make serve; latency PNGs")
    m.add_argument("--out", required=True)
    m.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    m.add_argument("--rate", type=float, default=20.0, help="requests per second")
    m.add_argument("--all-panels", action="store_true", help="render every panel, not only latency")
    add_dataclass_args(m, config.PrometheusConfig, prefix="prom-")
    m.set_defaults(fn=cmd_monitor)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(parser(), argv, (FileNotFoundError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
