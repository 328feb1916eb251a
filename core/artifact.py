"""The serving artifact: everything the TorchServe handler needs, without training code.

No pickles: tensors in ``model.safetensors``, everything else JSON / text. Depends only on the
standard library, torch and safetensors (no numpy, no training code), so it can be shipped alone inside a .mar.

Folder layout (``FORMAT = "hybrid-recsys-artifact"``, ``FORMAT_VERSION = 2``)::

    config.json       format, model_version, created_at, schema_version, dims, counts, encoder
                      and content specs, tensor list, sha256 of the other files, metrics, ...
    model.safetensors tensors below
    user_ids.txt      line u = original id of user index u
    item_ids.txt      line i = original id of item index i
    items.jsonl       line i = {"item_idx", "item_id", "title", "categories"}
    vectorizer.json   the ETL's TF-IDF vocabulary / IDF (core/vectorizer.py reads it)

Tensors (float32 unless noted; d = ``config["dim"]``)::

    item_vectors          [n_items, d]  final item representations (cold items: content only)
    item_bias             [n_items]
    user_vectors          [n_users, d]  known users, from their full training history
    popularity            [n_items]     distinct training users per item (fallback ranking)
    item_warm             [n_items] u8  1 = item had training interactions
    encoder.in.weight     [n_items, h1] row i = input embedding of item i
    encoder.in.bias       [h1]
    encoder.layers.K.weight/bias        further Linear layers (torch layout [out, in])
    content.weight        [n_text + n_categories, d]  content projection (new items)
    content.bias          [n_text + n_categories]     content part of the item bias
    item_categories.indptr  [n_items + 1] i64, item_categories.indices [nnz] i64  (CSR)
    user_history.indptr     [n_users + 1] i64, user_history.indices   [nnz] i64  (CSR of the
                          items each known user interacted with, each row in time order, oldest
                          first: the history the user's vector was computed from, and the items
                          masked when recommending)

Scoring: ``score = user_vector @ item_vectors.T + item_bias``. The user tower (the history
encoder, ``config["encoder"]``) is defined once in ``core/encoder.py``: known users'
``user_vectors`` are exactly that encoder applied to their ``user_history`` row (plus a user id
embedding only where ``encoder.includes_user_id_embedding``), and serving applies the same
encoder to a history sent with a request. A new item's vector from its TF-IDF
(``text_indices``/``text_values``, L2-normalised by the vectorizer) and category ids:
v = sum_j text_values_j * content.weight[j]
+ sum_c (category_weight / sqrt(#categories)) * content.weight[n_text + c], likewise the bias.
"""
from __future__ import annotations

import datetime as _dt
import json
import mmap as _mmap
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from core.jsonio import write_json
from core.ids import InvalidId, check_id
from core.storage import file_sha256

FORMAT = "hybrid-recsys-artifact"
FORMAT_VERSION = 2  # 2: user_history rows in time order; encoder block from core/encoder.py
TENSORS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
USER_IDS_FILE = "user_ids.txt"
ITEM_IDS_FILE = "item_ids.txt"
ITEMS_FILE = "items.jsonl"
VECTORIZER_FILE = "vectorizer.json"

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
           "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class ArtifactError(ValueError):
    """The folder is not a valid artifact of a supported format version."""


def _check_id(value: str, what: str) -> str:
    s = str(value)
    try:
        check_id(s)
    except InvalidId as e:
        raise ValueError(f"{what} {s!r} is not a valid id: {e}") from None
    return s


def _read_ids(path: Path) -> list[str]:
    """One id per line. Ids may hold any character but control characters (core/ids.py), so
    lines split on "\n" only: str.splitlines() would also split at U+2028 or U+001C."""
    text = path.read_text(encoding="utf-8")
    return text.split("\n")[:-1] if text else []


