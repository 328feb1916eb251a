"""The user tower: a chronological history -> the encoder's bag -> a user vector.

One implementation, imported by training (with gradients and dropout), the artifact export
(known users' precomputed vectors), the TorchServe handler (users who send their history), the
benchmarks and the test helpers. Depends on torch only (it ships inside the model archive).

Request contract (docs/serving.md): a history lists item indices **oldest first**; a repeated
item counts once, at its **latest** position. The bag of a history of ``n`` distinct items gives
item ``j`` the input weight ``1 + recency_boost * exp(-(items after j) / recency_tau)``
(:func:`recency_weights`), then weights are L2-normalised per bag. The encoder is
``h = act(sum_j w_j * E[item_j] + b)`` then ``h = act(W_k h + b_k)`` per layer, ``act`` = tanh
except the last ``linear_dim`` units of the output layer (a linear path).

Artifact tensors (``core/artifact.py``): ``encoder.in.weight [n_items, h1]``,
``encoder.in.bias [h1]``, ``encoder.layers.K.weight/bias`` (torch layout ``[out, in]``); the
artifact config's ``encoder`` block holds ``recency_boost``, ``recency_tau``, ``dims``,
``n_layers`` and ``linear_dim``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

TYPE = "history_bag_mlp"


def recency_weights(after, boost: float, tau: float):
    """Input weight of an item with ``after`` distinct items after it in its history:
    ``1 + boost * exp(-after / tau)`` (the latest item gets ``1 + boost``). Works on torch
    tensors and numpy arrays alike (float32 out); ``boost = 0`` gives a plain binary bag."""
    if isinstance(after, torch.Tensor):
        after = after.to(torch.float32)
        if boost == 0:
            return torch.ones_like(after)
        return 1.0 + boost * torch.exp(-after / max(tau, 1e-9))
    import numpy as np

    after = np.asarray(after, dtype=np.float64)
    if boost == 0:
        return np.ones(after.shape, dtype=np.float32)
    return (1.0 + boost * np.exp(-after / max(tau, 1e-9))).astype(np.float32)


def latest_occurrences(items: torch.Tensor) -> torch.Tensor:
    """The distinct items of a chronological history, each at its latest position, in order."""
    idx = torch.as_tensor(items, dtype=torch.int64).reshape(-1)
    if idx.numel() < 2:
        return idx
    rev = torch.flip(idx, [0])
    uniq, inv = torch.unique(rev, return_inverse=True)
    first_in_rev = torch.full((uniq.numel(),), rev.numel(), dtype=torch.int64)
    first_in_rev.scatter_reduce_(0, inv, torch.arange(rev.numel()), reduce="amin")
    return uniq[torch.argsort(first_in_rev, descending=True)]


@dataclass
class Bags:
    """A batch of weighted item bags in EmbeddingBag layout."""

    indices: torch.Tensor  # int64 [nnz]
    offsets: torch.Tensor  # int64 [batch]
    weights: torch.Tensor  # float32 [nnz]

    @property
    def batch_size(self) -> int:
        return int(self.offsets.numel())

    def to(self, device) -> "Bags":
        return Bags(self.indices.to(device), self.offsets.to(device), self.weights.to(device))

    def row_ids(self) -> torch.Tensor:
        """Which bag each entry belongs to."""
        n = self.indices.numel()
        lengths = torch.diff(self.offsets, append=torch.tensor([n], device=self.offsets.device))
        return torch.repeat_interleave(torch.arange(self.batch_size, device=self.offsets.device),
                                       lengths)


def history_bags(histories: Sequence[Any], boost: float, tau: float) -> Bags:
    """The encoder's bags of chronological histories (item indices, oldest first)."""
    idx, w, lengths = [], [], []
    for h in histories:
        items = latest_occurrences(h)
        n = items.numel()
        idx.append(items)
        w.append(recency_weights(torch.arange(n - 1, -1, -1), boost, tau))
        lengths.append(n)
    if not lengths:
        empty = torch.zeros(0, dtype=torch.int64)
        return Bags(empty, empty, torch.zeros(0))
    lengths_t = torch.tensor(lengths, dtype=torch.int64)
    return Bags(torch.cat(idx), torch.cumsum(lengths_t, 0) - lengths_t,
                torch.cat(w).to(torch.float32))


