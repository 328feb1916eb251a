"""New items without retraining: a catalog update becomes a new registry version and archive.

``python -m archives add-items --out OUT --catalog FILE`` reads new items in the ETL's raw catalog
format (CSV with a header, JSON lines or Parquet: ``item_id, title, description, categories,
tags, created_at``), validates them with the ETL's own rules (``etl.validate.validate_catalog``
on a local Spark session: the same quarantine reasons), vectorizes their text with the
vectorizer fitted by the ETL (``vectorizer.json`` in the artifact, ``core/vectorizer.py``) and
appends them to the source version's artifact (``core.artifact.with_new_items``: vectors from
the content projection, as training scores items without interactions; id tables grow; no user
vector changes, nothing is retrained). The result is registered as the next MLflow version of
the same registered model, built into that version's archive (archive version = registry
version) and, when a TorchServe runs for OUT, registered there through the management API
(not made the default: the gateway's experiment moves traffic to it).

Rows that cannot be used are refused with reasons (the ETL's quarantine reasons, plus
``known_item`` for an id the model already has); if nothing is left, nothing is created. A
failure after the registry version was created deletes it and any archive file of it: nothing
half-built stays in the model store or the registry.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.jsonio import write_json
from core.artifact import load_artifact, with_new_items
from core.config import ArchiveConfig
from core.encoder import item_input_tensors
from core.vectorizer import ContentVectorizer, vectorize

log = logging.getLogger("archives.add_items")
KNOWN_ITEM = "known_item"


@dataclass
class CatalogUpdate:
    """Validated new items and the refused rows of a catalog file."""

    items: list[dict] = field(default_factory=list)       # item_id, title, description, ...
    refused: list[dict] = field(default_factory=list)     # item_id (raw), reason


def read_catalog(path: str | Path) -> CatalogUpdate:
    """The catalog rows of ``path`` through the ETL's reader and validation (local Spark)."""
    from common.schema import RAW_CATALOG_COLUMNS, REQUIRED_CATALOG_COLUMNS
    from etl.readers import read_raw
    from etl.spark import get_spark
    from etl.validate import REASON, validate_catalog

    spark = get_spark()
    raw = read_raw(spark, str(Path(path).resolve()), RAW_CATALOG_COLUMNS, REQUIRED_CATALOG_COLUMNS)
    valid, quarantined = validate_catalog(raw)
    out = CatalogUpdate()
    for r in valid.collect():
        out.items.append({"item_id": r["item_id"], "title": r["title"],
                          "description": r["description"], "categories": list(r["categories"] or []),
                          "tags": list(r["tags"] or [])})
    for r in quarantined.collect():
        out.refused.append({"item_id": r["item_id"], "reason": r[REASON]})
    return out


