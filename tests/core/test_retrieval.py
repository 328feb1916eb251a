"""Catalog retrieval variants (core/retrieval.py) with the real libraries (torch.ao, ONNX
Runtime, FAISS): shapes, ordering, recall against exact fp32, build -> load round trips and
memory-mapped loading."""
from __future__ import annotations

import mmap

import pytest
import torch

from core import retrieval

N, D, CLUSTERS = 3000, 16, 20


@pytest.fixture(scope="module")
def catalog():
    g = torch.Generator().manual_seed(3)
    centers = 2.0 * torch.randn(CLUSTERS, D, generator=g)
    items = centers[torch.randint(0, CLUSTERS, (N,), generator=g)] + 0.7 * torch.randn(N, D, generator=g)
    bias = 0.5 * torch.randn(N, generator=g)
    users = centers[torch.randint(0, CLUSTERS, (64,), generator=g)] + 0.7 * torch.randn(64, D, generator=g)
    exact = torch.topk(torch.addmm(bias, users, items.T), 10).indices
    return items, bias, users, exact


@pytest.fixture(scope="module")
def built(catalog, tmp_path_factory):
    """Every variant built once into one folder."""
    items, bias, _, _ = catalog
    folder = tmp_path_factory.mktemp("indexes")
    infos = {v: retrieval.build_index(v, items, bias, folder, threads=1) for v in retrieval.VARIANTS}
    return folder, infos


@pytest.mark.parametrize("variant", retrieval.VARIANTS)
def test_search_shapes_order_and_recall(catalog, built, variant):
    items, bias, users, exact = catalog
    folder, infos = built
    info = infos[variant]
    assert info["variant"] == variant and info["build_s"] >= 0
    assert all(name.startswith(f"{variant}.") for name in info["files"])
    assert (folder / f"{variant}.json").exists()
    s = retrieval.load_index(variant, folder, items, bias)
    assert (s.variant, s.n_items, s.dim) == (variant, N, D)
    assert s.exact == (variant not in retrieval.APPROXIMATE)
    scores, idx = s.search(users, 10)
    assert scores.shape == idx.shape == (64, 10)
    assert scores.dtype == torch.float32 and idx.dtype == torch.int64
    assert torch.all(scores[:, :-1] >= scores[:, 1:])  # best first
    # re-ranked scores are the exact fp32 scores of the returned items
    expect = (items[idx] @ users.unsqueeze(2)).squeeze(2) + bias[idx]
    torch.testing.assert_close(scores, expect, rtol=1e-5, atol=1e-4)
    recall = retrieval.recall_at_k(exact, idx, 10)
    assert recall >= (0.9 if variant in retrieval.APPROXIMATE else 0.99), recall
    assert s.nbytes_private() >= 0
    full = s.full_scores(users[:3])
    if variant in ("fp32", "int8", "onnx_int8", "sq8"):
        assert full.shape == (3, N) and full.dtype == torch.float32
    else:
        assert full is None


@pytest.mark.parametrize("variant", retrieval.VARIANTS)
def test_edge_sizes_k_beyond_catalog_and_empty_batch(variant, tmp_path):
    g = torch.Generator().manual_seed(5)
    items, bias = torch.randn(50, 8, generator=g), torch.randn(50, generator=g)
    users = torch.randn(4, 8, generator=g)
    retrieval.build_index(variant, items, bias, tmp_path, threads=1)
    s = retrieval.load_index(variant, tmp_path, items, bias)
    scores, idx = s.search(users, 80)  # k > n_items: k' = n_items
    assert scores.shape == idx.shape == (4, 50)
    if s.exact:
        assert all(sorted(r.tolist()) == list(range(50)) for r in idx)
    e_scores, e_idx = s.search(users[:0], 10)
    assert e_scores.shape == e_idx.shape == (0, 10) and e_idx.dtype == torch.int64
    with pytest.raises(ValueError, match="shape"):
        s.search(torch.randn(2, 9), 5)


