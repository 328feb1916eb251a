"""The serving benchmark's figures in docs/performance.md and docs/results.md, generated from serving.json.

Each table (and each sentence that carries a figure) lives between ``<!-- serving:<name> -->``
markers and is rewritten from ``benchmarks/results/serving.json``, never typed by hand; the
benchmark's tests fail when a block differs from what this module renders from the stored runs.

    python -m benchmarks.serving_report [--results benchmarks/results/serving.json]
        [--doc docs/performance.md] [--results-doc docs/results.md] [--check]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from common.cli import FAILED, run_cli
from benchmarks.common import RESULTS
from benchmarks.serving_analysis import BASELINE, config_of, failure, late_share, percentile_methods
from core.config import ArchiveConfig
from common.tables import replace_block, table

ROOT = Path(__file__).resolve().parents[1]
APPROXIMATE = {"hnsw", "ivf"}   # the variants whose first pass is an ANN index, not a full scan
SUMMARY_LABELS = {"fp32": "fp32 (baseline)", "int8": "int8 (torch.ao dynamic)",
                 "onnx_int8": "onnx_int8 (ONNX Runtime)", "sq8": "sq8 (ours, `torch._int_mm`)",
                 "faiss_sq8": "faiss_sq8", "hnsw": "hnsw", "ivf": "ivf (IVF-SQ8 + exact re-rank)"}


# ------------------------------------------------------------------------------------ helpers

def _runs(res: dict, part: str) -> list[dict]:
    return [r for r in res["runs"] if r.get("part") == part]


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def _late_range(rows: list[dict]) -> str:
    shares = [s for s in map(late_share, rows) if s is not None]
    if not shares:
        return "–"
    lo, hi = min(shares), max(shares)
    return _pct(lo) if round(lo, 3) == round(hi, 3) else f"{_pct(lo)}–{_pct(hi)}"


def _change(reduction: float, digits: int = 1) -> str:
    """A reduction (0.807) as a signed change ("−80.7%"), with a real minus sign."""
    return f"{-reduction * 100:+.{digits}f}%".replace("-", "−")


def _cut(new: float, old: float) -> str:
    return _change(1 - new / old)


# ------------------------------------------------------------------------------------ blocks

def method_block(res: dict) -> str:
    """How the stored percentiles were computed, and what ``late_sends`` counts."""
    return (f"* **Percentiles** in these figures: {percentile_methods(res)}. A new run computes "
            f"both through `common.stats.percentiles`.\n"
            f"* **Late sends**: measured requests the load generator sent more than 1 ms after their "
            f"intended time (`loadgen.LATE_SEND_S`), given as a share of the measured requests. "
            f"Latency still counts from the intended time, so a late send's delay is in the "
            f"figure (charged to the server); a high share means the client, on the same two "
            f"cores, did not keep the offered schedule exactly.")


def headline_block(res: dict) -> str:
    """The headline rule, its rate, the fp32-vs-best table and the cut at every rate."""
    h, cfg = res["headline"], config_of(res)
    if "error" in h:
        return f"No headline: {h['error']}."
    rows = _runs(res, "variants")
    at = {(r["variant"], r["rate_rps"]): r for r in rows}
    b, x = at[(BASELINE, h["rate_rps"])], at[(h["best"], h["rate_rps"])]
    run = (f"Run: `make bench`, {res['wall_s']:,.0f} s, started {res['started_at']} (load average "
           f"{res['machine']['load_avg_at_start'][0]} at the start), `benchmarks/results/serving.json`. "
           f"Summaries: `python -m benchmarks.serving_bench --resummarize benchmarks/results/serving.json`; "
           f"these blocks: `python -m benchmarks.serving_report`.")
    rule = (f"The headline rate is {h['rate_rps']} req/s, the highest offered rate the fp32 baseline "
            f"sustains: no errors, at least 95% of the rate achieved, and a P50 at most twice its "
            f"unloaded P50 ({h['baseline_unloaded_p50_ms']:.1f} ms at {min(r['rate_rps'] for r in rows)} "
            f"req/s), at that rate and at every lower one.")
    ff = h.get("baseline_first_failing_rate")
    if ff is not None:
        f = at[(BASELINE, ff)]
        why = [w for w in [failure(f)] if w]
        if f["p50_ms"] > 2 * h["baseline_unloaded_p50_ms"]:
            why.append(f"P50 {f['p50_ms']:.1f} ms > 2 × {h['baseline_unloaded_p50_ms']:.1f} ms: a growing queue")
        rule += f" fp32 first failed at {ff} req/s ({'; '.join(why)}), so no rate from there on is used."
    tbl = table(["", "fp32 (baseline)", f"**{h['best']}** (fastest within 1% recall)", "change"], [
        ["round trip P99", f"{b['p99_ms']:.1f} ms", f"**{x['p99_ms']:.1f} ms**", f"**{_cut(x['p99_ms'], b['p99_ms'])}**"],
        ["round trip P50", f"{b['p50_ms']:.1f} ms", f"{x['p50_ms']:.1f} ms", _cut(x["p50_ms"], b["p50_ms"])],
        ["handler P99 (`X-Handler-Ms`)", f"{b['handler_p99_ms']:.1f} ms", f"{x['handler_p99_ms']:.1f} ms",
         _cut(x["handler_p99_ms"], b["handler_p99_ms"])],
        ["Recall@10 vs exact, on served answers", f"{b['recall@10']:.3f}", f"{x['recall@10']:.3f}",
         f"{_pct(h['recall@10_relative_loss'])} loss"],
        ["late sends (share of measured requests)", _pct(late_share(b)), _pct(late_share(x)), ""],
    ], right={1, 2, 3}, pad=False)
    goal = h["goal"]
    per_rate, missed = [], []
    for rate in sorted({r["rate_rps"] for r in rows}):
        if (BASELINE, rate) not in at or (h["best"], rate) not in at:
            continue
        br, xr = at[(BASELINE, rate)], at[(h["best"], rate)]
        cut = 1 - xr["p99_ms"] / br["p99_ms"]
        loss = 1 - (xr["recall@10"] or 0) / (br["recall@10"] or 1.0)
        note = " (fp32 past its sustained rate)" if ff is not None and rate >= ff else ""
        per_rate.append(f"{_cut(xr['p99_ms'], br['p99_ms'])} at {rate} req/s{note}")
        if cut < goal["p99_reduction"] or loss > goal["recall_loss"]:
            missed.append(str(rate))
    verdict = ("is met at every rate" if not missed else f"is missed at {', '.join(missed)} req/s")
    summary = (f"The goal (P99 at least {goal['p99_reduction']:.0%} lower, at most "
               f"{goal['recall_loss']:.0%} relative Recall@10 loss) {verdict}. The P99 cut of "
               f"{h['best']} against fp32 is {', '.join(per_rate)}.")
    return "\n\n".join([run, rule, tbl, summary])


def variants_block(res: dict) -> str:
    """Every variant at every rate: P50 / P99 (handler P99), late sends; recall; memory."""
    rows = _runs(res, "variants")
    h = res["headline"]
    rates = sorted({r["rate_rps"] for r in rows})
    out = []
    for v in dict.fromkeys(r["variant"] for r in rows):
        mine = {r["rate_rps"]: r for r in rows if r["variant"] == v}
        cells = [f"{m['p50_ms']:.1f} / {m['p99_ms']:.1f} ({m['handler_p99_ms']:.1f}) · {_pct(late_share(m), 0)}"
                 if (m := mine.get(rate)) else "–" for rate in rates]
        recall = min(m["recall@10"] for m in mine.values() if m["recall@10"] is not None)
        last = mine[max(mine)]
        name = f"**{v}**" if v == h.get("best") else v
        rec = f"{recall:.3f}" if recall >= 0.99 else f"**{recall:.3f}**"
        out.append([name, *cells, rec, f"{last['rss_mb_per_worker']:.0f} / {last['uss_mb_per_worker']:.0f}"])
    intro = ("Cells are round-trip P50 / P99 in ms, handler P99 in brackets, then the late sends. "
             "Recall@10 is the lowest over the rates; memory is per worker after the last rate:")
    tbl = table(["variant", *[f"{r} req/s" for r in rates], "Recall@10", "RSS / USS per worker (MB)"],
                out, right={len(rates) + 1}, pad=False)
    worst = max(rows, key=lambda r: late_share(r) or 0.0)
    fastest = min((r for r in rows if r["rate_rps"] == rates[0]), key=lambda r: r["p99_ms"])
    base = [r for r in rows if r["variant"] == BASELINE]
    late = (f"Late sends were {_late_range(rows)} of the measured requests across these runs "
            f"(fp32: {_late_range(base)}; the most: {worst['variant']} at {worst['rate_rps']} req/s). "
            f"The slower variants have more (a busy server takes CPU from the generator), but "
            f"{fastest['variant']}, the fastest at {fastest['rate_rps']} req/s, still had "
            f"{_pct(late_share(fastest))}.")
    cuts = []
    base_at = {r["rate_rps"]: r for r in base}
    for v in dict.fromkeys(r["variant"] for r in rows if r["variant"] != BASELINE):
        cs = [1 - r["p99_ms"] / base_at[r["rate_rps"]]["p99_ms"] for r in rows
              if r["variant"] == v and r["rate_rps"] in base_at]
        if cs:
            cuts.append(f"{v} {_change(min(cs), 0)} to {_change(max(cs), 0)}")
    cut = f"P99 change against fp32 over the rates: {'; '.join(cuts)}." if cuts else ""
    return "\n\n".join(p for p in [intro, tbl, cut, late] if p)


def _knob_order(res: dict) -> Callable[[dict], tuple]:
    cfg = config_of(res)
    variants = list(dict.fromkeys(r["variant"] for r in _runs(res, "knobs")))
    return lambda c: (variants.index(c["variant"]), (c["workers"], c["threads"]) != (cfg.workers, cfg.threads),
                      c["batch_size"], c["max_batch_delay_ms"])


def knobs_block(res: dict) -> str:
    """P99 per offered rate for every knob setting, the sustained rate and the first failure."""
    rows, summary, cfg = _runs(res, "knobs"), res["knobs"], config_of(res)
    rates = sorted({r["rate_rps"] for r in rows})
    budget = summary["p99_budget_ms"]
    out = []
    for c in sorted(summary["configs"], key=_knob_order(res)):
        key = (c["variant"], c["batch_size"], c["max_batch_delay_ms"], c["workers"], c["threads"])
        mine = {r["rate_rps"]: r for r in rows
                if (r["variant"], r["batch_size"], r["max_batch_delay_ms"], r["workers"], r["threads"]) == key}
        cells = []
        for rate in rates:
            m = mine.get(rate)
            if m is None:
                cells.append("–")
                continue
            cell = f"{m['p99_ms']:.0f}"
            if m["throughput_rps"] < 0.95 * rate:
                cell += f" ({m['throughput_rps']:.0f}/s)"
            cells.append(cell)
        ok = f"{c['max_rate_within_budget']}" if c["max_rate_within_budget"] else "none"
        fail = "–" if c["first_failing_rate"] is None else f"{c['first_failing_rate']} ({c['first_failure']})"
        out.append([c["variant"], c["batch_size"], "–" if c["batch_size"] == 1 else f"{c['max_batch_delay_ms']} ms",
                    f"{c['workers']}×{c['threads']}", *cells, _late_range(list(mine.values())), ok, fail])
    intro = (f"Round-trip P99 in ms per offered rate; a cell also gives the achieved rate when it was "
             f"under 95% of the offered one. \"Sustains\" is the highest rate served within a "
             f"{budget:g} ms P99 (no errors, ≥ 95% achieved) **with every lower rate of the ladder "
             f"served within it too**; a rate that passes again above a failure does not count. "
             f"Late sends: lowest–highest share over the configuration's runs.")
    tbl = table(["variant", "batchSize", "maxBatchDelay", "workers × threads", *map(str, rates),
                 "late sends", f"sustains (req/s, P99 ≤ {budget:g} ms)", "first failing rate"],
                out, right={1}, pad=False)
    gains = []
    for v in dict.fromkeys(c["variant"] for c in summary["configs"]):
        g = summary.get(f"batching_gain_{v}")
        if g and all(x is None for x in g.values()):
            gains.append(f"{v}: none to compare with (batchSize 1 sustains no rate)")
        elif g:
            gains.append(f"{v}: " + ", ".join(f"batch {bs} ×{x:.2f}" for bs, x in g.items() if x is not None))
    note = (f"Throughput gain within the budget over batchSize 1 ({cfg.workers}×{cfg.threads}, "
            f"`batching_gain_*` in serving.json): "
            + "; ".join(gains) + ".") if gains else ""
    return "\n\n".join(p for p in [intro, tbl, note] if p)


def scale_block(res: dict) -> str:
    """The 10M x 1M run: archive, build, load, latency, recall, late sends, memory."""
    rows = _runs(res, "scale")
    if not rows:
        return "No scale run in serving.json."
    mean = lambda ws, k: sum(w[k] for w in ws) / len(ws)  # noqa: E731
    head = [f"{r['variant']} ({'approximate' if r['variant'] in APPROXIMATE else 'exact'})" for r in rows]
    rate = rows[0]["rate_rps"]
    lines = [
        ["archive (.mar, zip-store)", *[f"{r['archive_bytes'] / 1e9:.2f} GB" for r in rows]],
        ["build (incl. index)", *[f"{r['build_s']:.0f} s (index {r['index']['index_build_s']:.1f} s)" for r in rows]],
        ["load: register, 1 worker (synchronous)", *[f"{r['load_s']:.1f} s" for r in rows]],
        ["second worker (scale-up, synchronous)", *[f"{r['scale_up_s']:.1f} s" for r in rows]],
        [f"P50 / P99 at {rate} req/s", *[f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} ms" for r in rows]],
        ["handler P99", *[f"{r['handler_p99_ms']:.1f} ms" for r in rows]],
        ["late sends", *[_pct(late_share(r)) for r in rows]],
        ["Recall@10 vs exact (served answers)", *[f"{r['recall@10']:.3f}" for r in rows]],
        ["first worker alone: RSS / USS", *[f"{mean(r['memory_first_worker'], 'rss_mib'):,.0f} / "
                                            f"{mean(r['memory_first_worker'], 'uss_mib'):,.0f} MB" for r in rows]],
        [f"each of {rows[0]['workers']} workers after traffic: RSS / USS / PSS",
         *[f"{mean(r['worker_memory'], 'rss_mib'):,.0f} / {mean(r['worker_memory'], 'uss_mib'):,.0f} / "
           f"{mean(r['worker_memory'], 'pss_mib'):,.0f} MB" for r in rows]],
    ]
    r0 = rows[0]
    title = (f"{r0['users'] / 1e6:g}M users × {r0['catalog_items'] / 1e6:g}M items (d = {r0['dim']}); "
             f"the artifact is {r0['artifact_bytes'] / 1e9:.2f} GB. Memory is the mean over the workers.")
    return "\n\n".join([title, table(["", *head], lines, right=set(range(1, len(rows) + 1)), pad=False)])


def _ivf_estimate(res: dict, n: int, dim: int) -> dict[str, float] | None:
    """Bytes and ops of one IVF query from the built index's own parameters: nprobe of nlist
    8-bit lists (assumed equal in size) plus the exact re-rank of max(4k, k + 32) fp32 rows."""
    ivf = res.get("builds", {}).get("ivf", {}).get("index", {}).get("params")
    if not ivf:
        return None
    frac = ivf["nprobe"] / ivf["nlist"]
    k = 10
    rerank = max(ivf["rerank_factor"] * k, k + ivf["rerank_min"])
    nbytes = n * dim * frac + rerank * dim * 4
    ops = 2 * dim * (n * frac + rerank)
    return {"frac": frac, "nprobe": ivf["nprobe"], "nlist": ivf["nlist"], "rerank": rerank,
            "bytes": nbytes, "ops": ops}


def floor_block(res: dict) -> str:
    """Bandwidth, kernel rates by batch size, and the one-user floors, each labelled by batch."""
    fl = res["floor"]["catalog"]
    (n_s, cat), = fl["catalogs"].items()
    n, dim, bw = int(n_s), res["config"]["dim"], fl["read_bandwidth_gb_s"] * 1e9
    rates = table(["batch (users per product)", "fp32 GEMM (GFLOP/s)", "int8 `_int_mm` (GOP/s)"],
                [[b, cat[f"batch{b}"]["fp32_gflop_s"], cat[f"batch{b}"]["int8_gop_s"]] for b in (1, 8, 32)],
                right={0, 1, 2}, pad=False)
    ops = 2 * n * dim

    def per_user(o: float, rate_g: float) -> str:
        return f"{o / (rate_g * 1e9) * 1e3:.2f} ms"

    b1, b32 = cat["batch1"], cat["batch32"]
    lines = [
        ["fp32 scan", f"{cat['bytes_per_scan']['fp32'] / 1e6:.0f} MB",
         f"{cat['one_user_floor_ms']['fp32_bytes_over_bandwidth']:.1f} ms",
         f"{cat['one_user_floor_ms']['fp32_ops_over_rate']:.1f} ms", per_user(ops, b32["fp32_gflop_s"])],
        ["8-bit scan (int8, onnx_int8, sq8, faiss_sq8)", f"{cat['bytes_per_scan']['int8'] / 1e6:.0f} MB",
         f"{cat['one_user_floor_ms']['int8_bytes_over_bandwidth']:.1f} ms",
         f"{cat['one_user_floor_ms']['int8_ops_over_rate']:.1f} ms", per_user(ops, b32["int8_gop_s"])],
    ]
    est = _ivf_estimate(res, n, dim)
    if est:
        lines.append([f"ivf (nprobe {est['nprobe']} of {est['nlist']:,} lists ≈ {est['frac']:.0%} of the codes) "
                      f"+ re-rank of {est['rerank']} rows, estimated at the int8 rates",
                      f"≈ {est['bytes'] / 1e6:.1f} MB", f"≈ {est['bytes'] / bw * 1e3:.2f} ms",
                      f"≈ {est['ops'] / (b1['int8_gop_s'] * 1e9) * 1e3:.2f} ms",
                      f"≈ {est['ops'] / (b32['int8_gop_s'] * 1e9) * 1e3:.3f} ms"])
    tbl = table([f"{n:,} × {dim} catalog, one user", "bytes read", "bytes / bandwidth",
                 "ops / **batch-1** rate (one user alone)", "ops / **batch-32** rate (per user in a full batch)"],
                lines, right={1, 2, 3, 4}, pad=False)
    eff = cat["bytes_per_scan"]["fp32"] / (cat["one_user_floor_ms"]["fp32_ops_over_rate"] / 1e3) / 1e9
    text = (f"Read bandwidth: {fl['read_bandwidth_gb_s']:.1f} GB/s (one thread summing 256 MiB). Kernel "
            f"rates on one thread, measured on the catalog's own shape:\n\n{rates}\n\n{tbl}\n\n"
            f"The batch-1 column is `serving.json`'s own `one_user_floor_ms` (`*_ops_over_rate`): the "
            f"measured time of one user's product alone. The batch-32 column divides the same operations "
            f"by the batch-32 rate, the cost per user when a batch of 32 shares one pass over the matrix. "
            f"Alone, the fp32 product streams the matrix at about {eff:.1f} GB/s, "
            f"{eff / fl['read_bandwidth_gb_s']:.0%} of the {fl['read_bandwidth_gb_s']:.1f} GB/s a plain "
            f"read reaches.")
    sc = res["floor"].get("scale")
    if sc:
        (ns, c), = sc["catalogs"].items()
        text += (f" At {int(ns):,} × {res['config']['scale_dim']} the bytes / bandwidth floors are "
                 f"{c['one_user_floor_ms']['fp32_bytes_over_bandwidth']:.0f} ms (fp32) and "
                 f"{c['one_user_floor_ms']['int8_bytes_over_bandwidth']:.0f} ms (8-bit) per user; one "
                 f"user's product alone takes {c['one_user_floor_ms']['fp32_ops_over_rate']:.0f} ms "
                 f"and {c['one_user_floor_ms']['int8_ops_over_rate']:.1f} ms at the batch-1 rates "
                 f"(measured on at most 200,000 rows, scaled linearly).")
    return text


def _dim_note(dim: int) -> str:
    """How the measured dimension relates to the model's today (benchmarks/tower_bench.py)."""
    from training.config import TrainConfig

    if dim == TrainConfig.dim:
        return " (our model's dimension)"
    tower = RESULTS / "tower.json"
    if tower.exists():
        t = json.loads(tower.read_text())
        if t.get("dims") == [dim, TrainConfig.dim]:
            return (f" (the model's dimension when measured; at today's d = {TrainConfig.dim} "
                    f"the headline's P99 is {t['p99_ratio']:.2f}x, `make bench-tower`)")
    return f" (our model has d = {TrainConfig.dim})"


