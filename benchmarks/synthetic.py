"""A generated serving artifact at production scale, to measure serving (memory, latency, load
time) without training a model on 10M users. Quality is not the point; the artifact is valid
(``core.artifact.load_artifact(verify=True)``) and its shapes and skews are realistic:

* items: ``n_clusters`` clusters (item i in cluster i % n_clusters), vector = cluster centre +
  noise, so nearest neighbours are meaningful; popularity Zipf over the item index (item 0 most
  popular); 1-2 of ``n_categories`` categories, the first one set by the cluster;
* users: a home cluster each; 1..3*history_mean distinct items, 80 % drawn Zipf-like inside the
  home cluster, the rest Zipf over all items;
* encoder: one hidden layer whose weights project item vectors into the hidden space and back,
  so a history's vector points at its cluster; ``user_vectors`` are exactly the user tower
  (core/encoder.py, recency off) applied to each user's history;
* ``popularity`` counts distinct users per item, ``item_warm`` marks items with any.

Everything is vectorised and generated in chunks of users: 10M users x 1M items x d=64 stays
within ~10 GB of RAM (the final tensors, ~4 GB, plus safetensors' copy while saving).

    python -m benchmarks.synthetic --out /tmp/scale1m --users 1000000 --items 100000 --dim 64
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Iterator, Sequence

import psutil
import torch

from common.cli import run_cli
from core.encoder import Bags, HistoryBagEncoder

log = logging.getLogger("benchmarks.synthetic")

CHUNK_USERS = 250_000  # part of the generated data's identity: the RNG is drawn chunk by chunk
ZIPF_EXPONENT = 1.0
IN_CLUSTER_SHARE = 0.8
SECOND_CATEGORY_SHARE = 0.3
N_TEXT_FEATURES = 8
GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance",
          "Sci-Fi", "Thriller", "War", "Western", "Biography")
TITLE_WORDS = ("Silent", "Red", "Last", "Golden", "Hidden", "Broken", "Lost", "Wild", "Dark",
               "Bright", "River", "Night", "City", "Storm", "Garden", "Echo", "Road", "Mirror")


class PrefixedIds(Sequence[str]):
    """``prefix + str(i)`` for i < n, computed on access: a 10M-id list would cost ~650 MB."""

    def __init__(self, prefix: str, n: int):
        self.prefix, self.n = prefix, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [f"{self.prefix}{k}" for k in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return f"{self.prefix}{i % self.n}"

    def __iter__(self) -> Iterator[str]:
        return map(f"{self.prefix}{{}}".format, range(self.n))


@contextlib.contextmanager
def _stage(name: str) -> Iterator[None]:
    t = time.perf_counter()
    yield
    log.info("%-14s %6.1f s  rss %6.0f MiB", name, time.perf_counter() - t,
             psutil.Process().memory_info().rss / 2**20)


def category_names(n: int) -> list[str]:
    """``n`` genre-like names (suffixed once the base list runs out)."""
    return [GENRES[k % len(GENRES)] + (f" {k // len(GENRES) + 1}" if k >= len(GENRES) else "")
            for k in range(n)]


def _zipf_cdf(n: int) -> torch.Tensor:
    """Cumulative Zipf weights of ranks 1..n (float64: 1M small terms must still add up)."""
    return torch.cumsum(torch.arange(1, n + 1, dtype=torch.float64) ** -ZIPF_EXPONENT, 0)


def _sample(cdf: torch.Tensor, count: int, g: torch.Generator) -> torch.Tensor:
    """``count`` ranks (0-based) drawn from a cumulative weight table."""
    u = torch.rand(count, dtype=torch.float64, generator=g) * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.numel() - 1)


def _items(n_items: int, dim: int, n_clusters: int, g: torch.Generator):
    """(centres [C, d], cluster of each item, item vectors, item bias)."""
    centres = torch.randn(n_clusters, dim, generator=g) / math.sqrt(dim)
    cluster = torch.arange(n_items) % n_clusters
    vectors = centres[cluster] + torch.randn(n_items, dim, generator=g) * (0.3 / math.sqrt(dim))
    return centres, cluster, vectors, torch.randn(n_items, generator=g) * 0.05


def _projection(dim: int, hidden: int, g: torch.Generator) -> torch.Tensor:
    """[dim, hidden] with orthonormal rows (or columns when hidden < dim): hidden = x @ P,
    back = h @ P.T keeps the direction of x."""
    q, _ = torch.linalg.qr(torch.randn(max(dim, hidden), min(dim, hidden), generator=g))
    return q.T.contiguous() if dim <= hidden else q.contiguous()


def _encoder(item_vectors: torch.Tensor, hidden: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    n_items, dim = item_vectors.shape
    p = _projection(dim, hidden, g)
    w_in = 2.0 * item_vectors @ p + torch.randn(n_items, hidden, generator=g) * (0.1 / math.sqrt(hidden))
    return {"encoder.in.weight": w_in.contiguous(),
            "encoder.in.bias": torch.randn(hidden, generator=g) * 0.05,
            "encoder.layers.0.weight": 2.0 * p, "encoder.layers.0.bias": torch.zeros(dim)}


def _user_chunk(m: int, n_items: int, n_clusters: int, history_mean: int, cdfs, g: torch.Generator):
    """(items per user [m], item indices sorted per user): distinct items of ``m`` users."""
    global_cdf, cluster_cdf, cluster_size = cdfs
    mean = max(history_mean - 0.5, 0.5)
    lengths = (1 + torch.empty(m).exponential_(1 / mean, generator=g).long()).clamp_(max=3 * history_mean)
    home = torch.randint(n_clusters, (m,), generator=g)
    user = torch.repeat_interleave(torch.arange(m), lengths)
    total = user.numel()
    c = home[user]
    k = _sample(cluster_cdf, total, g) % cluster_size[c]
    items = torch.where(torch.rand(total, generator=g) < IN_CLUSTER_SHARE,
                        k * n_clusters + c, _sample(global_cdf, total, g))
    keys = torch.unique(user * n_items + items)  # sorted: by user, then item; repeats dropped
    return torch.bincount(keys // n_items, minlength=m), keys % n_items


ENCODER_CONFIG = {"n_layers": 1, "recency_boost": 0.0, "recency_tau": 1.0,
                  "includes_user_id_embedding": False}


def _encode_users(counts: torch.Tensor, items: torch.Tensor, enc: dict[str, torch.Tensor]) -> torch.Tensor:
    """The user tower (core/encoder.py) over each user's history, vectorised: with
    ``recency_boost`` 0 every item weighs 1 whatever its position, so the bags need no order."""
    tower = HistoryBagEncoder.from_tensors(enc, ENCODER_CONFIG)
    offsets = torch.cumsum(counts, 0) - counts
    with torch.inference_mode():
        return tower(Bags(items, offsets, torch.ones(items.numel())))


def _users(n_users: int, n_items: int, dim: int, n_clusters: int, history_mean: int,
           enc: dict[str, torch.Tensor], g: torch.Generator):
    """(user vectors [n_users, d], history indptr, history indices), chunk by chunk."""
    per_cluster = -(-n_items // n_clusters)
    cdfs = (_zipf_cdf(n_items), _zipf_cdf(per_cluster),
            (n_items - torch.arange(n_clusters) + n_clusters - 1) // n_clusters)
    vectors = torch.empty(n_users, dim)
    counts, indices = [], []
    for start in range(0, n_users, CHUNK_USERS):
        stop = min(start + CHUNK_USERS, n_users)
        c, items = _user_chunk(stop - start, n_items, n_clusters, history_mean, cdfs, g)
        vectors[start:stop] = _encode_users(c, items, enc)
        counts.append(c)
        indices.append(items)
    indptr = torch.zeros(n_users + 1, dtype=torch.int64)
    torch.cumsum(torch.cat(counts), 0, out=indptr[1:])
    return vectors, indptr, torch.cat(indices)


def _categories(cluster: torch.Tensor, n_categories: int, g: torch.Generator):
    """CSR (indptr, indices) of 1-2 categories per item; the first follows the cluster."""
    first = cluster % n_categories
    has_second = torch.rand(cluster.numel(), generator=g) < SECOND_CATEGORY_SHARE
    if n_categories < 2:
        has_second[:] = False
    second = (first + torch.randint(1, max(n_categories, 2), (cluster.numel(),), generator=g)) % n_categories
    pair = torch.sort(torch.stack([first, torch.where(has_second, second, first)], 1), 1).values
    keep = torch.stack([torch.ones_like(has_second), has_second], 1)
    indptr = torch.zeros(cluster.numel() + 1, dtype=torch.int64)
    torch.cumsum(1 + has_second.long(), 0, out=indptr[1:])
    return indptr, pair[keep].to(torch.int64)


def _content(centres: torch.Tensor, n_categories: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Content projection: text rows small noise, category rows the mean centre of their clusters
    (a cold item lands near its category's items)."""
    n_clusters, dim = centres.shape
    owner = torch.arange(n_clusters) % n_categories
    cat_rows = torch.zeros(n_categories, dim).index_add_(0, owner, centres)
    cat_rows /= torch.bincount(owner, minlength=n_categories).clamp(min=1).unsqueeze(1)
    return {"content.weight": torch.cat([torch.randn(N_TEXT_FEATURES, dim, generator=g) * 0.1, cat_rows]),
            "content.bias": torch.zeros(N_TEXT_FEATURES + n_categories)}


