"""core.idtable: exact id <-> index lookups over flat (mmappable) tensors."""
from __future__ import annotations

import pytest
import torch

from core import idtable
from core.artifact import mmap_safetensors
from core.idtable import IdTable, build_id_table

IDS = ["u1", "u2", "item-10", "", "Amélie", "東京", "🎬 movie", "a b\tc", "u10"]


def test_round_trip_and_types():
    t = build_id_table(IDS)
    assert t["blob"].dtype == torch.uint8 and t["offsets"].shape == (len(IDS) + 1,)
    assert all(v.is_contiguous() for v in t.values())
    assert t["hash_sorted"].dtype == t["order"].dtype == torch.int64
    assert torch.all(t["hash_sorted"][1:] >= t["hash_sorted"][:-1])
    table = IdTable.from_tensors(t)
    assert len(table) == len(IDS) and list(table) == IDS
    for i, s in enumerate(IDS):
        assert table[s] == i and table.get(s) == i and table.id_of(i) == s and s in table
    assert dict(table) == {s: i for i, s in enumerate(IDS)}


def test_unknown_ids():
    table = IdTable.from_ids(IDS)
    assert table.get("nope") is None and table.get("nope", -1) == -1
    assert table.get(1) is None and table.get("\ud800") is None  # non-str, unencodable
    assert "U1" not in table and 1 not in table
    with pytest.raises(KeyError):
        table["nope"]
    with pytest.raises(IndexError):
        table.id_of(len(IDS))


def test_empty_table():
    table = IdTable.from_ids([])
    assert len(table) == 0 and list(table) == [] and table.get("x") is None
    assert table.lookup_many(["x"]) == [None] and len(table.ids()) == 0


def test_duplicates_rejected():
    with pytest.raises(ValueError, match="duplicate id 'b'"):
        build_id_table(["a", "b", "c", "b"])


def test_collisions_are_resolved_by_comparing_strings(monkeypatch):
    monkeypatch.setattr(idtable, "_digest", lambda data: b"\x07" * 8)
    ids = [f"id{i}" for i in range(50)]
    table = IdTable.from_ids(ids)
    assert len(set(table.tensors()["hash_sorted"].tolist())) == 1
    assert [table[s] for s in ids] == list(range(50))
    assert table.lookup_many(ids + ["id50"]) == list(range(50)) + [None]
    assert table.get("id50") is None
    with pytest.raises(ValueError, match="duplicate"):
        build_id_table(["x", "y", "x"])


def test_lookup_many():
    table = IdTable.from_ids(IDS)
    query = ["东京", "東京", "u10", None, "", "u1", "missing", 5]
    assert table.lookup_many(query) == [None, 5, 8, None, 3, 0, None, None]
    assert table.lookup_many([]) == []


def test_from_tensors_after_safetensors_mmap(tmp_path):
    from safetensors.torch import load_file, save_file

    users = [f"u{i}" for i in range(1000)]
    items = ["i1", "Ünïcødé", "i3"]
    tensors = {**IdTable.from_ids(users).tensors("user_ids."),
               **IdTable.from_ids(items).tensors("item_ids."), "other": torch.ones(3)}
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path))
    mapped, _mm = mmap_safetensors(path)  # as load_artifact maps model.safetensors
    for loaded in (mapped, load_file(str(path))):
        u = IdTable.from_tensors(loaded, "user_ids.")
        i = IdTable.from_tensors(loaded, "item_ids.")
        assert u["u999"] == 999 and u.id_of(17) == "u17" and u.get("i1") is None
        assert list(i) == items and i["Ünïcødé"] == 1
    zero_copy = IdTable.from_tensors(mapped, "user_ids.").tensors()
    assert zero_copy["blob"].data_ptr() == mapped["user_ids.blob"].data_ptr()


def test_from_tensors_validates():
    t = build_id_table(IDS)
    with pytest.raises(ValueError, match="missing"):
        IdTable.from_tensors(t, prefix="user_ids.")
    with pytest.raises(ValueError, match="offsets"):
        IdTable.from_tensors({**t, "offsets": t["offsets"][:-1]})
    with pytest.raises(ValueError, match="order"):
        IdTable.from_tensors({**t, "order": t["order"].to(torch.int32)})


def test_ids_sequence_view():
    seq = IdTable.from_ids(IDS).ids()
    assert len(seq) == len(IDS) and list(seq) == IDS
    assert seq[0] == "u1" and seq[-1] == "u10" and seq[4:6] == IDS[4:6] and seq[::-1] == IDS[::-1]
    assert "東京" in seq and "x" not in seq and seq.index("u10") == 8 and seq.count("u2") == 1
    with pytest.raises(ValueError):
        seq.index("x")
    with pytest.raises(IndexError):
        seq[len(IDS)]
