"""The batch recommendation engine on a hand-made catalog (no TorchServe, no artifact file)."""
from __future__ import annotations

import pytest
import torch

from handlers.engine import HISTORY, PERSONALIZED, POPULAR, Recommender, ServingData
from handlers.artifact_adapter import load_recommender, write_pack
from handlers.validation import RecRequest

N_ITEMS, DIM = 40, 8
CATS = ["Comedy", "Drama", "Horror"]


@pytest.fixture(scope="module", params=["full", "search"])
def engine(request) -> Recommender:
    """The same catalog served two ways: every row scored in full, or through a ``search``
    (candidates from an index, masked ones dropped); every test must pass on both."""
    g = torch.Generator().manual_seed(0)
    items = torch.randn(N_ITEMS, DIM, generator=g)
    enc = torch.randn(N_ITEMS, DIM, generator=g)
    # item i has category i % 3, and items divisible by 10 also have "Comedy"
    cat_lists = [sorted({i % 3} | ({0} if i % 10 == 0 else set())) for i in range(N_ITEMS)]
    indptr = torch.tensor([0] + [len(c) for c in cat_lists]).cumsum(0)
    indices = torch.tensor([c for cs in cat_lists for c in cs])
    # users u0 (history 0,1,2), u1 (history 5)
    hist = [[0, 1, 2], [5]]
    calls = []

    def encode(histories):
        calls.append(len(histories))
        return torch.stack([enc[h].mean(0) for h in histories])

    def score(u):
        return u @ items.T

    data = ServingData(
        model_version="7", item_ids=[f"i{i}" for i in range(N_ITEMS)],
        item_index={f"i{i}": i for i in range(N_ITEMS)}, titles=[f"Title {i}" for i in range(N_ITEMS)],
        category_names=CATS, item_cat_indptr=indptr, item_cat_indices=indices,
        user_index={"u0": 0, "u1": 1}, user_vectors=torch.randn(2, DIM, generator=g),
        hist_indptr=torch.tensor([0, 3, 4]), hist_indices=torch.tensor([0, 1, 2, 5]),
        popularity=torch.arange(N_ITEMS, dtype=torch.float32).flip(0),
        encode=encode, score=score)
    if request.param == "search":
        def search(u, k):
            return torch.topk(score(u), k, dim=1)

        data.search = search
    rec = Recommender(data)
    rec.calls = calls
    return rec


def ids(out):
    return [it["item_id"] for it in out.body["items"]]