def save_artifact(out_dir: str | Path, tensors: Mapping[str, torch.Tensor], config: Mapping,
                  user_ids: Sequence[str], item_ids: Sequence[str],
                  items: Iterable[Mapping] | None = None,
                  vectorizer: str | Path | None = None) -> Path:
    """Write an artifact folder atomically (into a temporary sibling, then renamed).

    ``config`` is extended with format, created_at, tensor shapes/dtypes and sha256 of every
    other file. ``items``: one mapping per item index (title, categories, ...).
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    n_users, n_items = len(user_ids), len(item_ids)
    for name in ("item_vectors", "item_bias", "user_vectors", "popularity"):
        if name not in tensors:
            raise ValueError(f"missing tensor {name!r}")
    if tensors["item_vectors"].shape[0] != n_items or tensors["user_vectors"].shape[0] != n_users:
        raise ValueError("item/user vector counts do not match the id lists")

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        save_file(clean, str(tmp / TENSORS_FILE), metadata={"format": FORMAT,
                                                          "format_version": str(FORMAT_VERSION)})
        (tmp / USER_IDS_FILE).write_text("".join(_check_id(u, "user id") + "\n" for u in user_ids),
                                         encoding="utf-8")
        (tmp / ITEM_IDS_FILE).write_text("".join(_check_id(i, "item id") + "\n" for i in item_ids),
                                         encoding="utf-8")
        with open(tmp / ITEMS_FILE, "w", encoding="utf-8") as f:
            for i, rec in enumerate(items if items is not None else ({} for _ in item_ids)):
                row = {"item_idx": i, "item_id": str(item_ids[i]), **dict(rec)}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        if vectorizer is not None:
            shutil.copyfile(vectorizer, tmp / VECTORIZER_FILE)
        files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
        cfg = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               **dict(config), "n_users": n_users, "n_items": n_items,
               "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                           for k, v in sorted(clean.items())},
               "files": files}
        write_json(tmp / CONFIG_FILE, cfg)
        tmp.chmod(0o755)  # mkdtemp makes 0700; serving may run as another user
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                shutil.rmtree(old)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def mmap_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], object]:
    """Zero-copy tensors over a private (copy-on-write) memory map of a safetensors file.

    Pages are read lazily and shared through the page cache between processes (TorchServe
    workers) as long as nobody writes to them."""
    f = open(path, "rb")
    try:
        mm = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_COPY)
    finally:
        f.close()
    (n,) = struct.unpack("<Q", mm[:8])
    header = json.loads(mm[8:8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    out = {}
    for name, meta in header.items():
        dtype = _DTYPES[meta["dtype"]]
        start, end = meta["data_offsets"]
        shape = meta["shape"]
        itemsize = torch.empty(0, dtype=dtype).element_size()
        count = (end - start) // itemsize
        if count == 0:
            out[name] = torch.empty(shape, dtype=dtype)
        elif (base + start) % itemsize == 0:
            out[name] = torch.frombuffer(mm, dtype=dtype, count=count,
                                         offset=base + start).view(shape)
        else:  # misaligned (never with safetensors' own writer): copy
            out[name] = torch.frombuffer(bytearray(mm[base + start:base + end]),
                                         dtype=dtype).view(shape)
    return out, mm


@dataclass
class ServingArtifact:
    path: Path
    config: dict
    tensors: dict[str, torch.Tensor]
    user_ids: Sequence[str]
    item_ids: Sequence[str]
    _mmap: object = field(default=None, repr=False)
    _items: list[dict] | None = field(default=None, repr=False)
    _user_index: dict[str, int] | None = field(default=None, repr=False)
    _item_index: dict[str, int] | None = field(default=None, repr=False)

    # ---- basic properties --------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def dim(self) -> int:
        return int(self.config["dim"])

    @property
    def version(self) -> str:
        return str(self.config.get("model_version", ""))

    @property
    def item_vectors(self) -> torch.Tensor:
        return self.tensors["item_vectors"]

    @property
    def item_bias(self) -> torch.Tensor:
        return self.tensors["item_bias"]

    @property
    def popularity(self) -> torch.Tensor:
        return self.tensors["popularity"]

    @property
    def user_index(self) -> dict[str, int]:
        if self._user_index is None:
            self._user_index = {u: i for i, u in enumerate(self.user_ids)}
        return self._user_index

    @property
    def item_index(self) -> dict[str, int]:
        if self._item_index is None:
            self._item_index = {u: i for i, u in enumerate(self.item_ids)}
        return self._item_index

    @property
    def items(self) -> list[dict]:
        """items.jsonl, read on first use."""
        if self._items is None:
            with open(self.path / ITEMS_FILE, encoding="utf-8") as f:
                self._items = [json.loads(line) for line in f]
        return self._items

    # ---- user side ---------------------------------------------------------------------------
    def user_vector(self, user_idx) -> torch.Tensor:
        """Precomputed vector(s) of known user index/indices: [d] for an int, else [b, d]."""
        uv = self.tensors["user_vectors"]
        if isinstance(user_idx, int):
            return uv[user_idx]
        return uv[torch.as_tensor(user_idx, dtype=torch.long)]

    def seen_items(self, user_idx: int) -> torch.Tensor:
        """Item indices a known user interacted with in training (to mask at serving)."""
        ptr = self.tensors["user_history.indptr"]
        return self.tensors["user_history.indices"][int(ptr[user_idx]):int(ptr[user_idx + 1])]

    # ---- items -------------------------------------------------------------------------------
    def item_categories(self, item_idx: int) -> torch.Tensor:
        ptr = self.tensors["item_categories.indptr"]
        return self.tensors["item_categories.indices"][int(ptr[item_idx]):int(ptr[item_idx + 1])]

    def embed_item(self, text_indices: Sequence[int], text_values: Sequence[float],
                   category_indices: Sequence[int] = ()) -> tuple[torch.Tensor, float]:
        """(vector [d], bias) of an item from content alone, e.g. one added after training
        (vectorize it with core.vectorizer.ContentVectorizer from vectorizer.json)."""
        spec = self.config["content"]
        n_text = int(spec["n_text_features"])
        W, b = self.tensors["content.weight"], self.tensors["content.bias"]
        ti = torch.as_tensor(list(text_indices), dtype=torch.long)
        tv = torch.as_tensor(list(text_values), dtype=torch.float32)
        cats = sorted({int(c) for c in category_indices})
        ci = torch.as_tensor(cats, dtype=torch.long) + n_text
        cv = torch.full((len(cats),), float(spec["category_weight"]) / max(len(cats), 1) ** 0.5)
        idx, val = torch.cat([ti, ci]), torch.cat([tv, cv])
        return val @ W[idx], float(val @ b[idx])


@dataclass(frozen=True)
class NewItem:
    """An item added after training, with its content vectorized (core/vectorizer.py)."""

    item_id: str
    title: str
    categories: tuple[str, ...]
    category_ids: tuple[int, ...]        # indices into config["content"]["categories"]
    text_indices: tuple[int, ...]
    text_values: tuple[float, ...]


# Tensors with one row per item that new items extend (besides the computed item vectors and
# bias): the user tower's item inputs (zero rows: no history holds a new item yet), popularity
# and the warm flag (0: no training interactions).
_ZERO_ROW_TENSORS = ("popularity", "item_warm")


def with_new_items(art: ServingArtifact, new: Sequence[NewItem], dest: str | Path, version: str,
                   item_input_tensors: Sequence[str], extra_config: Mapping | None = None) -> Path:
    """A copy of ``art`` as version ``version`` with ``new`` items appended: their vectors and
    bias from the content projection alone (:meth:`ServingArtifact.embed_item`, as training
    scores items without interactions), zero rows in every per-item input of the user tower
    (``item_input_tensors``), category rows extended. Users and their vectors are unchanged:
    nothing is retrained."""
    known = set(art.item_ids)
    dup = [it.item_id for it in new if it.item_id in known]
    if dup or len({it.item_id for it in new}) != len(new):
        raise ValueError(f"items already in the artifact or repeated: {dup[:5]}")
    t = dict(art.tensors)
    m = len(new)
    vecs, bias = zip(*(art.embed_item(it.text_indices, it.text_values, it.category_ids)
                       for it in new)) if m else ((), ())
    t["item_vectors"] = torch.cat([art.item_vectors.float(), torch.stack(list(vecs))])
    t["item_bias"] = torch.cat([art.item_bias.float(), torch.tensor(bias, dtype=torch.float32)])
    for name in (*_ZERO_ROW_TENSORS, *item_input_tensors):
        old = t[name]
        t[name] = torch.cat([old, torch.zeros((m, *old.shape[1:]), dtype=old.dtype)])
    ptr, ind = t["item_categories.indptr"], t["item_categories.indices"]
    added = [torch.tensor(sorted(set(it.category_ids)), dtype=torch.int64) for it in new]
    lengths = torch.tensor([len(a) for a in added], dtype=torch.int64)
    t["item_categories.indptr"] = torch.cat([ptr, ptr[-1] + torch.cumsum(lengths, 0)])
    t["item_categories.indices"] = torch.cat([ind, *added]) if added else ind
    keep = ("format", "format_version", "created_at", "n_users", "n_items", "tensors", "files")
    config = {k: v for k, v in art.config.items() if k not in keep}
    config.update({"model_version": str(version), **dict(extra_config or {})})
    items = [{k: v for k, v in row.items() if k not in ("item_idx", "item_id")} for row in art.items]
    items += [{"title": it.title, "categories": list(it.categories)} for it in new]
    vectorizer = art.path / VECTORIZER_FILE
    return save_artifact(dest, t, config, list(art.user_ids),
                         [*art.item_ids, *(it.item_id for it in new)], items,
                         vectorizer=vectorizer if vectorizer.exists() else None)


def load_artifact(path: str | Path, mmap: bool = True, verify: bool = False,
                  id_lists: tuple[Sequence[str], Sequence[str]] | None = None) -> ServingArtifact:
    """Open an artifact folder. ``mmap=True`` maps the tensors copy-on-write (zero-copy, lazily
    paged, shared between processes); ``verify=True`` checks the sha256 of every file.

    ``id_lists``: (user ids, item ids) sequences to use instead of reading ``user_ids.txt`` /
    ``item_ids.txt`` into Python lists -- serving passes memory-mapped id tables
    (core/idtable.py), so that 10M user ids are not a private copy in every worker."""
    p = Path(path)
    cfg_path = p / CONFIG_FILE
    if not cfg_path.exists():
        raise ArtifactError(f"{p} has no {CONFIG_FILE}")
    config = json.loads(cfg_path.read_text())
    if config.get("format") != FORMAT:
        raise ArtifactError(f"{p}: not a {FORMAT} (format={config.get('format')!r})")
    if int(config.get("format_version", -1)) != FORMAT_VERSION:
        raise ArtifactError(f"{p}: format_version {config.get('format_version')} is not "
                            f"supported (this reader: {FORMAT_VERSION})")
    if verify:
        for name, digest in config.get("files", {}).items():
            if file_sha256(p / name) != digest:
                raise ArtifactError(f"{p / name}: sha256 mismatch")
    if mmap:
        tensors, mm = mmap_safetensors(p / TENSORS_FILE)
    else:
        from safetensors.torch import load_file

        tensors, mm = load_file(str(p / TENSORS_FILE)), None
    missing = [k for k in config.get("tensors", {}) if k not in tensors]
    if missing:
        raise ArtifactError(f"{p}: tensors missing from {TENSORS_FILE}: {missing}")
    if id_lists is None:
        user_ids: Sequence[str] = _read_ids(p / USER_IDS_FILE)
        item_ids: Sequence[str] = _read_ids(p / ITEM_IDS_FILE)
    else:
        user_ids, item_ids = id_lists
    if len(user_ids) != config["n_users"] or len(item_ids) != config["n_items"]:
        raise ArtifactError(f"{p}: id lists do not match n_users/n_items")
    return ServingArtifact(path=p, config=config, tensors=tensors, user_ids=user_ids,
                           item_ids=item_ids, _mmap=mm)


__all__ = ["FORMAT", "FORMAT_VERSION", "ArtifactError", "ServingArtifact", "NewItem",
           "save_artifact", "load_artifact", "mmap_safetensors", "with_new_items"]
