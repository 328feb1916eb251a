"""The user tower (core/encoder.py) against hand-computed weights, recency on and off."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.encoder import HistoryBagEncoder, history_bags, latest_occurrences, recency_weights

N_ITEMS, H, D = 12, 5, 3


@pytest.fixture(scope="module")
def tensors():
    g = torch.Generator().manual_seed(0)
    return {"encoder.in.weight": torch.randn(N_ITEMS, H, generator=g),
            "encoder.in.bias": torch.randn(H, generator=g),
            "encoder.layers.0.weight": torch.randn(D, H, generator=g),
            "encoder.layers.0.bias": torch.randn(D, generator=g)}


def _by_hand(t, items, weights):
    w = torch.tensor(weights) / math.sqrt(sum(x * x for x in weights))
    h = torch.tanh((w.unsqueeze(1) * t["encoder.in.weight"][items]).sum(0) + t["encoder.in.bias"])
    return torch.tanh(t["encoder.layers.0.weight"] @ h + t["encoder.layers.0.bias"])


def test_repeats_count_once_at_their_latest_position():
    assert latest_occurrences(torch.tensor([3, 1, 3, 2])).tolist() == [1, 3, 2]
    assert latest_occurrences(torch.tensor([5])).tolist() == [5]
    assert latest_occurrences(torch.tensor([], dtype=torch.int64)).tolist() == []


@pytest.mark.parametrize("boost,tau", [(0.0, 10.0), (2.0, 3.0), (50.0, 7.0)])
def test_encoder_matches_hand_computed_weights(tensors, boost, tau):
    enc = HistoryBagEncoder.from_tensors(tensors, {"n_layers": 1, "recency_boost": boost,
                                                   "recency_tau": tau})
    # history oldest first: 4, 7, 4, 9 -> distinct at latest position: 7, 4, 9
    expected_w = [1 + boost * math.exp(-2 / tau), 1 + boost * math.exp(-1 / tau), 1 + boost]
    bag = history_bags([torch.tensor([4, 7, 4, 9])], boost, tau)
    assert bag.indices.tolist() == [7, 4, 9]
    torch.testing.assert_close(bag.weights, torch.tensor(expected_w))
    got = enc.encode([torch.tensor([4, 7, 4, 9]), torch.tensor([2])])
    torch.testing.assert_close(got[0], _by_hand(tensors, [7, 4, 9], expected_w))
    torch.testing.assert_close(got[1], _by_hand(tensors, [2], [1 + boost]))
    if boost == 0:  # a plain bag: order does not matter
        torch.testing.assert_close(enc.encode([torch.tensor([9, 4, 7])])[0], got[0])
    else:
        assert not torch.allclose(enc.encode([torch.tensor([9, 4, 7])])[0], got[0])


def test_recency_weights_torch_and_numpy_agree():
    after = [0, 1, 5, 30]
    t = recency_weights(torch.tensor(after), 2.0, 10.0)
    n = recency_weights(np.array(after), 2.0, 10.0)
    np.testing.assert_allclose(t.numpy(), n, rtol=1e-6)
    assert t[0] == pytest.approx(3.0) and n.dtype == np.float32
    assert recency_weights(np.array(after), 0.0, 10.0).tolist() == [1, 1, 1, 1]


def test_from_tensors_shares_memory_and_linear_path(tensors):
    enc = HistoryBagEncoder.from_tensors(tensors, {"n_layers": 1, "linear_dim": 1})
    assert enc.enc_in.weight.data_ptr() == tensors["encoder.in.weight"].data_ptr()
    out = enc.encode([torch.tensor([1, 2])])[0]
    w = torch.tensor([1.0, 1.0]) / math.sqrt(2)
    h = torch.tanh((w.unsqueeze(1) * tensors["encoder.in.weight"][[1, 2]]).sum(0) + tensors["encoder.in.bias"])
    pre = tensors["encoder.layers.0.weight"] @ h + tensors["encoder.layers.0.bias"]
    torch.testing.assert_close(out, torch.cat([torch.tanh(pre[:-1]), pre[-1:]]))
    with pytest.raises(ValueError, match="type"):
        HistoryBagEncoder.from_tensors(tensors, {"type": "sasrec"})
