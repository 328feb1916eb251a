"""The batch recommendation engine on a hand-made catalog (no TorchServe, no artifact file)."""
from __future__ import annotations

import json

import pytest
import torch

from core.retrieval import load_index
from core.engine import (HISTORY, PERSONALIZED, POPULAR, RERANK, SIMILAR, Recommender,
                             ServingData, Space, mmr)
from core.artifact_adapter import load_recommender, unit_vectors, write_pack
from core.validation import UNKNOWN_ITEM, RecRequest

N_ITEMS, DIM = 40, 8
CATS = ["Comedy", "Drama", "Horror"]


@pytest.fixture(scope="module", params=["full", "search"])
def engine(request, tmp_path_factory) -> Recommender:
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

    # exact scoring and the (exact) index of core/retrieval.py's fp32 variant, no files
    folder = tmp_path_factory.mktemp("fp32")
    unit = unit_vectors(items)
    relevance = load_index("fp32", folder, items, torch.zeros(N_ITEMS))
    similarity = load_index("fp32", folder, unit, torch.zeros(N_ITEMS))
    indexed = request.param == "search"
    data = ServingData(
        model_version="7", item_ids=[f"i{i}" for i in range(N_ITEMS)],
        item_index={f"i{i}": i for i in range(N_ITEMS)}, titles=[f"Title {i}" for i in range(N_ITEMS)],
        category_names=CATS, item_cat_indptr=indptr, item_cat_indices=indices,
        user_index={"u0": 0, "u1": 1}, user_vectors=torch.randn(2, DIM, generator=g),
        hist_indptr=torch.tensor([0, 3, 4]), hist_indices=torch.tensor([0, 1, 2, 5]),
        popularity=torch.arange(N_ITEMS, dtype=torch.float32).flip(0),
        encode=encode, relevance=Space.of(relevance, indexed), similarity=Space.of(similarity, indexed),
        item_unit=unit)
    rec = Recommender(data)
    rec.calls = calls
    rec.items = items
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
    assert set(outs[0].body["items"][0]) == {"item_id", "score", "title", "categories"}
    assert outs[2].body["items"][0]["categories"] == ["Comedy"]  # i0


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
    if engine.data.relevance.search is None:
        pytest.skip("full-scan engine")
    spaces = (engine.data.relevance, engine.data.similarity)
    exact = [s.search for s in spaces]
    for s in spaces:
        s.search = lambda u, k: (torch.full((u.shape[0], k), float("-inf")),
                                 torch.full((u.shape[0], k), -1, dtype=torch.int64))
    try:
        out, sim = engine.recommend([RecRequest("u0", k=5), RecRequest(None, k=5, similar_to="i3")])
    finally:
        for s, e in zip(spaces, exact):
            s.search = e
    full, sim_full = engine.recommend([RecRequest("u0", k=N_ITEMS),
                                       RecRequest(None, k=N_ITEMS, similar_to="i3")])
    assert ids(out) == ids(full)[:5] and ids(sim) == ids(sim_full)[:5]


def test_k_larger_than_catalog(engine):
    out = engine.recommend([RecRequest("anon", k=1000)])[0]
    assert len(out.body["items"]) == N_ITEMS


def test_describe(engine):
    d = engine.describe()
    assert d["n_items"] == N_ITEMS and d["example_users"] == ["u0", "u1"]
    assert d["popular_items"][0] == "i0"


# ---- related items, candidate lists, diversity ------------------------------------------------

def cosines(engine, item):
    unit = engine.data.item_unit
    return unit @ unit[item]


def test_similar_to_is_the_cosine_ranking_without_the_item(engine):
    out = engine.recommend([RecRequest(None, k=5, similar_to="i3")])[0]
    assert out.strategy == SIMILAR and out.error is None
    assert out.body["user_id"] is None and out.body["similar_to"] == "i3"
    cos = cosines(engine, 3)
    cos[3] = float("-inf")
    expected = torch.topk(cos, 5).indices.tolist()
    assert ids(out) == [f"i{i}" for i in expected] and "i3" not in ids(out)
    torch.testing.assert_close(torch.tensor([it["score"] for it in out.body["items"]]),
                               cos[expected], atol=1e-5, rtol=0)
    # with a known user, the user's seen items (stored and sent) are left out as usual
    all_ = engine.recommend([RecRequest(None, k=N_ITEMS, similar_to="i3")])[0]
    assert len(ids(all_)) == N_ITEMS - 1
    u0 = engine.recommend([RecRequest("u0", k=N_ITEMS, similar_to="i3", history=("i7",))])[0]
    assert set(ids(all_)) - set(ids(u0)) == {"i0", "i1", "i2", "i7"}
    assert ids(u0) == [i for i in ids(all_) if i not in {"i0", "i1", "i2", "i7"}]
    # filters apply (the exact path)
    horror = engine.recommend([RecRequest(None, k=3, similar_to="i3",
                                          include_categories=("Horror",))])[0]
    assert ids(horror) == [i for i in ids(all_) if int(i[1:]) % 3 == 2][:3]


