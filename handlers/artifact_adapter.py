"""Serving artifact (common/artifact.py) + the archive's serving pack -> :class:`ServingData`.

The serving pack (``serving/pack.safetensors`` in the archive, written by
:func:`write_pack` at build time from the artifact) holds what every worker would otherwise
build privately:

* ``sq8.codes`` int8 ``[n_items, d]``, ``sq8.scale`` / ``sq8.offset`` ``[d]``: the item vectors
  8-bit scalar-quantized per dimension (``training.quantize.sq8_encode``, stored as signed
  ``codes - 128``), so that ``u . x_i = (u * scale) . codes_i + u . offset``;
* ``titles.bytes`` uint8 / ``titles.offsets`` int64 ``[n_items + 1]``: the titles as one UTF-8
  blob (a list of Python strings would be private to each worker).

Both the artifact's tensors and the pack are memory-mapped copy-on-write and never written, so
N workers share one copy through the page cache.
"""
from __future__ import annotations

import json
import mmap as _mmap
import struct
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from common.artifact import ITEMS_FILE, load_artifact
from handlers.engine import ServingData

PACK_FILE = "pack.safetensors"
_DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "I32": torch.int32,
           "I8": torch.int8, "U8": torch.uint8, "F16": torch.float16, "BF16": torch.bfloat16,
           "I16": torch.int16, "BOOL": torch.bool}


def mmap_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict, _mmap.mmap]:
    """Zero-copy tensors over a copy-on-write map of a safetensors file (+ its metadata)."""
    with open(path, "rb") as f:
        mm = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_COPY)
    (n,) = struct.unpack("<Q", mm[:8])
    header = json.loads(mm[8:8 + n])
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for name, h in header.items():
        dtype = _DTYPES[h["dtype"]]
        start, end = h["data_offsets"]
        size = torch.empty(0, dtype=dtype).element_size()
        if end == start:
            out[name] = torch.empty(h["shape"], dtype=dtype)
        elif (8 + n + start) % size == 0:
            out[name] = torch.frombuffer(mm, dtype=dtype, count=(end - start) // size,
                                         offset=8 + n + start).view(h["shape"])
        else:
            out[name] = torch.frombuffer(bytearray(mm[8 + n + start:8 + n + end]),
                                         dtype=dtype).view(h["shape"])
    return out, meta, mm


# --------------------------------------------------------------------------------------------
# Build time: the serving pack
# --------------------------------------------------------------------------------------------

def write_pack(artifact_dir: Path, dest: Path, n_check_users: int = 256) -> dict:
    """Write the serving pack of an artifact; returns a summary including INT8 quality."""
    from safetensors.torch import save_file

    from training.quantize import quantization_report, sq8_encode

    art = load_artifact(artifact_dir, mmap=True)
    items = art.item_vectors.to(torch.float32)
    codes, vmin, scale = sq8_encode(items)
    codes_s8 = (codes.to(torch.int16) - 128).to(torch.int8).contiguous()
    offset = (vmin + 128.0 * scale).contiguous()
    titles = []
    with open(Path(artifact_dir) / ITEMS_FILE, encoding="utf-8") as f:
        for line in f:
            titles.append(str(json.loads(line).get("title") or "").encode("utf-8"))
    if len(titles) != art.n_items:
        raise ValueError(f"{ITEMS_FILE} has {len(titles)} rows for {art.n_items} items")
    lengths = torch.tensor([len(t) for t in titles], dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)])
    blob = torch.frombuffer(bytearray(b"".join(titles)), dtype=torch.uint8) if offsets[-1] \
        else torch.zeros(0, dtype=torch.uint8)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file({"sq8.codes": codes_s8, "sq8.scale": scale.contiguous(), "sq8.offset": offset,
               "titles.bytes": blob.contiguous(), "titles.offsets": offsets},
              str(dest), metadata={"format": "recsys-serving-pack", "format_version": "1",
                                   "quantization": "sq8-per-dimension"})
    # quality of INT8 scoring against fp32, on (up to) n_check_users known users
    n = min(n_check_users, art.n_users)
    report = {}
    if n:
        u = art.tensors["user_vectors"][:n].to(torch.float32)
        fp = u @ items.T + art.item_bias
        q = _Sq8Scorer(codes_s8, scale, offset, art.item_bias.to(torch.float32))
        report = quantization_report(fp, q(u), k=10)
        report["int_mm"] = q.use_int_mm
    return {"pack_bytes": dest.stat().st_size, "int8_quality": report}


# --------------------------------------------------------------------------------------------
# Serving time
# --------------------------------------------------------------------------------------------

