"""INT8 quantization primitives, used by training (the user tower) and by serving (catalogs).

* ``torch.ao`` dynamic INT8: :func:`quantize_module` quantizes a module's ``nn.Linear`` layers
  (qint8 weights, activations quantized per call; one function, so the backend can change --
  NOTES.md: ``torch.ao`` is deprecated but its successor ran slower on our CPUs);
  :func:`torch_ao_int8_weights` / :func:`torch_ao_linear_from_int8` store and rebuild a
  quantized Linear exactly from plain tensors (the ``int8`` retrieval variant).
* ``sq8``: per-dimension 8-bit scalar quantization of a catalog (:func:`sq8_encode`) scanned by
  :class:`SQ8` with ``torch._int_mm`` (the ``sq8`` retrieval variant).

Imports only torch and the standard library (it ships inside the model archive).
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

# --------------------------------------------------------------------------------------------
# torch.ao dynamic INT8
# --------------------------------------------------------------------------------------------

def _ignore_torch_ao_deprecation() -> None:
    """Inside ``warnings.catch_warnings()``: drop torch.ao's two deprecation notices, nothing else.

    torch.ao.quantization warns that it is deprecated ("removed in 2.10"; it was not) and that
    quantized tensor creation is deprecated.
    """
    warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated",
                            category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, "
                            r"torch\.quantize_per_channel", category=UserWarning)


def torch_ao_quantize_dynamic(module: nn.Module, per_channel: bool) -> nn.Module:
    """``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear`` child (qint8 weights)."""
    from torch.ao.quantization import (default_dynamic_qconfig, per_channel_dynamic_qconfig,
                                       quantize_dynamic)

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():
        _ignore_torch_ao_deprecation()
        return quantize_dynamic(module, {nn.Linear: qconfig}, dtype=torch.qint8, inplace=False)


def quantize_module(module: nn.Module, backend: str = "torch_ao", *, per_channel: bool = True) -> nn.Module:
    """A dynamically INT8-quantized copy of ``module`` for CPU inference (``module`` is untouched).

    Every ``nn.Linear`` (``module`` itself when it is one) becomes a dynamic quantized linear:
    qint8 weights (one scale per output row when ``per_channel``), activations quantized on the
    fly per call. Other layers stay float. The copy is in eval mode.
    """
    if backend != "torch_ao":
        raise ValueError(f"unknown quantization backend {backend!r}; expected 'torch_ao'")
    if isinstance(module, nn.Linear):
        # quantize_dynamic swaps children only: wrap a bare Linear so it is converted too
        return torch_ao_quantize_dynamic(nn.Sequential(module), per_channel)[0].eval()
    return torch_ao_quantize_dynamic(module, per_channel).eval()


def torch_ao_linear_from_int8(weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                               bias: torch.Tensor | None) -> nn.Module:
    """A dynamic quantized Linear rebuilt exactly from plain tensors.

    ``weight`` int8 [n, d]; ``scale``/``zero_point`` of shape [n] (per row) or [1] (per tensor).
    fbgemm packs the weight into its own private buffer: the inputs can be dropped afterwards.
    """
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    n, d = weight.shape
    with warnings.catch_warnings():
        _ignore_torch_ao_deprecation()
        if scale.numel() == 1:
            qw = torch._make_per_tensor_quantized_tensor(weight, float(scale), int(zero_point))
        else:
            qw = torch._make_per_channel_quantized_tensor(
                weight, scale.to(torch.float64), zero_point.to(torch.int64), 0)
        lin = DynamicQuantizedLinear(d, n, bias_=bias is not None, dtype=torch.qint8)
        lin.set_weight_bias(qw, bias)
    return lin.eval()


def torch_ao_int8_weights(items: torch.Tensor, per_channel: bool = True) -> dict[str, torch.Tensor]:
    """The item matrix quantized as ``torch.ao`` would quantize a Linear's weight: plain tensors
    ``weight_int8`` int8 [n, d], ``weight_scale`` float64 / ``weight_zero_point`` int64 ([n], or
    [1] per tensor) that :func:`torch_ao_linear_from_int8` rebuilds exactly."""
    lin = nn.Linear(items.shape[1], items.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(items)
    w = torch_ao_quantize_dynamic(nn.Sequential(lin), per_channel)[0].weight()
    if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        scale, zp = w.q_per_channel_scales(), w.q_per_channel_zero_points()
    else:
        scale = torch.tensor([w.q_scale()], dtype=torch.float64)
        zp = torch.tensor([w.q_zero_point()], dtype=torch.int64)
    return {"weight_int8": w.int_repr().contiguous(), "weight_scale": scale.to(torch.float64).contiguous(),
            "weight_zero_point": zp.to(torch.int64).contiguous()}


# --------------------------------------------------------------------------------------------
# sq8: per-dimension 8-bit scalar quantization, scanned with torch._int_mm
# --------------------------------------------------------------------------------------------

def sq8_encode(item_matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-dimension 8-bit scalar quantization (FAISS ``QT_8bit`` style, round to nearest).

    Returns ``(codes uint8 [n, d], vmin float32 [d], scale float32 [d])`` with
    ``x[i, j] ~= vmin[j] + scale[j] * codes[i, j]``; the error per entry is at most
    ``scale[j] / 2`` = (range of dimension j) / 510. A constant dimension gets scale 0 and is
    reconstructed exactly. Encodes in row blocks so a 1M-item catalog needs no float64 copy.
    """
    x = torch.as_tensor(item_matrix).detach().to("cpu", torch.float32)
    if x.dim() != 2:
        raise ValueError(f"item_matrix must be 2-D, got shape {tuple(x.shape)}")
    vmin = x.amin(dim=0).double()
    scale = (x.amax(dim=0).double() - vmin) / 255.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.empty(x.shape, dtype=torch.uint8)
    for s in range(0, x.shape[0], 65536):
        blk = torch.round((x[s:s + 65536].double() - vmin) / safe).clamp_(0, 255)
        codes[s:s + 65536] = torch.where(scale > 0, blk, torch.zeros_like(blk)).to(torch.uint8)
    return codes, vmin.float(), scale.float()


