"""INT8 serving path: module quantization and quantized catalog scoring, behind one small API.

Imports only ``torch``, the standard library and :mod:`common.retrieval` (which holds the one
implementation of the torch.ao INT8 helpers and of sq8; the archive builder ships both files by
import closure): the TorchServe handler builds a scorer from plain tensors read from the
serving artifact, with no training code and no pickling.

* :func:`quantize_module` -- dynamic INT8 quantization of a module's ``nn.Linear`` layers (the
  user tower). One function so the backend can change (NOTES.md: ``torch.ao`` is deprecated but
  its successor ran slower on our CPUs).
* :func:`make_scorer` -- scores user vectors ``[b, d]`` against the item matrix ``[n_items, d]``
  (plus an optional per-item bias) with one of three backends:

  ``fp32``
      ``q @ W.T + b`` in float32; the reference.
  ``torch_ao``
      a dynamically quantized ``Linear(d, n_items)`` whose weight is the item matrix (INT8
      weights with one scale per item, INT8 activations quantized per call, fbgemm kernels).
  ``sq8``
      per-dimension 8-bit scalar quantization of the item matrix, like FAISS
      ``IndexScalarQuantizer(QT_8bit)``: ``x[i, j] ~= vmin[j] + scale[j] * codes[i, j]`` with
      uint8 ``codes``. Scoring folds the per-dimension scale into the query,
      ``q . x_i = (q * scale) . codes_i + q . vmin``, so the catalog is read as 8-bit codes once
      per call: an int8 x int8 -> int32 matrix product (``torch._int_mm``, the query quantized
      per row to int8) or, where that kernel is unavailable or fails a self-check, an exact
      float product over dequantized chunks.

  Which INT8 backend: ``sq8`` is the fastest for one user per call (the serving path) and holds
  the smallest catalog; ``torch_ao``'s blocked fbgemm GEMM wins from ~16 users per call
  (offline scoring, large TorchServe batches). Measure with ``python -m training.quantize``.

* :func:`quantization_report` -- how far quantized scores are from the fp32 ones (top-k
  overlap, absolute error).

Scores are always float32 ``[b, n_items]``; higher is better.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from common.retrieval import (SQ8, _torch_ao_linear_from_int8, _torch_ao_quantize_dynamic,
                              sq8_decode, sq8_encode)

BACKENDS = ("fp32", "torch_ao", "sq8")
INT8_BACKENDS = ("torch_ao", "sq8")
MODULE_BACKENDS = ("torch_ao",)


# --------------------------------------------------------------------------------------------
# Module quantization (the user tower)
# --------------------------------------------------------------------------------------------

def quantize_module(module: nn.Module, backend: str = "torch_ao", *,
                    per_channel: bool = True) -> nn.Module:
    """A dynamically INT8-quantized copy of ``module`` for CPU inference (``module`` is untouched).

    Every ``nn.Linear`` (including ``module`` itself when it is one) becomes a dynamic
    quantized linear: qint8 weights (one scale per output row when ``per_channel``, else one
    per tensor), activations quantized on the fly per call. Other layers stay float. The copy
    is in eval mode.

    Args:
        module: a float module (e.g. the user tower).
        backend: ``"torch_ao"`` (``torch.ao.quantization.quantize_dynamic``); the one place to
            add another backend later.
        per_channel: per-output-row weight scales (more accurate, same speed on fbgemm).
    """
    if backend not in MODULE_BACKENDS:
        raise ValueError(f"unknown quantization backend {backend!r}; expected one of {MODULE_BACKENDS}")
    if isinstance(module, nn.Linear):
        # quantize_dynamic swaps children only: wrap a bare Linear so it is converted too.
        return _torch_ao_quantize_dynamic(nn.Sequential(module), per_channel)[0]
    return _torch_ao_quantize_dynamic(module, per_channel)


# --------------------------------------------------------------------------------------------
# Catalog scorers
# --------------------------------------------------------------------------------------------

def _as_float_matrix(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if t.is_complex():
        raise ValueError(f"{name} must be real-valued, got {t.dtype}")
    return t.detach().to("cpu", torch.float32).contiguous()


def _check_catalog(item_matrix: Any, bias: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    items = _as_float_matrix(item_matrix, "item_matrix")
    if items.shape[0] < 1 or items.shape[1] < 1:
        raise ValueError(f"item_matrix must be non-empty, got shape {tuple(items.shape)}")
    if not torch.isfinite(items).all():
        raise ValueError("item_matrix contains NaN or infinite values")
    b = None
    if bias is not None:
        b = torch.as_tensor(bias).detach().to("cpu", torch.float32).reshape(-1).contiguous()
        if b.shape[0] != items.shape[0]:
            raise ValueError(f"bias has {b.shape[0]} entries for {items.shape[0]} items")
        if not torch.isfinite(b).all():
            raise ValueError("bias contains NaN or infinite values")
    return items, b


class Scorer:
    """Scores user vectors against a fixed catalog. Subclasses implement :meth:`_score`."""

    backend: str = ""
    n_items: int
    dim: int

    def _score(self, users: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _users(self, user_vectors: Any) -> torch.Tensor:
        u = torch.as_tensor(user_vectors).detach().to("cpu", torch.float32)
        if u.dim() == 1:
            u = u.unsqueeze(0)
        if u.dim() != 2 or u.shape[1] != self.dim:
            raise ValueError(f"user_vectors must have shape [b, {self.dim}], got {tuple(u.shape)}")
        return u.contiguous()

    def score(self, user_vectors: Any) -> torch.Tensor:
        """float32 scores ``[b, n_items]`` for user vectors ``[b, d]`` (a 1-D vector is one user)."""
        u = self._users(user_vectors)
        with torch.inference_mode():
            if u.shape[0] == 0:
                return torch.empty((0, self.n_items), dtype=torch.float32)
            return self._score(u)

    def topk(self, user_vectors: Any, k: int,
             exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, item indices) of the ``k`` best items per user, best first.

        ``exclude``: optional bool mask ``[b, n_items]`` (or ``[n_items]``) of items never to
        return (e.g. the user's history); excluded items are dropped from the result, so rows
        with fewer than ``k`` allowed items come back padded with ``-inf`` scores.
        """
        scores = self.score(user_vectors)
        if exclude is not None:
            scores = scores.masked_fill(torch.as_tensor(exclude, dtype=torch.bool), float("-inf"))
        return torch.topk(scores, min(int(k), self.n_items), dim=1, sorted=True)

    def nbytes(self) -> int:
        """Bytes of catalog data this scorer holds (what each serving worker keeps in memory)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def state_dict(self) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r}, n_items={self.n_items}, dim={self.dim})"


class Fp32Scorer(Scorer):
    """Reference float32 scoring: ``users @ item_matrix.T + bias``."""

    backend = "fp32"

    def __init__(self, item_matrix: Any, bias: Any = None):
        self.items, self.bias = _check_catalog(item_matrix, bias)
        self.n_items, self.dim = self.items.shape

    def _score(self, users: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return users @ self.items.T
        return torch.addmm(self.bias, users, self.items.T)

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {"item_matrix": self.items}
        if self.bias is not None:
            out["bias"] = self.bias
        return out


class Int8Scorer(Scorer):
    """INT8 catalog scoring with backend ``"torch_ao"`` or ``"sq8"`` (see the module docstring).

    Build from the float item matrix ``[n_items, d]`` (+ optional ``bias [n_items]``).
    :meth:`state_dict` returns plain 8-bit tensors (safetensors-friendly, about a quarter of the
    fp32 matrix) that rebuild the identical scorer with :meth:`from_state_dict`:
    ``sq8``: ``codes`` uint8 [n, d], ``vmin``/``scale`` [d]; ``torch_ao``: ``weight_int8`` int8
    [n, d], ``weight_scale``/``weight_zero_point`` [n] (or [1] per tensor); plus ``bias`` [n].
    ``from_state_dict`` also accepts ``{"item_matrix", "bias"}`` (quantizes at load).

    Args:
        use_int_mm: ``sq8`` only; None = use ``torch._int_mm`` when it passes a self-check,
            False = always the exact float path over dequantized chunks.
        chunk: ``sq8`` float path: items dequantized per block.
        per_channel: ``torch_ao`` only; one weight scale per item (default) or per tensor.
    """

    def __init__(self, item_matrix: Any, bias: Any = None, backend: str = "sq8", *,
                 use_int_mm: bool | None = None, chunk: int = 8192, per_channel: bool = True):
        if backend not in INT8_BACKENDS:
            raise ValueError(f"unknown INT8 backend {backend!r}; expected one of {INT8_BACKENDS}")
        items, b = _check_catalog(item_matrix, bias)
        self.backend = backend
        self.n_items, self.dim = items.shape
        self.bias = b
        self._sq8: SQ8 | None = None
        self._linear: nn.Module | None = None
        if backend == "sq8":
            codes, vmin, scale = sq8_encode(items)
            self._sq8 = SQ8.from_codes(codes, vmin, scale, b, use_int_mm=use_int_mm, chunk=chunk)
        else:
            lin = nn.Linear(self.dim, self.n_items, bias=b is not None)
            with torch.no_grad():
                lin.weight.copy_(items)
                if b is not None:
                    lin.bias.copy_(b)
            self._linear = quantize_module(lin, "torch_ao", per_channel=per_channel)
            del lin, items  # only the packed INT8 weights stay in memory

    @classmethod
    def from_sq8(cls, codes: torch.Tensor, vmin: torch.Tensor, scale: torch.Tensor,
                 bias: torch.Tensor | None = None, *, use_int_mm: bool | None = None,
                 chunk: int = 8192) -> "Int8Scorer":
        """An ``sq8`` scorer from stored codes (uint8 ``[n, d]``), ``vmin`` and ``scale`` (``[d]``)."""
        codes = torch.as_tensor(codes)
        if codes.dtype != torch.uint8 or codes.dim() != 2 or codes.shape[0] < 1 or codes.shape[1] < 1:
            raise ValueError(f"codes must be a non-empty uint8 [n, d] tensor, got {codes.dtype} "
                             f"{tuple(codes.shape)}")
        n, d = codes.shape
        vmin = torch.as_tensor(vmin).to(torch.float32).reshape(-1).contiguous()
        scale = torch.as_tensor(scale).to(torch.float32).reshape(-1).contiguous()
        if vmin.shape[0] != d or scale.shape[0] != d:
            raise ValueError(f"vmin/scale must have {d} entries, got {vmin.shape[0]}/{scale.shape[0]}")
        if (scale < 0).any() or not (torch.isfinite(vmin).all() and torch.isfinite(scale).all()):
            raise ValueError("vmin/scale must be finite and scale non-negative")
        if bias is not None:
            bias = torch.as_tensor(bias).to(torch.float32).reshape(-1).contiguous()
            if bias.shape[0] != n:
                raise ValueError(f"bias has {bias.shape[0]} entries for {n} items")
        self = cls.__new__(cls)
        self.backend = "sq8"
        self.n_items, self.dim = n, d
        self.bias = bias
        self._linear = None
        self._sq8 = SQ8.from_codes(codes.contiguous(), vmin, scale, bias, use_int_mm=use_int_mm,
                                     chunk=chunk)
        return self

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], backend: str, **kwargs: Any) -> "Int8Scorer":
        """Rebuild from :meth:`state_dict` output (e.g. loaded with ``safetensors.torch.load_file``)."""
        if backend == "sq8":
            return cls.from_sq8(state["codes"], state["vmin"], state["scale"], state.get("bias"), **kwargs)
        if backend == "torch_ao" and "weight_int8" in state:
            return cls.from_torch_ao_int8(state["weight_int8"], state["weight_scale"],
                                          state["weight_zero_point"], state.get("bias"))
        return cls(state["item_matrix"], state.get("bias"), backend, **kwargs)

    @classmethod
    def from_torch_ao_int8(cls, weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                           bias: torch.Tensor | None = None) -> "Int8Scorer":
        """A ``torch_ao`` scorer rebuilt exactly from int8 weights ``[n, d]`` and their per-row
        (``[n]``) or per-tensor (``[1]``) scale and zero point."""
        weight = torch.as_tensor(weight)
        if weight.dtype != torch.int8 or weight.dim() != 2 or weight.shape[0] < 1 or weight.shape[1] < 1:
            raise ValueError(f"weight must be a non-empty int8 [n, d] tensor, got {weight.dtype} "
                             f"{tuple(weight.shape)}")
        n, d = weight.shape
        scale = torch.as_tensor(scale).reshape(-1)
        zero_point = torch.as_tensor(zero_point).reshape(-1)
        if scale.numel() not in (1, n) or zero_point.numel() != scale.numel():
            raise ValueError(f"weight_scale/zero_point must have 1 or {n} entries, got "
                             f"{scale.numel()}/{zero_point.numel()}")
        if bias is not None:
            bias = torch.as_tensor(bias).to(torch.float32).reshape(-1).contiguous()
            if bias.shape[0] != n:
                raise ValueError(f"bias has {bias.shape[0]} entries for {n} items")
        self = cls.__new__(cls)
        self.backend = "torch_ao"
        self.n_items, self.dim = n, d
        self.bias = bias
        self._sq8 = None
        self._linear = _torch_ao_linear_from_int8(weight.contiguous(), scale, zero_point, bias)
        return self

    @property
    def uses_int_mm(self) -> bool:
        return bool(self._sq8 is not None and self._sq8.use_int_mm)

    def _score(self, users: torch.Tensor) -> torch.Tensor:
        if self._sq8 is not None:
            return self._sq8.score(users)
        assert self._linear is not None
        return self._linear(users).to(torch.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self._sq8 is not None:
            out = {"codes": self._sq8.codes(), "vmin": self._sq8.vmin, "scale": self._sq8.scale}
        else:
            # The packed fbgemm weights are not portable; their int8 values and scales are.
            assert self._linear is not None
            w = self._linear.weight()
            if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                scale, zp = w.q_per_channel_scales(), w.q_per_channel_zero_points()
            else:
                scale = torch.tensor([w.q_scale()], dtype=torch.float64)
                zp = torch.tensor([w.q_zero_point()], dtype=torch.int64)
            out = {"weight_int8": w.int_repr().contiguous(),
                   "weight_scale": scale.to(torch.float64).contiguous(),
                   "weight_zero_point": zp.to(torch.int64).contiguous()}
        if self.bias is not None:
            out["bias"] = self.bias
        return out

    def nbytes(self) -> int:
        if self._sq8 is not None:  # what scoring holds: int8 codes + per-dim vectors + bias
            return self._sq8.nbytes()
        assert self._linear is not None  # torch_ao: int8 weights + per-item scale/zero point
        w = self._linear.weight()
        per_row = 16 if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric) else 0
        return w.numel() + self.n_items * per_row + (4 * self.n_items if self.bias is not None else 0)


def make_scorer(item_matrix: Any, bias: Any = None, backend: str = "fp32", **kwargs: Any) -> Scorer:
    """A scorer over ``item_matrix [n_items, d]`` (+ ``bias [n_items]``): ``fp32 | torch_ao | sq8``."""
    if backend == "fp32":
        if kwargs:
            raise TypeError(f"fp32 scorer takes no options, got {sorted(kwargs)}")
        return Fp32Scorer(item_matrix, bias)
    if backend in INT8_BACKENDS:
        return Int8Scorer(item_matrix, bias, backend, **kwargs)
    raise ValueError(f"unknown scoring backend {backend!r}; expected one of {BACKENDS}")


# --------------------------------------------------------------------------------------------
# Quality of the quantized scores
# --------------------------------------------------------------------------------------------

def quantization_report(fp32_scores: Any, int8_scores: Any, k: int = 10) -> dict[str, float]:
    """How close quantized scores are to the float ones, per user row.

    Returns ``{"k", "rows", "mean_topk_overlap", "min_topk_overlap", "max_abs_error",
    "mean_abs_error", "score_range"}``: overlap = |top-k(fp32) & top-k(int8)| / k per row;
    ``score_range`` (max - min of the fp32 scores) puts the absolute errors in scale.
    """
    a = torch.as_tensor(fp32_scores).detach().to("cpu", torch.float32)
    b = torch.as_tensor(int8_scores).detach().to("cpu", torch.float32)
    if a.dim() == 1:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"score shapes differ or are not [b, n_items]: {tuple(a.shape)} vs {tuple(b.shape)}")
    rows, n = a.shape
    kk = min(int(k), n)
    if kk < 1:
        raise ValueError("k must be >= 1")
    if rows == 0:
        nan = float("nan")
        return {"k": kk, "rows": 0, "mean_topk_overlap": nan, "min_topk_overlap": nan,
                "max_abs_error": nan, "mean_abs_error": nan, "score_range": nan}
    ia = torch.topk(a, kk, dim=1).indices
    ib = torch.topk(b, kk, dim=1).indices
    overlap = (ia.unsqueeze(2) == ib.unsqueeze(1)).any(dim=2).sum(dim=1).double() / kk
    err = (a - b).abs()
    return {
        "k": kk,
        "rows": rows,
        "mean_topk_overlap": float(overlap.mean()),
        "min_topk_overlap": float(overlap.min()),
        "max_abs_error": float(err.max()),
        "mean_abs_error": float(err.double().mean()),
        "score_range": float(a.max() - a.min()),
    }


__all__ = ["BACKENDS", "Scorer", "Fp32Scorer", "Int8Scorer", "make_scorer", "quantize_module",
           "quantization_report", "sq8_encode", "sq8_decode"]


# --------------------------------------------------------------------------------------------
# Microbenchmark: python -m training.quantize [--items N] [--dim D] [--batch B] [--threads T]
# --------------------------------------------------------------------------------------------

def _bench(argv: list[str] | None = None) -> None:
    import argparse
    import time

    p = argparse.ArgumentParser(description="p50/p99 of catalog scoring + top-k per backend")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1, help="users per call")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    centers = torch.randn(64, args.dim, generator=g)
    items = centers[torch.randint(0, 64, (args.items,), generator=g)]
    items = items + 0.5 * torch.randn(args.items, args.dim, generator=g)
    bias = 0.1 * torch.randn(args.items, generator=g)
    users = centers[torch.randint(0, 64, (args.batch,), generator=g)]
    users = users + 0.5 * torch.randn(args.batch, args.dim, generator=g)
    eval_users = torch.randn(200, args.dim, generator=g) + centers[torch.randint(0, 64, (200,), generator=g)]

    variants = [("fp32", {}), ("torch_ao", {}), ("sq8", {}), ("sq8", {"use_int_mm": False})]
    ref = make_scorer(items, bias, "fp32").score(eval_users)
    print(f"catalog {args.items:,} x {args.dim}, batch {args.batch}, top-{args.k}, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, {args.reps} reps")
    print(f"| backend | p50 ms | p99 ms | catalog MB | top-{args.k} overlap vs fp32 |")
    print("|---|---:|---:|---:|---:|")
    for backend, kw in variants:
        scorer = make_scorer(items, bias, backend, **kw)
        name = backend + ("" if not kw else " (float path)")
        if backend == "sq8" and not kw and not getattr(scorer, "uses_int_mm", False):
            name += " (float path: _int_mm unavailable)"
        for _ in range(20):
            scorer.topk(users, args.k)
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            scorer.topk(users, args.k)
            times.append(time.perf_counter() - t0)
        times.sort()
        p50 = times[len(times) // 2] * 1e3
        p99 = times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))] * 1e3
        overlap = quantization_report(ref, scorer.score(eval_users), args.k)["mean_topk_overlap"]
        print(f"| {name} | {p50:.3f} | {p99:.3f} | {scorer.nbytes() / 1e6:.1f} | {overlap:.3f} |")


if __name__ == "__main__":
    _bench()