class _Sq8Scorer:
    """INT8 catalog scoring over (memory-mapped) signed codes; no copy of the catalog."""

    def __init__(self, codes_s8: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
                 bias: torch.Tensor, chunk: int = 8192):
        self.codes, self.scale, self.offset, self.bias = codes_s8, scale, offset, bias
        self.chunk = chunk
        self.use_int_mm = self._int_mm_ok()

    def _int_mm_ok(self) -> bool:
        try:
            g = torch.Generator().manual_seed(0)
            rows = self.codes[: min(256, self.codes.shape[0])]
            for m in (1, 3, 8):
                a = torch.randint(-127, 128, (m, self.codes.shape[1]), dtype=torch.int8, generator=g)
                if not torch.equal(torch._int_mm(a, rows.T), (a.long() @ rows.long().T).int()):
                    return False
            return True
        except Exception:  # noqa: BLE001 - no usable kernel: exact float path
            return False

    def __call__(self, users: torch.Tensor) -> torch.Tensor:
        u = users.to(torch.float32) * self.scale
        const = users.to(torch.float32) @ self.offset
        if self.use_int_mm:
            s_u = (u.abs().amax(dim=1, keepdim=True) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
            u8 = torch.round(u / s_u).clamp_(-127, 127).to(torch.int8)
            out = torch._int_mm(u8, self.codes.T).to(torch.float32).mul_(s_u)
        else:
            n = self.codes.shape[0]
            out = torch.empty((u.shape[0], n), dtype=torch.float32)
            for s in range(0, n, self.chunk):
                e = min(n, s + self.chunk)
                torch.mm(u, self.codes[s:e].to(torch.float32).T, out=out[:, s:e])
        return out.add_(const.unsqueeze(1)).add_(self.bias)


class _Titles(Sequence[str]):
    """Titles decoded on demand from a (memory-mapped) UTF-8 blob."""

    def __init__(self, blob: torch.Tensor, offsets: torch.Tensor):
        self.blob, self.offsets = blob, offsets

    def __len__(self) -> int:
        return int(self.offsets.numel()) - 1

    def __getitem__(self, i):  # type: ignore[override]
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return bytes(self.blob[a:b].numpy()).decode("utf-8", "replace")


def _encoder(art):
    t = art.tensors
    w_in, b_in = t["encoder.in.weight"], t["encoder.in.bias"].to(torch.float32)
    layers = [(t[f"encoder.layers.{k}.weight"].to(torch.float32),
               t[f"encoder.layers.{k}.bias"].to(torch.float32))
              for k in range(int(art.config.get("encoder", {}).get("n_layers", 0)))]

    def encode(indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Binary bags: weight 1 per item, L2-normalised per bag (common/artifact.py's rule)."""
        n = indices.numel()
        lengths = torch.diff(offsets, append=torch.tensor([n]))
        w = torch.repeat_interleave(lengths.clamp_min(1).to(torch.float32).rsqrt(), lengths)
        h = torch.tanh(F.embedding_bag(indices, w_in, offsets, mode="sum",
                                       per_sample_weights=w) + b_in)
        for wk, bk in layers:
            h = torch.tanh(F.linear(h, wk, bk))
        return h

    return encode


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


def from_artifact(artifact_dir: Path, scoring: str = "auto",
                  pack_path: Path | None = None) -> ServingData:
    """``scoring``: ``auto`` (INT8 when the pack is there and its kernel checks out, else fp32),
    ``int8`` (pack required) or ``fp32``."""
    art = load_artifact(artifact_dir, mmap=True)
    pack, mm = {}, None
    if pack_path is not None and Path(pack_path).exists():
        pack, _, mm = mmap_safetensors(Path(pack_path))
    elif scoring == "int8":
        raise FileNotFoundError(f"scoring=int8 needs the serving pack {pack_path}")
    bias = art.item_bias.to(torch.float32)
    if scoring in ("auto", "int8") and "sq8.codes" in pack:
        scorer = _Sq8Scorer(pack["sq8.codes"], pack["sq8.scale"], pack["sq8.offset"], bias)
        score, used = scorer, "int8-sq8" + ("" if scorer.use_int_mm else "-float")
    elif scoring in ("auto", "fp32"):
        items = art.item_vectors.to(torch.float32)

        def score(u: torch.Tensor) -> torch.Tensor:
            return torch.addmm(bias, u.to(torch.float32), items.T)

        used = "fp32"
    else:
        raise ValueError(f"unknown scoring {scoring!r}; expected auto, int8 or fp32")
    if "titles.offsets" in pack:
        titles: Sequence[str] = _Titles(pack["titles.bytes"], pack["titles.offsets"])
    else:
        with open(Path(artifact_dir) / ITEMS_FILE, encoding="utf-8") as f:
            titles = [str(json.loads(line).get("title") or "") for line in f]
    cat_names, cat_ptr, cat_idx = _categories(art)
    data = ServingData(
        model_version=art.version or None, item_ids=art.item_ids, item_index=art.item_index,
        titles=titles, category_names=cat_names, item_cat_indptr=cat_ptr, item_cat_indices=cat_idx,
        user_index=art.user_index, user_vectors=art.tensors["user_vectors"],
        hist_indptr=art.tensors["user_history.indptr"], hist_indices=art.tensors["user_history.indices"],
        popularity=art.popularity, encode=_encoder(art), score=score,
        info={"scoring": used, "dim": art.dim})
    data._keep = (art, mm)  # keep the memory maps alive as long as the data
    return data


__all__ = ["from_artifact", "write_pack", "mmap_safetensors", "PACK_FILE"]
