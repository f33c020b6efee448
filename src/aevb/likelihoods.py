"""Observation models p(x|z): heads that map decoder features to a torch Distribution (paper, Appendix C)."""
from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal, constraints


class GreyLevelBernoulli(Bernoulli):
    """Bernoulli over pixels whose `log_prob` also accepts grey levels x in [0, 1].

    log p(x|logits) = x log sigmoid(l) + (1 - x) log sigmoid(-l), the cross-entropy the paper uses on MNIST grey
    levels (Appendix C). For x not in {0, 1} this is not a normalized density; it is the paper's objective.
    """

    support = constraints.unit_interval


class BernoulliHead(nn.Module):
    """Bernoulli MLP decoder output: logits = W h + b (the sigmoid lives inside the log-probability)."""

    def __init__(self, in_dim: int, x_dim: int):
        super().__init__()
        self.out = nn.Linear(in_dim, x_dim)

    def forward(self, h: torch.Tensor) -> Independent:
        return Independent(GreyLevelBernoulli(logits=self.out(h), validate_args=False), 1)


class GaussianHead(nn.Module):
    """Gaussian MLP decoder output: mean = W4 h + b4 (optionally through a sigmoid), log sigma^2 = W5 h + b5.

    The sigmoid-constrained mean is the paper's Frey Face decoder (section 5); the log-variance stays a linear,
    input-dependent output.
    """

    def __init__(self, in_dim: int, x_dim: int, sigmoid_mean: bool = False):
        super().__init__()
        self.out = nn.Linear(in_dim, 2 * x_dim)  # one matmul for [mean, log-variance]
        self.sigmoid_mean = sigmoid_mean

    def forward(self, h: torch.Tensor) -> Independent:
        mean, log_var = self.out(h).chunk(2, dim=-1)
        if self.sigmoid_mean:
            mean = torch.sigmoid(mean)
        return Independent(Normal(mean, torch.exp(0.5 * log_var), validate_args=False), 1)


LIKELIHOODS = {
    "bernoulli": lambda in_dim, x_dim: BernoulliHead(in_dim, x_dim),
    "gaussian": lambda in_dim, x_dim: GaussianHead(in_dim, x_dim, sigmoid_mean=False),
    "gaussian-sigmoid": lambda in_dim, x_dim: GaussianHead(in_dim, x_dim, sigmoid_mean=True),
}
