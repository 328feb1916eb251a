"""Catalog retrieval: every variant we serve for "top-k items of a user vector", behind one API.

The score of item ``i`` for user vector ``u`` is ``u . item_vectors[i] + item_bias[i]``
(float32, higher is better). A variant is chosen by name (:data:`VARIANTS`):

``fp32``
    ``torch.addmm(bias, u, items.T)`` + ``torch.topk``; the exact reference and the default.
``int8``
    a ``torch.ao`` dynamic quantized ``Linear(d, n_items)`` whose weight is the item matrix
    (int8, one scale per item; fbgemm kernels). Wins for large batches.
``onnx_int8``
    ONNX Runtime, ``MatMul(users, W) + bias`` quantized with ``quantize_dynamic`` (QInt8
    weights) and a ``TopK`` node in the graph (cheaper than copying all scores out and running
    ``torch.topk``; see ``python -m benchmarks.retrieval_bench``).
``sq8``
    our per-dimension 8-bit scalar quantization (:class:`SQ8`) scanned with ``torch._int_mm``;
    the codes are memory-mapped from a safetensors file, so processes share one copy.
``faiss_sq8``
    FAISS ``IndexScalarQuantizer(QT_8bit, IP)`` over ``[x, bias]`` with queries ``[u, 1]`` (padded
    with zeros to a multiple of 8 dimensions for FAISS's SIMD kernels).
``hnsw`` / ``ivf`` (:data:`APPROXIMATE`)
    FAISS HNSW (flat storage by default) and ``IndexIVFScalarQuantizer`` over the same augmented
    vectors; they score a fraction of the catalog. HNSW indexes the MIPS -> L2 transform
    ``[x, bias, sqrt(M^2 - |[x, bias]|^2)]`` with ``METRIC_L2`` (``"transform": "mips_l2"``,
    ``"max_norm": M`` in ``hnsw.json``): a graph built with inner product (not a metric)
    recalled only ~0.8 of the exact top-10 on clustered catalogs, even after the re-rank.

Every variant but ``fp32`` re-ranks by default: it fetches
``max(k * rerank_factor, k + rerank_min)`` candidates with its own (approximate) scores, then
re-scores those rows exactly in float32 from the (memory-mapped) fp32 item matrix. That keeps
quantized variants at exact Recall@10 for a few dozen gathered rows per user.

Usage::

    info = build_index("sq8", items, bias, folder)          # once, at archive build time
    searcher = load_index("sq8", folder, items, bias)       # per worker; only the folder needed
    scores, idx = searcher.search(users, k=10)

Threads: :func:`load_index` sets FAISS's (process-global, OpenMP) thread count and ONNX
Runtime's per-session count; it never calls ``torch.set_num_threads`` -- the torch variants
(``fp32``, ``int8``, ``sq8`` and every re-rank) use whatever the caller configured.

FAISS, ONNX and safetensors are imported lazily: importing this module needs only torch.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from core.jsonio import write_json
from core.quantization import SQ8, sq8_encode, torch_ao_int8_weights, torch_ao_linear_from_int8

VARIANTS = ("fp32", "int8", "onnx_int8", "sq8", "faiss_sq8", "hnsw", "ivf")
APPROXIMATE = ("hnsw", "ivf")
FAISS_VARIANTS = ("faiss_sq8", "hnsw", "ivf")
FORMAT_VERSION = 1

# Parameters that only change how a built index is searched: load_index may override these.
SEARCH_PARAMS = ("rerank_factor", "rerank_min", "ef_search", "nprobe")


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown retrieval variant {variant!r}; expected one of {VARIANTS}")


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------

def _ivf_nlist(n_items: int) -> int:
    """~4 sqrt(n) lists, but at least 39 training points per centroid (FAISS's own minimum)."""
    return max(1, min(round(4 * math.sqrt(n_items)), n_items // 39))


def default_params(variant: str, n_items: int) -> dict:
    """Defaults for ``variant`` over ``n_items`` items (sized for 10k..1M items, d ~ 64).

    Re-rank (all but fp32): ``rerank_factor`` 4, ``rerank_min`` 32 -> 42 candidates for k=10.
    ``onnx_int8``: QInt8 weights, per-tensor scale (per-channel is supported but ran about 2x
    slower here, and the re-rank already restores exact recall), TopK inside the graph.
    ``hnsw``: M 32, efConstruction 100, efSearch 384, flat storage (SQ8 storage built ~3x slower,
    searched slower and recalled less at 100k x 64), ``transform`` ``"mips_l2"`` (an L2 graph
    over :func:`_mips_l2_items`; ``"ip"`` is the former inner-product graph) with items whose norm
    exceeds ``outlier_ratio`` x the 99th-percentile norm (at most ``max_outliers``) scored exactly
    on the side. At 100k x 256, one thread, k=10: the serving benchmark's catalog (256 clusters)
    recalled 0.963 with ``ip`` / efSearch 128 and 0.995 with ``mips_l2``; the microbenchmark's
    (64 clusters) 0.992 with ``ip`` but 0.968 / 0.987 / 0.992 with ``mips_l2`` at efSearch
    128 / 256 / 384 (p50 0.30 -> 0.62 ms for one user). The re-rank adds nothing to HNSW flat
    (its distances are already exact): recall comes from efSearch alone.
    ``ivf``: nlist ~ 4 sqrt(n), nprobe ~ nlist/16 (at least 8), k-means on up to 64 points per
    list, ``transform`` ``"ip"`` (``"mips_l2"`` recalled the same after re-rank, searched slower).
    """
    _check_variant(variant)
    n_items = int(n_items)
    if variant == "fp32":
        return {}
    p: dict[str, Any] = {"rerank_factor": 4, "rerank_min": 32}
    if variant == "int8":
        p["per_channel"] = True
    elif variant == "onnx_int8":
        p.update(weight_type="QInt8", per_channel=False, topk_in_graph=True)
    elif variant == "sq8":
        p["int_mm"] = True
    elif variant == "hnsw":
        p.update(M=32, ef_construction=100, ef_search=384, storage="flat", transform="mips_l2",
                 outlier_ratio=2.0, max_outliers=1024)
    elif variant == "ivf":
        nlist = _ivf_nlist(n_items)
        # probe ~1/16 of the lists, and at least ~5,000 items' worth (small catalogs: all of
        # them) -- at 5k items nlist/16 lists recalled only 93% of the exact top-10
        floor = -(-nlist * 5000 // max(n_items, 1))
        p.update(nlist=nlist, nprobe=min(nlist, max(8, nlist // 16, floor)), train_size=64 * nlist,
                 transform=_IVF_TRANSFORM, outlier_ratio=2.0, max_outliers=1024)
    return p


# ivf keeps inner product: mips_l2 recalled the same after re-rank (1.0 at 100k x 256) but
# searched ~15-20% slower
_IVF_TRANSFORM = "ip"
TRANSFORMS = ("ip", "mips_l2")


def _merge_params(variant: str, base: dict, override: dict | None,
                  allowed: tuple[str, ...] | None = None) -> dict:
    """``base`` updated with ``override``; unknown keys (or keys outside ``allowed``) are errors."""
    out = dict(base)
    for key, value in (override or {}).items():
        if key not in base or (allowed is not None and key not in allowed):
            raise ValueError(f"parameter {key!r} cannot be set for variant {variant!r} here; "
                             f"known: {sorted(base) if allowed is None else sorted(set(allowed) & set(base))}")
        out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# Checks and helpers
# --------------------------------------------------------------------------------------------

def _check_catalog(item_vectors: torch.Tensor, item_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 CPU views of the catalog; copies only when the dtype/layout forces it."""
    items = torch.as_tensor(item_vectors)
    bias = torch.as_tensor(item_bias)
    if items.dim() != 2 or items.shape[0] < 1 or items.shape[1] < 1:
        raise ValueError(f"item_vectors must be a non-empty [n_items, d] matrix, got {tuple(items.shape)}")
    if bias.dim() != 1 or bias.shape[0] != items.shape[0]:
        raise ValueError(f"item_bias must have shape [{items.shape[0]}], got {tuple(bias.shape)}")
    return (items.detach().to("cpu", torch.float32).contiguous(),
            bias.detach().to("cpu", torch.float32).contiguous())


def _faiss_dim(d: int, extra: int = 0) -> int:
    """``d + 1 (+ extra)`` rounded up to a multiple of 8: FAISS's SIMD scalar-quantizer kernels
    need ``dim % 8 == 0`` and fall back to scalar code otherwise (several times slower at
    d + 1 = 65)."""
    return (d + 1 + extra + 7) // 8 * 8


def _augmented(items: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``[x, bias, 0...]`` rows: with queries ``[u, 1, 0...]`` an inner product gives the full
    score; the zero padding (see :func:`_faiss_dim`) changes no score."""
    n, d = items.shape
    out = torch.zeros((n, _faiss_dim(d)), dtype=torch.float32)
    out[:, :d] = items
    out[:, d] = bias
    return out


def _norms2(items: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """float64 ``|[x, bias]|^2`` per row, in row blocks (no float64 copy of the catalog)."""
    n = items.shape[0]
    out = torch.empty(n, dtype=torch.float64)
    for s in range(0, n, 65536):
        out[s:s + 65536] = items[s:s + 65536].double().square().sum(1) + bias[s:s + 65536].double().square()
    return out


def _norm_outliers(norms2: torch.Tensor, ratio: float, cap: int) -> torch.Tensor:
    """Sorted ids of the rows whose norm exceeds ``ratio`` x the 99th-percentile norm (at most
    ``cap``, the largest). The ``mips_l2`` transform pads every row up to the largest norm ``M``:
    one item far above the rest makes every other row ~``M`` long and nearly equidistant from it
    (HNSW never links to it, fp32 distances lose the score digits), so these few rows are scored
    exactly on the side instead of being indexed."""
    n = norms2.shape[0]
    if ratio <= 0 or cap <= 0 or n < 2:
        return torch.empty(0, dtype=torch.int64)
    q99 = float(norms2.kthvalue(max(1, min(n, math.ceil(0.99 * n)))).values)
    ids = (norms2 > (ratio * ratio) * q99).nonzero().flatten()
    if ids.numel() > cap:
        ids = ids[torch.topk(norms2[ids], cap).indices]
    if ids.numel() >= n:  # keep at least one indexed row
        ids = ids[:-1]
    return ids.sort().values


def _mips_l2_items(items: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The MIPS -> L2 reduction (Bachrach et al. 2014, the "XBOX" transform) of ``a = [x, bias]``:
    rows ``[a, sqrt(M^2 - |a|^2), 0...]`` with ``M = max |a|``, so every row has norm ``M``.

    With queries ``q' = [u, 1, 0, 0...]`` (:func:`_augmented_queries`),
    ``|q' - a'|^2 = |q|^2 + M^2 - 2 q . a``: the L2 nearest neighbours are exactly the top
    scores, and a graph / k-means built with L2 (a metric) is sound, unlike one built with
    inner product. Returns ``(rows, M)``; norms are summed in float64 in row blocks.
    """
    n, d = items.shape
    out = torch.zeros((n, _faiss_dim(d, extra=1)), dtype=torch.float32)
    out[:, :d] = items
    out[:, d] = bias
    norms2 = _norms2(items, bias)
    max2 = float(norms2.max())
    out[:, d + 1] = (max2 - norms2).clamp_min_(0.0).sqrt_().float()
    return out, math.sqrt(max2)


def _augmented_queries(users: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """``[u, 1, 0...]`` of ``width`` columns (default :func:`_faiss_dim`): the same rows serve
    inner-product indexes and ``mips_l2`` ones (whose extra item coordinate meets a 0)."""
    b, d = users.shape
    out = torch.zeros((b, _faiss_dim(d) if width is None else int(width)), dtype=torch.float32)
    out[:, :d] = users
    out[:, d] = 1.0
    return out


# --------------------------------------------------------------------------------------------
# Searchers
# --------------------------------------------------------------------------------------------

class Searcher:
    """Top-k over one catalog with one variant. Subclasses implement :meth:`_topk` (the
    variant's own scores, indices ``-1`` where it found fewer candidates) and, where the variant
    computes every score, :meth:`full_scores`.

    ``item_vectors``/``item_bias`` are kept as given (possibly memory-mapped, read-only): the
    re-rank gathers the candidate rows only.
    """

    exact: bool = True

    def __init__(self, variant: str, item_vectors: torch.Tensor, item_bias: torch.Tensor, params: dict):
        self.variant = variant
        self.items, self.bias = item_vectors, item_bias
        self.n_items, self.dim = (int(s) for s in item_vectors.shape)
        self.params = params
        self.exact = variant not in APPROXIMATE

    def _topk(self, users: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def full_scores(self, users: torch.Tensor) -> torch.Tensor | None:
        """The variant's own scores ``[b, n_items]`` where it computes them all, else None."""
        return None

    def nbytes_private(self) -> int:
        """Estimated bytes held privately by this process (not shared through the page cache)."""
        return 0

    def n_candidates(self, k: int) -> int:
        """How many candidates the variant fetches for ``k`` results (``k`` when re-rank is off)."""
        factor = int(self.params.get("rerank_factor", 0))
        if factor <= 0:
            return k
        return min(self.n_items, max(k * factor, k + int(self.params.get("rerank_min", 0))))

    def _users(self, users: torch.Tensor) -> torch.Tensor:
        u = torch.as_tensor(users).detach().to("cpu", torch.float32)
        if u.dim() != 2 or u.shape[1] != self.dim:
            raise ValueError(f"users must have shape [b, {self.dim}], got {tuple(u.shape)}")
        return u.contiguous()

    def search(self, users: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores float32 [b, k'], indices int64 [b, k'])``, best first, ``k' = min(k, n_items)``.

        Scores are exact fp32 scores when re-rank is on (the variant's own otherwise). An
        approximate index that finds fewer than ``k'`` items pads with index ``-1``, score -inf.
        """
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        u = self._users(users)
        kk = min(int(k), self.n_items)
        if u.shape[0] == 0:
            return torch.empty((0, kk), dtype=torch.float32), torch.empty((0, kk), dtype=torch.int64)
        with torch.inference_mode():
            c = self.n_candidates(kk)
            scores, idx = self._topk(u, c)
            if c == kk and self.params.get("rerank_factor", 0) <= 0:
                return scores, idx
            return self._rerank(u, idx, kk)

    def exact_scores(self, users: torch.Tensor) -> torch.Tensor:
        """Exact fp32 scores ``[b, n_items]`` of every item (the reference every variant is
        checked against; rows with category filters are served from it)."""
        return torch.addmm(self.bias, users.to(torch.float32), self.items.T)

    def exact_rows(self, users: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """Exact fp32 scores ``[b, c]`` of the items ``cand`` (``[b, c]``, index -1 = padding,
        scored -inf), gathered: never the whole matrix."""
        b, c = cand.shape
        valid = cand >= 0
        safe = cand.clamp_min(0)
        rows = self.items.index_select(0, safe.reshape(-1)).view(b, c, self.dim)
        # multiply + sum per row, not bmm: the same reduction for a row whatever the batch, so a
        # request gets bit-identical scores alone or inside a TorchServe batch
        exact = (rows * users.to(torch.float32).unsqueeze(1)).sum(2)
        exact.add_(self.bias.index_select(0, safe.reshape(-1)).view(b, c))
        return exact.masked_fill_(~valid, float("-inf"))

    def _rerank(self, users: torch.Tensor, cand: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact fp32 scores of the candidate rows -> top k."""
        top = torch.topk(self.exact_rows(users, cand), min(k, cand.shape[1]), dim=1, sorted=True)
        return top.values, cand.gather(1, top.indices)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(variant={self.variant!r}, n_items={self.n_items}, dim={self.dim})"


class _ScanSearcher(Searcher):
    """Variants that compute every score (a dense ``[b, n_items]`` matrix) + ``torch.topk``."""

    def _scores(self, users: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def full_scores(self, users: torch.Tensor) -> torch.Tensor | None:
        u = self._users(users)
        with torch.inference_mode():
            if u.shape[0] == 0:
                return torch.empty((0, self.n_items), dtype=torch.float32)
            return self._scores(u)

    def _topk(self, users: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.topk(self._scores(users), k, dim=1, sorted=True)


class _Fp32Searcher(_ScanSearcher):
    """The exact reference; holds nothing of its own (the caller's tensors are used as is)."""

    def _scores(self, users: torch.Tensor) -> torch.Tensor:
        return self.exact_scores(users)


class _Int8Searcher(_ScanSearcher):
    """torch.ao dynamic INT8 Linear; fbgemm packs the int8 weight into a private buffer."""

    def __init__(self, variant: str, items: torch.Tensor, bias: torch.Tensor, params: dict, folder: Path):
        super().__init__(variant, items, bias, params)
        state, _mm = _load_safetensors(folder / "int8.safetensors")
        self._linear = torch_ao_linear_from_int8(state["weight_int8"], state["weight_scale"],
                                                  state["weight_zero_point"], bias.clone())
        self._per_row = state["weight_scale"].numel() > 1

    def _scores(self, users: torch.Tensor) -> torch.Tensor:
        return self._linear(users).to(torch.float32)

    def nbytes_private(self) -> int:
        # packed int8 weight + per-row scale/zero point (+ the bias copy the packed op keeps)
        return self.n_items * (self.dim + (16 if self._per_row else 0) + 4)


class _Sq8Searcher(_ScanSearcher):
    """:class:`SQ8` over codes memory-mapped from ``sq8.safetensors`` (shared page cache)."""

    def __init__(self, variant: str, items: torch.Tensor, bias: torch.Tensor, params: dict, folder: Path):
        super().__init__(variant, items, bias, params)
        state, self._mm = _load_safetensors(folder / "sq8.safetensors")
        self.sq8 = SQ8(state["codes"], state["vmin"], state["scale"], bias,
                       use_int_mm=None if params.get("int_mm", True) else False)

    def _scores(self, users: torch.Tensor) -> torch.Tensor:
        return self.sq8.score(users)

    def nbytes_private(self) -> int:
        return 0  # codes are a shared map; vmin/scale/offset are 3 * d floats


class _OnnxSearcher(_ScanSearcher):
    """ONNX Runtime session over the dynamically quantized graph (private copy of the weights)."""

    def __init__(self, variant: str, items: torch.Tensor, bias: torch.Tensor, params: dict,
                 folder: Path, threads: int):
        super().__init__(variant, items, bias, params)
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        path = folder / "onnx_int8.onnx"
        self._session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self._topk_in_graph = bool(params.get("topk_in_graph", True))
        self._file_bytes = path.stat().st_size

    def _run(self, outputs: list[str], users: torch.Tensor, k: int) -> list:
        import numpy as np

        return self._session.run(outputs, {"users": users.numpy(), "k": np.array([k], dtype=np.int64)})

    def _scores(self, users: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run(["scores"], users, 1)[0])

    def _topk(self, users: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._topk_in_graph:
            return super()._topk(users, k)
        vals, idx = self._run(["top_scores", "top_indices"], users, k)
        return torch.from_numpy(vals), torch.from_numpy(idx)

    def nbytes_private(self) -> int:
        return self._file_bytes  # ORT reads the model (int8 weights + bias) into its own memory


class _FaissSearcher(Searcher):
    """FAISS index over ``[x, bias]`` rows searched with ``[u, 1]`` (inner product), or over
    their ``mips_l2`` transform (:func:`_mips_l2_items`; L2 distances turned back into scores
    with the recorded ``max_norm``)."""

    def __init__(self, variant: str, items: torch.Tensor, bias: torch.Tensor, params: dict,
                 folder: Path, threads: int):
        super().__init__(variant, items, bias, params)
        import faiss

        faiss.omp_set_num_threads(max(1, int(threads)))
        path = folder / f"{variant}.faiss"
        self._index, self.mmapped = _read_faiss(path)
        self._file_bytes = path.stat().st_size
        self._l2 = self._index.metric_type == faiss.METRIC_L2
        self._max_norm2 = float(params.get("max_norm", 0.0)) ** 2
        if self._l2 and "max_norm" not in params:
            raise ValueError(f"{path} is an L2 index but {variant}.json records no max_norm")
        self._outliers = self._kept = None
        if int(params.get("n_outliers", 0)) > 0:
            state, _mm = _load_safetensors(folder / f"{variant}.outliers.safetensors")
            self._outliers = state["ids"].clone()
            keep = torch.ones(self.n_items, dtype=torch.bool)
            keep[self._outliers] = False
            self._kept = keep.nonzero().flatten()  # faiss row -> catalog id
        if variant == "hnsw":
            self._index.hnsw.efSearch = int(params["ef_search"])
        elif variant == "ivf":
            self._index.nprobe = int(params["nprobe"])

    def _topk(self, users: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = _augmented_queries(users, self._index.d)
        kf = k if self._kept is None else min(k, int(self._kept.shape[0]))
        dist, idx = self._index.search(q.numpy(), kf)
        scores = torch.from_numpy(dist)
        idx = torch.from_numpy(idx)
        if self._l2:
            # |q - a'|^2 = |q|^2 + M^2 - 2 q.a  ->  q.a (approximate: fp32 distances)
            qn = q.square().sum(1, keepdim=True)
            scores = (qn + self._max_norm2 - scores).mul_(0.5)
        scores.masked_fill_(idx < 0, float("-inf"))
        if self._kept is not None:
            idx = torch.where(idx >= 0, self._kept[idx.clamp_min(0)], idx)
            # the norm outliers, scored exactly (multiply + sum per row: batch-independent)
            rows = self.items.index_select(0, self._outliers)
            extra = (users.unsqueeze(1) * rows.unsqueeze(0)).sum(2)
            extra.add_(self.bias.index_select(0, self._outliers))
            top = torch.topk(torch.cat([scores, extra], 1), k, dim=1, sorted=True)
            idx = torch.cat([idx, self._outliers.expand(idx.shape[0], -1)], 1).gather(1, top.indices)
            scores = top.values
        return scores, idx

    def nbytes_private(self) -> int:
        return 0 if self.mmapped else self._file_bytes


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], object]:
    """Zero-copy tensors over a copy-on-write map of ``path`` (shared between processes until
    written; nothing here writes). Returns the tensors and the map to keep alive."""
    from core.artifact import mmap_safetensors

    return mmap_safetensors(path)


def _read_faiss(path: Path) -> tuple[Any, bool]:
    """Read a FAISS index memory-mapped where FAISS can (``IO_FLAG_MMAP_IFC``: the codes stay in
    the file mapping), else into memory. Returns ``(index, mapped)``."""
    import faiss

    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY), True
    except RuntimeError:
        return faiss.read_index(str(path)), False


# --------------------------------------------------------------------------------------------
# Builders: one per variant, each writes f"{variant}.*" files into the folder
# --------------------------------------------------------------------------------------------

def _build_fp32(items: torch.Tensor, bias: torch.Tensor, folder: Path, params: dict,
                threads: int) -> list[Path]:
    """fp32 scores the caller's matrix directly: only the json is written."""
    return []


def _build_int8(items: torch.Tensor, bias: torch.Tensor, folder: Path, params: dict,
                threads: int) -> list[Path]:
    from safetensors.torch import save_file

    path = folder / "int8.safetensors"
    save_file(torch_ao_int8_weights(items, bool(params["per_channel"])), str(path))
    return [path]


def _build_sq8(items: torch.Tensor, bias: torch.Tensor, folder: Path, params: dict,
               threads: int) -> list[Path]:
    from safetensors.torch import save_file

    codes, vmin, scale = sq8_encode(items)
    codes_s8 = (codes ^ 0x80).view(torch.int8).contiguous()
    del codes
    path = folder / "sq8.safetensors"
    save_file({"codes": codes_s8, "vmin": vmin.contiguous(), "scale": scale.contiguous()}, str(path),
              metadata={"format": "sq8-per-dimension", "codes": "int8 = uint8 code - 128"})
    return [path]


def _build_onnx_int8(items: torch.Tensor, bias: torch.Tensor, folder: Path, params: dict,
                     threads: int) -> list[Path]:
    """``scores = MatMul(users[b, d], W[d, n]) + bias`` (+ ``TopK(scores, k)``), then
    ``quantize_dynamic`` (int8 weights, activations quantized per call)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    n, d = items.shape
    nodes = [helper.make_node("MatMul", ["users", "W"], ["mm"]),
             helper.make_node("Add", ["mm", "bias"], ["scores"]),
             helper.make_node("TopK", ["scores", "k"], ["top_scores", "top_indices"],
                              axis=1, largest=1, sorted=1)]
    graph = helper.make_graph(
        nodes, "catalog_scores",
        [helper.make_tensor_value_info("users", TensorProto.FLOAT, ["b", d]),
         helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["b", n]),
         helper.make_tensor_value_info("top_scores", TensorProto.FLOAT, ["b", "k_out"]),
         helper.make_tensor_value_info("top_indices", TensorProto.INT64, ["b", "k_out"])],
        [numpy_helper.from_array(items.numpy().T.copy(), "W"),
         numpy_helper.from_array(bias.numpy().copy(), "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    fp32_path = folder / "onnx_int8.fp32.tmp.onnx"
    out = folder / "onnx_int8.onnx"
    onnx.save(model, str(fp32_path))
    try:
        import logging

        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_dynamic logs a "run pre-processing" hint
        try:
            quantize_dynamic(str(fp32_path), str(out), weight_type=getattr(QuantType, params["weight_type"]),
                             per_channel=bool(params["per_channel"]), op_types_to_quantize=["MatMul"])
        finally:
            root.setLevel(level)
    finally:
        fp32_path.unlink(missing_ok=True)
    return [out]


def _build_faiss(variant: str) -> Callable[..., list[Path]]:
    def build(items: torch.Tensor, bias: torch.Tensor, folder: Path, params: dict, threads: int) -> list[Path]:
        import faiss

        faiss.omp_set_num_threads(max(1, int(threads)))
        transform = params.get("transform", "ip")
        if transform not in TRANSFORMS:
            raise ValueError(f"{variant} transform must be one of {TRANSFORMS}, got {transform!r}")
        paths = []
        if transform == "mips_l2":
            out_ids = _norm_outliers(_norms2(items, bias), float(params["outlier_ratio"]),
                                     int(params["max_outliers"]))
            if out_ids.numel():
                from safetensors.torch import save_file

                keep = torch.ones(items.shape[0], dtype=torch.bool)
                keep[out_ids] = False
                items, bias = items[keep], bias[keep]
                paths.append(folder / f"{variant}.outliers.safetensors")
                save_file({"ids": out_ids.contiguous()}, str(paths[-1]),
                          metadata={"format": "ids scored exactly, not in the faiss index"})
            xt, max_norm = _mips_l2_items(items, bias)
            x = xt.numpy()
            # recorded in the json: the searcher needs them
            params["max_norm"], params["n_outliers"] = max_norm, int(out_ids.numel())
            metric = faiss.METRIC_L2
        else:
            x = _augmented(items, bias).numpy()
            metric = faiss.METRIC_INNER_PRODUCT
        n, d1 = x.shape
        ip = faiss.METRIC_INNER_PRODUCT
        if variant == "faiss_sq8":
            index = faiss.IndexScalarQuantizer(d1, faiss.ScalarQuantizer.QT_8bit, ip)
            index.train(x)  # min/max per dimension: cheap, so on every row
        elif variant == "hnsw":
            if params["storage"] == "flat":
                index = faiss.IndexHNSWFlat(d1, int(params["M"]), metric)
            elif params["storage"] == "sq8":
                index = faiss.IndexHNSWSQ(d1, faiss.ScalarQuantizer.QT_8bit, int(params["M"]), metric)
                index.train(x)
            else:
                raise ValueError(f"hnsw storage must be 'flat' or 'sq8', got {params['storage']!r}")
            index.hnsw.efConstruction = int(params["ef_construction"])
        else:
            nlist = max(1, min(int(params["nlist"]), n))
            # mips_l2 (not the default, see default_params): k-means, list choice and scan all L2
            # over the transformed rows. (An L2 quantizer with an IP scan is no option: the IP
            # scanner adds the coarse distance -- here an L2 one -- to residual scores.)
            quantizer = faiss.IndexFlatL2(d1) if transform == "mips_l2" else faiss.IndexFlatIP(d1)
            index = faiss.IndexIVFScalarQuantizer(quantizer, d1, nlist, faiss.ScalarQuantizer.QT_8bit, metric)
            m = min(n, max(int(params["train_size"]), nlist))
            sample = x if m == n else x[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:m].numpy()]
            index.cp.min_points_per_centroid = 1  # tiny catalogs: no warning, nlist already clamped
            index.train(sample)
        index.add(x)
        path = folder / f"{variant}.faiss"
        faiss.write_index(index, str(path))
        return [path, *paths]

    return build


_BUILDERS: dict[str, Callable[..., list[Path]]] = {
    "fp32": _build_fp32, "int8": _build_int8, "onnx_int8": _build_onnx_int8, "sq8": _build_sq8,
    "faiss_sq8": _build_faiss("faiss_sq8"), "hnsw": _build_faiss("hnsw"), "ivf": _build_faiss("ivf"),
}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def build_index(variant: str, item_vectors: torch.Tensor, item_bias: torch.Tensor, dest_dir: Path,
                params: dict | None = None, threads: int = 2) -> dict:
    """Build ``variant``'s files into ``dest_dir`` (all named ``f"{variant}.*"``, including
    ``f"{variant}.json"`` with the parameters, so :func:`load_index` needs only the folder).

    Returns ``{"variant", "params", "files": {name: bytes}, "build_s"}``.
    """
    _check_variant(variant)
    items, bias = _check_catalog(item_vectors, item_bias)
    n, d = items.shape
    p = _merge_params(variant, default_params(variant, n), params)
    folder = Path(dest_dir)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    paths = _BUILDERS[variant](items, bias, folder, p, threads)
    build_s = time.perf_counter() - t0
    meta = folder / f"{variant}.json"
    write_json(meta, {"variant": variant, "params": p, "n_items": n, "dim": d,
                      "format_version": FORMAT_VERSION, "build_s": build_s}, sort_keys=True)
    files = {q.name: q.stat().st_size for q in [*paths, meta]}
    return {"variant": variant, "params": p, "files": files, "build_s": build_s}


def load_index(variant: str, dest_dir: Path, item_vectors: torch.Tensor, item_bias: torch.Tensor,
               threads: int = 1, params: dict | None = None) -> Searcher:
    """A :class:`Searcher` over the files :func:`build_index` wrote into ``dest_dir``.

    ``item_vectors``/``item_bias`` are the fp32 catalog (possibly read-only memory maps): used
    as is by fp32 and by the re-rank, never written or copied. ``params`` may override the
    search-time parameters (:data:`SEARCH_PARAMS`) only. ``threads`` sets FAISS's global OpenMP
    thread count (FAISS variants) or the ORT session's intra-op threads (onnx_int8); torch's
    thread count is the caller's.
    """
    _check_variant(variant)
    folder = Path(dest_dir)
    meta_path = folder / f"{variant}.json"
    items, bias = _check_catalog(item_vectors, item_bias)
    n, d = items.shape
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION or meta.get("variant") != variant:
            raise ValueError(f"{meta_path} is not a version-{FORMAT_VERSION} {variant!r} index")
        if (meta["n_items"], meta["dim"]) != (n, d):
            raise ValueError(f"{meta_path} was built for {meta['n_items']} x {meta['dim']} items, "
                             f"got {n} x {d}")
        stored = meta["params"]
    elif variant == "fp32":
        stored = default_params("fp32", n)  # fp32 needs no files
    else:
        raise FileNotFoundError(f"no {variant!r} index in {folder} (missing {meta_path.name})")
    p = _merge_params(variant, stored, params, allowed=SEARCH_PARAMS)
    if variant == "fp32":
        return _Fp32Searcher(variant, items, bias, p)
    if variant == "int8":
        return _Int8Searcher(variant, items, bias, p, folder)
    if variant == "sq8":
        return _Sq8Searcher(variant, items, bias, p, folder)
    if variant == "onnx_int8":
        return _OnnxSearcher(variant, items, bias, p, folder, threads)
    return _FaissSearcher(variant, items, bias, p, folder, threads)


def recall_at_k(exact_idx: torch.Tensor, approx_idx: torch.Tensor, k: int = 10) -> float:
    """Mean over rows of ``|top-k(approx) & top-k(exact)| / k`` (1.0 for an empty batch)."""
    a = torch.as_tensor(exact_idx)[:, :k]
    b = torch.as_tensor(approx_idx)[:, :k]
    if a.shape[0] == 0:
        return 1.0
    kk = a.shape[1]
    hits = (a.unsqueeze(2) == b.unsqueeze(1)) & (b.unsqueeze(1) >= 0)
    return float(hits.any(dim=2).sum(dim=1).double().mean() / kk)


__all__ = ["VARIANTS", "APPROXIMATE", "SEARCH_PARAMS", "Searcher", "default_params",
           "build_index", "load_index", "recall_at_k"]
