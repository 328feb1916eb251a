"""The serving artifact: export -> load gives the in-memory model's scores, without training code."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from core.artifact import (FORMAT, FORMAT_VERSION, ArtifactError, load_artifact,
                             save_artifact)
from core.encoder import HistoryBagEncoder
from training.export import export_artifact
from common.splits import time_ranks
from training.train import fit

from .conftest import FAST

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(generated_data, generated_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("artifact") / "model"
    path = export_artifact(generated_model.model, generated_data, out, version="3",
                           metrics={"ndcg@10": 0.5})
    return generated_data, generated_model.model, path


def chronological(data, u: int) -> list[int]:
    r = time_ranks(data.train_full, data.timestamps)[u]
    return r.indices[np.argsort(r.data)].tolist()


@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip_gives_identical_scores(exported, mmap):
    """The artifact's vectors (known users through the serving tower) score like the model
    (known users through training's sparse bag path): both bag constructions agree."""
    data, model, path = exported
    art = load_artifact(path, mmap=mmap, verify=True)
    users = np.arange(data.n_users)
    expected = model.score_users(model.history_matrix(data.train_full, data.timestamps), users)
    got = art.user_vector(users.tolist()) @ art.item_vectors.T + art.item_bias
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert torch.equal(torch.topk(got, 10).indices, torch.topk(expected, 10).indices)


def test_history_only_vector_equals_known_user_vector(exported):
    data, _, path = exported
    art = load_artifact(path)
    tower = HistoryBagEncoder.from_tensors(art.tensors, art.config["encoder"])
    assert art.config["encoder"]["recency_boost"] > 0  # the test means something only with recency
    for u in range(0, data.n_users, 37):
        items = chronological(data, u)
        assert art.seen_items(u).tolist() == items  # stored oldest first
        torch.testing.assert_close(tower.encode([torch.tensor(items)])[0], art.user_vector(u),
                                   rtol=1e-5, atol=1e-6)
        # a repeated older item counts once, at its latest position
        torch.testing.assert_close(tower.encode([torch.tensor([items[-1]] + items)])[0],
                                   art.user_vector(u), rtol=1e-5, atol=1e-6)


def test_content_embedding_of_new_items_matches_the_model(exported):
    data, model, path = exported
    art = load_artifact(path)
    with torch.no_grad():
        cv, cb = model.content_vectors()
    for i in range(0, data.n_items, 23):
        row = data.item_features[i]
        v, b = art.embed_item(row.indices.tolist(), row.data.tolist(),
                              data.item_categories[i].indices.tolist())
        torch.testing.assert_close(v, cv[i], rtol=1e-5, atol=1e-6)
        assert b == pytest.approx(float(cb[i]), abs=1e-5)
    cold = np.flatnonzero(art.tensors["item_warm"].numpy() == 0)
    for i in cold[:5]:  # items without training interactions are content only
        row = data.item_features[i]
        v, _ = art.embed_item(row.indices.tolist(), row.data.tolist(),
                              data.item_categories[i].indices.tolist())
        torch.testing.assert_close(art.item_vectors[i], v, rtol=1e-5, atol=1e-6)


def test_layout_config_and_metadata(exported):
    data, model, path = exported
    names = sorted(p.name for p in path.iterdir())
    assert names == ["config.json", "item_ids.txt", "items.jsonl", "model.safetensors",
                     "user_ids.txt", "vectorizer.json"]
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["format"] == FORMAT and cfg["format_version"] == FORMAT_VERSION
    assert cfg["model_version"] == "3" and cfg["metrics"] == {"ndcg@10": 0.5}
    assert cfg["created_at"] and cfg["schema_version"]
    assert cfg["dim"] == model.dim and cfg["n_users"] == data.n_users
    assert cfg["n_items"] == data.n_items
    assert set(cfg["files"]) == set(names) - {"config.json"}
    t = cfg["tensors"]
    assert t["item_vectors"] == {"shape": [data.n_items, model.dim], "dtype": "float32"}
    assert t["user_vectors"]["shape"] == [data.n_users, model.dim]
    assert t["item_categories.indptr"]["dtype"] == "int64"
    assert (path / "item_ids.txt").read_text().splitlines() == [str(i) for i in data.item_ids]
    assert (path / "user_ids.txt").read_text().splitlines() == [str(u) for u in data.user_ids]
    art = load_artifact(path)
    assert art.items[7]["title"] == data.item_titles[7]
    assert art.items[7]["item_id"] == str(data.item_ids[7])
    # no pickle anywhere: the tensors file is safetensors (8-byte header length + JSON)
    raw = (path / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8:8 + n])["item_vectors"]["dtype"] == "F32"
    pop = art.popularity.numpy()
    np.testing.assert_array_equal(pop, np.diff(data.train_full.tocsc().indptr).astype(np.float32))


def test_item_categories(exported):
    data, _, path = exported
    art = load_artifact(path)
    for i in (0, 3, data.n_items - 1):
        assert art.item_categories(i).tolist() == data.item_categories[i].indices.tolist()


def test_ids_as_users_have_them_round_trip(tmp_path):
    """Any valid id (core/ids.py) survives the id files, U+2028 (a line break to
    str.splitlines) included; an id with a control character is refused."""
    from testkit.archives import make_random_artifact

    src = load_artifact(make_random_artifact(tmp_path / "a", n_users=4, n_items=5))
    users = ["anna@example.com", "Jürgen", "用户42", "sep\u2028ok"]
    items = ["x\u2029y", "1", "b", "c", "d"]
    save_artifact(tmp_path / "b", dict(src.tensors), {"dim": src.dim}, users, items)
    back = load_artifact(tmp_path / "b")
    assert list(back.user_ids) == users and list(back.item_ids) == items
    with pytest.raises(ValueError, match="not a valid id"):
        save_artifact(tmp_path / "c", dict(src.tensors), {"dim": src.dim}, ["a\tb", *users[1:]], items)


def test_loads_without_training_code(exported):
    """The handler imports core.artifact alone: no training/, numpy or scipy needed."""
    _, _, path = exported
    code = ("import sys; sys.modules['numpy'] = None; sys.modules['scipy'] = None; "
            "sys.modules['training'] = None\n"
            "from core.artifact import load_artifact\n"
            f"a = load_artifact({str(path)!r})\n"
            "from core.encoder import HistoryBagEncoder\n"
            "t = HistoryBagEncoder.from_tensors(a.tensors, a.config['encoder'])\n"
            "print(tuple(t.encode([[1, 2, 3]]).shape) == (1, a.dim))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_rejects_other_formats_and_bad_input(exported, tmp_path):
    _, _, path = exported
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"format": FORMAT, "format_version": 99}))
    with pytest.raises(ArtifactError, match="format_version"):
        load_artifact(bad)
    with pytest.raises(ArtifactError):
        load_artifact(tmp_path)
    with pytest.raises(ValueError, match="missing tensor"):
        save_artifact(tmp_path / "x", {}, {}, [], [])


def test_export_replaces_an_existing_artifact(tiny, tmp_path):
    res = fit(tiny, replace(FAST, max_epochs=2, dim=8))
    out = tmp_path / "art"
    export_artifact(res.model, tiny, out, version="1")
    export_artifact(res.model, tiny, out, version="2")
    assert load_artifact(out).version == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temp folders left
