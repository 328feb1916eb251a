"""Batch recommendation over a loaded serving artifact, without TorchServe.

:class:`Recommender` turns validated requests (:class:`handlers.validation.RecRequest`) into
responses. A batch is scored in one matrix operation: the user vectors of every request that
has a history are stacked and scored against the whole catalog at once; popularity rows for
the fallback requests join the same score matrix; masks (history, exclusions, category
filters) and one top-k follow.

Strategies: ``personalized`` (the user is known to the model: stored history, plus any history
sent), ``history`` (unknown user, scored from the known items of the history sent), ``popular``
(unknown user without usable history).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from handlers.validation import RecRequest

PERSONALIZED, HISTORY, POPULAR = "personalized", "history", "popular"
STRATEGIES = (PERSONALIZED, HISTORY, POPULAR)


@dataclass
class ServingData:
    """What the engine needs from a serving artifact (built by
    :func:`handlers.artifact_adapter.from_artifact`).

    Tensors may be memory-mapped (read-only, shared by all workers through the page cache).
    """

    model_version: str | None
    item_ids: Sequence[str]                       # item index -> id
    item_index: Mapping[str, int]                 # id -> item index
    titles: Sequence[str]                         # item index -> title
    category_names: Sequence[str]                 # category index -> name
    item_cat_indptr: torch.Tensor                 # CSR item -> category indices
    item_cat_indices: torch.Tensor
    user_index: Mapping[str, int]                 # id -> user index (users known to the model)
    user_vectors: torch.Tensor                    # [n_users, d] precomputed
    hist_indptr: torch.Tensor                     # CSR user -> item indices of the stored history
    hist_indices: torch.Tensor
    popularity: torch.Tensor                      # [n_items] fallback score
    # binary history bags (item indices [nnz], offsets [b]) -> user vectors [b, d]
    encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    # user vectors [b, d] -> exact scores [b, n_items] (rows with category filters, fallbacks)
    score: Callable[[torch.Tensor], torch.Tensor]
    # user vectors [b, d], k -> (scores [b, k], item indices [b, k]) best first: the serving
    # index (common/retrieval.py); None = every row takes the full path through ``score``
    search: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


@dataclass
class Outcome:
    """The engine's answer to one request."""

    body: dict[str, Any]
    strategy: str
    ignored_history: int


@dataclass
class BatchState:
    """One TorchServe batch on its way through the handler's preprocess/inference/postprocess
    (kept here because TorchServe wants exactly one class in the handler module)."""

    n: int
    started: float
    requests: dict[int, RecRequest] = field(default_factory=dict)
    errors: dict[int, Any] = field(default_factory=dict)      # idx -> InvalidRequest
    bodies: dict[int, dict] = field(default_factory=dict)     # idx -> response body
    failures: dict[int, str] = field(default_factory=dict)    # idx -> internal error message


