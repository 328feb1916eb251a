"""Batch recommendation: the one implementation of scoring, masking and top-k that serving runs.

:class:`Recommender` turns validated requests (:class:`handlers.validation.RecRequest`) into
responses; the TorchServe handler, the offline evaluation of the shipped variant
(training/served.py), the parity check, the benchmarks and the tests all call it. It does not
know the artifact format: :class:`ServingData` holds plain tensors and callables, built by
:func:`handlers.artifact_adapter.from_artifact`.

A batch goes through four steps, each over the whole batch:

1. :meth:`Recommender._plan` resolves each request: its strategy, the history to encode (if
   any), the items to mask;
2. :meth:`Recommender._vectors` encodes every history of the batch in one call of the user
   tower (common/encoder.py) and takes known users' precomputed vectors;
3. :meth:`Recommender._rank`: rows without category filters ask the serving index for
   ``k + #masked`` candidates (one call) and drop the masked ones; rows with filters, or whose
   candidates ran out, score every item exactly (one matrix product) with masks applied;
4. :meth:`Recommender._format` builds the response bodies.

Strategies: ``personalized`` (the user is known to the model: stored history, plus any history
sent), ``history`` (unknown user, scored from the known items of the history sent), ``popular``
(unknown user without usable history).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from handlers.validation import RecRequest

PERSONALIZED, HISTORY, POPULAR = "personalized", "history", "popular"
STRATEGIES = (PERSONALIZED, HISTORY, POPULAR)


@dataclass
class ServingData:
    """What the engine needs from a serving artifact. Tensors may be memory-mapped (read-only,
    shared by all workers through the page cache)."""

    model_version: str | None
    item_ids: Sequence[str]                       # item index -> id
    item_index: Mapping[str, int]                 # id -> item index
    titles: Sequence[str]                         # item index -> title
    category_names: Sequence[str]                 # category index -> name
    item_cat_indptr: torch.Tensor                 # CSR item -> category indices
    item_cat_indices: torch.Tensor
    user_index: Mapping[str, int]                 # id -> user index (users known to the model)
    user_vectors: torch.Tensor                    # [n_users, d] precomputed
    hist_indptr: torch.Tensor                     # CSR user -> stored history, oldest first
    hist_indices: torch.Tensor
    popularity: torch.Tensor                      # [n_items] fallback score
    # chronological histories (item index tensors, oldest first) -> user vectors [b, d]
    encode: Callable[[Sequence[torch.Tensor]], torch.Tensor]
    # user vectors [b, d] -> exact scores [b, n_items] (rows with category filters, fallbacks)
    score: Callable[[torch.Tensor], torch.Tensor]
    # user vectors [b, d], k -> (scores [b, k], item indices [b, k]) best first: the serving
    # index (common/retrieval.py); None = every row takes the full path through ``score``
    search: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]] | None = None
    # stored vectors include a per-user part the encoder cannot rebuild (a user id embedding):
    # a known user who sends history gets stored + encode(stored + sent) - encode(stored)
    user_offsets: bool = False
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


@dataclass
class _Plan:
    """One request, resolved: how its user vector is made and what it must not get back."""

    strategy: str
    user: int | None                 # known user index
    history: torch.Tensor | None     # chronological history to encode (None: stored vector)
    masked: torch.Tensor             # item indices never to return
    ignored: list[str]               # history ids the model does not know


class Recommender:
    def __init__(self, data: ServingData):
        self.data = data
        n = data.n_items
        # category name -> item indices (for filters); built once, small next to the catalog
        cat_of_item = torch.repeat_interleave(
            torch.arange(n), torch.diff(data.item_cat_indptr.to(torch.int64)))
        cats = data.item_cat_indices.to(torch.int64)
        order = torch.argsort(cats, stable=True)
        ends = torch.cumsum(torch.bincount(cats, minlength=len(data.category_names)), 0)
        self._cat_items: dict[str, torch.Tensor] = {}
        start = 0
        for c, name in enumerate(data.category_names):
            end = int(ends[c])
            self._cat_items[name] = cat_of_item[order[start:end]]
            start = end
        # the popularity fallback's ranking, computed once (ties: lower index first)
        self._popular_order = torch.sort(data.popularity.to(torch.float32), descending=True,
                                         stable=True).indices

    def describe(self, n_examples: int = 3) -> dict[str, Any]:
        """Sizes and a few example ids (known users, popular items) for demos and checks."""
        d = self.data
        top = self._popular_order[:min(n_examples * 3, d.n_items)].tolist()
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

    # ---- helpers ----------------------------------------------------------------------------
    def stored_history(self, u: int) -> torch.Tensor:
        """A known user's stored history (item indices, oldest first)."""
        d = self.data
        a, b = int(d.hist_indptr[u]), int(d.hist_indptr[u + 1])
        return d.hist_indices[a:b].to(torch.int64)

    def _ids_to_index(self, ids: Sequence[str]) -> tuple[list[int], list[str]]:
        known, unknown = [], []
        for i in ids:
            j = self.data.item_index.get(i)
            (known if j is not None else unknown).append(j if j is not None else i)
        return known, unknown

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
    def _filtered(req: RecRequest) -> bool:
        return req.include_categories is not None or bool(req.exclude_categories)

    # ---- step 1: resolve ----------------------------------------------------------------------
    def _plan(self, req: RecRequest) -> _Plan:
        d = self.data
        u = d.user_index.get(req.user_id)
        sent, ignored = self._ids_to_index(req.history)
        sent_t = torch.tensor(sent, dtype=torch.int64)
        if u is not None:
            stored = self.stored_history(u)
            seen = torch.cat([stored, sent_t]) if sent else stored
            plan = _Plan(PERSONALIZED, u, seen if sent else None, seen, ignored)
        elif sent:
            plan = _Plan(HISTORY, None, sent_t, sent_t, ignored)
        else:
            plan = _Plan(POPULAR, None, None, sent_t, ignored)
        parts = [plan.masked] if req.exclude_seen and len(plan.masked) else []
        if req.exclude:
            ex, _ = self._ids_to_index(req.exclude)
            if ex:
                parts.append(torch.tensor(ex, dtype=torch.int64))
        plan.masked = torch.unique(torch.cat(parts)) if parts else torch.empty(0, dtype=torch.int64)
        return plan

    # ---- step 2: user vectors -----------------------------------------------------------------
    def _vectors(self, plans: Sequence[_Plan]) -> dict[int, torch.Tensor]:
        """Row -> user vector for every non-popular row; one encoder call for the batch."""
        d = self.data
        histories, owners = [], []
        for r, p in enumerate(plans):
            if p.history is not None:
                histories.append(p.history)
                owners.append(r)
                if d.user_offsets and p.user is not None:  # stored part the encoder can't rebuild
                    histories.append(self.stored_history(p.user))
                    owners.append(-1 - r)
        enc = d.encode(histories) if histories else None
        out: dict[int, torch.Tensor] = {}
        for r, p in enumerate(plans):
            if p.user is not None and p.history is None:
                out[r] = d.user_vectors[p.user].to(torch.float32)
        for pos, r in enumerate(owners):
            if r >= 0:
                out[r] = enc[pos]
        for pos, r in enumerate(owners):
            if r < 0:  # stored vector + encode(stored + sent) - encode(stored)
                row = -1 - r
                out[row] = out[row] + d.user_vectors[plans[row].user].to(torch.float32) - enc[pos]
        return out

    # ---- step 3: rank -------------------------------------------------------------------------
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

    def _rank(self, reqs: Sequence[RecRequest], plans: Sequence[_Plan],
              vectors: Mapping[int, torch.Tensor]) -> dict[int, tuple[list[float], list[int]]]:
        d, n = self.data, self.data.n_items
        found: dict[int, tuple[list[float], list[int]]] = {}
        full: list[int] = []
        searched: list[int] = []
        for r, (req, p) in enumerate(zip(reqs, plans)):
            if self._filtered(req) or (r in vectors and d.search is None):
                full.append(r)
            elif r in vectors:
                searched.append(r)
            else:  # popularity: candidates from the precomputed order
                order = self._popular_order[:min(n, req.k + len(p.masked))]
                found[r] = self._allowed(d.popularity[order].to(torch.float32), order, p.masked, req.k)
        if searched:  # one index call for the batch
            k_fetch = min(n, max(reqs[r].k + len(plans[r].masked) for r in searched))
            top_s, top_i = d.search(torch.stack([vectors[r] for r in searched]), k_fetch)
            for row, r in enumerate(searched):
                s_row, i_row = self._allowed(top_s[row], top_i[row], plans[r].masked, reqs[r].k)
                if len(i_row) < min(reqs[r].k, n - len(plans[r].masked)) and k_fetch < n:
                    full.append(r)  # the index ran out of unmasked candidates: score all
                else:
                    found[r] = (s_row, i_row)
        if full:
            found.update(self._rank_full(reqs, plans, vectors, full))
        return found

    def _rank_full(self, reqs, plans, vectors, full: list[int]) -> dict[int, tuple[list[float], list[int]]]:
        """Every item scored exactly (one matrix product for the rows that have a vector),
        category filters and masks applied, one top-k."""
        d, n = self.data, self.data.n_items
        rows = torch.empty((len(full), n), dtype=torch.float32)
        scored = [r for r in full if r in vectors]
        if scored:
            rows[[full.index(r) for r in scored]] = d.score(
                torch.stack([vectors[r] for r in scored])).to(torch.float32)
        for row, r in enumerate(full):
            if r not in vectors:
                rows[row] = d.popularity.to(torch.float32)
            if self._filtered(reqs[r]):
                rows[row].masked_fill_(~self._category_mask(reqs[r]), float("-inf"))
            if len(plans[r].masked):
                rows[row, plans[r].masked] = float("-inf")
        top_s, top_i = torch.topk(rows, min(max(reqs[r].k for r in full), n), dim=1, sorted=True)
        out = {}
        for row, r in enumerate(full):
            s_row, i_row = top_s[row, :reqs[r].k], top_i[row, :reqs[r].k]
            ok = torch.isfinite(s_row)  # filters left fewer than k items
            out[r] = (s_row[ok].tolist(), i_row[ok].tolist())
        return out

    # ---- step 4: answer -----------------------------------------------------------------------
    def _format(self, req: RecRequest, plan: _Plan, ranked: tuple[list[float], list[int]]) -> Outcome:
        d = self.data
        items = [{"item_id": d.item_ids[i], "score": round(float(s), 6), "title": d.titles[i]}
                 for s, i in zip(*ranked)]
        body = {"user_id": req.user_id, "model_version": d.model_version,
                "strategy": plan.strategy, "items": items, "ignored_history": plan.ignored}
        return Outcome(body, plan.strategy, len(plan.ignored))

    @torch.inference_mode()
    def recommend(self, reqs: Sequence[RecRequest]) -> list[Outcome]:
        """Responses for a batch of validated requests, scored together (see the module doc)."""
        plans = [self._plan(req) for req in reqs]
        vectors = self._vectors(plans)
        found = self._rank(reqs, plans, vectors)
        return [self._format(req, plan, found[r]) for r, (req, plan) in enumerate(zip(reqs, plans))]


__all__ = ["Recommender", "ServingData", "Outcome", "BatchState", "STRATEGIES", "PERSONALIZED",
           "HISTORY", "POPULAR"]
