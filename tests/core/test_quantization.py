"""INT8 primitives (core/quantization.py): module quantization and the sq8 catalog scan."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from core.quantization import (SQ8, quantize_module, sq8_decode, sq8_encode,
                                 torch_ao_int8_weights, torch_ao_linear_from_int8)

N_ITEMS, DIM, CLUSTERS = 2000, 64, 20


@pytest.fixture(scope="module")
def catalog():
    """Clustered item matrix [2000, 64], per-item bias and users drawn near the clusters."""
    g = torch.Generator().manual_seed(7)
    centers = 2.0 * torch.randn(CLUSTERS, DIM, generator=g)
    items = centers[torch.randint(0, CLUSTERS, (N_ITEMS,), generator=g)]
    items = items + 0.7 * torch.randn(N_ITEMS, DIM, generator=g)
    bias = 0.5 * torch.randn(N_ITEMS, generator=g)
    users = centers[torch.randint(0, CLUSTERS, (300,), generator=g)]
    users = users + 0.7 * torch.randn(300, DIM, generator=g)
    return items, bias, users


def _overlap(a: torch.Tensor, b: torch.Tensor, k: int = 10) -> float:
    ia, ib = torch.topk(a, k).indices, torch.topk(b, k).indices
    return float((ia.unsqueeze(2) == ib.unsqueeze(1)).any(2).float().mean())


def test_sq8_encoding_error_bound_and_constant_dimension(catalog):
    items = catalog[0].clone()
    items[:, 5] = 3.25  # a constant dimension must not divide by zero
    codes, vmin, scale = sq8_encode(items)
    assert codes.dtype == torch.uint8 and codes.shape == items.shape
    assert vmin.dtype == scale.dtype == torch.float32 and vmin.shape == scale.shape == (DIM,)
    assert scale[5] == 0 and torch.all(codes[:, 5] == 0)
    err = (sq8_decode(codes, vmin, scale) - items).abs()
    assert torch.all(err <= scale / 2 + 1e-5)
    assert torch.all(err[:, 5] == 0)
    assert int(codes.min()) == 0 and int(codes.max()) == 255  # the full 8-bit range is used


@pytest.mark.parametrize("use_int_mm", [None, False], ids=["int_mm-if-ok", "float-path"])
def test_sq8_scores_close_to_fp32(catalog, use_int_mm):
    items, bias, users = catalog
    ref = users @ items.T + bias
    s = SQ8.from_codes(*sq8_encode(items), bias, use_int_mm=use_int_mm)
    got = s.score(users)
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert _overlap(ref, got) >= 0.9
    if use_int_mm is False:  # the float path only carries the codes' rounding
        assert (got - ref).abs().max() < 0.05 * float(ref.max() - ref.min())


def test_sq8_int_mm_path_matches_float_path(catalog):
    items, bias, users = catalog
    codes = sq8_encode(items)
    fast = SQ8.from_codes(*codes, bias)
    exact = SQ8.from_codes(*codes, bias, use_int_mm=False)
    if not fast.use_int_mm:
        pytest.skip("torch._int_mm unavailable here; the float path is used")
    a, b = exact.score(users), fast.score(users)  # int8 path adds only the query's rounding
    assert _overlap(a, b) >= 0.95
    assert (a - b).abs().max() < 0.01 * float(a.max() - a.min())
    assert fast.nbytes() < 0.3 * items.numel() * 4  # a quarter of the fp32 catalog, plus vectors


@pytest.mark.parametrize("per_channel", [True, False])
def test_torch_ao_weights_rebuild_the_same_linear(catalog, per_channel):
    items, bias, users = catalog
    state = torch_ao_int8_weights(items, per_channel)
    assert state["weight_int8"].dtype == torch.int8 and state["weight_int8"].shape == items.shape
    lin = torch_ao_linear_from_int8(state["weight_int8"], state["weight_scale"],
                                    state["weight_zero_point"], bias)
    with torch.no_grad():
        got = lin(users)
    assert _overlap(users @ items.T + bias, got) >= 0.9
    again = torch_ao_linear_from_int8(state["weight_int8"], state["weight_scale"],
                                      state["weight_zero_point"], bias)
    with torch.no_grad():
        torch.testing.assert_close(again(users), got, rtol=0, atol=0)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 256), nn.Tanh(), nn.Linear(256, 64)).eval()


@pytest.mark.parametrize("per_channel", [True, False])
def test_quantize_module_keeps_outputs_close(per_channel):
    model = _mlp()
    x = torch.randn(64, 128)
    with torch.no_grad():
        ref = model(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = quantize_module(model, "torch_ao", per_channel=per_channel)
        with torch.no_grad():
            out = q(x)
    # The deprecation noise of torch.ao is suppressed, and only that.
    assert not [w for w in caught if "deprecated" in str(w.message)], [str(w.message) for w in caught]
    assert out.dtype == torch.float32 and out.shape == ref.shape
    rel = (out - ref).norm() / ref.norm()  # mostly the on-the-fly activation quantization
    assert rel < 0.05, float(rel)
    assert torch.nn.functional.cosine_similarity(out, ref, dim=1).min() > 0.99
    # Linear layers were swapped in the copy; the float model is untouched.
    assert isinstance(q[0], DynamicQuantizedLinear) and isinstance(q[2], DynamicQuantizedLinear)
    assert not q.training
    assert type(model[0]) is nn.Linear and model[0].weight.dtype == torch.float32


def test_quantize_module_bare_linear_and_unknown_backend():
    lin = nn.Linear(32, 16)
    q = quantize_module(lin)
    assert isinstance(q, DynamicQuantizedLinear)
    x = torch.randn(8, 32)
    with torch.no_grad():
        torch.testing.assert_close(q(x), lin(x), atol=0.05, rtol=0.05)
    with pytest.raises(ValueError, match="backend"):
        quantize_module(lin, backend="torchao_int4")
