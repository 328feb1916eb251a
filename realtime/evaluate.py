"""What recent events are worth, offline: the P1 test period replayed through the served engine.

``python -m realtime evaluate --out OUT`` (``make realtime-demo``) reads a finished run (the
ETL's temporal split, the served artifact and the variant eval.json names as shipped) and walks
each test user's test events in time order (ties by item id, as the split orders them). Before
each P1 positive (the protocol's own rule: the split's test rows are its positives, rating >=
4 for explicit data, every kept event for implicit data) it asks the engine for a top 10 twice:

* **training only**: ``{"user_id": u, "k": 10}``: what the served model answers a known user
  from the history it was trained on (the handler's stored history);
* **with real-time**: the same request with ``history`` = what the gateway would send: every
  earlier test event fed to the store's own rules (:class:`realtime.store.MemoryStore`, run on
  the events' own timestamps: the 200-item cap, the TTL, an item counted once at its latest
  time) and merged by the one merge rule (:func:`realtime.merge.merge_history`).

The engine is the handler's (core/engine.py over the archive's serving pack, built as
``archives build`` builds it: ``training.served.served_recommenders``), so the measured lift is
the one TorchServe serves. Next-item Recall@10 (the positive is in the top 10) and NDCG@10
(``1 / log2(rank + 2)``) are averaged per user, then over users; the difference gets a paired
bootstrap 95% interval over users (:func:`common.stats.paired_bootstrap`).
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.schema import EtlLayout
from common.stats import paired_bootstrap
from realtime.results import merge_into
from core.validation import RecRequest
from realtime.config import RealtimeConfig
from realtime.merge import merge_history
from realtime.store import Event, MemoryStore

log = logging.getLogger("realtime.evaluate")
BATCH = 64


@dataclass(frozen=True)
class Walk:
    """One test user's positives in time order: item ids and timestamps."""

    user: str
    items: tuple[str, ...]
    ts: tuple[float, ...]


def period_walks(out: Path, scheme: str = "temporal") -> list[Walk]:
    """Every test user's P1 positives (the split's test rows), oldest first, ties by item id."""
    lay = EtlLayout.under(out)
    df = pd.read_parquet(lay.split(scheme), columns=["user_idx", "item_idx", "timestamp", "split"])
    df = df[df["split"].astype(str) == "test"]
    users = pd.read_parquet(lay.user_map, columns=["user_id", "user_idx"])
    items = pd.read_parquet(lay.item_map, columns=["item_id", "item_idx"])
    df = df.merge(users, on="user_idx").merge(items, on="item_idx")
    df["user_id"] = df["user_id"].astype(str)
    df["item_id"] = df["item_id"].astype(str)
    df = df.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    return [Walk(u, tuple(g["item_id"]), tuple(float(t) for t in g["timestamp"]))
            for u, g in df.groupby("user_id", sort=True)]


def requests_of(walk: Walk, cfg: RealtimeConfig, k: int) -> list[RecRequest]:
    """The with-real-time request before each of the walk's positives: the history the gateway
    would send after the store took every earlier test event."""
    store = MemoryStore(cfg)
    out = []
    for j, (item, ts) in enumerate(zip(walk.items, walk.ts)):
        recent = store.recent_now(walk.user, now=ts)
        out.append(RecRequest(walk.user, k=k, history=tuple(merge_history((), recent.items,
                                                                          cfg.max_history))))
        store.append_now([Event(walk.user, item, ts)], now=ts)
    return out


def _gain(answer: list[str], target: str, k: int) -> tuple[float, float]:
    """(hit, NDCG gain) of ``target`` in the top ``k`` of ``answer``."""
    top = answer[:k]
    if target not in top:
        return 0.0, 0.0
    return 1.0, 1.0 / math.log2(top.index(target) + 2)


def _answers(rec, reqs: list[RecRequest]) -> list[list[str]]:
    out: list[list[str]] = []
    for s in range(0, len(reqs), BATCH):
        for o in rec.recommend(reqs[s:s + BATCH]):
            if o.error is not None:
                raise ValueError(f"the engine refused a replay request: {o.error.message}")
            out.append([it["item_id"] for it in o.body["items"]])
    return out