def sq8_decode(codes: torch.Tensor, vmin: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 reconstruction ``vmin + scale * codes`` (for checks; scoring never builds it)."""
    return vmin + scale * codes.float()


_INT_MM_OK: bool | None = None


def _int_mm_available() -> bool:
    """Whether ``torch._int_mm`` exists here and gives exact int8 products in our layout."""
    global _INT_MM_OK
    if _INT_MM_OK is None:
        try:
            g = torch.Generator().manual_seed(0)
            ok = True
            for m, k in ((1, 64), (3, 32), (2, 5), (8, 17)):
                a = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
                b = torch.randint(-128, 128, (257, k), dtype=torch.int8, generator=g)
                ok &= torch.equal(torch._int_mm(a, b.T), (a.long() @ b.long().T).int())
            _INT_MM_OK = bool(ok)
        except Exception:  # noqa: BLE001 - any failure means "use the float path"
            _INT_MM_OK = False
    return _INT_MM_OK


def int_mm_checked(codes_s8: torch.Tensor) -> bool:
    """Per-catalog check of ``torch._int_mm`` against an exact product (batch sizes 1, 3, 8):
    the kernel mis-computed some tiny inner dimensions in tests, so we never trust it blindly."""
    if not _int_mm_available():
        return False
    try:
        rows = codes_s8[: min(256, codes_s8.shape[0])]
        g = torch.Generator().manual_seed(1)
        for m in (1, 3, 8):
            a = torch.randint(-127, 128, (m, codes_s8.shape[1]), dtype=torch.int8, generator=g)
            if not torch.equal(torch._int_mm(a, rows.T), (a.long() @ rows.long().T).int()):
                return False
        return True
    except Exception:  # noqa: BLE001
        return False


class SQ8:
    """Scores over signed codes ``c' = codes - 128`` with the per-dimension scale folded into
    the query, so the catalog is read once per call as 8-bit codes and never dequantized:

    ``q . x_i = q . (vmin + scale * (c'_i + 128)) = (q * scale) . c'_i + q . offset`` with
    ``offset = vmin + 128 * scale``.

    With ``torch._int_mm`` (when it passes a self-check on this catalog) the scaled query is
    quantized per row to int8 and one int8 x int8 -> int32 product scans the codes; otherwise an
    exact float product runs over dequantized blocks of ``chunk`` items. ``codes_s8`` may be a
    read-only memory map: it is never written or copied.
    """

    def __init__(self, codes_s8: torch.Tensor, vmin: torch.Tensor, scale: torch.Tensor,
                 bias: torch.Tensor | None = None, *, use_int_mm: bool | None = None, chunk: int = 8192):
        self.codes_s8 = codes_s8
        self.vmin, self.scale, self.bias = vmin, scale, bias
        self.offset = vmin + 128.0 * scale
        self.chunk = int(chunk)
        if use_int_mm is None or use_int_mm:
            use_int_mm = int_mm_checked(codes_s8)
        self.use_int_mm = bool(use_int_mm)

    @classmethod
    def from_codes(cls, codes: torch.Tensor, vmin: torch.Tensor, scale: torch.Tensor,
                   bias: torch.Tensor | None = None, **kwargs: Any) -> "SQ8":
        """From :func:`sq8_encode`'s uint8 codes (one copy: uint8 ``c`` -> int8 ``c - 128``)."""
        return cls((codes ^ 0x80).view(torch.int8).contiguous(), vmin, scale, bias, **kwargs)

    @property
    def n_items(self) -> int:
        return int(self.codes_s8.shape[0])

    def codes(self) -> torch.Tensor:
        """The uint8 codes of :func:`sq8_encode` (a copy)."""
        return self.codes_s8.view(torch.uint8) ^ 0x80

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """float32 ``[b, n_items]`` approximate scores (bias included when given)."""
        u = users * self.scale  # [b, d]
        const = users @ self.offset.unsqueeze(1)  # [b, 1]
        if self.use_int_mm:
            s_u = (u.abs().amax(dim=1, keepdim=True) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
            u8 = torch.round(u / s_u).clamp_(-127, 127).to(torch.int8)
            out = torch._int_mm(u8, self.codes_s8.T).to(torch.float32)
            out.mul_(s_u)
        else:
            n = self.n_items
            out = torch.empty((users.shape[0], n), dtype=torch.float32)
            buf = torch.empty((min(self.chunk, n), self.codes_s8.shape[1]), dtype=torch.float32)
            for s in range(0, n, self.chunk):
                e = min(n, s + self.chunk)
                blk = buf[: e - s]
                blk.copy_(self.codes_s8[s:e])
                torch.mm(u, blk.T, out=out[:, s:e])
        out.add_(const)
        if self.bias is not None:
            out.add_(self.bias)
        return out

    def nbytes(self) -> int:
        """Bytes of the tensors scoring reads (codes + per-dimension vectors + bias)."""
        tensors = [self.codes_s8, self.vmin, self.scale, self.offset]
        tensors += [self.bias] if self.bias is not None else []
        return sum(t.numel() * t.element_size() for t in tensors)


__all__ = ["quantize_module", "torch_ao_quantize_dynamic", "torch_ao_linear_from_int8",
           "torch_ao_int8_weights", "sq8_encode", "sq8_decode", "int_mm_checked", "SQ8"]
