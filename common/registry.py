"""The MLflow store and model registry every stage shares, without a server.

Store: ``MLFLOW_TRACKING_URI`` when set; otherwise a local SQLite database
``<out_dir>/mlflow.db`` (tracking and registry) with artifacts under ``<out_dir>/mlartifacts``.
Experiments created here on a local/database store get an artifact location under that folder
(MLflow's own default would be ``./mlruns`` relative to whatever the working directory is);
against an HTTP tracking server the server decides where artifacts go.

Why here (below training and archives): training registers versions, archives resolve and
download them and add-items registers new ones; training runs themselves (params, metrics,
curves, the evaluation table) are logged by ``training/tracking.py`` on this store::

    version = register_version(run.info.run_id, MODEL_NAME)      # alias "challenger"
    decision = promote(MODEL_NAME, tolerance=0.01)                # maybe alias "champion"
    download_serving_artifact(f"models:/{MODEL_NAME}@champion", dest)

Registry conventions (one registered model, versions = serving artifacts of runs):

* a new version gets alias ``challenger`` and tags ``eval.<metric>`` (``@`` is not allowed in
  MLflow names, so ``recall@10`` is stored as ``eval.recall_at_10``) plus ``eval.split_hash``,
  the content hash of the split it was evaluated on;
* :func:`promote` moves ``champion`` to the challenger only when both were evaluated on the same
  split and the challenger is not worse beyond a relative tolerance; the old champion keeps alias
  ``previous_champion`` (for rollback), the ``challenger`` alias is then removed, and every
  decision is recorded on the challenger as tags ``promotion.decision`` / ``promotion.reason``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

# Before mlflow is imported: no usage telemetry from an offline pipeline, no progress bars in logs.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities.model_registry import ModelVersion  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

log = logging.getLogger(__name__)

# The registered model and the experiment of the training stage (archives build and
# add-items use the same names).
MODEL_NAME = "hybrid-recommender"
EXPERIMENT = "hybrid-recommender"

SERVING_ARTIFACT_PATH = "serving_artifact"
EVAL_ARTIFACT = "evaluation.json"
CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous_champion"
EVAL_TAG_PREFIX = "eval."
SPLIT_HASH_TAG = "eval.split_hash"
EVAL_PRIMARY_TAG = "eval.primary"

_REMOTE_SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc")

_configured_uri: str | None = None


# --------------------------------------------------------------------------------------------
# Store location
# --------------------------------------------------------------------------------------------

def tracking_uri(out_dir: Path | str) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<abs out_dir>/mlflow.db`` (creates out_dir)."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    root = Path(out_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def artifact_root(out_dir: Path | str) -> Path:
    """Where experiments created here keep their runs' artifacts: ``<out_dir>/mlartifacts``."""
    return Path(out_dir).expanduser().resolve() / "mlartifacts"


def _is_remote(uri: str) -> bool:
    return uri.split(":", 1)[0].lower() in _REMOTE_SCHEMES


def configure(out_dir: Path | str) -> str:
    """Point this process's MLflow (tracking and registry) at :func:`tracking_uri` and return it."""
    global _configured_uri
    uri = tracking_uri(out_dir)
    # mlflow.set_*_uri also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI (for subprocesses).
    # Undo that: the variable is the *user's* choice, and leaving ours there would make every
    # later tracking_uri(other_out_dir) in this process silently resolve to this store.
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    _configured_uri = uri
    return uri


def _resolve_uri(uri: str | None = None, out_dir: Path | str | None = None) -> str:
    """Explicit URI > out_dir > $MLFLOW_TRACKING_URI > the store :func:`configure` set.

    Never MLflow's implicit default (a ``mlflow.db`` in the current directory).
    """
    if uri:
        return uri
    if out_dir is not None:
        return tracking_uri(out_dir)
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    if _configured_uri:
        return _configured_uri
    raise RuntimeError("no MLflow store configured: pass tracking_uri=/out_dir=, set "
                       "MLFLOW_TRACKING_URI, or call configure(out_dir) / start_run(...) first")


def get_client(tracking_uri: str | None = None, out_dir: Path | str | None = None) -> MlflowClient:
    uri = _resolve_uri(tracking_uri, out_dir)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _safe_dirname(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"


def ensure_experiment(name: str, out_dir: Path | str, client: MlflowClient | None = None) -> str:
    """Id of experiment ``name``, created with its artifacts under ``<out_dir>/mlartifacts/<name>``."""
    client = client or get_client(out_dir=out_dir)
    uri = client.tracking_uri
    wanted = None if _is_remote(uri) else (artifact_root(out_dir) / _safe_dirname(name)).as_uri()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=wanted)
        except MlflowException as e:  # created concurrently by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise e
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if wanted and exp.artifact_location.rstrip("/") != wanted.rstrip("/"):
        log.warning("experiment %r keeps its artifacts at %s (created earlier), not under %s",
                    name, exp.artifact_location, artifact_root(out_dir))
    return exp.experiment_id