def test_strategies_and_one_scoring_call_per_batch(engine):
    engine.calls.clear()
    reqs = [RecRequest("u0", k=5), RecRequest("new", k=3, history=("i7", "zzz")),
            RecRequest("anon", k=4), RecRequest("u1", k=2)]
    outs = engine.recommend(reqs)
    assert [o.strategy for o in outs] == [PERSONALIZED, HISTORY, POPULAR, PERSONALIZED]
    assert engine.calls == [1]  # one encode call (the history-only user; known users are stored)
    engine.calls.clear()
    engine.recommend([RecRequest("new", history=("i1",)), RecRequest("u1", history=("i9",)),
                      RecRequest("new2", history=("i2", "i3"))])
    assert engine.calls == [3]  # one call for the batch: new, u1 (stored + sent), new2
    assert [len(o.body["items"]) for o in outs] == [5, 3, 4, 2]
    assert outs[1].body["ignored_history"] == ["zzz"] and outs[1].ignored_history == 1
    assert ids(outs[2]) == ["i0", "i1", "i2", "i3"]  # popularity order
    scores = [it["score"] for it in outs[0].body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(o.body["model_version"] == "7" for o in outs)
    assert set(outs[0].body["items"][0]) == {"item_id", "score", "title"}


def test_batch_equals_single(engine):
    reqs = [RecRequest("u0", k=6), RecRequest("new", k=6, history=("i3", "i4"))]
    batch = engine.recommend(reqs)
    for r, b in zip(reqs, batch):
        single = engine.recommend([r])[0]
        assert ids(single) == ids(b)


def test_exclude_seen(engine):
    seen = set(ids(engine.recommend([RecRequest("u0", k=N_ITEMS)])[0]))
    assert not seen & {"i0", "i1", "i2"} and len(seen) == N_ITEMS - 3
    allowed = ids(engine.recommend([RecRequest("u0", k=N_ITEMS, exclude_seen=False)])[0])
    assert {"i0", "i1", "i2"} <= set(allowed)
    # history sent for a known user is added to the stored one (and excluded)
    out = engine.recommend([RecRequest("u1", k=N_ITEMS, history=("i9",))])[0]
    assert not {"i5", "i9"} & set(ids(out))


def test_filters_and_exclude(engine):
    out = engine.recommend([RecRequest("anon", k=100, include_categories=("Horror",))])[0]
    assert ids(out) == [f"i{i}" for i in range(N_ITEMS) if i % 3 == 2]  # popularity order
    out = engine.recommend([RecRequest("anon", k=100, include_categories=("Comedy",),
                                       exclude_categories=("Drama",))])[0]
    assert set(ids(out)) == {f"i{i}" for i in range(N_ITEMS)
                             if (i % 3 == 0 or i % 10 == 0) and i % 3 != 1}
    out = engine.recommend([RecRequest("anon", k=5, exclude=("i0", "i2", "nope"))])[0]
    assert ids(out) == ["i1", "i3", "i4", "i5", "i6"]
    out = engine.recommend([RecRequest("anon", k=5, include_categories=("NoSuchCategory",))])[0]
    assert out.body["items"] == []


def test_search_path_refetches_when_masks_eat_the_candidates(engine):
    # u0 has seen i0..i2 and excludes 30 more: far more masked than k, still k items
    excl = tuple(f"i{i}" for i in range(3, 33))
    out = engine.recommend([RecRequest("u0", k=5, exclude=excl)])[0]
    assert len(ids(out)) == 5 and not set(ids(out)) & (set(excl) | {"i0", "i1", "i2"})
    full = engine.recommend([RecRequest("u0", k=N_ITEMS, exclude=excl)])[0]
    assert ids(out) == ids(full)[:5]


def test_short_index_answers_fall_back_to_the_full_scan(engine):
    """An approximate index may return fewer than k items (padded with -1): never an item id
    from index -1, and the row is completed by the exact full scan."""
    if engine.data.search is None:
        pytest.skip("full-scan engine")
    exact = engine.data.search
    engine.data.search = lambda u, k: (torch.full((u.shape[0], k), float("-inf")),
                                       torch.full((u.shape[0], k), -1, dtype=torch.int64))
    try:
        out = engine.recommend([RecRequest("u0", k=5)])[0]
    finally:
        engine.data.search = exact
    full = engine.recommend([RecRequest("u0", k=N_ITEMS)])[0]
    assert ids(out) == ids(full)[:5]


def test_k_larger_than_catalog(engine):
    out = engine.recommend([RecRequest("anon", k=1000)])[0]
    assert len(out.body["items"]) == N_ITEMS


def test_describe(engine):
    d = engine.describe()
    assert d["n_items"] == N_ITEMS and d["example_users"] == ["u0", "u1"]
    assert d["popular_items"][0] == "i0"


# ---- on a real artifact folder (common.artifact) ---------------------------------------------

@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from archives.testing import make_random_artifact
    root = tmp_path_factory.mktemp("artifact")
    make_random_artifact(root / "art", n_users=30, n_items=300)
    return root, None


def test_history_request_is_the_known_user(artifact):
    """Parity at the engine: a new id sending a known user's stored history, oldest first,
    gets the known user's vector (recency weights on) and so the same ranking."""
    from common.artifact import load_artifact

    root, _ = artifact
    art = load_artifact(root / "art")
    assert art.config["encoder"]["recency_boost"] > 0
    rec = load_recommender(root / "art", scoring="fp32")
    for u in range(art.n_users):
        hist = tuple(art.item_ids[i] for i in art.seen_items(u).tolist())
        known, new = rec.recommend([RecRequest(art.user_ids[u], k=10),
                                    RecRequest(f"new-{u}", k=10, history=hist)])
        assert (known.strategy, new.strategy) == (PERSONALIZED, HISTORY)
        assert ids(known) == ids(new)
        torch.testing.assert_close(torch.tensor([it["score"] for it in new.body["items"]]),
                                   torch.tensor([it["score"] for it in known.body["items"]]),
                                   atol=1e-5, rtol=0)
    # the order matters: reversed, the recency weights move and the vector changes
    hist = art.seen_items(0).tolist()
    fwd, rev = rec.data.encode([torch.tensor(hist), torch.tensor(hist[::-1])])
    assert not torch.allclose(fwd, rev, atol=1e-4)
    # unknown ids in the history are ignored and echoed
    out = rec.recommend([RecRequest("new", k=5, history=("10", "50", "nope"))])[0]
    assert out.body["ignored_history"] == ["nope"] and out.strategy == HISTORY


def test_known_user_with_extra_history_is_reencoded(artifact):
    root, _ = artifact
    rec = load_recommender(root / "art", scoring="fp32")
    stored = rec.stored_history(0)
    extra = next(i for i in range(rec.data.n_items) if i not in set(stored.tolist()))
    out = rec.recommend([RecRequest("1", k=5, history=(rec.data.item_ids[extra],))])[0]
    ref = rec.recommend([RecRequest("other", k=5, history=tuple(
        rec.data.item_ids[i] for i in [*stored.tolist(), extra]))])[0]
    assert ids(out) == ids(ref) and out.strategy == PERSONALIZED


@pytest.mark.parametrize("variant", ["sq8", "int8", "hnsw", "ivf"])
def test_variant_pack(artifact, tmp_path, variant):
    """Each serving variant's pack answers like exact fp32 scoring (re-ranked candidates)."""
    root, _ = artifact
    info = write_pack(root / "art", tmp_path / "pack.safetensors", variant=variant)
    assert info["variant"] == variant and info["quality"]["recall_vs_exact"] >= 0.95
    fp = load_recommender(root / "art", scoring="fp32")
    served = load_recommender(root / "art", scoring="auto", pack_path=tmp_path / "pack.safetensors")
    assert fp.data.info["scoring"] == "fp32" and served.data.info["scoring"] == variant
    reqs = [RecRequest(str(u), k=10) for u in range(1, 31)] + [RecRequest("new", history=("10", "20"))]
    overlap = [len(set(ids(a)) & set(ids(b))) / 10 for a, b in zip(fp.recommend(reqs), served.recommend(reqs))]
    assert sum(overlap) / len(overlap) >= 0.95
    assert served.data.titles[0] == fp.data.titles[0] == "Item 10 (Comedy)"
    # ids come from the memory-mapped id tables, not Python dicts
    assert type(served.data.user_index).__name__ == "IdTable" and served.data.user_index.get("1") == 0
    with pytest.raises(FileNotFoundError):  # a variant the pack was not built for
        load_recommender(root / "art", scoring="faiss_sq8", pack_path=tmp_path / "pack.safetensors")
