"""Refusing data the trainer cannot use, and the error a run of non-finite updates ends with."""
from __future__ import annotations

import math

import torch
from torch.distributions import constraints

from ..likelihoods import data_support


def check_data(train_x: torch.Tensor, test_x: torch.Tensor, likelihood: str | None = None,
               x_dim: int | None = None) -> None:
    """Refuse data the trainer cannot use, with a one-line message naming the problem.

    Raises:
        ValueError: a split is empty or not (N, D), the splits or the model disagree on D, a value is NaN or
            infinite, or a value lies outside the likelihood's support (e.g. [0, 1] for the likelihoods of grey
            levels: bernoulli, continuous-bernoulli, categorical). Rows read from disk as they are needed
            (`aevb.data.user.Rows`, 8-bit levels in [0, 1] by construction) are checked for their shape only.
    """
    support = data_support(likelihood) if likelihood is not None else None
    for name, x in (("training", train_x), ("test", test_x)):
        if not torch.is_tensor(x):  # rows left on disk (aevb.data.user.Rows): checked as they were read
            if len(x.shape) != 2 or x.shape[0] == 0:
                raise ValueError(f"the {name} data must be a non-empty (N, D) array, got shape {tuple(x.shape)}")
            continue
        if x.ndim != 2:
            raise ValueError(f"the {name} data must be an (N, D) tensor, got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"the {name} set is empty")
        if not x.is_floating_point():
            raise ValueError(f"the {name} data must be floating point, got {x.dtype}")
        lo, hi = (float(v) for v in torch.aminmax(x))  # one pass; a NaN anywhere makes both NaN
        if not (math.isfinite(lo) and math.isfinite(hi)):
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"the {name} data has {bad} non-finite values (NaN or Inf)")
        if support is constraints.unit_interval:
            outside = lo < 0 or hi > 1
        else:
            outside = support not in (None, constraints.real) and not bool(support.check(x).all())
        if outside:
            where = "[0, 1]" if support is constraints.unit_interval else f"its support ({support})"
            raise ValueError(f"the {name} data has values outside {where} (min {lo:g}, max {hi:g}), which the "
                             f"{likelihood} likelihood cannot model")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"training data has {train_x.shape[1]} values per datapoint, test data {test_x.shape[1]}")
    if x_dim is not None and train_x.shape[1] != x_dim:
        raise ValueError(f"the data has {train_x.shape[1]} values per datapoint, the model expects {x_dim}")


class NonFiniteError(FloatingPointError):
    """Too many updates in a row had a NaN or Inf loss or gradient; the last checkpoint is intact."""

    @classmethod
    def after(cls, trainer) -> "NonFiniteError":
        """The error that stops `trainer`, saying where it stopped and which checkpoint is intact."""
        t = trainer
        where = f"step {t.checkpoint_step}" if t.checkpoint_step is not None else "none written yet"
        return cls(f"training stopped: {t.streak} updates in a row had a NaN or infinite loss or gradient (at step "
                   f"{t.step}, {t.samples_seen:,} datapoints; {t.skipped} skipped in all); the last checkpoint "
                   f"({where}) is intact: --resume it with a higher --max-nonfinite, or train again with a lower --lr "
                   "or a --grad-clip")


def check_minibatch(batch_size: int, n_train: int, total: int) -> None:
    """Refuse a minibatch larger than the training set, or a budget of `total` datapoints under one minibatch.

    Raises:
        ValueError: (one line) naming the sizes and what to change.
    """
    if batch_size > n_train:
        raise ValueError(f"a minibatch of {batch_size:,} is larger than the {n_train:,} training datapoints; use a "
                         f"batch size of at most {n_train:,}")
    if total < batch_size:
        raise ValueError(f"{total:,} datapoints to train on are fewer than one minibatch of {batch_size:,}; train on "
                         "more or use a smaller batch size")