# --------------------------------------------------------------------------------------------
# Names and values
# --------------------------------------------------------------------------------------------

def metric_key(name: str) -> str:
    """An MLflow-valid metric/tag name: ``"recall@10"`` -> ``"recall_at_10"``.

    MLflow allows only alphanumerics, ``_ - . / :`` and spaces; anything else becomes ``_``.
    """
    name = str(name).replace("@", "_at_")
    return re.sub(r"[^A-Za-z0-9_\-./: ]", "_", name)


def is_number(v: Any) -> bool:
    """A real number (numpy scalars included), not a bool, None or numeric string."""
    if isinstance(v, bool) or v is None:
        return False
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return not isinstance(v, (str, bytes))


def flatten(d: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested mappings (and dataclasses) -> one level with ``sep``-joined keys."""
    if dataclasses.is_dataclass(d) and not isinstance(d, type):
        d = dataclasses.asdict(d)
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            v = dataclasses.asdict(v)
        if isinstance(v, Mapping):
            out.update(flatten(v, key, sep))
        else:
            out[key] = v
    return out


def numeric_leaves(d: Mapping[str, Any]) -> dict[str, float]:
    """The numeric (non-bool) leaves of a nested mapping, keys joined with ``.``."""
    return {k: float(v) for k, v in flatten(d).items() if is_number(v)}


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

def eval_section(d: Mapping[str, Any], dotted: str) -> Mapping[str, Any]:
    """The mapping at dotted path ``dotted`` of an evaluation (``"hybrid"``, ``"models.hybrid"``)."""
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            raise KeyError(f"evaluation has no section {dotted!r}")
        cur = cur[part]
    if not isinstance(cur, Mapping):
        raise KeyError(f"evaluation section {dotted!r} is not a mapping")
    return cur


def _run_eval_metrics(client: MlflowClient, run) -> dict[str, float]:
    """The model's headline metrics from the run's evaluation JSON (empty when none was logged)."""
    tags = run.data.tags
    name = tags.get("eval.artifact")
    if not name:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=name,
                                                    dst_path=tmp, tracking_uri=client.tracking_uri)
        data = json.loads(Path(local).read_text())
    primary = tags.get(EVAL_PRIMARY_TAG)
    section = eval_section(data, primary) if primary else \
        {k: v for k, v in data.items() if not isinstance(v, Mapping)}
    return {k: v for k, v in numeric_leaves(section).items() if k != "split_hash"}


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            client.create_registered_model(name, description="Serving artifacts of the hybrid recommender")
        except MlflowException as e2:
            if e2.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


def register_version(run_id: str, model_name: str, artifact_path: str = SERVING_ARTIFACT_PATH, *,
                     tracking_uri: str | None = None, eval_metrics: Mapping[str, Any] | None = None,
                     split_hash: str | None = None, description: str | None = None,
                     alias: str | None = CHALLENGER, timeout_s: float = 120.0) -> int:
    """Register the run's ``artifact_path`` folder as a new version of ``model_name``.

    Creates the registered model if missing; the version's source is the run's artifact URI.
    Tags: ``eval.<metric>`` for each headline metric (``eval_metrics``, else the run's evaluation
    JSON section named by ``eval.primary``), ``eval.split_hash`` (``split_hash``, else the run's
    tag). Sets ``alias`` (``challenger``) on it. Returns the version number.
    """
    client = get_client(tracking_uri)
    run = client.get_run(run_id)
    if not client.list_artifacts(run_id, artifact_path):
        raise FileNotFoundError(f"run {run_id} has no artifacts under {artifact_path!r}")
    metrics = numeric_leaves(eval_metrics) if eval_metrics is not None else _run_eval_metrics(client, run)
    split_hash = split_hash or run.data.tags.get(SPLIT_HASH_TAG)
    tags = {EVAL_TAG_PREFIX + metric_key(k): repr(float(v)) for k, v in sorted(metrics.items())}
    if split_hash:
        tags[SPLIT_HASH_TAG] = str(split_hash)
    if not metrics or not split_hash:
        log.warning("version of %s from run %s lacks %s: the promotion gate will refuse it",
                    model_name, run_id, "evaluation metrics" if not metrics else "a split hash")

    _ensure_registered_model(client, model_name)
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    mv = client.create_model_version(model_name, source, run_id=run_id, tags=tags,
                                     description=description)
    deadline = time.monotonic() + timeout_s
    while mv.status == "PENDING_REGISTRATION" and time.monotonic() < deadline:
        time.sleep(0.5)
        mv = client.get_model_version(model_name, mv.version)
    if mv.status != "READY":
        raise RuntimeError(f"{model_name} version {mv.version} is {mv.status}: {mv.status_message}")
    if alias:
        client.set_registered_model_alias(model_name, alias, mv.version)
    log.info("registered %s version %s from run %s (%s)", model_name, mv.version, run_id, source)
    return int(mv.version)


def _version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _tag_float(mv: ModelVersion, key: str) -> float | None:
    raw = mv.tags.get(key)
    try:
        v = float(raw) if raw is not None else None
    except ValueError:
        return None
    return v if v is not None and math.isfinite(v) else None


@dataclass(frozen=True)
class PromotionDecision:
    """What :func:`promote` decided and why (``reason`` is meant for humans and CI logs)."""

    promoted: bool
    reason: str
    model_name: str
    metric: str
    tolerance: float
    challenger_version: int | None = None
    champion_version: int | None = None
    """The champion *before* the decision (None when there was none)."""
    challenger_value: float | None = None
    champion_value: float | None = None
    challenger_split_hash: str | None = None
    champion_split_hash: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def promote(model_name: str, tolerance: float = 0.01, metric: str = "recall@10", *,
            tracking_uri: str | None = None, higher_is_better: bool = True) -> PromotionDecision:
    """Move alias ``champion`` to the ``challenger`` version if it passes the gate.

    The gate: the challenger must carry ``eval.<metric>`` and ``eval.split_hash``; with no
    champion yet it is promoted; otherwise both must have been evaluated on the same split
    (equal hashes) and the challenger must not be worse than the champion by more than
    ``tolerance`` relative to the champion's value (``higher_is_better``: challenger >=
    champion - tolerance * |champion|). On promotion the old champion gets alias
    ``previous_champion`` and the ``challenger`` alias is removed. The decision and reason are
    recorded as tags on the challenger version either way.
    """
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    client = get_client(tracking_uri)
    tag = EVAL_TAG_PREFIX + metric_key(metric)
    base = dict(model_name=model_name, metric=metric, tolerance=tolerance)

    chal = _version_by_alias(client, model_name, CHALLENGER)
    if chal is None:
        return PromotionDecision(False, f"{model_name} has no '{CHALLENGER}' version to promote", **base)
    champ = _version_by_alias(client, model_name, CHAMPION)
    cv, cs = _tag_float(chal, tag), chal.tags.get(SPLIT_HASH_TAG)
    info = dict(challenger_version=int(chal.version), challenger_value=cv, challenger_split_hash=cs)
    if champ is not None:
        info.update(champion_version=int(champ.version), champion_value=_tag_float(champ, tag),
                    champion_split_hash=champ.tags.get(SPLIT_HASH_TAG))

    def decide(ok: bool, reason: str) -> PromotionDecision:
        d = PromotionDecision(ok, reason, **base, **info)
        client.set_model_version_tag(model_name, chal.version, "promotion.decision",
                                     "promoted" if ok else "rejected")
        client.set_model_version_tag(model_name, chal.version, "promotion.reason", reason[:4000])
        if ok:
            if champ is not None:
                client.set_registered_model_alias(model_name, PREVIOUS_CHAMPION, champ.version)
            client.set_registered_model_alias(model_name, CHAMPION, chal.version)
            client.delete_registered_model_alias(model_name, CHALLENGER)
        log.info("promotion gate for %s: %s", model_name, reason)
        return d

    v_chal = f"v{chal.version}"
    if champ is not None and champ.version == chal.version:
        return PromotionDecision(False, f"{v_chal} is already the champion", **base, **info)
    if cv is None:
        return decide(False, f"challenger {v_chal} has no usable {tag} tag: it was not evaluated "
                             f"on {metric}, refusing to promote it")
    if not cs:
        return decide(False, f"challenger {v_chal} has no {SPLIT_HASH_TAG} tag: cannot tell what "
                             "it was evaluated on, refusing to promote it")
    if champ is None:
        return decide(True, f"no champion yet: {v_chal} becomes champion ({metric}={cv:.4f})")

    v_champ = f"v{champ.version}"
    hv = info["champion_value"]
    hs = info["champion_split_hash"]
    if not hs or hs != cs:
        return decide(False, f"challenger {v_chal} was evaluated on split {cs[:12]} but champion "
                             f"{v_champ} on {str(hs)[:12] if hs else 'an unknown split'}: the "
                             f"{metric} values are not comparable; evaluate both on the same split")
    if hv is None:
        return decide(False, f"champion {v_champ} has no usable {tag} tag; cannot compare")
    sign = 1.0 if higher_is_better else -1.0
    floor = hv - sign * tolerance * abs(hv)
    rel = (cv - hv) / abs(hv) if hv else (0.0 if cv == hv else math.copysign(math.inf, cv - hv))
    passes = sign * (cv - floor) >= -1e-12
    direction = "higher" if higher_is_better else "lower"
    if passes:
        what = "better than" if sign * (cv - hv) > 0 else ("equal to" if cv == hv else
                                                          f"within {tolerance:.1%} of")
        return decide(True, f"challenger {v_chal} {metric}={cv:.4f} is {what} champion {v_champ} "
                            f"({hv:.4f}, {rel:+.1%}; {direction} is better, tolerance "
                            f"{tolerance:.1%}): promoted")
    return decide(False, f"challenger {v_chal} {metric}={cv:.4f} is worse than champion {v_champ} "
                         f"({hv:.4f}) by {abs(rel):.1%}, beyond the {tolerance:.1%} tolerance "
                         f"(needs {'>=' if higher_is_better else '<='} {floor:.4f}): kept {v_champ}")


def resolve_version(model_uri_or_version: str | int, model_name: str | None = None, *,
                    tracking_uri: str | None = None) -> ModelVersion:
    """``models:/<name>@<alias>``, ``models:/<name>/<version>`` or a version number (with
    ``model_name``) -> the registry's ModelVersion."""
    client = get_client(tracking_uri)
    ref = str(model_uri_or_version).strip()
    if ref.isdigit():
        if not model_name:
            raise ValueError(f"version {ref} needs model_name")
        return client.get_model_version(model_name, ref)
    m = re.fullmatch(r"models:/([^/@]+)@([^/@]+)", ref)
    if m:
        mv = _version_by_alias(client, m.group(1), m.group(2))
        if mv is None:
            raise LookupError(f"{m.group(1)} has no version with alias {m.group(2)!r}")
        return mv
    m = re.fullmatch(r"models:/([^/@]+)/(\d+)", ref)
    if m:
        return client.get_model_version(m.group(1), m.group(2))
    raise ValueError(f"cannot resolve {ref!r}: expected models:/<name>@<alias>, "
                     "models:/<name>/<version> or a version number")


