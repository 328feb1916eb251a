"""Train the hybrid model with early stopping on validation NDCG@10 (protocol P1).

``fit(data, cfg)`` trains on ``data.train``, evaluates on ``data.valid`` every ``eval_every``
epochs (ranking all items seen in train, masking each user's train items) and keeps the best
weights; with ``cfg.refit_full`` it then refits on train + valid for the best number of epochs.
``evaluate_p1(model, data)`` reports the P1 test metrics: the main slice over items seen in
train_full, and the cold-item slice over items without any train_full interaction.

Losses (``cfg.loss``):

* ``softmax``: multinomial log-likelihood over every item seen in training (Mult-DAE);
* ``sampled_softmax``: in-batch negatives with logQ correction over (user, item) pairs;
* ``bpr``: one uniform negative per (user, item) pair.

Objectives (``cfg.objective``, softmax): ``denoise`` reconstructs the dropped-out history
(Mult-DAE); ``future`` gives a share of the users per batch a random time-ordered prefix as input
and their later items as targets (the rest denoise), which is what a temporal split asks for.
The user input of the pair losses leaves the target item out of its history bag. Softmax rows
are also augmented (``cfg.truncate``: the user's history up to a random earlier point;
``cfg.crop``: without a random share of its oldest items) and their targets normalised per user
(``cfg.target_norm``).

Everything is seeded (``cfg.seed``: torch and numpy); the same seed and thread count give the
same model. A weight EMA (``cfg.ema``) is what gets validated and returned.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from common.splits import SplitData, time_ranks
from training.config import TrainConfig
from training.evaluation import evaluate, split_cold_items
from core.encoder import Bags, recency_weights
from training.model import HybridModel, content_matrix

LOSSES = ("softmax", "sampled_softmax", "bpr")


@dataclass
class TrainResult:
    model: HybridModel
    config: TrainConfig
    history: list[dict] = field(default_factory=list)
    """One dict per epoch: epoch, loss, seconds and (on evaluated epochs) val_ndcg@10,
    val_recall@10 -- ready for ``mlflow.log_metrics(..., step=epoch)``."""
    best_epoch: int = 0
    best_val_ndcg: float = float("nan")
    val_cold_recall: float = float("nan")
    """Cold-item Recall@10 of the early-stopped model on the validation split (valid positives on
    items without train interactions, ranked among those items): the cold criterion a choice
    made on validation can see (the refit model has seen those items)."""
    seconds: float = 0.0
    fit_on: str = "train"


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _hidden(spec: str) -> tuple[int, ...]:
    return tuple(int(x) for x in str(spec).replace(" ", "").split(",") if x)


def build_model(data: SplitData, cfg: TrainConfig, fit_matrix: sp.csr_matrix) -> HybridModel:
    warm = np.diff(sp.csc_matrix(fit_matrix).indptr) > 0
    content = content_matrix(data.item_features, data.item_categories, cfg.category_weight) \
        if cfg.content else None
    return HybridModel(data.n_users, data.n_items, content, warm, dim=cfg.dim,
                       hidden=_hidden(cfg.hidden), dropout=cfg.dropout, user_ids=cfg.user_ids,
                       item_ids=cfg.item_ids, use_content=cfg.content,
                       n_text_features=data.n_features, recency_boost=cfg.recency_boost,
                       recency_tau=cfg.recency_tau, category_weight=cfg.category_weight,
                       linear_dim=cfg.linear_dim)


class _Trainer:
    def __init__(self, model: HybridModel, X: sp.csr_matrix, ts: sp.csr_matrix | None,
                 cfg: TrainConfig, device: torch.device, rng: np.random.Generator) -> None:
        self.model, self.cfg, self.device, self.rng = model, cfg, device, rng
        X = sp.csr_matrix(X, dtype=np.float32, copy=True)
        X.data[:] = 1.0
        X.sort_indices()
        self.X = X
        self.ranks = time_ranks(X, ts)
        self.n_per_user = np.diff(X.indptr)
        self.users = np.flatnonzero(self.n_per_user > 0)
        self.warm_idx = np.flatnonzero(np.diff(X.tocsc().indptr) > 0)
        self.warm_t = torch.from_numpy(self.warm_idx).to(device)
        coo = X.tocoo()
        self.pair_users, self.pair_items = coo.row.astype(np.int64), coo.col.astype(np.int64)
        # X and ranks share one canonical (row-major, sorted) layout, so pair k <-> data[k]
        assert np.array_equal(self.ranks.indices, X.indices) and len(coo.row) == X.nnz
        self.pair_ranks = self.ranks.data.copy()
        counts = np.bincount(self.pair_items, minlength=X.shape[1]).astype(np.float64)
        self.log_q = torch.from_numpy(np.log(np.maximum(counts, 1) / max(X.nnz, 1))
                                      .astype(np.float32)).to(device)
        self.col_of = np.full(X.shape[1], -1, dtype=np.int64)
        self.col_of[self.warm_idx] = np.arange(len(self.warm_idx))

    def _id_keep(self, n: int) -> torch.Tensor | None:
        p = self.cfg.id_dropout
        if p <= 0 or not self.model.use_item_ids:
            return None
        return (torch.rand(n, device=self.device) >= p).float()

    def _earlier_and_shorter(self, r: sp.csr_matrix, n: np.ndarray
                             ) -> tuple[sp.csr_matrix, np.ndarray]:
        """Augment a batch of time-rank rows: with probability ``truncate`` a row keeps only its
        first n' items (n' uniform in [0.3 n, n]: the same user earlier in time), then with
        probability ``crop`` it loses a random share (< half) of its oldest items (a shorter
        history, as many users have). Returns the rows re-ranked 1..n' and their lengths."""
        cfg = self.cfg
        if cfg.truncate <= 0 and cfg.crop <= 0:
            return r, n
        k = len(n)
        lengths = np.diff(r.indptr)
        if cfg.truncate > 0:
            lo = np.minimum(n, np.maximum(2, np.ceil(0.3 * n))).astype(np.int64)
            n_eff = lo + np.floor(self.rng.random(k) * (n - lo + 1)).astype(np.int64)
            n = np.where(self.rng.random(k) < cfg.truncate, n_eff, n)
        s0 = np.zeros(k, dtype=np.int64)
        if cfg.crop > 0:
            s0 = np.floor(self.rng.random(k) * 0.5 * n).astype(np.int64)
            s0 = np.where(self.rng.random(k) < cfg.crop, s0, 0)
        s0_e, n_e = np.repeat(s0, lengths), np.repeat(n, lengths)
        keep = (r.data > s0_e) & (r.data <= n_e)
        rows_e = np.repeat(np.arange(k), lengths)[keep]
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows_e, minlength=k))])
        out = sp.csr_matrix(((r.data - s0_e)[keep], r.indices[keep], indptr), shape=r.shape)
        return out, (n - s0).astype(self.n_per_user.dtype)

    # -- softmax over all warm items ------------------------------------------------------------
    def _softmax_batch(self, rows: np.ndarray) -> torch.Tensor:
        inp, tgt = self._softmax_rows(rows)
        m = self.model
        bags = Bags(torch.from_numpy(inp.indices.astype(np.int64)),
                    torch.from_numpy(inp.indptr[:-1].astype(np.int64)),
                    torch.from_numpy(inp.data.astype(np.float32))).to(self.device)
        u = m.user_vectors(bags, torch.from_numpy(rows).to(self.device), drop=True)
        v, b = m.item_vectors(self.warm_t, self._id_keep(len(self.warm_idx)))
        logits = u @ v.T + b
        logp = F.log_softmax(logits, dim=1)
        tcoo = tgt.tocoo()
        cols = torch.from_numpy(self.col_of[tcoo.col]).to(self.device)
        rws = torch.from_numpy(tcoo.row.astype(np.int64)).to(self.device)
        tw = torch.from_numpy(tcoo.data.astype(np.float32)).to(self.device)
        return -((logp[rws, cols] * tw).sum() / len(rows))

    def _softmax_rows(self, rows: np.ndarray) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """(encoder input weights, target weights) of a batch of users, one row each."""
        cfg = self.cfg
        r = self.ranks[rows]
        n = self.n_per_user[rows]
        r, n = self._earlier_and_shorter(r, n)
        lengths = np.diff(r.indptr)
        cut = n.copy()  # items with rank <= cut are input; denoise: everything
        use = np.zeros(len(rows), dtype=bool)
        if cfg.objective == "future":
            lo = np.maximum(1, np.ceil(cfg.future_min_frac * n)).astype(np.int64)
            c = lo + np.floor(self.rng.random(len(rows)) * np.maximum(n - lo, 0)).astype(np.int64)
            use = (self.rng.random(len(rows)) < cfg.future_mix) & (n >= 2)
            cut = np.where(use, np.minimum(c, n - 1), n)
        cut_e = np.repeat(cut, lengths)
        before = r.data <= cut_e
        after = ~before | ~np.repeat(use, lengths)
        w = recency_weights(np.maximum(cut_e - r.data, 0), cfg.recency_boost, cfg.recency_tau) * before
        # copy=True: eliminate_zeros compacts indices/indptr in place, and r's arrays are shared
        # with the target matrix below (without the copy, targets were read through the input's
        # compacted layout: wrong items for every row after the first future row)
        inp = sp.csr_matrix((w.astype(np.float32), r.indices, r.indptr), shape=r.shape, copy=True)
        inp.eliminate_zeros()
        tv = after.astype(np.float32)
        if cfg.target_recency > 0:
            n_e = np.repeat(n, lengths)
            tv = tv * (1.0 + cfg.target_recency * np.exp(-(n_e - r.data) / cfg.recency_tau))
        if cfg.target_norm:  # divide each row's targets by (their total weight)^target_norm
            per = np.bincount(np.repeat(np.arange(len(rows)), lengths), weights=tv,
                              minlength=len(rows))
            tv = tv / np.repeat(np.power(np.maximum(per, 1e-12), cfg.target_norm), lengths)
        tgt = sp.csr_matrix((tv.astype(np.float32), r.indices, r.indptr), shape=r.shape, copy=True)
        tgt.eliminate_zeros()
        return inp, tgt

    # -- pair losses ----------------------------------------------------------------------------
    def _pair_bags(self, sel: np.ndarray) -> Bags:
        """User input of positive pairs ``sel``: the history without the target item
        (leave-one-out) or, for a ``future_mix`` share of the pairs under the ``future``
        objective, only the items before the target in time. Recency weights are computed
        on the bag as given."""
        cfg = self.cfg
        users, t_rank = self.pair_users[sel], self.pair_ranks[sel]
        sub = self.ranks[users]
        lengths = np.diff(sub.indptr)
        t_e = np.repeat(t_rank, lengths)
        n_e = np.repeat(self.n_per_user[users], lengths).astype(np.float64)
        if cfg.objective == "future":
            prefix = np.repeat(self.rng.random(len(sel)) < cfg.future_mix, lengths)
        else:
            prefix = np.zeros(len(sub.data), dtype=bool)
        keep = np.where(prefix, sub.data < t_e, sub.data != t_e)
        # items after each kept one, in the bag: prefix bags end just before the target
        after = np.where(prefix, t_e - 1 - sub.data, n_e - sub.data - (sub.data < t_e))
        w = recency_weights(np.maximum(after, 0), cfg.recency_boost, cfg.recency_tau)
        rows = np.repeat(np.arange(len(users)), lengths)[keep]
        new_len = np.bincount(rows, minlength=len(users))
        offsets = np.concatenate([[0], np.cumsum(new_len)[:-1]]).astype(np.int64)
        return Bags(torch.from_numpy(sub.indices[keep].astype(np.int64)),
                    torch.from_numpy(offsets),
                    torch.from_numpy(w[keep])).to(self.device)

    def _pair_batch(self, sel: np.ndarray) -> torch.Tensor:
        cfg, m = self.cfg, self.model
        users, items = self.pair_users[sel], self.pair_items[sel]
        u_t = torch.from_numpy(users).to(self.device)
        u = m.user_vectors(self._pair_bags(sel), u_t, drop=True)
        if cfg.loss == "bpr":
            neg = self.warm_idx[self.rng.integers(0, len(self.warm_idx), len(sel))]
            both = torch.from_numpy(np.concatenate([items, neg])).to(self.device)
            v, b = m.item_vectors(both, self._id_keep(both.numel()))
            s = (u.repeat(2, 1) * v).sum(1) + b
            pos, negs = s[:len(sel)], s[len(sel):]
            return -F.logsigmoid(pos - negs).mean()
        it = torch.from_numpy(items).to(self.device)
        v, b = m.item_vectors(it, self._id_keep(it.numel()))
        logits = (u @ v.T + b) / cfg.temperature
        if cfg.logq:
            logits = logits - self.log_q[it].unsqueeze(0)
        same = it.unsqueeze(0) == it.unsqueeze(1)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
        target = torch.arange(len(sel), device=self.device)
        return F.cross_entropy(logits, target)

    def epoch(self, opt: torch.optim.Optimizer, ema: HybridModel | None = None) -> float:
        """One pass over the users (softmax) or positive pairs; ``ema`` (a copy of the model)
        gets an exponential moving average of the weights after every step."""
        self.model.train()
        if ema is not None:
            ema_p, src_p = list(ema.parameters()), list(self.model.parameters())
        cfg = self.cfg
        total, steps = 0.0, 0
        if cfg.loss == "softmax":
            order = self.rng.permutation(self.users)
            batches = [order[s:s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size)]
            fn = self._softmax_batch
        else:
            order = self.rng.permutation(len(self.pair_users))
            bs = cfg.batch_size * 8
            batches = [order[s:s + bs] for s in range(0, len(order), bs)]
            fn = self._pair_batch
        for batch in batches:
            opt.zero_grad(set_to_none=True)
            loss = fn(batch)
            loss.backward()
            opt.step()
            if ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(ema_p, [p.detach() for p in src_p], 1.0 - cfg.ema)
            total += float(loss.detach())
            steps += 1
        return total / max(steps, 1)


