"""benchmarks.synthetic: a tiny scale artifact is a valid, deterministic serving artifact."""
from __future__ import annotations

import torch

from benchmarks.synthetic import main, make_scale_artifact
from core.artifact import load_artifact
from core.encoder import HistoryBagEncoder

N_USERS, N_ITEMS, DIM, HIDDEN = 2000, 500, 16, 24


def test_tiny_scale_artifact_is_valid(tmp_path):
    art = load_artifact(make_scale_artifact(tmp_path / "a", n_users=N_USERS, n_items=N_ITEMS,
                                            dim=DIM, hidden=HIDDEN, n_clusters=16),
                        verify=True)
    t = art.tensors
    assert (art.n_users, art.n_items, art.dim) == (N_USERS, N_ITEMS, DIM)
    assert art.user_ids[7] == "u7" and art.item_ids[-1] == f"i{N_ITEMS - 1}"
    shapes = {"item_vectors": (N_ITEMS, DIM), "item_bias": (N_ITEMS,), "user_vectors": (N_USERS, DIM),
              "popularity": (N_ITEMS,), "item_warm": (N_ITEMS,),
              "encoder.in.weight": (N_ITEMS, HIDDEN), "encoder.in.bias": (HIDDEN,),
              "encoder.layers.0.weight": (DIM, HIDDEN), "encoder.layers.0.bias": (DIM,),
              "content.weight": (8 + 20, DIM), "content.bias": (8 + 20,),
              "item_categories.indptr": (N_ITEMS + 1,), "user_history.indptr": (N_USERS + 1,)}
    assert {k: tuple(t[k].shape) for k in shapes} == shapes
    assert t["item_warm"].dtype == torch.uint8 and t["user_history.indices"].dtype == torch.int64

    h_ptr, h_idx = t["user_history.indptr"], t["user_history.indices"]
    lengths = torch.diff(h_ptr)
    assert int(lengths.min()) >= 1 and int(lengths.max()) <= 3 * 8 and h_ptr[-1] == h_idx.numel()
    assert torch.equal(art.popularity, torch.bincount(h_idx, minlength=N_ITEMS).float())
    assert art.popularity[:10].sum() > art.popularity[-10:].sum()  # Zipf over the item index
    c_ptr = t["item_categories.indptr"]
    assert set(torch.diff(c_ptr).tolist()) <= {1, 2} and c_ptr[-1] == t["item_categories.indices"].numel()
    assert art.items[3]["item_id"] == "i3" and 1 <= len(art.items[3]["categories"]) <= 2

    # known users' vectors are the serving tower over their stored history
    tower = HistoryBagEncoder.from_tensors(t, art.config["encoder"])
    users = [0, 1, N_USERS - 1]
    seen = [art.seen_items(u) for u in users]
    assert all(torch.equal(h, torch.unique(h)) for h in seen)
    torch.testing.assert_close(tower.encode(seen), art.user_vector(users), atol=1e-5, rtol=1e-5)


def test_deterministic_for_a_seed(tmp_path):
    kw = dict(n_users=300, n_items=120, dim=8, hidden=8, n_clusters=8)
    a = load_artifact(make_scale_artifact(tmp_path / "a", seed=3, **kw))
    b = load_artifact(make_scale_artifact(tmp_path / "b", seed=3, **kw))
    c = load_artifact(make_scale_artifact(tmp_path / "c", seed=4, **kw))
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert not torch.equal(a.tensors["user_vectors"], c.tensors["user_vectors"])
    assert a.items == b.items


def test_cli(tmp_path, capsys):
    main(["--out", str(tmp_path / "cli"), "--users", "50", "--items", "40", "--dim", "8"])
    assert load_artifact(tmp_path / "cli", verify=True).n_users == 50
    assert str(tmp_path / "cli") in capsys.readouterr().out