def download_serving_artifact(model_uri_or_version: str | int, dest: Path | str, *,
                              model_name: str | None = None,
                              tracking_uri: str | None = None) -> Path:
    """Download a registered version's serving artifact so its files lie directly in ``dest``.

    ``dest`` must not exist or be empty (no mixing of versions); the download goes to a
    temporary folder next to it first, so an interrupted download never leaves a partial
    ``dest``. Returns ``dest``. Use :func:`resolve_version` for the version number itself.
    """
    uri = _resolve_uri(tracking_uri)
    mv = resolve_version(model_uri_or_version, model_name, tracking_uri=uri)
    dest = Path(dest).expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not an empty folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp),
                                                         tracking_uri=uri))
        if not local.is_dir():
            raise FileNotFoundError(f"{mv.name} v{mv.version} source {mv.source} is not a folder")
        if dest.exists():
            dest.rmdir()
        local.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("downloaded %s v%s to %s", mv.name, mv.version, dest)
    return dest


def next_version(out: Path) -> int:
    """The version number the registry will give the next registration of MODEL_NAME."""
    client = get_client(out_dir=out)
    try:
        versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    except Exception:  # noqa: BLE001 - no registered model yet
        return 1
    return max((int(v.version) for v in versions), default=0) + 1


__all__ = [
    "tracking_uri", "artifact_root", "configure", "get_client", "ensure_experiment", "metric_key",
    "is_number", "flatten", "numeric_leaves", "eval_section", "register_version",
    "PromotionDecision", "promote", "resolve_version", "download_serving_artifact",
    "next_version", "MODEL_NAME", "EXPERIMENT", "SERVING_ARTIFACT_PATH", "EVAL_ARTIFACT",
    "CHAMPION", "CHALLENGER", "PREVIOUS_CHAMPION", "EVAL_TAG_PREFIX", "SPLIT_HASH_TAG",
    "EVAL_PRIMARY_TAG",
]