def _item_records(indptr: torch.Tensor, indices: torch.Tensor, names: list[str]) -> Iterator[dict]:
    """items.jsonl rows, generated lazily (a list of 1M dicts would cost ~0.5 GB)."""
    ptr, ind, w = indptr.tolist(), indices.tolist(), len(TITLE_WORDS)
    for i in range(len(ptr) - 1):
        yield {"title": f"{TITLE_WORDS[i % w]} {TITLE_WORDS[(i // w) % w]} {i}",
               "categories": [names[c] for c in ind[ptr[i]:ptr[i + 1]]]}


def make_scale_artifact(path: Path, *, n_users: int, n_items: int, dim: int = 64, hidden: int = 64,
                        history_mean: int = 8, n_clusters: int = 256, n_categories: int = 20,
                        seed: int = 0, model_version: str = "1") -> Path:
    """Write a valid serving artifact of the given scale to ``path`` (see the module docstring);
    the same arguments give the same tensors. Users are ``u<index>``, items ``i<index>``."""
    from core.artifact import save_artifact

    if n_users < 1 or n_items < 1 or history_mean < 1 or n_categories < 1:
        raise ValueError("n_users, n_items, history_mean and n_categories must be >= 1")
    g = torch.Generator().manual_seed(seed)
    n_clusters = max(1, min(n_clusters, n_items))
    t0 = time.perf_counter()
    with _stage("items"):
        centres, cluster, item_vectors, item_bias = _items(n_items, dim, n_clusters, g)
        enc = _encoder(item_vectors, hidden, g)
        cat_ptr, cat_idx = _categories(cluster, n_categories, g)
        content = _content(centres, n_categories, g)
    with _stage("users"):
        user_vectors, h_ptr, h_idx = _users(n_users, n_items, dim, n_clusters, history_mean, enc, g)
        popularity = torch.bincount(h_idx, minlength=n_items).float()
    tensors = {"item_vectors": item_vectors, "item_bias": item_bias, "user_vectors": user_vectors,
               "popularity": popularity, "item_warm": (popularity > 0).to(torch.uint8), **enc,
               **content, "item_categories.indptr": cat_ptr, "item_categories.indices": cat_idx,
               "user_history.indptr": h_ptr, "user_history.indices": h_idx}
    names = category_names(n_categories)
    config = {"model_version": model_version, "dim": dim,
              "encoder": {**HistoryBagEncoder.from_tensors(enc, ENCODER_CONFIG).config(),
                          "includes_user_id_embedding": False, "history_source": "synthetic"},
              "content": {"n_text_features": N_TEXT_FEATURES, "n_categories": n_categories,
                          "categories": names, "category_weight": 1.0},
              "synthetic": {"n_users": n_users, "n_items": n_items, "hidden": hidden,
                            "history_mean": history_mean, "n_clusters": n_clusters, "seed": seed,
                            "zipf_exponent": ZIPF_EXPONENT, "history_nnz": int(h_idx.numel())},
              "note": "synthetic scale artifact (benchmarks.synthetic.make_scale_artifact): "
                      "user_vectors are the encoder applied to user_history; no vectorizer"}
    with _stage("save"):
        out = save_artifact(path, tensors, config, PrefixedIds("u", n_users),
                            PrefixedIds("i", n_items), _item_records(cat_ptr, cat_idx, names))
    log.info("artifact %s: %d users, %d items, %d history entries in %.1f s", out, n_users,
             n_items, h_idx.numel(), time.perf_counter() - t0)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.synthetic", description=(
        "Write a synthetic serving artifact of a given scale (validity and realistic shapes, "
        "not quality) for serving benchmarks."))
    ap.add_argument("--out", type=Path, required=True, help="artifact folder to (re)write")
    ap.add_argument("--users", type=int, required=True, help="number of users")
    ap.add_argument("--items", type=int, required=True, help="number of items")
    ap.add_argument("--dim", type=int, default=64, help="vector dimension (default 64)")
    ap.add_argument("--hidden", type=int, default=64, help="encoder hidden size (default 64)")
    ap.add_argument("--history-mean", type=int, default=8, help="mean items per user (default 8)")
    ap.add_argument("--clusters", type=int, default=256, help="item clusters (default 256)")
    ap.add_argument("--categories", type=int, default=20, help="item categories (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-version", default="1")
    ap.set_defaults(fn=_run)
    return run_cli(ap, argv)


def _run(a: argparse.Namespace) -> int:
    print(make_scale_artifact(a.out, n_users=a.users, n_items=a.items, dim=a.dim, hidden=a.hidden,
                              history_mean=a.history_mean, n_clusters=a.clusters,
                              n_categories=a.categories, seed=a.seed, model_version=a.model_version))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