class HistoryBagEncoder(nn.Module):
    """The history-bag user tower (Mult-DAE style). Training builds it with gradients; serving
    builds it from artifact tensors with :meth:`from_tensors` (memory-mapped, no copy)."""

    # artifact tensors with one row per item (an item added after training gets a zero row)
    ITEM_INPUT_TENSORS = ("encoder.in.weight",)

    def __init__(self, n_items: int, dims: Sequence[int], *, recency_boost: float = 0.0,
                 recency_tau: float = 10.0, linear_dim: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        self.dims = tuple(int(d) for d in dims)
        self.recency_boost, self.recency_tau = float(recency_boost), float(recency_tau)
        self.linear_dim, self.dropout = int(linear_dim), float(dropout)
        self.enc_in = nn.EmbeddingBag(int(n_items), self.dims[0], mode="sum")
        self.enc_in_bias = nn.Parameter(torch.zeros(self.dims[0]))
        self.enc_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(self.dims[:-1], self.dims[1:]))

    @property
    def dim(self) -> int:
        return self.dims[-1]

    def forward(self, bags: Bags, drop: bool = False) -> torch.Tensor:
        """Bags -> user vectors ``[b, dim]``; ``drop`` applies input dropout (training only)."""
        w = bags.weights
        rows = bags.row_ids()
        norm = torch.zeros(bags.batch_size, device=w.device, dtype=w.dtype).index_add_(0, rows, w * w).sqrt()
        w = w / norm.clamp_min(1e-12)[rows]
        if drop and self.dropout > 0:
            keep = torch.rand_like(w) >= self.dropout
            w = w * keep / (1.0 - self.dropout)
        h = self.enc_in(bags.indices, bags.offsets, per_sample_weights=w) + self.enc_in_bias
        layers = list(self.enc_layers)
        h = self._act(h, last=not layers)
        for k, lin in enumerate(layers):
            h = self._act(lin(h), last=k == len(layers) - 1)
        return h

    def _act(self, h: torch.Tensor, last: bool) -> torch.Tensor:
        """tanh, except the last ``linear_dim`` units of the output layer (a linear path)."""
        k = self.linear_dim if last else 0
        if k <= 0:
            return torch.tanh(h)
        if k >= h.shape[1]:
            return h
        return torch.cat([torch.tanh(h[:, :-k]), h[:, -k:]], dim=1)

    def bags(self, histories: Sequence[Any]) -> Bags:
        return history_bags(histories, self.recency_boost, self.recency_tau)

    @torch.inference_mode()
    def encode(self, histories: Sequence[Any]) -> torch.Tensor:
        """User vectors ``[b, dim]`` of chronological histories (no dropout). An empty history
        gives the encoder's no-history vector (serving answers popularity instead)."""
        if not len(histories):
            return torch.zeros(0, self.dim)
        return self(self.bags(histories), drop=False)

    # ---- artifact form ------------------------------------------------------------------------
    def config(self) -> dict:
        """The artifact config's ``encoder`` block."""
        return {"type": TYPE, "recency_boost": self.recency_boost, "recency_tau": self.recency_tau,
                "dims": list(self.dims), "n_layers": len(self.dims) - 1,
                "linear_dim": self.linear_dim, "input_norm": "l2", "activation": "tanh",
                "input": "item indices in chronological order (oldest first); a repeated item "
                         "counts once, at its latest position",
                "weighting": "w = 1 + recency_boost * exp(-(items after it) / recency_tau)"}

    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        out = {"encoder.in.weight": self.enc_in.weight, "encoder.in.bias": self.enc_in_bias}
        for k, lin in enumerate(self.enc_layers):
            out[f"encoder.layers.{k}.weight"] = lin.weight
            out[f"encoder.layers.{k}.bias"] = lin.bias
        return {k: v.detach().float().contiguous() for k, v in out.items()}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], config: Mapping) -> "HistoryBagEncoder":
        """The encoder of an artifact (its ``encoder`` config block), sharing the given tensors
        (``assign``: memory-mapped artifact tensors stay shared, nothing is copied)."""
        if config.get("type", TYPE) != TYPE:
            raise ValueError(f"encoder type {config.get('type')!r} is not {TYPE!r}")
        w_in = tensors["encoder.in.weight"]
        n_layers = int(config.get("n_layers", 0))
        dims = [int(w_in.shape[1])] + [int(tensors[f"encoder.layers.{k}.weight"].shape[0])
                                       for k in range(n_layers)]
        with torch.device("meta"):
            enc = cls(int(w_in.shape[0]), dims, recency_boost=float(config.get("recency_boost", 0.0)),
                      recency_tau=float(config.get("recency_tau", 1.0)),
                      linear_dim=int(config.get("linear_dim", 0)))
        state = {"enc_in.weight": w_in, "enc_in_bias": tensors["encoder.in.bias"]}
        for k in range(n_layers):
            state[f"enc_layers.{k}.weight"] = tensors[f"encoder.layers.{k}.weight"]
            state[f"enc_layers.{k}.bias"] = tensors[f"encoder.layers.{k}.bias"]
        enc.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, assign=True)
        return enc.eval().requires_grad_(False)


def item_input_tensors(config: Mapping) -> tuple[str, ...]:
    """The per-item input tensors of the user tower an artifact's ``encoder`` block describes."""
    if config.get("type", TYPE) != TYPE:
        raise ValueError(f"encoder type {config.get('type')!r} is not {TYPE!r}")
    return HistoryBagEncoder.ITEM_INPUT_TENSORS


__all__ = ["TYPE", "item_input_tensors", "Bags", "HistoryBagEncoder", "history_bags", "latest_occurrences",
           "recency_weights"]
