"""Serving artifact (core/artifact.py) + the archive's serving pack -> :class:`ServingData`.

The serving pack (``serving/`` in the archive, written by :func:`write_pack` at build time from
the artifact) holds what every worker would otherwise build privately, in files that every
worker memory-maps (shared through the page cache):

* ``pack.safetensors``: the titles as one UTF-8 blob (``titles.bytes`` / ``titles.offsets``)
  and the user and item id tables (``user_ids.*`` / ``item_ids.*``, core/idtable.py: hashed,
  sorted, looked up with a binary search) -- Python dicts of 10M ids would be >1 GB per worker;
* ``item_unit``: the L2-normalised item vectors (related items, ``similar_to``, and the
  redundancy term of diversity);
* the serving index of one variant (core/retrieval.py: ``fp32``, ``int8``, ``onnx_int8``,
  ``sq8``, ``faiss_sq8``, ``hnsw``, ``ivf``), files ``<variant>.*``, over the relevance scores;
  and the same variant's index over ``item_unit`` with zero bias (cosine), in ``similar/``;
* ``serving.json``: the variant, its parameters and the build-time quality checks (Recall@10 of
  each index against the exact fp32 top-10: on known users, and on items for ``similar/``).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Sequence

import torch

from core.jsonio import write_json
from core.artifact import ITEMS_FILE, load_artifact, mmap_safetensors
from core.config import ArchiveConfig
from core.encoder import HistoryBagEncoder
from core.idtable import IdTable, build_id_table
from core.retrieval import VARIANTS, build_index, load_index, recall_at_k
from core.engine import Recommender, ServingData, Space

PACK_FILE = "pack.safetensors"
SERVING_JSON = "serving.json"
SIMILAR_DIR = "similar"  # beside the pack: the similarity index (item -> items by cosine)
PACK_FORMAT_VERSION = "3"  # 3: item_unit and similar/
log = logging.getLogger(__name__)
DEFAULT_VARIANT = ArchiveConfig.scoring  # the serving benchmark's winner (docs/performance.md)


# --------------------------------------------------------------------------------------------
# Build time: the serving pack
# --------------------------------------------------------------------------------------------

def _titles_blob(artifact_dir: Path, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    titles = []
    with open(Path(artifact_dir) / ITEMS_FILE, encoding="utf-8") as f:
        for line in f:
            titles.append(str(json.loads(line).get("title") or "").encode("utf-8"))
    if len(titles) != n_items:
        raise ValueError(f"{ITEMS_FILE} has {len(titles)} rows for {n_items} items")
    lengths = torch.tensor([len(t) for t in titles], dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)])
    blob = torch.frombuffer(bytearray(b"".join(titles)), dtype=torch.uint8) if offsets[-1] \
        else torch.zeros(0, dtype=torch.uint8)
    return blob.contiguous(), offsets


def unit_vectors(item_vectors: torch.Tensor) -> torch.Tensor:
    """L2-normalised rows (a zero vector stays zero): cosine = dot product."""
    v = item_vectors.to(torch.float32)
    return (v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)).contiguous()


def _index_quality(variant: str, folder: Path, catalog: torch.Tensor, bias: torch.Tensor,
                   queries: torch.Tensor, threads: int, what: str) -> dict:
    """Recall@10 of ``variant``'s index in ``folder`` against exact fp32 scoring, on ``queries``."""
    if not len(queries):
        return {}
    k = min(10, catalog.shape[0])
    exact = torch.topk(torch.addmm(bias, queries, catalog.T), k, dim=1).indices
    got = load_index(variant, folder, catalog, bias, threads=threads).search(queries, k)[1]
    quality = {what: len(queries), "k": k, "recall_vs_exact": recall_at_k(exact, got, k)}
    if quality["recall_vs_exact"] < 0.99:
        log.warning("serving variant %s recalls %.3f of the exact top-%d on %d %s (< 0.99): pick "
                    "an exact variant (--scoring sq8) or raise its search parameters", variant,
                    quality["recall_vs_exact"], k, len(queries), what)
    return quality