def summary_block(res: dict) -> str:
    """docs/results.md's serving table at the headline rate, the headline and the scale line."""
    h = res["headline"]
    if "error" in h:
        return f"No headline: {h['error']}."
    rows = [r for r in _runs(res, "variants") if r["rate_rps"] == h["rate_rps"]]
    c = config_of(res)
    out = []
    for r in rows:
        label = SUMMARY_LABELS.get(r["variant"], r["variant"])
        if r["variant"] == ArchiveConfig().scoring:
            label = label[:-1] + ", default archive)" if label.endswith(")") else f"{label} (default archive)"
        if r["variant"] == h["best"]:
            out.append([f"**{label}**", f"**{r['p50_ms']:.1f} / {r['p99_ms']:.1f} ms**",
                        f"{r['handler_p99_ms']:.1f} ms", f"**{r['recall@10']:.3f}**", _pct(late_share(r))])
        else:
            out.append([label, f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} ms", f"{r['handler_p99_ms']:.1f} ms",
                        f"{r['recall@10']:.3f}", _pct(late_share(r))])
    intro = (f"Setup: {c.catalog_items:,} items × d = {c.dim}{_dim_note(c.dim)}, {c.workers} workers × "
             f"{c.threads} thread, batchSize {c.batch_size}, this {res['machine']['cpus']}-core machine, at "
             f"{h['rate_rps']} req/s (the highest rate fp32 sustains without a growing queue, every lower "
             f"rate included). Late sends: requests the load generator sent > 1 ms late (latency still "
             f"counts from the intended time):")
    tbl = table(["variant", "P50 / P99", "handler P99", "Recall@10 vs exact", "late sends"], out,
                right={2, 3, 4}, pad=False)
    ff = h.get("baseline_first_failing_rate")
    by_rate = ", ".join(f"{_change(v)} at {k} req/s" + (" (fp32 past its sustained rate)"
                                                         if ff is not None and int(k) >= ff else "")
                        for k, v in h["p99_reduction_by_rate"].items() if int(k) != h["rate_rps"])
    text = (f"Headline: **P99 {_change(h['p99_reduction'])}** against fp32 ({h['baseline_p99_ms']:.1f} → "
            f"{h['best_p99_ms']:.1f} ms) with {_pct(h['recall@10_relative_loss'])} Recall@10 loss; the P99 "
            f"change of {h['best']} against fp32 is {by_rate}.")
    scale = _runs(res, "scale")
    if scale:
        s0 = scale[0]
        lat = "; ".join(f"{r['variant']} {r['p50_ms']:.1f} / {r['p99_ms']:.1f} ms (recall {r['recall@10']:.3f})"
                        for r in scale)
        uss = sum(w["uss_mib"] for r in scale for w in r["worker_memory"]) / sum(len(r["worker_memory"]) for r in scale)
        text += (f" At {s0['users'] / 1e6:g}M users × {s0['catalog_items'] / 1e6:g}M items (d = {s0['dim']}) "
                 f"the archives are {min(r['archive_bytes'] for r in scale) / 1e9:.1f}–"
                 f"{max(r['archive_bytes'] for r in scale) / 1e9:.1f} GB and a worker registers in "
                 f"{min(r['load_s'] for r in scale):.0f}–{max(r['load_s'] for r in scale):.0f} s. P50 / P99 at "
                 f"{s0['rate_rps']} req/s: {lat}. Each worker holds about {uss:.0f} MB privately (USS); "
                 f"user/item tables, id tables and the index are memory-mapped and shared.")
    return "\n\n".join([intro, tbl, text])


