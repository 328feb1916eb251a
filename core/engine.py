"""Batch recommendation: the one implementation of scoring, masking, top-k and diversification
that serving runs.

:class:`Recommender` turns validated requests (:class:`core.validation.RecRequest`) into
responses; the TorchServe handler, the offline evaluation of the shipped variant
(training/served.py, training/modes.py), the parity check, the benchmarks and the tests all call
it. It does not know the artifact format: :class:`ServingData` holds plain tensors and callables,
built by :func:`core.artifact_adapter.from_artifact`.

Three modes share every step: top-k for a user; ``similar_to`` (related items: cosine of item
vectors, in the ``similarity`` :class:`Space`); ``candidates`` (the user's ranking of a given
list). A batch goes through five steps, each over the whole batch, whatever mix of modes it holds:

1. :meth:`Recommender._plan` resolves each request: its strategy, the history to encode (if
   any), the items to mask, the query item or the candidate list; an unknown ``similar_to`` item
   becomes that request's 404;
2. :meth:`Recommender._vectors` encodes every history of the batch in one call of the user
   tower (core/encoder.py), takes known users' precomputed vectors and the query items' unit
   vectors;
3. :meth:`Recommender._rank`: rows without category filters ask their space's serving index for
   ``depth + #masked`` candidates (one call per space) and drop the masked ones; rows with
   filters, or whose candidates ran out, score every item exactly (one matrix product per
   space) with masks applied; candidate lists are scored exactly on their rows (one gathered
   product); ``depth`` is ``k``, or the MMR pool when the request asks for diversity;
4. :meth:`Recommender._diversify` re-ranks the pool of rows with ``diversity > 0`` by maximal
   marginal relevance (:func:`mmr`); rows at diversity 0 pass unchanged;
5. :meth:`Recommender._format` builds the response bodies.

Strategies: ``personalized`` (the user is known to the model: stored history, plus any history
sent), ``history`` (unknown user, scored from the known items of the history sent), ``popular``
(unknown user without usable history), ``similar`` (``similar_to``), ``rerank``
(``candidates``; ordered by the user's vector when there is one, else by popularity).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from core.validation import UNKNOWN_ITEM, InvalidRequest, RecRequest

PERSONALIZED, HISTORY, POPULAR = "personalized", "history", "popular"
SIMILAR, RERANK, CATALOG = "similar", "rerank", "catalog"
STRATEGIES = (PERSONALIZED, HISTORY, POPULAR, SIMILAR, RERANK, CATALOG)
# MMR's pool: the top max(k, min(MAX, max(PER_K * k, MIN))) candidates are re-ranked
MMR_POOL_MIN, MMR_POOL_PER_K, MMR_POOL_MAX = 100, 10, 1000
RELEVANCE, SIMILARITY = "relevance", "similarity"  # the ServingData fields of the two spaces


@dataclass
class Space:
    """One way of scoring the catalog against a query vector. The engine has two: ``relevance``
    (a user vector ``u``: ``u . x_i + b_i``) and ``similarity`` (an L2-normalised item vector:
    the cosine of every item). :meth:`of` builds one from a core/retrieval.py searcher, which
    holds the one implementation of exact scoring and of the serving index."""

    score: Callable[[torch.Tensor], torch.Tensor]   # [b, d] -> exact scores [b, n_items]
    # [b, d], item indices [b, c] (-1 = padding) -> exact scores [b, c] (-inf at padding)
    score_items: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    # [b, d], k -> (scores [b, k], item indices [b, k]) best first: the serving index
    # (INT8 with exact re-rank, ...); None = every row takes the full path through ``score``
    search: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]] | None = None

    @classmethod
    def of(cls, searcher: Any, indexed: bool = True) -> "Space":
        return cls(searcher.exact_scores, searcher.exact_rows, searcher.search if indexed else None)


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
    relevance: Space                              # user vectors -> item scores
    similarity: Space                             # unit item vectors -> cosine of every item
    item_unit: torch.Tensor                       # [n_items, d] L2-normalised item vectors
    # stored vectors include a per-user part the encoder cannot rebuild (a user id embedding):
    # a known user who sends history gets stored + encode(stored + sent) - encode(stored)
    user_offsets: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


@dataclass
class Outcome:
    """The engine's answer to one request: a body, or ``error`` (a 4xx of its own)."""

    body: dict[str, Any]
    strategy: str
    ignored_history: int
    error: InvalidRequest | None = None


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
    faulty: set[int] = field(default_factory=set)             # injected faults (core/faults.py)
    fault_sleep_s: float = 0.0                                # injected latency for this batch