def write_pack(artifact_dir: Path, dest: Path, variant: str = DEFAULT_VARIANT,
               params: dict | None = None, n_check_users: int = 256, threads: int = 2) -> dict:
    """Write the serving pack of an artifact (``dest`` = the pack file; the index files,
    ``similar/`` and ``serving.json`` go beside it); returns a summary including the quality of
    both indexes."""
    from safetensors.torch import save_file

    if variant not in VARIANTS:
        raise ValueError(f"unknown serving variant {variant!r}; expected one of {VARIANTS}")
    t0 = time.perf_counter()
    art = load_artifact(artifact_dir, mmap=True)
    items = art.item_vectors.to(torch.float32)
    bias = art.item_bias.to(torch.float32)
    unit = unit_vectors(items)
    blob, offsets = _titles_blob(artifact_dir, art.n_items)
    tensors = {"titles.bytes": blob, "titles.offsets": offsets, "item_unit": unit}
    tensors.update({f"user_ids.{k}": v for k, v in build_id_table(art.user_ids).items()})
    tensors.update({f"item_ids.{k}": v for k, v in build_id_table(art.item_ids).items()})
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest), metadata={"format": "recsys-serving-pack",
                                            "format_version": PACK_FORMAT_VERSION})
    t_pack = time.perf_counter() - t0
    index = build_index(variant, items, bias, dest.parent, params, threads=threads)
    zero = torch.zeros(art.n_items, dtype=torch.float32)
    similar = build_index(variant, unit, zero, dest.parent / SIMILAR_DIR, params, threads=threads)
    # quality of the variant against exact fp32 scoring, on (up to) n_check_users known users
    # and as many items (every step-th, so popular and cold items alike)
    users = art.tensors["user_vectors"][:min(n_check_users, art.n_users)].to(torch.float32)
    probe = unit[::max(1, art.n_items // max(1, n_check_users))][:n_check_users]
    quality = _index_quality(variant, dest.parent, items, bias, users, threads, "users")
    similar_quality = _index_quality(variant, dest.parent / SIMILAR_DIR, unit, zero, probe,
                                     threads, "items")
    info = {"variant": variant, "params": index.get("params", {}), "index_files": index.get("files", {}),
            "index_build_s": index.get("build_s"), "pack_build_s": round(t_pack, 3),
            "pack_bytes": dest.stat().st_size, "quality": quality,
            "similar": {"index_files": similar.get("files", {}), "index_build_s": similar.get("build_s"),
                        "quality": similar_quality}}
    write_json(dest.parent / SERVING_JSON, info)
    return info


# --------------------------------------------------------------------------------------------
# Serving time
# --------------------------------------------------------------------------------------------

class _Titles(Sequence[str]):
    """Titles decoded on demand from a (memory-mapped) UTF-8 blob."""

    def __init__(self, blob: torch.Tensor, offsets: torch.Tensor):
        self.blob, self.offsets = blob, offsets

    def __len__(self) -> int:
        return int(self.offsets.numel()) - 1

    def __getitem__(self, i):  # type: ignore[override]
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return bytes(self.blob[a:b].numpy()).decode("utf-8", "replace")


def _categories(art) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    names = (art.config.get("content") or {}).get("categories")
    t = art.tensors
    if names is not None and "item_categories.indptr" in t:
        return [str(c) for c in names], t["item_categories.indptr"], t["item_categories.indices"]
    # no category vocabulary in the config: build the CSR from items.jsonl
    vocab: dict[str, int] = {}
    indptr, indices = [0], []
    with open(Path(art.path) / ITEMS_FILE, encoding="utf-8") as f:
        for line in f:
            cats = json.loads(line).get("categories") or []
            indices += [vocab.setdefault(str(c), len(vocab)) for c in cats]
            indptr.append(len(indices))
    return list(vocab), torch.tensor(indptr, dtype=torch.int64), torch.tensor(indices, dtype=torch.int64)


def from_artifact(artifact_dir: Path, scoring: str = "auto", pack_path: Path | None = None,
                  threads: int = 1) -> ServingData:
    """``scoring``: a variant of core/retrieval.py, or ``auto`` = the variant the pack was
    built with (fp32 when there is no pack). A variant other than fp32 needs its index files."""
    pack, mm, meta = {}, None, {}
    if pack_path is not None and Path(pack_path).exists():
        pack, mm = mmap_safetensors(Path(pack_path))
        sj = Path(pack_path).parent / SERVING_JSON
        meta = json.loads(sj.read_text()) if sj.exists() else {}
    variant = (meta.get("variant") or "fp32") if scoring == "auto" else scoring
    if variant not in VARIANTS:
        raise ValueError(f"unknown scoring {scoring!r}; expected auto or one of {VARIANTS}")
    users = IdTable.from_tensors(pack, "user_ids.") if "user_ids.hash_sorted" in pack else None
    items_t = IdTable.from_tensors(pack, "item_ids.") if "item_ids.hash_sorted" in pack else None
    id_lists = (users.ids(), items_t.ids()) if users is not None and items_t is not None else None
    art = load_artifact(artifact_dir, mmap=True, id_lists=id_lists)
    item_vectors = art.item_vectors.to(torch.float32)
    bias = art.item_bias.to(torch.float32)
    if variant != "fp32" and meta.get("variant") != variant:
        raise FileNotFoundError(f"scoring={variant} needs a serving pack built for it "
                                f"(pack {pack_path}: {meta.get('variant') or 'absent'})")
    folder = Path(pack_path).parent if pack_path else Path(artifact_dir)
    searcher = load_index(variant, folder, item_vectors, bias, threads=threads)
    unit = pack["item_unit"] if "item_unit" in pack else unit_vectors(item_vectors)
    if variant != "fp32" and not (folder / SIMILAR_DIR).is_dir():
        raise FileNotFoundError(f"scoring={variant} needs the similarity index {folder / SIMILAR_DIR} "
                                "(a pack written by this version of write_pack)")
    similar = load_index(variant, folder / SIMILAR_DIR, unit,
                         torch.zeros(len(unit), dtype=torch.float32), threads=threads)

    if "titles.offsets" in pack:
        titles: Sequence[str] = _Titles(pack["titles.bytes"], pack["titles.offsets"])
    else:
        with open(Path(artifact_dir) / ITEMS_FILE, encoding="utf-8") as f:
            titles = [str(json.loads(line).get("title") or "") for line in f]
    cat_names, cat_ptr, cat_idx = _categories(art)
    enc_cfg = dict(art.config.get("encoder") or {})
    data = ServingData(
        model_version=art.version or None, item_ids=art.item_ids,
        item_index=items_t if items_t is not None else art.item_index,
        titles=titles, category_names=cat_names, item_cat_indptr=cat_ptr, item_cat_indices=cat_idx,
        user_index=users if users is not None else art.user_index,
        user_vectors=art.tensors["user_vectors"],
        hist_indptr=art.tensors["user_history.indptr"], hist_indices=art.tensors["user_history.indices"],
        popularity=art.popularity, encode=HistoryBagEncoder.from_tensors(art.tensors, enc_cfg).encode,
        relevance=Space.of(searcher), similarity=Space.of(similar), item_unit=unit,
        user_offsets=bool(enc_cfg.get("includes_user_id_embedding", False)),
        info={"scoring": variant, "dim": art.dim, "params": meta.get("params", {})})
    data._keep = (art, mm, searcher, similar)  # keep the memory maps alive as long as the data
    return data


def load_recommender(artifact_dir: str | Path, scoring: str = "auto",
                     pack_path: str | Path | None = None, threads: int = 1) -> Recommender:
    """The engine over an artifact folder (and the archive's serving pack, when given);
    ``scoring``: a serving variant (core/retrieval.py) or ``auto`` (the pack's)."""
    return Recommender(from_artifact(Path(artifact_dir), scoring=scoring,
                                     pack_path=Path(pack_path) if pack_path else None, threads=threads))


__all__ = ["from_artifact", "load_recommender", "write_pack", "unit_vectors", "PACK_FILE",
           "SERVING_JSON", "SIMILAR_DIR", "DEFAULT_VARIANT"]