class Recommender:
    def __init__(self, data: ServingData):
        self.data = data
        n = data.n_items
        # category name -> item indices (for filters); built once, small next to the catalog
        cat_of_item = torch.repeat_interleave(
            torch.arange(n), torch.diff(data.item_cat_indptr.to(torch.int64)))
        cats = data.item_cat_indices.to(torch.int64)
        order = torch.argsort(cats, stable=True)
        counts = torch.bincount(cats, minlength=len(data.category_names))
        ends = torch.cumsum(counts, 0)
        self._cat_items: dict[str, torch.Tensor] = {}
        start = 0
        for c, name in enumerate(data.category_names):
            end = int(ends[c])
            self._cat_items[name] = cat_of_item[order[start:end]]
            start = end
        self.last_timings: dict[str, float] = {}
        # the popularity fallback's ranking, computed once (ties: lower index first)
        self._popular_order = torch.sort(data.popularity.to(torch.float32), descending=True,
                                         stable=True).indices

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, artifact_dir: str | Path, scoring: str = "auto",
             pack_path: str | Path | None = None, threads: int = 1) -> "Recommender":
        """From a serving-artifact folder (and the archive's serving pack, when given);
        ``scoring``: a serving variant (common/retrieval.py) or ``auto`` (the pack's)."""
        from handlers.artifact_adapter import from_artifact

        return cls(from_artifact(Path(artifact_dir), scoring=scoring,
                                 pack_path=Path(pack_path) if pack_path else None, threads=threads))

    def describe(self, n_examples: int = 3) -> dict[str, Any]:
        """Sizes and a few example ids (known users, popular items) for demos and checks."""
        d = self.data
        top = torch.topk(d.popularity.float(), min(n_examples * 3, d.n_items)).indices.tolist()
        users = []
        for uid, u in d.user_index.items():
            if int(d.hist_indptr[u + 1] - d.hist_indptr[u]) > 0:
                users.append(uid)
            if len(users) >= n_examples:
                break
        return {"model_version": d.model_version, "n_items": d.n_items,
                "n_users": len(d.user_index), "n_categories": len(d.category_names),
                "example_users": users, "popular_items": [d.item_ids[i] for i in top],
                "categories": list(d.category_names[:20]), **d.info}

    # ---- per-request resolution -------------------------------------------------------------
    def _history(self, u: int) -> torch.Tensor:
        d = self.data
        a, b = int(d.hist_indptr[u]), int(d.hist_indptr[u + 1])
        return d.hist_indices[a:b].to(torch.int64)

    def _ids_to_index(self, ids: Sequence[str]) -> tuple[list[int], list[str]]:
        known, unknown = [], []
        for i in ids:
            j = self.data.item_index.get(i)
            (known if j is not None else unknown).append(j if j is not None else i)
        return known, unknown

    # ---- the batch ----------------------------------------------------------------------------
    def _masked(self, req: RecRequest, seen: torch.Tensor) -> torch.Tensor:
        """Item indices a request must not get back: its history (unless asked) and exclusions."""
        parts = [seen] if req.exclude_seen and len(seen) else []
        if req.exclude:
            ex, _ = self._ids_to_index(req.exclude)
            if ex:
                parts.append(torch.tensor(ex, dtype=torch.int64))
        return torch.unique(torch.cat(parts)) if parts else torch.empty(0, dtype=torch.int64)

    def _category_mask(self, req: RecRequest) -> torch.Tensor:
        """Bool [n_items]: items the request's category filters allow."""
        n = self.data.n_items
        if req.include_categories is not None:
            keep = torch.zeros(n, dtype=torch.bool)
            for c in req.include_categories:
                idx = self._cat_items.get(c)
                if idx is not None:
                    keep[idx] = True
        else:
            keep = torch.ones(n, dtype=torch.bool)
        for c in req.exclude_categories:
            idx = self._cat_items.get(c)
            if idx is not None:
                keep[idx] = False
        return keep

    @staticmethod
    def _allowed(scores: torch.Tensor, idx: torch.Tensor, masked: torch.Tensor,
                 k: int) -> tuple[list[float], list[int]]:
        """The first ``k`` candidates (best first) that are not masked. An approximate index pads
        a short answer with index -1 (score -inf): those slots are dropped too."""
        keep = idx >= 0
        if len(masked):
            keep &= ~torch.isin(idx, masked)
        scores, idx = scores[keep], idx[keep]
        return scores[:k].tolist(), idx[:k].tolist()

    @torch.inference_mode()
    def recommend(self, reqs: Sequence[RecRequest]) -> list[Outcome]:
        """Responses for a batch of validated requests, scored together.

        Rows without category filters take the candidate path when the data has a ``search``
        (the serving index: top ``k + #masked`` per row, masked ones dropped); rows with
        category filters, or whose candidates ran out after masking, take the full path
        (every item scored exactly, masks applied, one top-k).
        """
        d, n = self.data, self.data.n_items
        t0 = time.perf_counter()
        plans = []          # (strategy, items to mask as seen, ignored ids)
        bags: list[torch.Tensor] = []   # binary history bags to encode, all in one call
        recipe = []         # per scored row: (request row, known user or None, +bag, -bag)
        for r, req in enumerate(reqs):
            u = d.user_index.get(req.user_id)
            sent, ignored = self._ids_to_index(req.history)
            sent_t = torch.tensor(sent, dtype=torch.int64)
            if u is not None:
                stored = self._history(u)
                new = sent_t[~torch.isin(sent_t, stored)] if len(sent) else sent_t
                if len(new):
                    # the stored vector plus what the extra items change in the history part
                    seen = torch.cat([stored, new])
                    bags += [seen, stored]
                    recipe.append((r, u, len(bags) - 2, len(bags) - 1))
                else:
                    seen = stored
                    recipe.append((r, u, None, None))
                plans.append((PERSONALIZED, seen, ignored))
            elif len(sent):
                bags.append(torch.unique(sent_t))
                recipe.append((r, None, len(bags) - 1, None))
                plans.append((HISTORY, sent_t, ignored))
            else:
                plans.append((POPULAR, sent_t, ignored))
        masked = [self._masked(req, plan[1]) for req, plan in zip(reqs, plans)]
        t1 = time.perf_counter()

        vectors: dict[int, torch.Tensor] = {}
        if recipe:
            enc = None
            if bags:
                lengths = torch.tensor([len(b) for b in bags], dtype=torch.int64)
                offsets = torch.cumsum(lengths, 0) - lengths
                enc = d.encode(torch.cat(bags), offsets)
            for r, u, plus, minus in recipe:
                v = d.user_vectors[u].to(torch.float32) if u is not None else 0
                if plus is not None:
                    v = v + enc[plus] - (enc[minus] if minus is not None else 0)
                vectors[r] = v
        found: dict[int, tuple[list[float], list[int]]] = {}
        full: list[int] = []
        for r, req in enumerate(reqs):
            filtered = req.include_categories is not None or bool(req.exclude_categories)
            if filtered or (r in vectors and d.search is None):
                full.append(r)
            elif r not in vectors:  # popularity: candidates from the precomputed order
                k_fetch = min(n, req.k + len(masked[r]))
                order = self._popular_order[:k_fetch]
                found[r] = self._allowed(d.popularity[order].to(torch.float32), order, masked[r], req.k)
        searched = [r for r in vectors if r not in full]
        if searched:  # one index call for the batch
            k_fetch = min(n, max(reqs[r].k + len(masked[r]) for r in searched))
            top_s, top_i = d.search(torch.stack([vectors[r] for r in searched]), k_fetch)
            for row, r in enumerate(searched):
                s_row, i_row = self._allowed(top_s[row], top_i[row], masked[r], reqs[r].k)
                if len(i_row) < min(reqs[r].k, n - len(masked[r])) and k_fetch < n:
                    full.append(r)  # the index ran out of unmasked candidates: score all
                else:
                    found[r] = (s_row, i_row)
        if full:
            scored = [r for r in full if r in vectors]
            rows = torch.empty((len(full), n), dtype=torch.float32)
            if scored:  # one product for the rows that need every item's score
                rows[[full.index(r) for r in scored]] = d.score(
                    torch.stack([vectors[r] for r in scored])).to(torch.float32)
            for row, r in enumerate(full):
                if r not in vectors:
                    rows[row] = d.popularity.to(torch.float32)
                req = reqs[r]
                if req.include_categories is not None or req.exclude_categories:
                    rows[row].masked_fill_(~self._category_mask(req), float("-inf"))
                if len(masked[r]):
                    rows[row, masked[r]] = float("-inf")
            kmax = min(max(reqs[r].k for r in full), n)
            top_s, top_i = torch.topk(rows, kmax, dim=1, sorted=True)
            for row, r in enumerate(full):
                s_row, i_row = top_s[row, :reqs[r].k], top_i[row, :reqs[r].k]
                ok = torch.isfinite(s_row)  # filters left fewer than k items
                found[r] = (s_row[ok].tolist(), i_row[ok].tolist())
        t3 = time.perf_counter()

        out = []
        for r, (req, (strategy, _, ignored)) in enumerate(zip(reqs, plans)):
            s_row, i_row = found[r]
            items = [{"item_id": d.item_ids[i], "score": round(float(s), 6), "title": d.titles[i]}
                     for s, i in zip(s_row, i_row)]
            body = {"user_id": req.user_id, "model_version": d.model_version,
                    "strategy": strategy, "items": items, "ignored_history": ignored}
            out.append(Outcome(body, strategy, len(ignored)))
        t4 = time.perf_counter()
        self.last_timings = {"resolve": t1 - t0, "scoring_total": t3 - t1, "format": t4 - t3,
                             "full_rows": len(full)}
        return out


__all__ = ["Recommender", "ServingData", "Outcome", "BatchState", "STRATEGIES", "PERSONALIZED", "HISTORY",
           "POPULAR"]
