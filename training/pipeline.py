"""The training stage end to end: fit the hybrid, compare it with the baselines on the same
split, export the serving artifact, track everything in MLflow and register a challenger."""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.jsonio import write_json
from core.config import ArchiveConfig
from common import registry
from common.registry import EXPERIMENT, MODEL_NAME, next_version
from common.tables import table
from training.config import TrainConfig
from common.schema import EtlLayout
from training import tracking
from training.compare import PROTOCOL, Ranked, comparison, fit_baselines
from common.splits import load_split
from training.modes import mode_tables
from training.served import engine_rank_fn, served_recommenders
from training.train import fit

log = logging.getLogger("training.pipeline")
# INT8 serving variants (core/retrieval.py) evaluated next to the shipped one
INT8_VARIANTS = ("int8", "sq8")


def split_hash(etl: EtlLayout, scheme: str) -> str:
    """The ETL's fingerprint of the split, so the promotion gate compares like with like."""
    manifest = json.loads(Path(etl.manifest).read_text())
    return str(manifest["table_fingerprints"][f"splits/{scheme}"]).split("|", 1)[1] \
        if f"splits/{scheme}" in manifest.get("table_fingerprints", {}) else manifest["content_hash"]


def _print_table(models: dict[str, dict], slices: dict[str, dict[str, dict]]) -> None:
    rows = [[name, m["recall@10"], m["ndcg@10"], m["recall@20"], m.get("mrr", ""), m["coverage@10"],
             slices["cold_items"][name]["recall@10"], slices["few_interactions"][name]["recall@10"],
             slices["long_history"][name]["recall@10"]]
            for name, m in sorted(models.items(), key=lambda kv: -kv[1]["ndcg@10"])]
    print(table(["model", "recall@10", "ndcg@10", "recall@20", "mrr", "coverage@10",
                 "cold recall@10", "few-int. recall@10", "long-hist. recall@10"], rows))


def run(out: Path, cfg: TrainConfig, *, scheme: str = "temporal", baselines: bool = True,
        als: bool = True, register: bool = True,
        served_variant: str = ArchiveConfig.scoring) -> dict[str, Any]:
    """Train, evaluate, export, log and register; writes OUT/eval.json and OUT/model/.

    ``served_variant`` is the serving variant the archive will ship (``archives build
    --scoring``, default :class:`ArchiveConfig`'s): its row ``served_<variant>`` is evaluated
    through the handler's engine, as are the other INT8 variants (``hybrid_int8_<variant>``).
    """
    started = time.perf_counter()
    etl = EtlLayout.under(out)
    data = load_split(etl, scheme)
    log.info("loaded %s split: %d users x %d items, %d train / %d valid / %d test pairs",
             scheme, data.n_users, data.n_items, data.train.nnz, data.valid.nnz, data.test.nnz)

    result = fit(data, cfg)
    log.info("hybrid trained in %.1f s (best epoch %d, val ndcg@10 %.4f)",
             result.seconds, result.best_epoch, result.best_val_ndcg)

    from training.export import export_artifact

    artifact_dir = out / "model" / "serving_artifact"
    history = result.model.history_matrix(data.train_full, data.timestamps)
    models: dict[str, Any] = {"hybrid": lambda u: result.model.score_users(history, u)}
    fit_seconds: dict[str, float] = {"hybrid": result.seconds}
    if baselines:
        spark = None
        if als:
            from etl.spark import get_spark

            spark = get_spark()
        for name, (fn, seconds) in fit_baselines(data, spark, als=als).items():
            models[name], fit_seconds[name] = fn, seconds

    # Export first (unversioned) so the served variants are evaluated through the artifact and
    # the handler's engine: what TorchServe will run.
    export_artifact(result.model, data, artifact_dir, version="0", metrics=None)
    variants = [served_variant] + [v for v in INT8_VARIANTS if v != served_variant]
    work = Path(tempfile.mkdtemp(prefix=".served-eval-", dir=out / "model"))
    try:
        recs = served_recommenders(artifact_dir, variants, work)
        for variant, rec in recs.items():
            name = f"served_{variant}" if variant == served_variant else f"hybrid_int8_{variant}"
            models[name] = Ranked(engine_rank_fn(rec, data.user_ids))
        t = time.perf_counter()
        main, slices = comparison(models, data)
        log.info("evaluated %d models in %.1f s", len(models), time.perf_counter() - t)
        # related items, rerank, diversity: the API modes through the shipped variant's engine
        modes = mode_tables(recs[served_variant], f"served_{served_variant}", data)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    hash_ = split_hash(etl, scheme)
    evaluation = {
        "protocol": PROTOCOL | {"scheme": scheme, "split_hash": hash_},
        "dataset": json.loads(Path(etl.manifest).read_text())["inputs"].get("source", {}),
        "models": main,
        "slices": slices,
        "served": {"variant": served_variant, "row": f"served_{served_variant}",
                   "recall@10_relative_loss":
                       1 - main[f"served_{served_variant}"]["recall@10"] / main["hybrid"]["recall@10"],
                   "ndcg@10_relative_loss":
                       1 - main[f"served_{served_variant}"]["ndcg@10"] / main["hybrid"]["ndcg@10"]},
        **modes,
        "fit_seconds": fit_seconds,
        "train": {"best_epoch": result.best_epoch, "best_val_ndcg@10": result.best_val_ndcg,
                  "seconds": result.seconds, "config": asdict(cfg)},
    }

    version = "0"
    eval_path = out / "eval.json"
    if register:
        import mlflow

        with tracking.start_run(EXPERIMENT, out, run_name=f"hybrid-{cfg.loss}",
                                params={"train": asdict(cfg), "scheme": scheme,
                                        "served_variant": served_variant}) as mlrun:
            tracking.log_epoch_metrics(result.history)
            tracking.log_curves_png(result.history, out / "model" / "curves.png")
            # Metrics: the model table and slices; the whole evaluation as a JSON artifact.
            tracking.log_eval_table({k: evaluation[k] for k in ("models", "slices", "served")},
                                    split_hash=hash_, primary=f"models.served_{served_variant}")
            write_json(eval_path, evaluation)
            mlflow.log_artifact(str(eval_path))
            # The registry version number becomes the artifact's model_version.
            version = str(next_version(out))
            served = main[f"served_{served_variant}"]
            export_artifact(result.model, data, artifact_dir, version=version,
                            metrics={"recall@10": served["recall@10"], "ndcg@10": served["ndcg@10"],
                                     "served_variant": served_variant})
            tracking.log_serving_artifact(artifact_dir)
            registered = registry.register_version(mlrun.info.run_id, MODEL_NAME, split_hash=hash_)
            if str(registered) != version:
                raise RuntimeError(f"registry gave version {registered}, the artifact says {version}: "
                                   "another registration raced this one; re-run")
            evaluation["mlflow"] = {"run_id": mlrun.info.run_id, "model_name": MODEL_NAME,
                                    "version": registered, "alias": "challenger",
                                    "tracking_uri": registry.tracking_uri(out)}
    evaluation["seconds"] = round(time.perf_counter() - started, 1)
    write_json(eval_path, evaluation)
    _print_table(main, slices)
    return evaluation