@pytest.mark.parametrize("variant", retrieval.VARIANTS)
def test_round_trip_from_folder_is_identical(catalog, built, variant):
    items, bias, users, _ = catalog
    folder, _ = built
    a = retrieval.load_index(variant, folder, items, bias).search(users[:16], 10)
    b = retrieval.load_index(variant, folder, items.clone(), bias.clone()).search(users[:16], 10)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    if variant != "fp32":  # re-rank off: the variant's own scores, still sorted
        raw_s, raw_i = retrieval.load_index(variant, folder, items, bias, params={"rerank_factor": 0}).search(users[:16], 10)
        assert raw_s.shape == (16, 10) and torch.all(raw_s[:, :-1] >= raw_s[:, 1:])


@pytest.mark.parametrize("variant", ["int8", "onnx_int8", "sq8", "faiss_sq8", "hnsw", "ivf"])
def test_huge_bias_ranks_first(catalog, tmp_path, variant):
    items, bias, users, _ = catalog
    big = bias.clone()
    big[1234] = 1e4
    info = retrieval.build_index(variant, items, big, tmp_path, threads=1)
    # IVF probes lists by their centroid, and one outlier does not move a centroid: probe all
    # lists so that this checks that the bias is scored, not how IVF partitions outliers.
    extra = {"nprobe": info["params"]["nlist"]} if variant == "ivf" else {}
    for rerank in (0, 4):
        params = {"rerank_factor": rerank, **extra}
        _, idx = retrieval.load_index(variant, tmp_path, items, big, params=params).search(users[:8], 5)
        assert torch.all(idx[:, 0] == 1234)


def test_sq8_codes_are_memory_mapped(catalog, built):
    items, bias, _, _ = catalog
    folder, _ = built
    s = retrieval.load_index("sq8", folder, items, bias)
    codes = s.sq8.codes_s8
    assert codes.dtype == torch.int8 and codes.shape == (N, D)
    mm = s._mm  # the file map the codes live in
    assert isinstance(mm, mmap.mmap)
    base = torch.frombuffer(mm, dtype=torch.uint8).data_ptr()
    ptr = codes.untyped_storage().data_ptr()
    assert base <= ptr and ptr + codes.numel() <= base + len(mm)


def test_faiss_indexes_are_memory_mapped(catalog, built):
    items, bias, _, _ = catalog
    folder, _ = built
    for v in retrieval.FAISS_VARIANTS:
        assert retrieval.load_index(v, folder, items, bias).mmapped


def test_bad_names_and_params(catalog, built, tmp_path):
    items, bias, _, _ = catalog
    folder, _ = built
    with pytest.raises(ValueError, match="variant"):
        retrieval.build_index("int4", items, bias, tmp_path)
    with pytest.raises(ValueError, match="variant"):
        retrieval.load_index("annoy", folder, items, bias)
    with pytest.raises(ValueError, match="variant"):
        retrieval.default_params("pq", 10)
    with pytest.raises(ValueError, match="parameter"):
        retrieval.build_index("hnsw", items, bias, tmp_path, params={"efSearch": 3})
    with pytest.raises(ValueError, match="parameter"):  # build-time parameter at load
        retrieval.load_index("hnsw", folder, items, bias, params={"M": 8})
    with pytest.raises(ValueError, match="built for"):
        retrieval.load_index("sq8", folder, items[:100], bias[:100])
    with pytest.raises(FileNotFoundError):
        retrieval.load_index("ivf", tmp_path / "empty", items, bias)


def test_recall_at_k():
    exact = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    assert retrieval.recall_at_k(exact, exact, 4) == 1.0
    assert retrieval.recall_at_k(exact, torch.tensor([[3, 2, 9, 9], [-1, -1, -1, -1]]), 4) == pytest.approx(0.25)


@pytest.fixture(scope="module")
def varied_catalog():
    """Clustered 5000 x 32 items with varied norms and biases: 5% of the items 2-3x longer than
    the rest and three far outliers (norm x 30, or a bias of 200)."""
    g = torch.Generator().manual_seed(11)
    n, d = 5000, 32
    centers = torch.randn(40, d, generator=g)
    items = centers[torch.randint(0, 40, (n,), generator=g)] + 0.4 * torch.randn(n, d, generator=g)
    items *= torch.empty(n, 1).uniform_(0.5, 1.5, generator=g)
    long_rows = torch.randperm(n, generator=g)[:250]
    items[long_rows] *= torch.empty(250, 1).uniform_(2.0, 3.0, generator=g)
    bias = torch.randn(n, generator=g) * torch.empty(n).uniform_(0.1, 2.0, generator=g)
    items[17] *= 30.0
    items[4321] *= 30.0
    bias[999] = 200.0
    users = centers[torch.randint(0, 40, (200,), generator=g)] + 0.4 * torch.randn(200, d, generator=g)
    exact = torch.topk(torch.addmm(bias, users, items.T), 10).indices
    return items, bias, users, exact


