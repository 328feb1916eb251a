"""The hybrid two-tower recommender.

User tower: a Mult-DAE-style encoder of the user's history bag (recency-weighted,
L2-normalised item weights -> dropout -> EmbeddingBag(n_items, h1) + bias -> tanh ->
[Linear -> tanh]*), optionally plus a user id embedding. The item input embeddings are the
collaborative (item-item) signal of the user side. Because the user vector is a function of the
history, a user the model never saw is served from the history sent with the request. Recency
weights (``recency_weights``: the latest items of a bag count most) matter a lot under a temporal
protocol: what a user does next follows what they did last.

Item tower: ``item id embedding * warm + content projection`` where the content projection is an
EmbeddingBag over the ETL's TF-IDF text features and category ids (one table, categories
appended after the vocabulary). ``warm`` is 1 for items that had training interactions and 0
otherwise, so items unseen in training are scored from content alone; id-dropout during training
(zeroing the id part of random items) teaches the content part to stand on its own.

Score(u, i) = user_vector(u) . item_vector(i) + item_bias(i), where the item bias is likewise an
id part (warm items only) plus a content part.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from common.splits import time_ranks
from core.encoder import Bags, HistoryBagEncoder, recency_weights


def bags_from_csr(m: sp.csr_matrix, rows=None, device=None) -> Bags:
    """Bags of the given rows of a CSR matrix (all rows by default); stored values are weights."""
    sub = m if rows is None else m[np.asarray(rows, dtype=np.int64)]
    sub = sp.csr_matrix(sub)
    return Bags(torch.from_numpy(sub.indices.astype(np.int64)),
                torch.from_numpy(sub.indptr[:-1].astype(np.int64)),
                torch.from_numpy(sub.data.astype(np.float32))).to(device or "cpu")


def history_matrix(X: sp.csr_matrix, ts: sp.csr_matrix | None, boost: float,
                   tau: float) -> sp.csr_matrix:
    """X's pattern with each user's recency weights as values: the encoder input."""
    R = time_ranks(X, ts)
    n = np.repeat(np.diff(R.indptr), np.diff(R.indptr)).astype(np.float64)
    return sp.csr_matrix((recency_weights(n - R.data, boost, tau), R.indices, R.indptr),
                         shape=R.shape)


def content_matrix(item_features: sp.csr_matrix, item_categories: sp.csr_matrix,
                   category_weight: float = 1.0) -> sp.csr_matrix:
    """[TF-IDF | categories] per item; the category block is L2-normalised per item and scaled
    by ``category_weight``. This exact rule is what the serving artifact's ``content_spec``
    documents, so new items can be embedded the same way."""
    cats = sp.csr_matrix(item_categories, dtype=np.float32, copy=True)
    cats.data[:] = 1.0
    n = np.diff(cats.indptr)
    scale = np.where(n > 0, category_weight / np.sqrt(np.maximum(n, 1)), 0.0).astype(np.float32)
    cats = sp.diags(scale) @ cats
    out = sp.hstack([sp.csr_matrix(item_features, dtype=np.float32), cats], format="csr")
    out.sort_indices()
    return out


class HybridModel(nn.Module):
    def __init__(self, n_users: int, n_items: int, content: sp.csr_matrix | None,
                 warm_items: np.ndarray, *, dim: int = 256, hidden: tuple[int, ...] = (),
                 dropout: float = 0.5, user_ids: bool = False, item_ids: bool = True,
                 use_content: bool = True, n_text_features: int | None = None,
                 recency_boost: float = 0.0, recency_tau: float = 10.0,
                 category_weight: float = 1.0, linear_dim: int = 0) -> None:
        super().__init__()
        self.linear_dim = int(linear_dim)
        self.recency_boost, self.recency_tau = float(recency_boost), float(recency_tau)
        self.category_weight = float(category_weight)
        self.n_users, self.n_items, self.dim = int(n_users), int(n_items), int(dim)
        self.dims = tuple(int(h) for h in hidden) + (self.dim,)
        self.dropout = float(dropout)
        self.use_user_ids, self.use_item_ids = bool(user_ids), bool(item_ids)
        self.use_content = bool(use_content) and content is not None and content.shape[1] > 0
        if not (self.use_item_ids or self.use_content):
            raise ValueError("the item tower needs item ids, content, or both")

        # user tower (core/encoder.py: the same module serves requests)
        self.user_tower = HistoryBagEncoder(self.n_items, self.dims, recency_boost=recency_boost,
                                            recency_tau=recency_tau, linear_dim=linear_dim,
                                            dropout=dropout)
        enc_in = self.user_tower.enc_in
        bound = (6.0 / (self.n_items + self.dims[0])) ** 0.5  # Xavier-uniform, as a dense Linear
        nn.init.uniform_(enc_in.weight, -bound, bound)
        with torch.no_grad():  # items absent from training never get a gradient: keep them
            cold = torch.from_numpy(~np.asarray(warm_items, dtype=bool))  # out of the input
            enc_in.weight[cold] = 0.0
        for lin in self.user_tower.enc_layers:
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.user_emb = nn.Embedding(self.n_users, self.dim) if self.use_user_ids else None
        if self.user_emb is not None:
            nn.init.zeros_(self.user_emb.weight)

        # item tower
        self.register_buffer("warm", torch.as_tensor(np.asarray(warm_items, dtype=np.float32)))
        if self.use_item_ids:
            self.item_emb = nn.Embedding(self.n_items, self.dim)
            bound = (6.0 / (self.n_items + self.dim)) ** 0.5
            nn.init.uniform_(self.item_emb.weight, -bound, bound)
            self.item_bias_id = nn.Parameter(torch.zeros(self.n_items))
        if self.use_content:
            c = sp.csr_matrix(content, dtype=np.float32)
            self.n_content = c.shape[1]
            self.n_text_features = int(n_text_features if n_text_features is not None else c.shape[1])
            self.register_buffer("c_indptr", torch.from_numpy(c.indptr.astype(np.int64)))
            self.register_buffer("c_indices", torch.from_numpy(c.indices.astype(np.int64)))
            self.register_buffer("c_values", torch.from_numpy(c.data.astype(np.float32)))
            self.content_proj = nn.EmbeddingBag(self.n_content, self.dim, mode="sum")
            nn.init.normal_(self.content_proj.weight, std=0.01)
            self.content_bias = nn.EmbeddingBag(self.n_content, 1, mode="sum")
            nn.init.zeros_(self.content_bias.weight)
        else:
            self.n_content, self.n_text_features = 0, 0

    # ---- user tower -------------------------------------------------------------------------
    def encode(self, bags: Bags, drop: bool | None = None) -> torch.Tensor:
        """History bags -> user vectors [b, dim] (no user id part)."""
        return self.user_tower(bags, drop=self.training if drop is None else drop)

    def user_vectors(self, bags: Bags, users: torch.Tensor | None = None,
                     drop: bool | None = None) -> torch.Tensor:
        u = self.encode(bags, drop)
        if self.user_emb is not None and users is not None:
            u = u + self.user_emb(users)
        return u

    # ---- item tower -------------------------------------------------------------------------
    def _content_rows(self, items: torch.Tensor | None):
        if items is None:
            return self.c_indices, self.c_indptr[:-1], self.c_values
        starts, ends = self.c_indptr[items], self.c_indptr[items + 1]
        lengths = ends - starts
        offsets = torch.cumsum(lengths, 0) - lengths
        pos = torch.arange(int(lengths.sum()), device=items.device) - torch.repeat_interleave(
            offsets - starts, lengths)
        return self.c_indices[pos], offsets, self.c_values[pos]

    def content_vectors(self, items: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Content part (vectors [n, dim], bias [n]) of the given items (default: all)."""
        idx, off, val = self._content_rows(items)
        vec = self.content_proj(idx, off, per_sample_weights=val)
        bias = self.content_bias(idx, off, per_sample_weights=val).squeeze(-1)
        return vec, bias

    def item_vectors(self, items: torch.Tensor | None = None,
                     id_keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Final item (vectors, bias) of ``items`` (default: the whole catalog).

        ``id_keep`` (float, same length) multiplies the id part on top of the warm mask
        (id-dropout during training)."""
        n = self.n_items if items is None else items.numel()
        dev = self.warm.device
        vec = torch.zeros(n, self.dim, device=dev)
        bias = torch.zeros(n, device=dev)
        if self.use_item_ids:
            gate = self.warm if items is None else self.warm[items]
            if id_keep is not None:
                gate = gate * id_keep
            emb = self.item_emb.weight if items is None else self.item_emb(items)
            b = self.item_bias_id if items is None else self.item_bias_id[items]
            vec = vec + emb * gate.unsqueeze(1)
            bias = bias + b * gate
        if self.use_content:
            cv, cb = self.content_vectors(items)
            vec, bias = vec + cv, bias + cb
        return vec, bias

    def score(self, user_vecs: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        v, b = self.item_vectors(items)
        return user_vecs @ v.T + b

    # ---- convenience ------------------------------------------------------------------------
    def history_matrix(self, X: sp.csr_matrix, ts: sp.csr_matrix | None) -> sp.csr_matrix:
        """The encoder input for interaction matrix X (recency weights as configured)."""
        return history_matrix(X, ts, self.recency_boost, self.recency_tau)

    @torch.no_grad()
    def score_users(self, history: sp.csr_matrix, users, batch_size: int = 1024) -> torch.Tensor:
        """Scores [len(users), n_items] from each user's history row (eval mode, no dropout);
        ``history`` holds the input weights (see :meth:`history_matrix`)."""
        was = self.training
        self.eval()
        dev = self.warm.device
        v, b = self.item_vectors()
        users = np.asarray(users, dtype=np.int64)
        out = []
        for s in range(0, len(users), batch_size):
            rows = users[s:s + batch_size]
            u = self.user_vectors(bags_from_csr(history, rows, dev),
                                  torch.from_numpy(rows).to(dev))
            out.append((u @ v.T + b).cpu())
        self.train(was)
        return torch.cat(out) if out else torch.zeros(0, self.n_items)

    def spec(self) -> dict:
        return {"n_users": self.n_users, "n_items": self.n_items, "dim": self.dim,
                "encoder_dims": list(self.dims), "dropout": self.dropout,
                "user_ids": self.use_user_ids, "item_ids": self.use_item_ids,
                "content": self.use_content, "n_content_features": self.n_content,
                "n_text_features": self.n_text_features, "recency_boost": self.recency_boost,
                "recency_tau": self.recency_tau, "category_weight": self.category_weight,
                "linear_dim": self.linear_dim}
