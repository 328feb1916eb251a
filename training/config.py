"""The training stage's tunables in one typed place (``python -m training`` exposes each field as
a ``--flag-name`` option, so defaults live here and nowhere else)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """The hybrid model (training/model.py) and how it is trained (training/train.py).

    Defaults are the configuration chosen on the P1 *validation* split of ml-latest-small
    (3-seed mean validation NDCG@10, ``python -m training.experiments --no-test``; the search
    is logged in docs/quality.md); the test split is only read for reporting.
    """

    loss: str = "softmax"
    """``softmax`` (full, over the items seen in training), ``sampled_softmax`` (in-batch
    negatives with logQ correction) or ``bpr`` (one uniform negative per positive)."""
    objective: str = "future"
    """``denoise``: predict the (dropped-out) history itself (Mult-DAE); ``future``: predict the
    user's later training items from a random time-ordered prefix, as P1 tests."""
    future_min_frac: float = 0.5
    """``future``: the prefix keeps at least this share of the user's items."""
    future_mix: float = 0.85
    """``future``: share of users per batch that get a prefix/future target (rest: denoise)."""
    recency_boost: float = 50.0
    """History input weight 1 + boost * exp(-(items after this one) / tau): recent items count
    more (0 = plain binary bag, as Mult-DAE)."""
    recency_tau: float = 7.0
    truncate: float = 0.8
    """softmax: probability that a training row sees its user's history only up to a random
    length in [0.3 n, n] (the same user earlier in time: more distinct inputs and targets)."""
    crop: float = 0.5
    """softmax: probability that a training row then loses a random share (< half) of its
    oldest items (a shorter history, as many users have)."""
    target_norm: float = 0.5
    """softmax: a row's target log-likelihoods are divided by (their total weight)^this:
    0 = plain sum (Mult-DAE; users with many targets dominate), 1 = mean (every user counts
    the same)."""
    target_recency: float = 0.0
    """softmax: weight each target item 1 + this * exp(-(items after it) / tau)."""
    dim: int = 600
    """User/item vector size (the last encoder layer)."""
    linear_dim: int = 0
    """How many of the ``dim`` user-vector units skip the tanh (a linear item-item path)."""
    hidden: str = ""
    """Comma-separated hidden layer sizes of the history encoder before ``dim`` ('' = none)."""
    dropout: float = 0.3
    """Dropout on the (L2-normalised) history bag."""
    user_ids: bool = False
    """Add a user id embedding to the history encoding (then users are no longer served from
    the history alone)."""
    item_ids: bool = True
    content: bool = True
    category_weight: float = 1.0
    id_dropout: float = 0.6
    """Probability of zeroing an item's id part in a training step (content must stand alone)."""
    lr: float = 2e-3
    weight_decay: float = 0.0
    ema: float = 0.99
    """Per-step decay of an exponential moving average of the weights, which is what is
    validated and returned (0 = off)."""
    batch_size: int = 128
    """Users per step (softmax) or positive pairs per step / 8 (sampled_softmax, bpr)."""
    temperature: float = 1.0
    """sampled_softmax: logits are divided by this."""
    logq: bool = True
    """sampled_softmax: subtract log(item frequency) from in-batch logits."""
    max_epochs: int = 150
    eval_every: int = 2
    patience: int = 8
    """Evaluations without a better validation NDCG@10 before stopping."""
    refit_full: bool = True
    """After early stopping, refit on train + valid for the best number of epochs."""
    seed: int = 42
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    num_threads: int = 0
    """torch intra-op CPU threads while training (0 = leave torch's setting). On a shared
    machine 1 avoids the large slowdowns of threads contending for busy cores."""
    progress: bool = True


__all__ = ["TrainConfig"]