@dataclass
class _Plan:
    """One request, resolved: how its query vector is made and what it must not get back."""

    strategy: str
    user: int | None                 # known user index
    history: torch.Tensor | None     # chronological history to encode (None: stored vector)
    masked: torch.Tensor             # item indices never to return
    ignored: list[str]               # history ids the model does not know
    item: int | None = None          # similar_to: the query item
    candidates: torch.Tensor | None = None    # candidates: known ones, in the order sent, once
    ignored_candidates: list[str] = field(default_factory=list)
    error: InvalidRequest | None = None

    @property
    def space(self) -> str:
        return SIMILARITY if self.strategy == SIMILAR else RELEVANCE


def mmr(relevance: torch.Tensor, unit: torch.Tensor, k: int, diversity: float) -> list[int]:
    """Maximal marginal relevance (Carbonell & Goldstein, 1998): ``k`` of the ``c`` candidates
    picked greedily, each maximising ``(1 - diversity) * relevance - diversity * max cosine to
    the items already picked`` (``unit``: the candidates' L2-normalised vectors). Relevance is
    min-max scaled over the candidates, so that it and the cosine share a scale whatever the
    model's score range. Ties go to the earlier candidate (the list comes best first), so the
    first pick is the most relevant item. Returns positions in the candidate list, pick order."""
    c = int(relevance.shape[0])
    k = min(int(k), c)
    rel = relevance.to(torch.float64)
    span = rel.max() - rel.min() if c else rel.new_zeros(())
    rel = (rel - rel.min()) / span if c and span > 0 else torch.zeros_like(rel)
    gain_rel = (1.0 - diversity) * rel
    sim = (unit.to(torch.float64) @ unit.to(torch.float64).T) if c else rel.new_zeros((0, 0))
    redundancy = torch.zeros(c, dtype=torch.float64)
    taken = torch.zeros(c, dtype=torch.bool)
    picks: list[int] = []
    for _ in range(k):
        gain = (gain_rel - diversity * redundancy).masked_fill_(taken, float("-inf"))
        j = int(torch.argmax(gain))
        redundancy = sim[j].clone() if not picks else torch.maximum(redundancy, sim[j])
        picks.append(j)
        taken[j] = True
    return picks


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
        self._catalog_digest: str | None = None
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

    def categories_of(self, i: int) -> list[str]:
        """The category names of item ``i``."""
        d = self.data
        a, b = int(d.item_cat_indptr[i]), int(d.item_cat_indptr[i + 1])
        return [d.category_names[c] for c in d.item_cat_indices[a:b].tolist()]

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

    def _keep(self, req: RecRequest, plan: _Plan, idx: torch.Tensor) -> torch.Tensor:
        """The one masking rule, bool like ``idx``: which of these item indices the request may
        get back -- real items (an approximate index pads with -1), not masked (seen, excluded,
        the ``similar_to`` item itself), inside the category filters."""
        keep = idx >= 0
        if len(plan.masked):
            keep &= ~torch.isin(idx, plan.masked)
        if self._filtered(req):
            keep &= self._category_mask(req)[idx.clamp_min(0)]
        return keep

    @staticmethod
    def _depth(req: RecRequest) -> int:
        """How many ranked items a row needs: ``k``, or with diversity the pool MMR picks from."""
        if req.diversity <= 0:
            return req.k
        return max(req.k, min(MMR_POOL_MAX, max(MMR_POOL_PER_K * req.k, MMR_POOL_MIN)))

    # ---- step 1: resolve ----------------------------------------------------------------------
    def _plan(self, req: RecRequest) -> _Plan:
        d = self.data
        u = d.user_index.get(req.user_id) if req.user_id is not None else None
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
        if req.similar_to is not None:  # the item's vector is the query; the user only masks
            plan.strategy, plan.user, plan.history = SIMILAR, None, None
            plan.item = d.item_index.get(req.similar_to)
            if plan.item is None:
                plan.error = InvalidRequest(
                    UNKNOWN_ITEM, f"similar_to: item {req.similar_to!r} is not in the catalog of "
                                  f"model version {d.model_version}", status=404)
                return plan
            parts.append(torch.tensor([plan.item], dtype=torch.int64))  # never itself
        elif req.candidates is not None:
            known, unknown = self._ids_to_index(req.candidates)
            plan.strategy = RERANK
            plan.candidates = torch.tensor(list(dict.fromkeys(known)), dtype=torch.int64)
            plan.ignored_candidates = list(dict.fromkeys(unknown))
        if req.exclude:
            ex, _ = self._ids_to_index(req.exclude)
            if ex:
                parts.append(torch.tensor(ex, dtype=torch.int64))
        plan.masked = torch.unique(torch.cat(parts)) if parts else torch.empty(0, dtype=torch.int64)
        return plan

    # ---- step 2: query vectors ----------------------------------------------------------------
    def _vectors(self, plans: Sequence[_Plan]) -> dict[int, torch.Tensor]:
        """Row -> query vector (a user vector, or a similar_to item's unit vector) for every row
        that has one; one encoder call for the batch."""
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
            elif p.item is not None and p.error is None and bool(d.item_unit[p.item].any()):
                # (an item without a vector -- a model that has none, such as the popularity
                # baseline -- is like every item: its row takes the popularity order)
                out[r] = d.item_unit[p.item].to(torch.float32)
        for pos, r in enumerate(owners):
            if r >= 0:
                out[r] = enc[pos]
        for pos, r in enumerate(owners):
            if r < 0:  # stored vector + encode(stored + sent) - encode(stored)
                row = -1 - r
                out[row] = out[row] + d.user_vectors[plans[row].user].to(torch.float32) - enc[pos]
        return out

    # ---- step 3: rank -------------------------------------------------------------------------
    def _allowed(self, req: RecRequest, plan: _Plan, scores: torch.Tensor, idx: torch.Tensor,
                 depth: int) -> tuple[list[float], list[int]]:
        """The first ``depth`` items of a best-first list that the request may get back."""
        keep = self._keep(req, plan, idx)
        return scores[keep][:depth].tolist(), idx[keep][:depth].tolist()

    def _rank(self, reqs: Sequence[RecRequest], plans: Sequence[_Plan],
              vectors: Mapping[int, torch.Tensor]) -> dict[int, tuple[list[float], list[int]]]:
        d, n = self.data, self.data.n_items
        found: dict[int, tuple[list[float], list[int]]] = {}
        full: list[int] = []
        listed: list[int] = []
        searched: dict[str, list[int]] = {}
        for r, (req, p) in enumerate(zip(reqs, plans)):
            if p.error is not None:
                continue
            if p.candidates is not None:
                listed.append(r)
            elif self._filtered(req) or (r in vectors and getattr(d, p.space).search is None):
                full.append(r)
            elif r in vectors:
                searched.setdefault(p.space, []).append(r)
            else:  # popularity: candidates from the precomputed order
                depth = self._depth(req)
                order = self._popular_order[:min(n, depth + len(p.masked))]
                found[r] = self._allowed(req, p, d.popularity[order].to(torch.float32), order, depth)
        for space, rows in searched.items():  # one index call per space for the batch
            k_fetch = min(n, max(self._depth(reqs[r]) + len(plans[r].masked) for r in rows))
            top_s, top_i = getattr(d, space).search(torch.stack([vectors[r] for r in rows]), k_fetch)
            for row, r in enumerate(rows):
                depth = self._depth(reqs[r])
                s_row, i_row = self._allowed(reqs[r], plans[r], top_s[row], top_i[row], depth)
                if len(i_row) < min(depth, n - len(plans[r].masked)) and k_fetch < n:
                    full.append(r)  # the index ran out of unmasked candidates: score all
                else:
                    found[r] = (s_row, i_row)
        if full:
            found.update(self._rank_full(reqs, plans, vectors, full))
        if listed:
            found.update(self._rank_listed(reqs, plans, vectors, listed))
        return found

    def _rank_full(self, reqs, plans, vectors, full: list[int]) -> dict[int, tuple[list[float], list[int]]]:
        """Every item scored exactly (one matrix product per space for the rows that have a
        vector), masks applied, one top-k."""
        d, n = self.data, self.data.n_items
        rows = torch.empty((len(full), n), dtype=torch.float32)
        for space in (RELEVANCE, SIMILARITY):
            scored = [j for j, r in enumerate(full) if r in vectors and plans[r].space == space]
            if scored:
                rows[scored] = getattr(d, space).score(
                    torch.stack([vectors[full[j]] for j in scored])).to(torch.float32)
        everything = torch.arange(n)
        for row, r in enumerate(full):
            if r not in vectors:
                rows[row] = d.popularity.to(torch.float32)
            rows[row].masked_fill_(~self._keep(reqs[r], plans[r], everything), float("-inf"))
        top_s, top_i = torch.topk(rows, min(max(self._depth(reqs[r]) for r in full), n), dim=1,
                                  sorted=True)
        out = {}
        for row, r in enumerate(full):
            depth = self._depth(reqs[r])
            s_row, i_row = top_s[row, :depth], top_i[row, :depth]
            ok = torch.isfinite(s_row)  # filters left fewer than k items
            out[r] = (s_row[ok].tolist(), i_row[ok].tolist())
        return out

    def _rank_listed(self, reqs, plans, vectors, listed: list[int]) -> dict[int, tuple[list[float], list[int]]]:
        """Candidate lists: exact scores of each row's candidates (one gathered product for the
        rows with a user vector, popularity for the others), masks applied, best first; equal
        scores keep the order sent."""
        d = self.data
        scores: dict[int, torch.Tensor] = {}
        scored = [r for r in listed if r in vectors]
        if scored:
            width = max(len(plans[r].candidates) for r in scored)
            cand = torch.full((len(scored), width), -1, dtype=torch.int64)
            for j, r in enumerate(scored):
                cand[j, :len(plans[r].candidates)] = plans[r].candidates
            s = d.relevance.score_items(torch.stack([vectors[r] for r in scored]), cand)
            for j, r in enumerate(scored):
                scores[r] = s[j, :len(plans[r].candidates)].to(torch.float32)
        out = {}
        for r in listed:
            p = plans[r]
            s = scores[r] if r in scores else d.popularity[p.candidates].to(torch.float32)
            order = torch.sort(s, descending=True, stable=True).indices
            out[r] = self._allowed(reqs[r], p, s[order], p.candidates[order], self._depth(reqs[r]))
        return out

    # ---- step 4: diversify --------------------------------------------------------------------
    def _diversify(self, reqs: Sequence[RecRequest],
                   found: dict[int, tuple[list[float], list[int]]]) -> dict[int, tuple[list[float], list[int]]]:
        """Rows with ``diversity > 0``: the pool re-ranked by :func:`mmr` down to ``k`` (scores
        stay the model's). Rows at 0 are already ``k`` deep and pass unchanged."""
        for r, (scores, idx) in found.items():
            req = reqs[r]
            if req.diversity > 0 and idx:
                unit = self.data.item_unit[torch.tensor(idx, dtype=torch.int64)]
                pick = mmr(torch.tensor(scores, dtype=torch.float64), unit, req.k, req.diversity)
                found[r] = ([scores[j] for j in pick], [idx[j] for j in pick])
        return found

    # ---- step 5: answer -----------------------------------------------------------------------
    def _format(self, req: RecRequest, plan: _Plan, ranked: tuple[list[float], list[int]]) -> Outcome:
        d = self.data
        items = [{"item_id": d.item_ids[i], "score": round(float(s), 6), "title": d.titles[i],
                  "categories": self.categories_of(i)} for s, i in zip(*ranked)]
        body = {"user_id": req.user_id, "model_version": d.model_version,
                "strategy": plan.strategy, "items": items, "ignored_history": plan.ignored}
        if req.similar_to is not None:
            body["similar_to"] = req.similar_to
        if plan.candidates is not None:
            body["ignored_candidates"] = plan.ignored_candidates
        return Outcome(body, plan.strategy, len(plan.ignored))

    def catalog_page(self, offset: int, limit: int) -> Outcome:
        """A page of the item ids in index order, the total and a digest of the whole list
        (the gateway pages it only when the digest changed; items added with add-items are a
        new version, hence a new digest)."""
        d = self.data
        if self._catalog_digest is None:
            h = hashlib.sha256()
            for i in range(d.n_items):
                h.update(d.item_ids[i].encode("utf-8"))
                h.update(b"\n")
            self._catalog_digest = h.hexdigest()[:32]
        body = {"model_version": d.model_version, "strategy": CATALOG, "total": d.n_items,
                "offset": offset,
                "items": [d.item_ids[i] for i in range(offset, min(offset + limit, d.n_items))],
                "digest": self._catalog_digest}
        return Outcome(body, CATALOG, 0)

    def recommend(self, reqs: Sequence[RecRequest]) -> list[Outcome]:
        """Responses for a batch of validated requests, scored together (see the module doc);
        catalog pages are answered apart (nothing to score)."""
        if not any(r.catalog is not None for r in reqs):
            return self._recommend(reqs)
        out: list[Outcome | None] = [self.catalog_page(*r.catalog) if r.catalog is not None
                                     else None for r in reqs]
        rest = [i for i, r in enumerate(reqs) if r.catalog is None]
        if rest:
            for i, o in zip(rest, self._recommend([reqs[i] for i in rest])):
                out[i] = o
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _recommend(self, reqs: Sequence[RecRequest]) -> list[Outcome]:
        plans = [self._plan(req) for req in reqs]
        vectors = self._vectors(plans)
        found = self._diversify(reqs, self._rank(reqs, plans, vectors))
        return [Outcome({}, plan.strategy, 0, error=plan.error) if plan.error is not None
                else self._format(req, plan, found[r])
                for r, (req, plan) in enumerate(zip(reqs, plans))]


__all__ = ["Recommender", "ServingData", "Space", "Outcome", "BatchState", "mmr", "STRATEGIES",
           "PERSONALIZED", "HISTORY", "POPULAR", "SIMILAR", "RERANK", "CATALOG"]