DOC_BLOCKS: dict[str, Callable[[dict], str]] = {
    "serving:method": method_block, "serving:headline": headline_block,
    "serving:variants": variants_block, "serving:knobs": knobs_block,
    "serving:scale": scale_block, "serving:floor": floor_block}
RESULTS_BLOCKS: dict[str, Callable[[dict], str]] = {"serving:summary": summary_block}


def render(res: dict, text: str, blocks: dict[str, Callable[[dict], str]]) -> str:
    """``text`` with every one of ``blocks`` rewritten from ``res`` (each must be present)."""
    for name, build in blocks.items():
        text = replace_block(text, name, build(res))
    return text


def update(results: Path, targets: dict[Path, dict[str, Callable[[dict], str]]], check: bool = False) -> list[Path]:
    """Rewrite (or, with ``check``, only compare) each target's blocks; returns the stale files."""
    res = json.loads(Path(results).read_text())
    rendered = {}
    for path, blocks in targets.items():   # every file rendered before any is written
        old = path.read_text()
        new = render(res, old, blocks)
        if new != old:
            rendered[path] = new
    if not check:
        for path, new in rendered.items():
            path.write_text(new)
    return list(rendered)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving_report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS / "serving.json")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "performance.md")
    p.add_argument("--results-doc", type=Path, default=ROOT / "docs" / "results.md")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is stale")
    p.set_defaults(fn=_run)
    return run_cli(p, argv, logs=False)


def _run(a: argparse.Namespace) -> int:
    try:
        stale = update(a.results, {a.doc: DOC_BLOCKS, a.results_doc: RESULTS_BLOCKS}, check=a.check)
    except (OSError, ValueError, KeyError) as e:   # a missing file, marker or results field
        print(f"error: {type(e).__name__}: {e} (nothing was written)", file=sys.stderr)
        return FAILED
    for f in stale:
        print(f"{'stale' if a.check else 'rewrote'}: {f}", file=sys.stderr)
    return 1 if a.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