def _validate(model: HybridModel, X: sp.csr_matrix, hist: sp.csr_matrix, target: sp.csr_matrix,
              candidates: np.ndarray) -> dict:
    return evaluate(lambda users: model.score_users(hist, users), X, target,
                    ks=(10,), candidate_items=candidates)


def train(data: SplitData, cfg: TrainConfig, *, fit_on: str = "train",
          epochs: int | None = None) -> TrainResult:
    """Train one model. ``fit_on="train"``: early stopping on valid (at most ``cfg.max_epochs``);
    ``fit_on="train_full"``: exactly ``epochs`` epochs on train + valid, no validation."""
    if cfg.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {cfg.loss!r}")
    if not 0.0 <= cfg.target_norm <= 1.0:
        raise ValueError(f"target_norm must be in [0, 1], got {cfg.target_norm!r}")
    if not (0.0 <= cfg.truncate <= 1.0 and 0.0 <= cfg.crop <= 1.0):
        raise ValueError(f"truncate and crop are probabilities, got {cfg.truncate!r}, {cfg.crop!r}")
    if cfg.objective not in ("denoise", "future"):
        raise ValueError(f"objective must be 'denoise' or 'future', got {cfg.objective!r}")
    threads = torch.get_num_threads()
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(data, cfg, fit_on, epochs)
    finally:
        torch.set_num_threads(threads)


