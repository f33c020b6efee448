"""Optimizers for Algorithm 1: the paper's Adagrad (section 5 and the authors' code), Adam and AdamW.

All use torch's fused CPU/GPU kernels (one pass over the parameters per step instead of one small op per tensor).
"""
from __future__ import annotations

import torch

OPTIMIZERS = ("adagrad", "adam", "adamw")


def make_optimizer(name: str, params, *, lr: float, n_train: int, weight_decay: str | float):
    """Build an optimizer by name.

    "adagrad" is the paper's: p <- p - lr g / (sqrt(sum of g^2) + 1e-8). Its warm-up (minibatches that only
    accumulate squared gradients) is a step size of 0 for those steps, set by the trainer's schedule.
    weight_decay="prior" adds p / N to each per-datapoint gradient: a N(0, I) prior on the weights scaled by M/N per
    minibatch of M, the paper's MAP estimate.
    """
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    decay = 1.0 / n_train if weight_decay == "prior" else float(weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=1e-8, weight_decay=decay, fused=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay, fused=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay, fused=True)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