def replay(rec, walks: list[Walk], cfg: RealtimeConfig, k: int = 10,
           progress_s: float = 10.0) -> dict[str, np.ndarray]:
    """Per user: mean hit and NDCG of the next positive, training only vs with real-time."""
    base = _answers(rec, [RecRequest(w.user, k=k) for w in walks])
    per_user = {m: np.zeros(len(walks)) for m in ("recall_a", "ndcg_a", "recall_b", "ndcg_b")}
    shown = time.monotonic()
    for n, (w, top_a) in enumerate(zip(walks, base)):
        tops_b = _answers(rec, requests_of(w, cfg, k))
        a = np.array([_gain(top_a, item, k) for item in w.items])
        b = np.array([_gain(top_b, item, k) for top_b, item in zip(tops_b, w.items)])
        per_user["recall_a"][n], per_user["ndcg_a"][n] = a.mean(axis=0)
        per_user["recall_b"][n], per_user["ndcg_b"][n] = b.mean(axis=0)
        if time.monotonic() - shown > progress_s:
            log.info("replay: %d/%d users", n + 1, len(walks))
            shown = time.monotonic()
    return per_user


def served_engine(out: Path, work: Path):
    """The engine the archive serves: eval.json's shipped variant over the serving artifact."""
    from training.served import served_recommenders

    served = json.loads((out / "eval.json").read_text()).get("served") or {}
    variant = served.get("variant")
    if not variant:
        raise ValueError(f"{out / 'eval.json'} names no served variant: run the demo first")
    artifact = out / "model" / "serving_artifact"
    return served_recommenders(artifact, [variant], work=work)[variant], variant, artifact


def evaluate(out: Path, *, k: int = 10, bootstrap: int = 2000, seed: int = 0,
             cfg: RealtimeConfig | None = None) -> dict:
    cfg = cfg or RealtimeConfig()
    t0 = time.perf_counter()
    walks = period_walks(out)
    if not walks:
        raise ValueError(f"no test positives under {out / 'etl'}")
    with tempfile.TemporaryDirectory(prefix="realtime-eval-") as work:
        rec, variant, artifact = served_engine(out, Path(work))
        log.info("replaying %d users, %d positives through the %s engine", len(walks),
                 sum(len(w.items) for w in walks), variant)
        per_user = replay(rec, walks, cfg, k)
        version = rec.data.model_version
    key_r, key_n = f"recall@{k}", f"ndcg@{k}"
    diff_r = per_user["recall_b"] - per_user["recall_a"]
    diff_n = per_user["ndcg_b"] - per_user["ndcg_a"]
    return {
        "training_only": {key_r: float(per_user["recall_a"].mean()),
                          key_n: float(per_user["ndcg_a"].mean())},
        "with_realtime": {key_r: float(per_user["recall_b"].mean()),
                          key_n: float(per_user["ndcg_b"].mean())},
        "difference": {key_r: float(diff_r.mean()), key_n: float(diff_n.mean())},
        "difference_ci95": {key_r: paired_bootstrap(diff_r, bootstrap, seed),
                            key_n: paired_bootstrap(diff_n, bootstrap, seed)},
        "events": int(sum(len(w.items) for w in walks)),
        "users": len(walks),
        "offline": {"protocol": "P1, temporal split: next-item metrics over the test period, "
                                "before each test positive",
                    "engine": f"served_{variant} (core/engine.py over the serving pack)",
                    "model_version": version, "artifact": str(artifact),
                    "store": {"history_cap": cfg.history_cap, "ttl_s": cfg.ttl_s},
                    "bootstrap": {"resamples": bootstrap, "seed": seed, "over": "users"},
                    "seconds": round(time.perf_counter() - t0, 1)},
    }


def cmd_evaluate(a) -> int:
    out = Path(a.out)
    figures = evaluate(out, k=a.k, bootstrap=a.bootstrap, seed=a.seed)
    doc = merge_into(out / "realtime.json", figures)
    r, n = f"recall@{a.k}", f"ndcg@{a.k}"
    lo_r, hi_r = figures["difference_ci95"][r]
    lo_n, hi_n = figures["difference_ci95"][n]
    print(f"next-item {r}: training only {figures['training_only'][r]:.4f} -> with real-time "
          f"{figures['with_realtime'][r]:.4f} (95% CI of the difference [{lo_r:+.4f}, {hi_r:+.4f}]); "
          f"{n}: {figures['training_only'][n]:.4f} -> {figures['with_realtime'][n]:.4f} "
          f"([{lo_n:+.4f}, {hi_n:+.4f}]); {figures['users']} users, {figures['events']} events")
    fresh = doc.get("freshness_ms")
    if fresh:
        print(f"freshness P50 {fresh['p50']:.1f} ms, P99 {fresh['p99']:.1f} ms")
    print(f"-> {out / 'realtime.json'}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="offline replay of the P1 test period with and without "
                                        "recent events -> OUT/realtime.json")
    p.add_argument("--out", required=True, help="a finished run (make demo)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--bootstrap", type=int, default=2000, help="paired bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_evaluate)


__all__ = ["Walk", "period_walks", "requests_of", "replay", "evaluate"]