def _train(data: SplitData, cfg: TrainConfig, fit_on: str, epochs: int | None) -> TrainResult:
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    X = data.train if fit_on == "train" else data.train_full
    model = build_model(data, cfg, X).to(device)
    trainer = _Trainer(model, X, data.timestamps, cfg, device, rng)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                           fused=True)  # fused: ~6x faster steps on CPU than foreach
    ema = copy.deepcopy(model) if cfg.ema > 0 else None
    final = ema if ema is not None else model  # what is validated and returned
    validate = fit_on == "train"
    n_epochs = cfg.max_epochs if epochs is None else int(epochs)
    cand = data.warm_items(full=False)
    val_hist = model.history_matrix(data.train, data.timestamps) if validate else None
    result = TrainResult(model=model, config=cfg, fit_on=fit_on)
    best_state, best, bad = None, -1.0, 0
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n_epochs, desc=f"train[{cfg.loss}]", unit="epoch", leave=False)
    for ep in range(1, n_epochs + 1):
        te = time.perf_counter()
        loss = trainer.epoch(opt, ema)
        row = {"epoch": ep, "loss": loss}
        if validate and (ep % cfg.eval_every == 0 or ep == n_epochs):
            res = _validate(final, data.train, val_hist, data.valid, cand)
            row["val_ndcg@10"], row["val_recall@10"] = res["ndcg@10"], res["recall@10"]
            if res["ndcg@10"] > best:
                best, bad = res["ndcg@10"], 0
                best_state = copy.deepcopy(final.state_dict())
                result.best_epoch = ep
            else:
                bad += 1
        row["seconds"] = time.perf_counter() - te
        result.history.append(row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", val=f"{row.get('val_ndcg@10', float('nan')):.4f}")
        if validate and bad >= cfg.patience:
            break
    if bar is not None:
        bar.close()
    model = result.model = final
    if validate and best_state is not None:
        model.load_state_dict(best_state)
        result.best_val_ndcg = best
        _, val_cold, cold = split_cold_items(data.train, data.valid)
        if val_cold.nnz:
            result.val_cold_recall = _validate(model, data.train, val_hist, val_cold,
                                               cold)["recall@10"]
    else:
        result.best_epoch = n_epochs
    model.eval()
    result.seconds = time.perf_counter() - t0
    return result


def fit(data: SplitData, cfg: TrainConfig | None = None) -> TrainResult:
    """Early-stopped training on train; with ``cfg.refit_full`` a refit on train + valid for the
    best number of epochs (the refit's history is appended, ``fit_on`` says which model this is)."""
    cfg = cfg or TrainConfig()
    res = train(data, cfg, fit_on="train")
    if not cfg.refit_full:
        return res
    full = train(data, cfg, fit_on="train_full", epochs=max(res.best_epoch, 1))
    full.history = res.history + [dict(r, refit=True) for r in full.history]
    full.best_val_ndcg = res.best_val_ndcg
    full.val_cold_recall = res.val_cold_recall
    full.seconds += res.seconds
    full.best_epoch = res.best_epoch
    return full


def evaluate_p1(model: HybridModel, data: SplitData, ks=(10, 20)) -> dict:
    """P1 test metrics: main slice (candidates = items in train_full, train_full masked) and
    the cold-item slice (``cold_`` prefix; candidates = items without train_full interactions).
    The user input is each user's train_full history."""
    test_warm, test_cold, cold = split_cold_items(data.train_full, data.test)
    hist = model.history_matrix(data.train_full, data.timestamps)
    fn = lambda users: model.score_users(hist, users)  # noqa: E731
    out = evaluate(fn, data.train_full, test_warm, ks=ks, candidate_items=~cold)
    c = evaluate(fn, data.train_full, test_cold, ks=ks, candidate_items=cold)
    out.update({f"cold_{k}": v for k, v in c.items()})
    return out
