"""The serving benchmark's analysis: pure functions of its runs.

What counts as a sustained rate, the ladder of rates, the headline (the fastest variant within
1% recall of fp32 at the highest rate fp32 sustains), the knob summary, serving.md and the CDF
plots. ``benchmarks/serving_bench.py`` runs TorchServe and calls these; ``serving_report.py``
renders the docs' blocks from the same functions; ``--resummarize`` recomputes a stored
serving.json's summaries without a run.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from benchmarks.config import ServingBenchConfig
from core.jsonio import write_json
from common.tables import table

BASELINE = "fp32"


def parse_ints(spec: str) -> list[int]:
    return [int(x) for x in spec.split(",") if x.strip()]


def parse_names(spec: str) -> list[str]:
    return [x.strip() for x in spec.split(",") if x.strip()]


def sustained(row: dict) -> bool:
    """The rate was served: no errors and at least 95% of it achieved."""
    return row["errors"] == 0 and row["throughput_rps"] >= 0.95 * row["rate_rps"]


def late_share(row: dict) -> float | None:
    """Share of the measured requests the load generator sent > 1 ms after their intended time
    (``loadgen.LATE_SEND_S``): the client fell behind, so the offered schedule was not kept."""
    return row["late_sends"] / row["n"] if row.get("n") else None


def ladder(rows: list[dict], passes) -> tuple[dict | None, dict | None]:
    """Walk one configuration's rates upward: (the last row before the first failure, the first
    failing row). A rate counts as sustained only if every lower rate of the ladder passed too;
    a higher rate that passes again after a failure does not count."""
    last_ok = None
    for r in sorted(rows, key=lambda r: r["rate_rps"]):
        if not passes(r):
            return last_ok, r
        last_ok = r
    return last_ok, None


def failure(row: dict, budget_ms: float | None = None) -> str:
    """Why a row failed, in words built from its own figures."""
    why = []
    if row["errors"]:
        why.append(f"{row['errors']} errors")
    if row["throughput_rps"] < 0.95 * row["rate_rps"]:
        why.append(f"achieved {row['throughput_rps']:.0f}/s < 95%")
    if budget_ms is not None and row["p99_ms"] > budget_ms:
        why.append(f"P99 {row['p99_ms']:.1f} ms > {budget_ms:g} ms")
    return ", ".join(why)


def headline(rows: list[dict], cfg: ServingBenchConfig) -> dict:
    """Best variant at the highest rate the baseline sustains: the fastest P99 among variants
    that keep Recall@10 within 1% of exact.

    "Sustains" is strict: no errors, >= 95% of the rate achieved, and a P50 at most twice the
    baseline's P50 at its lowest rate -- a queue that is still growing at the end of the run
    (P50 many times the unloaded one) would make any faster variant look arbitrarily good --
    at that rate and at every lower one (:func:`ladder`).
    """
    base = {r["rate_rps"]: r for r in rows if r["variant"] == BASELINE}
    if not base:
        return {"error": "no fp32 baseline runs"}
    unloaded_p50 = base[min(base)]["p50_ms"]
    last_ok, first_fail = ladder(list(base.values()),
                                 lambda r: sustained(r) and r["p50_ms"] <= 2 * unloaded_p50)
    if last_ok is None:
        return {"error": "the fp32 baseline sustained none of the rates"}
    rate = last_ok["rate_rps"]
    cands = [r for r in rows if r["rate_rps"] == rate and r["variant"] != BASELINE
             and r["recall@10"] is not None and r["recall@10"] >= 0.99 and sustained(r)]
    if not cands:
        return {"error": f"no variant kept Recall@10 within 1% at {rate} rps"}
    best = min(cands, key=lambda r: r["p99_ms"])
    b = base[rate]
    by_rate = {}
    for rr, br in sorted(base.items()):
        same = [r for r in rows if r["rate_rps"] == rr and r["variant"] == best["variant"]]
        if same:
            by_rate[str(rr)] = round(1 - same[0]["p99_ms"] / br["p99_ms"], 3)
    return {"catalog_items": cfg.catalog_items, "rate_rps": rate, "baseline": BASELINE,
            "best": best["variant"], "baseline_p99_ms": b["p99_ms"], "best_p99_ms": best["p99_ms"],
            "p99_reduction": round(1 - best["p99_ms"] / b["p99_ms"], 3),
            "baseline_p50_ms": b["p50_ms"], "best_p50_ms": best["p50_ms"],
            "p50_reduction": round(1 - best["p50_ms"] / b["p50_ms"], 3),
            "baseline_handler_p99_ms": b["handler_p99_ms"], "best_handler_p99_ms": best["handler_p99_ms"],
            "recall@10": best["recall@10"], "baseline_recall@10": b["recall@10"],
            "recall@10_relative_loss": round(1 - best["recall@10"] / (b["recall@10"] or 1.0), 4),
            "p99_reduction_by_rate": by_rate, "goal": {"p99_reduction": 0.70, "recall_loss": 0.01},
            "baseline_unloaded_p50_ms": unloaded_p50,
            "baseline_first_failing_rate": first_fail["rate_rps"] if first_fail else None,
            "baseline_first_failing_p50_ms": first_fail["p50_ms"] if first_fail else None}


def knob_summary(rows: list[dict], cfg: ServingBenchConfig, best: str) -> dict[str, Any]:
    """Per configuration, the highest offered rate served within the P99 budget -- with every
    lower rate of its ladder served within it too -- and the first rate that failed; then the
    throughput gain of each batch size over batchSize 1 at that budget."""
    summary: dict[str, Any] = {"p99_budget_ms": cfg.p99_budget_ms, "configs": []}
    def key_of(r: dict) -> tuple:
        return r["variant"], r["batch_size"], r["max_batch_delay_ms"], r["workers"], r["threads"]

    def within(r: dict) -> bool:
        return sustained(r) and r["p99_ms"] <= cfg.p99_budget_ms

    for key in dict.fromkeys(key_of(r) for r in rows):
        mine = [r for r in rows if key_of(r) == key]
        last_ok, first_fail = ladder(mine, within)
        shares = [x for x in map(late_share, mine) if x is not None]
        summary["configs"].append({
            "variant": key[0], "batch_size": key[1], "max_batch_delay_ms": key[2],
            "workers": key[3], "threads": key[4],
            "max_rate_within_budget": last_ok["rate_rps"] if last_ok else 0,
            "throughput_rps": last_ok["throughput_rps"] if last_ok else 0.0,
            "first_failing_rate": first_fail["rate_rps"] if first_fail else None,
            "first_failure": failure(first_fail, cfg.p99_budget_ms) if first_fail else None,
            "max_late_share": round(max(shares), 4) if shares else None})
    for v in dict.fromkeys([BASELINE, best]):
        per_bs = {c["batch_size"]: c["throughput_rps"] for c in summary["configs"]
                  if c["variant"] == v and (c["workers"], c["threads"]) == (cfg.workers, cfg.threads)
                  and c["max_batch_delay_ms"] in (cfg.max_batch_delay_ms, 0)}
        if 1 in per_bs:
            summary[f"batching_gain_{v}"] = {str(bs): round(tp / per_bs[1], 2) if per_bs[1] else None
                                             for bs, tp in per_bs.items()}
    return summary


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

def cdf_plots(rows: list[dict], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for items in sorted({r["catalog_items"] for r in rows}):
        mine = [r for r in rows if r["catalog_items"] == items and r.get("_latencies")
                and r.get("part") != "knobs"]
        if not mine:
            continue
        rate = max(r["rate_rps"] for r in mine if r["variant"] == BASELINE) if any(
            r["variant"] == BASELINE for r in mine) else max(r["rate_rps"] for r in mine)
        at = [r for r in mine if r["rate_rps"] == rate] or mine
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in at:
            lat = sorted(r["_latencies"])
            ys = [(i + 1) / len(lat) for i in range(len(lat))]
            ax.plot(lat, ys, label=f"{r['variant']} (p99 {r['p99_ms']:.1f} ms)")
        ax.set_xscale("log")
        ax.set_xlabel("latency from intended send time (ms, log)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{items:,} items, {at[0]['rate_rps']} req/s open loop, through TorchServe")
        ax.axhline(0.99, color="grey", lw=0.5, ls="--")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        f = out_dir / f"serving_cdf_{items}.png"
        fig.tight_layout()
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(f.name)
    return files


RUN_COLUMNS = ["catalog_items", "variant", "batch_size", "max_batch_delay_ms", "workers", "threads", "rate_rps", "p50_ms",
               "p95_ms", "p99_ms", "max_ms", "handler_p99_ms", "throughput_rps", "errors", "late_sends",
               "late_%", "recall@10", "rss_mb_per_worker", "uss_mb_per_worker"]


def markdown(result: dict) -> str:
    def tab(rows, cols):
        return table(cols, [["" if r.get(c) is None else r.get(c) for c in cols] for r in map(_derived, rows)])

    def _derived(r: dict) -> dict:
        share = late_share(r) if "late_sends" in r else None
        return {**r, "late_%": None if share is None else round(100 * share, 1),
                "max_late_%": None if r.get("max_late_share") is None else round(100 * r["max_late_share"], 1)}

    parts = ["# Serving benchmark (benchmarks/serving_bench.py)", "",
             f"Percentiles: {percentile_methods(result)}. `late_sends`: measured requests the load "
             "generator sent more than 1 ms after their intended time (latency still counts from "
             "the intended time).", "", "## Headline", "",
             "```json", json.dumps(result["headline"], indent=2), "```", "", "## Variants", "",
             tab([r for r in result["runs"] if r.get("part") == "variants"], RUN_COLUMNS), "",
             "## Knobs", "", tab([r for r in result["runs"] if r.get("part") == "knobs"], RUN_COLUMNS), "",
             tab(result.get("knobs", {}).get("configs", []),
                 ["variant", "batch_size", "max_batch_delay_ms", "workers", "threads",
                  "max_rate_within_budget", "throughput_rps", "first_failing_rate", "first_failure",
                  "max_late_%"]),
             "", "## Scale", "",
             tab([r for r in result["runs"] if r.get("part") == "scale"],
                 RUN_COLUMNS + ["archive_bytes", "load_s", "scale_up_s"])]
    return "\n".join(parts) + "\n"


# serving.json files without "percentile_method" were written before common.stats.percentiles:
# round trips by numpy "higher" (loadgen), handler times by torch.quantile. They keep no raw
# latencies, so their percentiles cannot be recomputed; they are reported with their method.
LEGACY_PERCENTILE_METHODS = {"round_trip": "numpy.percentile(method='higher')",
                             "handler": "torch.quantile (linear interpolation)"}


def percentile_methods(result: dict) -> str:
    """How the percentiles of ``result`` were computed, in words."""
    m = result.get("percentile_method")
    if m:
        return f"{m}, round trip and handler time alike"
    return (f"round trip by {LEGACY_PERCENTILE_METHODS['round_trip']}, handler time by "
            f"{LEGACY_PERCENTILE_METHODS['handler']}; this file was written before both went through "
            f"`common.stats.percentiles`, and its runs keep no raw latencies to recompute them")


def config_of(result: dict) -> ServingBenchConfig:
    """The ServingBenchConfig a serving.json was run with (defaults for fields it predates)."""
    known = {f.name for f in dataclasses.fields(ServingBenchConfig)}
    return dataclasses.replace(ServingBenchConfig(), **{k: v for k, v in result["config"].items() if k in known})


def summaries(result: dict) -> dict[str, Any]:
    """The headline and knob summary of a serving.json, recomputed from its runs alone."""
    cfg, out = config_of(result), {}
    variants = [r for r in result["runs"] if r.get("part") == "variants"]
    if variants:
        out["headline"] = headline(variants, cfg)
    knobs = [r for r in result["runs"] if r.get("part") == "knobs"]
    if knobs:
        best = out.get("headline", result.get("headline", {})).get("best") or "sq8"
        out["knobs"] = knob_summary(knobs, cfg, best)
    return out


def resummarize(path: Path) -> int:
    res = json.loads(path.read_text())
    res.update(summaries(res))
    write_json(path, res)
    path.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return 0