def add_items(out: str | Path, catalog: str | Path, *,
              model_uri: str = "models:/hybrid-recommender@challenger",
              model_name: str = "recsys", config: ArchiveConfig | None = None,
              register: bool = True) -> dict:
    """Add the catalog's new items to ``model_uri``'s artifact as the next registry version and
    archive; returns a summary (also written to ``OUT/archives/add-items-v<version>.json``)."""
    import mlflow

    from archives import build as B
    from common import registry
    from common.registry import EXPERIMENT, MODEL_NAME, next_version
    from training import tracking

    out = Path(out).expanduser().resolve()
    t0 = time.perf_counter()
    update = read_catalog(catalog)
    uri = registry.tracking_uri(out)
    source = registry.resolve_version(model_uri, MODEL_NAME, tracking_uri=uri)
    work = Path(tempfile.mkdtemp(prefix=".add-items-", dir=out))
    created_version: str | None = None
    try:
        base_dir = registry.download_serving_artifact(f"models:/{source.name}/{source.version}",
                                                      work / "base", tracking_uri=uri)
        base = load_artifact(base_dir)
        known = base.item_index
        fresh = [r for r in update.items if r["item_id"] not in known]
        refused = update.refused + [{"item_id": r["item_id"], "reason": KNOWN_ITEM}
                                    for r in update.items if r["item_id"] in known]
        if not fresh:
            raise ValueError(f"{catalog}: no new items to add ({len(refused)} refused: "
                             f"{_reasons(refused)})")
        vec_path = base_dir / "vectorizer.json"
        if not vec_path.exists():
            raise FileNotFoundError(f"version {source.version}'s artifact has no vectorizer.json: "
                                    "new items cannot be vectorized like training's")
        new = vectorize(fresh, ContentVectorizer.load(vec_path))
        registry.configure(out)
        with tracking.start_run(EXPERIMENT, out, run_name="add-items",
                                params={"source_version": source.version, "catalog": str(catalog),
                                        "added": len(new), "refused": len(refused)}) as run:
            version = str(next_version(out))
            art_dir = with_new_items(
                base, new, work / "artifact", version,
                item_input_tensors(base.config.get("encoder", {})),
                extra_config={"added_items": {"source_version": str(source.version),
                                              "count": len(new), "catalog": str(catalog)}})
            tracking.log_serving_artifact(art_dir)
            mlflow.log_dict({"added": [it.item_id for it in new], "refused": refused},
                            "add_items.json")
            created_version = str(registry.register_version(
                run.info.run_id, MODEL_NAME, alias=None, eval_metrics=_tag_metrics(source),
                split_hash=source.tags.get(registry.SPLIT_HASH_TAG),
                description=f"version {source.version} + {len(new)} items from {Path(catalog).name}"))
        if created_version != version:
            raise RuntimeError(f"registry gave version {created_version}, the artifact says {version}")
        info = B.build_from_registry(created_version, out, model_name=model_name,
                                     config=config or ArchiveConfig())
        served = _register_in_torchserve(out, info, model_name) if register else None
    except BaseException:
        if created_version is not None:
            _undo(out, model_name, created_version)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {"source_version": str(source.version), "version": created_version,
               "archive": str(info.path), "added": [it.item_id for it in new],
               "refused": refused, "torchserve": served,
               "seconds": round(time.perf_counter() - t0, 1)}
    (out / "archives").mkdir(exist_ok=True)
    write_json(out / "archives" / f"add-items-v{created_version}.json", summary)
    return summary


def _reasons(refused: list[dict]) -> str:
    counts: dict[str, int] = {}
    for r in refused:
        for reason in str(r["reason"]).split(";"):
            counts[reason] = counts.get(reason, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def _tag_metrics(source) -> dict[str, float]:
    """The source version's evaluation tags, carried over: the model is the same; the added
    items have no interactions to evaluate them on yet (docs/contracts.md)."""
    from common.registry import EVAL_TAG_PREFIX, SPLIT_HASH_TAG

    return {k[len(EVAL_TAG_PREFIX):]: float(v) for k, v in (source.tags or {}).items()
            if k.startswith(EVAL_TAG_PREFIX) and k != SPLIT_HASH_TAG}


def _register_in_torchserve(out: Path, info, model_name: str) -> dict | None:
    """POST /models for the new archive when a TorchServe runs for OUT (else None)."""
    from archives.client import TorchServeClient
    from archives.server import ServerError, ServerState

    try:
        state = ServerState.load(out)
    except ServerError:
        return None
    if not state.alive():
        return None
    r = TorchServeClient(state).register(info.file_name, model_name)
    if r.status_code != 200:
        raise RuntimeError(f"TorchServe refused {info.file_name}: HTTP {r.status_code} {r.text[:300]}")
    return {"registered": info.file_name, "model_name": model_name, "version": info.version}


def _undo(out: Path, model_name: str, version: str) -> None:
    """Delete a half-made version: the registry entry and its archive files."""
    from archives.store import mar_name, model_store
    from common.registry import MODEL_NAME, get_client

    try:
        get_client(out_dir=out).delete_model_version(MODEL_NAME, version)
    except Exception:  # noqa: BLE001 - best effort; the error that brought us here is raised
        log.exception("could not delete registry version %s", version)
    (model_store(out) / mar_name(model_name, version)).unlink(missing_ok=True)
    (out / "archives" / f"{model_name}-v{version}.json").unlink(missing_ok=True)


__all__ = ["add_items", "read_catalog", "CatalogUpdate", "KNOWN_ITEM"]