def test_hnsw_mips_l2_recall_on_varied_norms(varied_catalog, tmp_path):
    items, bias, users, exact = varied_catalog
    info = retrieval.build_index("hnsw", items, bias, tmp_path, threads=1)
    p = info["params"]
    assert p["transform"] == "mips_l2" and p["n_outliers"] == 3
    assert "hnsw.outliers.safetensors" in info["files"]
    # M is the largest norm of the indexed rows (outliers excluded)
    keep = torch.ones(items.shape[0], dtype=torch.bool)
    keep[[17, 999, 4321]] = False
    norms = torch.cat([items, bias.unsqueeze(1)], 1)[keep].double().norm(dim=1)
    assert p["max_norm"] == pytest.approx(float(norms.max()), rel=1e-6)
    s = retrieval.load_index("hnsw", tmp_path, items, bias)
    scores, idx = s.search(users, 10)
    assert retrieval.recall_at_k(exact, idx, 10) >= 0.97
    expect = (items[idx] @ users.unsqueeze(2)).squeeze(2) + bias[idx]
    torch.testing.assert_close(scores, expect, rtol=1e-5, atol=1e-4)
    # without re-rank: scores recovered from the L2 distances approximate the exact ones
    raw_s, raw_i = retrieval.load_index("hnsw", tmp_path, items, bias, params={"rerank_factor": 0}).search(users, 10)
    assert retrieval.recall_at_k(exact, raw_i, 10) >= 0.9
    raw_expect = (items[raw_i] @ users.unsqueeze(2)).squeeze(2) + bias[raw_i]
    torch.testing.assert_close(raw_s, raw_expect, rtol=1e-3, atol=1e-2)


def test_hnsw_mips_l2_build_load_reproduces(varied_catalog, tmp_path):
    import json

    items, bias, users, _ = varied_catalog
    info = retrieval.build_index("hnsw", items, bias, tmp_path / "a", threads=1)
    stored = json.loads((tmp_path / "a" / "hnsw.json").read_text())["params"]
    assert stored["transform"] == "mips_l2" and stored["max_norm"] == info["params"]["max_norm"]
    a = retrieval.load_index("hnsw", tmp_path / "a", items, bias).search(users, 10)
    b = retrieval.load_index("hnsw", tmp_path / "a", items.clone(), bias.clone(), threads=2).search(users, 10)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # a request alone gets the same answer as inside a batch
    s = retrieval.load_index("hnsw", tmp_path / "a", items, bias)
    for i in (0, 7, 123):
        one = s.search(users[i:i + 1], 10)
        assert torch.equal(one[1][0], a[1][i]) and torch.equal(one[0][0], a[0][i])
    # the same build again (single thread) gives the same index
    retrieval.build_index("hnsw", items, bias, tmp_path / "b", threads=1)
    c = retrieval.load_index("hnsw", tmp_path / "b", items, bias).search(users, 10)
    assert torch.equal(a[1], c[1]) and torch.equal(a[0], c[0])


def test_hnsw_inner_product_and_legacy_json_still_load(catalog, tmp_path):
    import json

    items, bias, users, exact = catalog
    retrieval.build_index("hnsw", items, bias, tmp_path, params={"transform": "ip"}, threads=1)
    meta_path = tmp_path / "hnsw.json"
    meta = json.loads(meta_path.read_text())
    assert "max_norm" not in meta["params"]
    for key in ("transform", "outlier_ratio", "max_outliers"):  # as written before mips_l2
        meta["params"].pop(key)
    meta_path.write_text(json.dumps(meta))
    _, idx = retrieval.load_index("hnsw", tmp_path, items, bias).search(users, 10)
    assert retrieval.recall_at_k(exact, idx, 10) >= 0.5
    with pytest.raises(ValueError, match="transform"):
        retrieval.build_index("hnsw", items, bias, tmp_path / "x", params={"transform": "cosine"})