def test_similar_to_an_item_without_a_vector_is_the_popularity_order(engine):
    """A model without item vectors (the popularity baseline) has nothing to compare."""
    unit = engine.data.item_unit
    saved = unit[1].clone()
    unit[1] = 0.0
    try:
        out = engine.recommend([RecRequest(None, k=4, similar_to="i1")])[0]
    finally:
        unit[1] = saved
    assert out.strategy == SIMILAR and ids(out) == ["i0", "i2", "i3", "i4"]


def test_unknown_similar_to_is_a_404_of_its_own(engine):
    outs = engine.recommend([RecRequest("u0", k=3), RecRequest(None, similar_to="nope"),
                             RecRequest(None, k=3, similar_to="i1")])
    err = outs[1].error
    assert err is not None and err.status == 404 and err.reason == UNKNOWN_ITEM
    assert "nope" in err.message and err.to_dict()["type"] == "NotFound"
    assert outs[0].error is None and outs[2].error is None and len(ids(outs[2])) == 3


def test_candidates_in_score_order(engine):
    sent = ("i5", "nope", "i1", "i9", "i5", "i30", "i12", "also-unknown")
    out = engine.recommend([RecRequest("u0", candidates=sent)])[0]
    assert out.strategy == RERANK and out.body["ignored_candidates"] == ["nope", "also-unknown"]
    # every known candidate once (u0 has seen i1: a list the caller chose keeps it), by score
    vec = engine.data.user_vectors[0]
    known = [5, 1, 9, 30, 12]
    expected = sorted(known, key=lambda i: -float(vec @ engine.items[i]))
    assert ids(out) == [f"i{i}" for i in expected]
    scores = [it["score"] for it in out.body["items"]]
    assert scores == sorted(scores, reverse=True)
    # k cuts; exclude, exclude_seen and filters still apply
    assert ids(engine.recommend([RecRequest("u0", k=2, candidates=sent)])[0]) == ids(out)[:2]
    out2 = engine.recommend([RecRequest("u0", candidates=sent, exclude=("i9",), exclude_seen=True,
                                        exclude_categories=("Drama",))])[0]
    assert ids(out2) == [i for i in ids(out) if i not in {"i9", "i1"} and int(i[1:]) % 3 != 1]
    # an unknown user without history: popularity order (equal scores keep the order sent)
    anon = engine.recommend([RecRequest("anon", candidates=("i9", "i2", "i30"))])[0]
    assert ids(anon) == ["i2", "i9", "i30"] and anon.strategy == RERANK
    none_known = engine.recommend([RecRequest("u0", candidates=("x", "y"))])[0]
    assert none_known.body["items"] == [] and none_known.body["ignored_candidates"] == ["x", "y"]


def test_mmr_picks():
    """Three near-duplicates and one different item: MMR trades relevance for novelty."""
    unit = unit_vectors(torch.tensor([[1.0, 0.0], [1.0, 0.01], [1.0, 0.02], [0.0, 1.0]]))
    rel = torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert mmr(rel, unit, 4, 0.0) == [0, 1, 2, 3]          # relevance only
    assert mmr(rel, unit, 4, 1e-9) == [0, 1, 2, 3]
    assert mmr(rel, unit, 2, 0.5) == [0, 3]                # the different item comes second
    assert mmr(rel, unit, 4, 1.0)[:2] == [0, 3]            # pure novelty after the first pick
    assert mmr(torch.tensor([1.0, 1.0]), unit[:2], 5, 0.3) == [0, 1]  # ties: the earlier
    assert mmr(torch.tensor([]), unit[:0], 3, 0.5) == []


