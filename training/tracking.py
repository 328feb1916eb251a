"""MLflow runs of the training stage: params, per-epoch metrics, curves, the evaluation table
and the serving artifact, logged on the store of ``common/registry.py``.

A training run::

    with start_run("recsys", out_dir, run_name="hybrid", params=cfg_dict) as run:
        log_epoch_metrics(history)                 # step = epoch; "val_ndcg@10" -> "val_ndcg_at_10"
        log_curves_png(history, out_dir / "curves.png")
        log_eval_table(evaluation, primary="hybrid", split_hash=h)
        log_serving_artifact(out_dir / "serving")
    version = registry.register_version(run.info.run_id, registry.MODEL_NAME)

Registration, promotion and download of versions live in ``common/registry.py`` (archives use
them too, and archives come after training in the import order).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

# common.registry first: it sets MLflow's environment (no telemetry, no progress bars) before
# mlflow is imported.
from common.registry import (EVAL_ARTIFACT, EVAL_PRIMARY_TAG, SERVING_ARTIFACT_PATH,  # noqa: I001
                             SPLIT_HASH_TAG, configure, ensure_experiment, eval_section, flatten,
                             get_client, is_number, metric_key, numeric_leaves)
from core.jsonio import json_safe, write_json
import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

log = logging.getLogger(__name__)

PLOTS_ARTIFACT_PATH = "plots"
_MAX_PARAM_LEN = 6000  # mlflow's limit on a param value


def _run_id(run_id: str | None) -> str:
    if run_id:
        return run_id
    active = mlflow.active_run()
    if active is None:
        raise RuntimeError("no active MLflow run: call inside start_run(...) or pass run_id=")
    return active.info.run_id


@contextlib.contextmanager
def start_run(experiment: str, out_dir: Path | str, run_name: str | None = None,
              params: Mapping[str, Any] | None = None,
              tags: Mapping[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """Open an MLflow run in ``experiment`` on the store of ``out_dir`` and log ``params``.

    Yields the active run (``run.info.run_id``, ``run.info.artifact_uri``); the log functions
    below default to it. The run ends FINISHED, or FAILED when the block raises.
    Nested params (e.g. config dataclasses as dicts) are flattened to ``section.field``.
    """
    uri = configure(out_dir)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp_id = ensure_experiment(experiment, out_dir, client)
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=dict(tags or {})) as run:
        if params:
            log_params(params, run_id=run.info.run_id)
        yield run


def log_params(params: Mapping[str, Any], run_id: str | None = None) -> dict[str, str]:
    """Log (flattened) params as strings; over-long values are truncated with a warning."""
    flat: dict[str, str] = {}
    for k, v in flatten(params).items():
        s = v if isinstance(v, str) else json.dumps(json_safe(v))
        if len(s) > _MAX_PARAM_LEN:
            log.warning("param %s is %d characters long; truncated to %d", k, len(s), _MAX_PARAM_LEN)
            s = s[: _MAX_PARAM_LEN - 3] + "..."
        flat[metric_key(k)] = s
    mlflow.log_params(flat, run_id=_run_id(run_id))
    return flat


def log_metrics(metrics: Mapping[str, Any], step: int = 0, run_id: str | None = None,
                prefix: str = "") -> dict[str, float]:
    """Log the numeric leaves of a (nested) mapping; names pass through :func:`metric_key`."""
    flat = {metric_key(f"{prefix}{k}"): v for k, v in numeric_leaves(metrics).items()}
    mlflow.log_metrics(flat, step=int(step), run_id=_run_id(run_id))
    return flat


def _epochs(history: Sequence[Mapping[str, Any]], step_key: str) -> list[int]:
    return [int(rec.get(step_key, i)) for i, rec in enumerate(history)]


def log_epoch_metrics(history: Sequence[Mapping[str, Any]], run_id: str | None = None,
                      step_key: str = "epoch") -> int:
    """Log each record of ``history`` with ``step = record[step_key]`` (else its position).

    Every numeric value of a record becomes a metric (``loss``, ``val_ndcg@10`` ->
    ``val_ndcg_at_10``, ...); None and non-numeric values are skipped. Returns the number of
    metric points logged.
    """
    run_id = _run_id(run_id)
    n = 0
    for rec, step in zip(history, _epochs(history, step_key)):
        point = {metric_key(k): float(v) for k, v in rec.items() if k != step_key and is_number(v)}
        if point:
            mlflow.log_metrics(point, step=step, run_id=run_id)
            n += len(point)
    return n


def log_curves_png(history: Sequence[Mapping[str, Any]], path: Path | str, run_id: str | None = None,
                   step_key: str = "epoch", artifact_path: str = PLOTS_ARTIFACT_PATH) -> Path:
    """Plot loss curves (keys containing ``loss``) and ranking curves (``ndcg``/``recall``) per
    epoch to a PNG at ``path`` and log it under ``artifact_path``. Returns ``path``.

    Uses matplotlib's object API on the Agg canvas: no pyplot, no global backend switch.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_id = _run_id(run_id)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    epochs = _epochs(history, step_key)
    keys = sorted({k for rec in history for k, v in rec.items() if k != step_key and is_number(v)})
    panels = [("Loss", [k for k in keys if "loss" in k.lower()]),
              ("Validation ranking", [k for k in keys if "ndcg" in k.lower() or "recall" in k.lower()])]

    fig = Figure(figsize=(11, 4), dpi=100)
    FigureCanvasAgg(fig)
    for i, (title, names) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        for name in names:
            xs = [e for e, rec in zip(epochs, history) if is_number(rec.get(name))]
            ys = [float(rec[name]) for rec in history if is_number(rec.get(name))]
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=name)
            if "ndcg" in name.lower() and ys and any(math.isfinite(y) for y in ys):
                best = max(range(len(ys)), key=lambda j: ys[j] if math.isfinite(ys[j]) else -math.inf)
                ax.axvline(xs[best], color="grey", linestyle="--", linewidth=0.8)
                ax.annotate(f"best {name} {ys[best]:.4f} @ {xs[best]}", (xs[best], ys[best]),
                            textcoords="offset points", xytext=(4, -12), fontsize=8)
        if not names:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel(step_key)
        ax.grid(True, alpha=0.3)
        if names:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    get_client().log_artifact(run_id, str(path), artifact_path)
    return path


