"""INT8 serving path: quantized catalog scorers and module quantization (training/quantize.py)."""
from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from training.quantize import (Fp32Scorer, Int8Scorer, make_scorer, quantization_report,
                               quantize_module, sq8_decode, sq8_encode)

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


INT8_VARIANTS = [("torch_ao", {}), ("sq8", {}), ("sq8", {"use_int_mm": False})]
IDS = ["torch_ao", "sq8", "sq8-float-path"]


@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("backend,kw", INT8_VARIANTS, ids=IDS)
def test_int8_top10_overlaps_fp32(catalog, backend, kw, with_bias):
    items, bias, users = catalog
    b = bias if with_bias else None
    ref = make_scorer(items, b, "fp32").score(users)
    got = make_scorer(items, b, backend, **kw).score(users)
    rep = quantization_report(ref, got, k=10)
    assert rep["rows"] == 300 and rep["k"] == 10
    assert rep["mean_topk_overlap"] >= 0.9, rep
    # Errors are small next to the spread of the scores.
    assert rep["max_abs_error"] < 0.02 * rep["score_range"], rep


@pytest.mark.parametrize("backend", ["fp32", "torch_ao", "sq8"])
def test_shapes_and_dtypes(catalog, backend):
    items, bias, users = catalog
    s = make_scorer(items, bias, backend)
    assert (s.n_items, s.dim, s.backend) == (N_ITEMS, DIM, backend)
    out = s.score(users[:5])
    assert out.shape == (5, N_ITEMS) and out.dtype == torch.float32
    assert s.score(users[0]).shape == (1, N_ITEMS)             # 1-D input = one user
    assert s.score(users[:0]).shape == (0, N_ITEMS)            # empty batch
    assert s.score(users[:3].double()).dtype == torch.float32  # any float input
    assert s.score(users[:3].numpy()).shape == (3, N_ITEMS)    # numpy input
    vals, idx = s.topk(users[:4], 10)
    assert vals.shape == idx.shape == (4, 10) and idx.dtype == torch.int64
    assert torch.all(vals[:, :-1] >= vals[:, 1:])               # best first
    with pytest.raises(ValueError, match="shape"):
        s.score(torch.randn(2, DIM + 1))


def test_topk_exclude_mask(catalog):
    items, bias, users = catalog
    s = make_scorer(items, bias, "sq8")
    _, first = s.topk(users[:2], 5)
    mask = torch.zeros(2, N_ITEMS, dtype=torch.bool)
    mask[0, first[0]] = True
    _, again = s.topk(users[:2], 5, exclude=mask)
    assert not set(again[0].tolist()) & set(first[0].tolist())
    assert torch.equal(again[1], first[1])


@pytest.mark.parametrize("backend,kw", INT8_VARIANTS, ids=IDS)
def test_bias_is_added_per_item(catalog, backend, kw):
    items, bias, users = catalog
    with_b = make_scorer(items, bias, backend, **kw).score(users[:8])
    without = make_scorer(items, None, backend, **kw).score(users[:8])
    # Same quantized catalog either way: the difference is the bias itself.
    assert torch.allclose(with_b - without, bias.expand(8, -1), atol=0.05)
    # A dominating bias decides the ranking.
    big = torch.zeros(N_ITEMS)
    big[[3, 1500, 77]] = 1e4
    _, idx = make_scorer(items, big, backend, **kw).topk(users[:4], 3)
    assert all(set(r.tolist()) == {3, 1500, 77} for r in idx)


def test_fp32_backend_is_exact(catalog):
    items, bias, users = catalog
    s = make_scorer(items, bias, "fp32")
    assert isinstance(s, Fp32Scorer)
    torch.testing.assert_close(s.score(users[:10]), users[:10] @ items.T + bias)


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


def test_sq8_int_mm_path_matches_float_path(catalog):
    items, bias, users = catalog
    fast = Int8Scorer(items, bias, "sq8")
    exact = Int8Scorer(items, bias, "sq8", use_int_mm=False)
    if not fast.uses_int_mm:
        pytest.skip("torch._int_mm unavailable here; the float path is used")
    # The int8 path only adds the per-row int8 rounding of the (scaled) query.
    rep = quantization_report(exact.score(users), fast.score(users), k=10)
    assert rep["mean_topk_overlap"] >= 0.95
    assert rep["max_abs_error"] < 0.01 * rep["score_range"]


def test_sq8_memory_is_a_quarter_of_fp32(catalog):
    items, _, _ = catalog
    assert Int8Scorer(items, None, "sq8").nbytes() < 0.3 * Fp32Scorer(items).nbytes()


@pytest.mark.parametrize("backend,kw", [("sq8", {}), ("torch_ao", {}),
                                        ("torch_ao", {"per_channel": False})],
                         ids=["sq8", "torch_ao", "torch_ao-per-tensor"])
def test_state_dict_round_trip_without_pickling(catalog, backend, kw):
    items, bias, users = catalog
    s = make_scorer(items, bias, backend, **kw)
    state = s.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)  # plain tensors only: what the handler does
    again = Int8Scorer.from_state_dict(loaded, backend)
    int8_key = "codes" if backend == "sq8" else "weight_int8"
    assert state[int8_key].dtype in (torch.uint8, torch.int8)  # stored as 8-bit, 4x smaller
    assert torch.equal(again.score(users[:20]), s.score(users[:20]))  # exact rebuild


def test_from_sq8_validates_inputs(catalog):
    codes, vmin, scale = sq8_encode(catalog[0])
    with pytest.raises(ValueError, match="uint8"):
        Int8Scorer.from_sq8(codes.to(torch.int16), vmin, scale)
    with pytest.raises(ValueError, match="entries"):
        Int8Scorer.from_sq8(codes, vmin[:10], scale)


def test_bad_inputs_are_rejected(catalog):
    items, bias, _ = catalog
    with pytest.raises(ValueError, match="backend"):
        make_scorer(items, None, "int4")
    with pytest.raises(ValueError, match="bias"):
        make_scorer(items, bias[:10], "sq8")
    bad = items.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        make_scorer(bad, None, "sq8")
    with pytest.raises(ValueError, match="2-D"):
        make_scorer(items[0], None, "fp32")


def test_quantization_report_values():
    a = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    rep = quantization_report(a, a.clone(), k=2)
    assert rep["mean_topk_overlap"] == 1.0 and rep["max_abs_error"] == 0.0
    b = a.clone()
    b[0, 1] = 0.0  # row 0 top-2 {0,1} -> {0,2}: overlap 1/2
    b[1, 0] = 1.5
    rep = quantization_report(a, b, k=2)
    assert rep["mean_topk_overlap"] == pytest.approx(0.75)
    assert rep["min_topk_overlap"] == pytest.approx(0.5)
    assert rep["max_abs_error"] == pytest.approx(4.0)
    with pytest.raises(ValueError):
        quantization_report(a, b[:, :4])


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
    cos = torch.nn.functional.cosine_similarity(out, ref, dim=1)
    assert cos.min() > 0.99
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