@pytest.mark.parametrize("mode", [dict(user_id="u0"), dict(user_id="new", history=("i3", "i4")),
                                  dict(user_id="anon"), dict(user_id=None, similar_to="i3"),
                                  dict(user_id="u1", candidates=tuple(f"i{i}" for i in range(0, 40, 3)))])
def test_diversity(engine, mode):
    plain = engine.recommend([RecRequest(k=8, **mode)])[0]
    zero = engine.recommend([RecRequest(k=8, diversity=0.0, **mode)])[0]
    assert json.dumps(zero.body) == json.dumps(plain.body)  # diversity 0: the same bytes
    div = engine.recommend([RecRequest(k=8, diversity=0.7, **mode)])[0]
    assert len(ids(div)) == 8 and ids(div)[0] == ids(plain)[0]  # the most relevant stays first
    # the answer is MMR over the top candidates, scores are the model's
    pool = engine.recommend([RecRequest(k=Recommender._depth(RecRequest(None, k=8, diversity=0.7)),
                                        **mode)])[0]
    rel = torch.tensor([it["score"] for it in pool.body["items"]], dtype=torch.float64)
    unit = engine.data.item_unit[[int(i[1:]) for i in ids(pool)]]
    assert ids(div) == [ids(pool)[j] for j in mmr(rel, unit, 8, 0.7)]
    assert {it["item_id"]: it["score"] for it in div.body["items"]}.items() <= \
        {it["item_id"]: it["score"] for it in pool.body["items"]}.items()
    # less redundant: the mean pairwise cosine of the list drops
    def redundancy(o):
        u = engine.data.item_unit[[int(i[1:]) for i in ids(o)]]
        c = u @ u.T
        return float((c.sum() - c.diagonal().sum()) / (len(u) * (len(u) - 1)))
    assert redundancy(div) < redundancy(plain)


def test_mixed_batch_each_mode_answered_as_alone(engine):
    reqs = [RecRequest("u0", k=4), RecRequest(None, k=4, similar_to="i3"),
            RecRequest("u1", candidates=("i4", "i8", "i15", "zz")), RecRequest("anon", k=3),
            RecRequest("new", k=4, history=("i1", "i2"), diversity=0.5),
            RecRequest(None, similar_to="missing"),
            RecRequest("u0", k=4, similar_to="i20", include_categories=("Comedy",), diversity=0.3),
            RecRequest("new2", history=("i6",), candidates=("i1", "i2", "i3"), k=2)]
    batch = engine.recommend(reqs)
    assert [o.strategy for o in batch] == [PERSONALIZED, SIMILAR, RERANK, POPULAR, HISTORY,
                                           SIMILAR, SIMILAR, RERANK]
    for r, b in zip(reqs, batch):
        alone = engine.recommend([r])[0]
        assert (b.error is None) == (alone.error is None)
        if b.error is None:
            assert ids(b) == ids(alone) and b.body == alone.body
    assert batch[5].error.status == 404


# ---- on a real artifact folder (core.artifact) ---------------------------------------------

@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from testkit.archives import make_random_artifact
    root = tmp_path_factory.mktemp("artifact")
    make_random_artifact(root / "art", n_users=30, n_items=300)
    return root, None


def test_history_request_is_the_known_user(artifact):
    """Parity at the engine: a new id sending a known user's stored history, oldest first,
    gets the known user's vector (recency weights on) and so the same ranking."""
    from core.artifact import load_artifact

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


def test_catalog_pages_cover_every_item_once_beside_scored_requests(engine):
    from core.engine import CATALOG
    n = engine.data.n_items
    pages, offset = [], 0
    while True:
        out = engine.recommend([RecRequest(None, catalog=(offset, 3)), RecRequest("u1", k=2)])
        page, scored = out[0].body, out[1]
        assert page["strategy"] == out[0].strategy == CATALOG and page["total"] == n
        assert scored.body["strategy"] in (PERSONALIZED, POPULAR) and len(scored.body["items"]) == 2
        if not page["items"]:
            break
        pages.append(page)
        offset += len(page["items"])
    ids_ = [i for p in pages for i in p["items"]]
    assert ids_ == [engine.data.item_ids[i] for i in range(n)]
    assert len({p["digest"] for p in pages}) == 1 and len(pages[0]["digest"]) == 32
    assert pages[0]["model_version"] == engine.data.model_version