def log_eval_table(eval_dict: Mapping[str, Any], run_id: str | None = None, *,
                   split_hash: str | None = None, primary: str | None = None,
                   name: str = EVAL_ARTIFACT) -> dict[str, float]:
    """Log the evaluation as a JSON artifact ``name`` and as flattened metrics.

    ``{"hybrid": {"recall@10": 0.1}}`` becomes metric ``hybrid.recall_at_10``. Also tags the run
    with ``eval.split_hash`` (``split_hash`` or ``eval_dict["split_hash"]``) and, when given,
    ``eval.primary``: the dotted path of the section holding *this run's model* headline metrics
    (e.g. ``"hybrid"``), which :func:`register_version` copies onto the model version. Without
    ``primary`` the top-level numeric entries are the model's metrics.
    Returns the flattened metrics logged.
    """
    run_id = _run_id(run_id)
    split_hash = split_hash or eval_dict.get("split_hash")
    if primary is not None:
        eval_section(eval_dict, primary)  # fail now, not at registration
    client = get_client()
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / name
        write_json(file, eval_dict, sort_keys=True, strict=True)
        client.log_artifact(run_id, str(file))
    flat = log_metrics({k: v for k, v in eval_dict.items() if k != "split_hash"}, run_id=run_id)
    tags = {"eval.artifact": name}
    if split_hash:
        tags[SPLIT_HASH_TAG] = str(split_hash)
    if primary is not None:
        tags[EVAL_PRIMARY_TAG] = primary
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    return flat


def log_serving_artifact(local_dir: Path | str, run_id: str | None = None,
                         artifact_path: str = SERVING_ARTIFACT_PATH) -> str:
    """Log the serving-artifact folder under ``artifact_path``; returns its artifact URI."""
    run_id = _run_id(run_id)
    local_dir = Path(local_dir)
    if not local_dir.is_dir() or not any(local_dir.iterdir()):
        raise FileNotFoundError(f"serving artifact folder {local_dir} is missing or empty")
    client = get_client()
    client.log_artifacts(run_id, str(local_dir), artifact_path)
    return f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"


__all__ = ["start_run", "log_params", "log_metrics", "log_epoch_metrics", "log_curves_png",
           "log_eval_table", "log_serving_artifact", "PLOTS_ARTIFACT_PATH"]
