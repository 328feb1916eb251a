"""Experiment report: exposures + outcome events -> per-variant rates, lift, SRM check.

Method (docs/gateway.md, "Report"):

* Unit of analysis: the user (the pseudonym in the logs). Intent-to-treat: a user belongs to
  the variant of their first exposure in the experiment, fallbacks included; exposures routed by
  the override header and requests without a user are left out (the latter counted apart).
* Primary metric, per variant: the share of users with at least one outcome event of the chosen
  type at or after their first exposure (``rate``), with a normal-approximation 95% interval
  of a mean of per-user values (the users are independent units).
* Lift of each treatment over control: relative difference of the means, 95% interval by the
  delta method (Var(t/c - 1) ~ Var(t)/c^2 + t^2 Var(c)/c^4), the same approach GrowthBook's
  frequentist engine uses; also the absolute difference with its interval and a two-sided
  z-test p-value.
* Secondary: outcomes per exposure (a ratio of per-user sums; delta-method interval).
* Sample-ratio mismatch: chi-square goodness of fit of users per variant against the
  experiment's weights; p < 0.001 flags it, and the report then says not to trust the result.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from scipy import stats

from core.jsonio import write_json
from gateway import experiment as E
from gateway.logs import read_jsonl

Z95 = 1.959963984540054
SRM_ALPHA = 0.001


@dataclass
class Arm:
    name: str
    users: int
    exposures: int
    conversions: np.ndarray        # per user 0/1
    outcomes: np.ndarray           # per user event count
    user_exposures: np.ndarray     # per user exposures
    fallbacks: int


def _mean_ci(x: np.ndarray) -> tuple[float, float, float, float]:
    """(mean, variance of the mean, lo, hi)."""
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    m = float(x.mean())
    v = float(x.var(ddof=1)) / n if n > 1 else math.nan
    half = Z95 * math.sqrt(v) if v == v else math.nan
    return m, v, m - half, m + half


def _ratio(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """sum(num)/sum(den) and its delta-method variance (per-user pairs)."""
    n = len(num)
    if n < 2 or den.sum() == 0:
        return (float(num.sum() / den.sum()) if den.sum() else math.nan), math.nan
    mn, md = num.mean(), den.mean()
    r = mn / md
    cov = np.cov(num, den, ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * md * md)
    return float(r), float(var)


def _lift(mt: float, vt: float, mc: float, vc: float) -> dict:
    if not (mc > 0) or any(x != x for x in (vt, vc)):
        return {"relative": None, "ci95": [None, None], "absolute": mt - mc if mc == mc else None,
                "absolute_ci95": [None, None], "p_value": None, "significant": False}
    rel = mt / mc - 1.0
    v_rel = vt / mc ** 2 + mt ** 2 * vc / mc ** 4
    se_abs = math.sqrt(vt + vc)
    h_rel, h_abs = Z95 * math.sqrt(v_rel), Z95 * se_abs
    p = float(2 * stats.norm.sf(abs(mt - mc) / se_abs)) if se_abs > 0 else (1.0 if mt == mc else 0.0)
    lo = rel - h_rel
    return {"relative": rel, "ci95": [lo, rel + h_rel], "absolute": mt - mc,
            "absolute_ci95": [mt - mc - h_abs, mt - mc + h_abs], "p_value": p,
            "significant": bool(lo > 0 or rel + h_rel < 0)}


def analyze(exposures: Iterable[dict], events: Iterable[dict], *, name: str | None = None,
            weights: dict[str, float] | None = None, control: str | None = None,
            event_type: str | None = "click") -> dict:
    """The report as a dict (the JSON written to report.json)."""
    exps = [r for r in exposures if r.get("status", 200) == 200]
    if name is None:
        if not exps:
            raise ValueError("no answered exposures in the logs")
        name = max(exps, key=lambda r: r["ts"])["experiment"]
    exps = [r for r in exps if r.get("experiment") == name]
    if not exps:
        raise ValueError(f"no exposures of experiment {name!r}")
    overrides = sum(bool(r.get("override")) for r in exps)
    no_user = sum(1 for r in exps if r.get("user") is None and not r.get("override"))
    exps = sorted((r for r in exps if r.get("user") is not None and not r.get("override")),
                  key=lambda r: r["ts"])
    first: dict[str, tuple[str, float]] = {}
    seen_in: dict[str, set] = defaultdict(set)
    n_exp: dict[str, int] = defaultdict(int)
    by_rid: dict[str, str] = {}
    fallbacks: dict[str, int] = defaultdict(int)
    exposures_by_arm: dict[str, int] = defaultdict(int)
    for r in exps:
        u = r["user"]
        first.setdefault(u, (r["variant"], r["ts"]))
        seen_in[u].add(r["variant"])
        n_exp[u] += 1
        arm = first[u][0]
        exposures_by_arm[arm] += 1
        fallbacks[arm] += bool(r.get("fallback"))
        if r.get("request_id"):
            by_rid[r["request_id"]] = u
    outcomes: dict[str, int] = defaultdict(int)
    unmatched = early = 0
    for ev in events:
        if event_type and ev.get("type") != event_type:
            continue
        u = ev.get("user") or by_rid.get(ev.get("request_id") or "")
        if u is None or u not in first:
            unmatched += 1
            continue
        if ev.get("ts", math.inf) < first[u][1] - 1e-6:
            early += 1
            continue
        outcomes[u] += 1
    arms_seen = sorted({v for v, _ in first.values()})
    if weights:
        arm_names = list(weights)
    else:
        arm_names = arms_seen
    control = control or (arm_names[0] if arm_names else None)
    if control not in arm_names:
        raise ValueError(f"control {control!r} has no exposures; arms: {arm_names}")
    arms: dict[str, Arm] = {}
    for a in arm_names:
        users = [u for u, (v, _) in first.items() if v == a]
        conv = np.array([1.0 if outcomes[u] else 0.0 for u in users])
        cnt = np.array([float(outcomes[u]) for u in users])
        ue = np.array([float(n_exp[u]) for u in users])
        arms[a] = Arm(a, len(users), exposures_by_arm[a], conv, cnt, ue, fallbacks[a])

    variants, summary = {}, {}
    for a, arm in arms.items():
        m, v, lo, hi = _mean_ci(arm.conversions)
        r, rv = _ratio(arm.outcomes, arm.user_exposures)
        rh = Z95 * math.sqrt(rv) if rv == rv else math.nan
        lo, hi = max(0.0, lo), min(1.0, hi)  # a share of users: the interval stays in [0, 1]
        variants[a] = {"users": arm.users, "exposures": arm.exposures, "rate": m, "ci95": [lo, hi],
                       "converted_users": int(arm.conversions.sum()),
                       "outcomes": int(arm.outcomes.sum()),
                       "outcomes_per_exposure": r, "outcomes_per_exposure_ci95": [r - rh, r + rh],
                       "fallback_rate": arm.fallbacks / arm.exposures if arm.exposures else None}
        summary[a] = (m, v, r, rv)
    lift, lift_per_exposure = {}, {}
    mc, vc, rc, rvc = summary[control]
    for a in arms:
        if a == control:
            continue
        mt, vt, rt, rvt = summary[a]
        lift[a] = _lift(mt, vt, mc, vc)
        lift_per_exposure[a] = _lift(rt, rvt, rc, rvc)

    observed = np.array([arms[a].users for a in arm_names], dtype=float)
    if weights:
        w = np.array([weights[a] for a in arm_names], dtype=float)
    else:
        w = np.ones(len(arm_names))
    srm = {"method": "chi-square goodness of fit, users per variant vs weights",
           "expected_fractions": dict(zip(arm_names, (w / w.sum()).tolist())),
           "observed_users": dict(zip(arm_names, observed.astype(int).tolist())),
           "alpha": SRM_ALPHA, "weights_from": "experiment file" if weights else "equal (assumed)"}
    keep = w > 0
    if observed.sum() > 0 and keep.sum() > 1:
        chi2, p = stats.chisquare(observed[keep], observed[keep].sum() * w[keep] / w[keep].sum())
        srm.update(chi2=float(chi2), p_value=float(p), flagged=bool(p < SRM_ALPHA))
    else:
        srm.update(chi2=None, p_value=None, flagged=bool(observed[~keep].sum() > 0))
    if (observed[~keep] > 0).any():
        srm["flagged"] = True
    winners = [a for a, l in lift.items() if l["significant"] and l["relative"] > 0]
    losers = [a for a, l in lift.items() if l["significant"] and l["relative"] < 0]
    if srm["flagged"]:
        verdict = ("Sample-ratio mismatch: the split does not match the weights (p < 0.001). "
                   "Do not trust these results; find the cause (assignment, logging, bots) first.")
    elif winners:
        verdict = f"{', '.join(winners)} beat{'s' if len(winners) == 1 else ''} control " \
                  f"{control!r}: the 95% interval of the lift excludes zero."
    elif losers:
        verdict = f"{', '.join(losers)} did worse than control {control!r} (interval below zero)."
    else:
        verdict = "No significant difference: every lift interval contains zero."
    return {"experiment": name, "control": control, "metric": f"users with >= 1 {event_type or 'any'}"
            f" event after first exposure", "event_type": event_type, "variants": variants,
            "lift": lift, "lift_outcomes_per_exposure": lift_per_exposure, "srm": srm,
            "verdict": verdict, "winners": winners,
            "excluded": {"requests_without_user": no_user, "override_exposures": overrides,
                         "users_in_several_variants": sum(len(s) > 1 for s in seen_in.values()),
                         "events_unmatched": unmatched, "events_before_exposure": early},
            "method": {"unit": "user (pseudonym), intent-to-treat by first exposure",
                       "rate_ci": "normal approximation of the mean of per-user values",
                       "lift_ci": "delta method for the ratio of means",
                       "srm": f"chi-square goodness of fit, flagged at p < {SRM_ALPHA}"}}


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def _pct(x, digits=2) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.{digits}f}%"


def markdown(rep: dict) -> str:
    lines = [f"# Experiment report: {rep['experiment']}", "",
             f"**{rep['verdict']}**", "",
             f"Metric: {rep['metric']} (per user, intent-to-treat). Control: `{rep['control']}`.",
             "", "| variant | users | exposures | rate | 95% CI | lift vs control | 95% CI | p | "
             "fallback rate |", "|---|---|---|---|---|---|---|---|---|"]
    for a, v in rep["variants"].items():
        l = rep["lift"].get(a)
        lift = "—" if l is None else _pct(l["relative"], 1)
        lci = "—" if l is None else f"[{_pct(l['ci95'][0], 1)}, {_pct(l['ci95'][1], 1)}]"
        p = "—" if l is None or l["p_value"] is None else f"{l['p_value']:.2g}"
        lines.append(f"| {a} | {v['users']} | {v['exposures']} | {_pct(v['rate'])} | "
                     f"[{_pct(v['ci95'][0])}, {_pct(v['ci95'][1])}] | {lift} | {lci} | {p} | "
                     f"{_pct(v['fallback_rate'], 1)} |")
    s = rep["srm"]
    chi2 = "n/a" if s.get("chi2") is None else f"{s['chi2']:.3f}"
    p_srm = "n/a" if s.get("p_value") is None else f"{s['p_value']:.3g}"
    fractions = {k: round(x, 4) for k, x in s["expected_fractions"].items()}
    outcome = "**MISMATCH: do not trust the result**" if s["flagged"] else "no mismatch"
    lines += ["", "## Sample-ratio check", "",
              f"Users per variant {s['observed_users']} against expected fractions {fractions} "
              f"({s['weights_from']}): chi-square {chi2}, p = {p_srm} -> {outcome} "
              f"(flagged at p < {s['alpha']}).", "",
              "## Secondary: outcomes per exposure", "",
              "| variant | per exposure | 95% CI | lift | 95% CI |", "|---|---|---|---|---|"]
    for a, v in rep["variants"].items():
        l = rep["lift_outcomes_per_exposure"].get(a)
        ci = v["outcomes_per_exposure_ci95"]
        lines.append(f"| {a} | {v['outcomes_per_exposure']:.4f} | [{ci[0]:.4f}, {ci[1]:.4f}] | "
                     + ("— | — |" if l is None else
                        f"{_pct(l['relative'], 1)} | [{_pct(l['ci95'][0], 1)}, "
                        f"{_pct(l['ci95'][1], 1)}] |"))
    ex = rep["excluded"]
    lines += ["", "## Left out", "",
              f"Requests without a user id: {ex['requests_without_user']}; override-routed "
              f"exposures: {ex['override_exposures']}; users seen in several variants (kept in "
              f"their first): {ex['users_in_several_variants']}; events not matching an exposed "
              f"user: {ex['events_unmatched']}; events before the user's first exposure: "
              f"{ex['events_before_exposure']}.", "",
              "Method: " + "; ".join(f"{k}: {v}" for k, v in rep["method"].items()) + "."]
    return "\n".join(lines) + "\n"


def plot(rep: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rep["variants"])
    rates = [rep["variants"][a]["rate"] for a in names]
    lo = [r - rep["variants"][a]["ci95"][0] for a, r in zip(names, rates)]
    hi = [rep["variants"][a]["ci95"][1] - r for a, r in zip(names, rates)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar(names, rates, yerr=[lo, hi], capsize=6, color=["#888"] + ["#3b7dd8"] * (len(names) - 1))
    ax1.set_ylabel(rep["metric"])
    ax1.set_title(f"{rep['experiment']}: rate per user (95% CI)")
    lifts = [(a, l) for a, l in rep["lift"].items() if l["relative"] is not None]
    if lifts:
        ys = range(len(lifts))
        for y, (a, l) in zip(ys, lifts):
            ax2.errorbar([100 * l["relative"]], [y],
                         xerr=[[100 * (l["relative"] - l["ci95"][0])],
                               [100 * (l["ci95"][1] - l["relative"])]],
                         fmt="o", capsize=6, color="#2a9d4b" if l["significant"] and
                         l["relative"] > 0 else "#c0392b" if l["significant"] else "#555")
        ax2.set_yticks(list(ys), [a for a, _ in lifts])
        ax2.axvline(0, color="k", lw=0.8)
        ax2.set_xlabel(f"relative lift vs {rep['control']} (%)")
    ax2.set_title("SRM: " + ("MISMATCH" if rep["srm"]["flagged"] else "ok")
                  + (f" (p={rep['srm']['p_value']:.3g})" if rep["srm"].get("p_value") is not None
                     else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(rep: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "report.png"}
    write_json(paths["json"], rep, strict=True)
    paths["md"].write_text(markdown(rep))
    plot(rep, paths["png"])
    return paths


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def cmd_report(a) -> int:
    weights = control = None
    exp_file = Path(a.experiment_file) if a.experiment_file else None
    if exp_file is None:
        guess = Path(a.exposures[0]).resolve().parent / "experiment.yaml"
        exp_file = guess if guess.exists() else None
    name = a.name
    if exp_file is not None:
        exp = E.load(exp_file)
        if name is None or name == exp.name:
            name = exp.name
            weights, control = exp.fractions(), exp.control
    rep = analyze(read_jsonl(a.exposures), read_jsonl(a.events or []), name=name,
                  weights=weights, control=a.control or control,
                  event_type=None if a.event_type == "any" else a.event_type)
    paths = write(rep, Path(a.out))
    print(markdown(rep))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def add_parser(sub) -> None:
    r = sub.add_parser("report", help="experiment report (Markdown, JSON, PNG) from the logs",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--exposures", nargs="+", required=True,
                   help="exposure JSON-lines files or folders (OUT/gateway/exposures)")
    r.add_argument("--events", nargs="*", help="event JSON-lines files or folders")
    r.add_argument("--out", required=True, help="folder for report.{md,json,png}")
    r.add_argument("--experiment-file", help="experiment YAML for the weights and control "
                                             "(default: experiment.yaml next to the exposures)")
    r.add_argument("--name", help="experiment name (default: the file's, else the latest logged)")
    r.add_argument("--control", help="control variant (default: the file's)")
    r.add_argument("--event-type", default="click", help="outcome type, or 'any'")
    r.set_defaults(fn=cmd_report)


__all__ = ["analyze", "markdown", "plot", "write", "add_parser"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: python -m gateway report --help")
