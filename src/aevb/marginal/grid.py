"""Exact log p(x) by quadrature on a latent grid, for Dz <= 2."""
from __future__ import annotations

import math
from functools import partial

import torch
from torch.distributions import constraints

from .common import _check_positive, _chunk_size, _evaluating, _log_likelihood, _summary
from .mlp_likelihood import mlp_log_likelihood


@torch.no_grad()
def grid(model, x: torch.Tensor, *, points_per_dim: int | None = None, limit: float = 6.0,
         batch_size: int = 100) -> dict:
    """log p(x) = log sum_z p(x|z) p(z) Delta over a regular grid on [-limit, limit]^Dz (Dz <= 2).

    Exact up to the grid's resolution: the spacing 2 limit / (points - 1) must be well below the posterior's
    standard deviation, and [-limit, limit] must hold the prior's mass (6 suits N(0, I); pass more for
    heavy-tailed priors). Defaults: 2001 points for Dz = 1, 301^2 for Dz = 2.

    Raises:
        ValueError: Dz > 2, or a prior whose support is not all of R^Dz.

    Returns:
        dict with (N,) `log_px` and floats `mean`, `stderr`.
    """
    prior = model.prior()
    dz = prior.event_shape[-1] if prior.event_shape else 1
    if dz > 2:
        raise ValueError(f"grid quadrature needs latent_dim <= 2, got {dz}; use is, hmc or ais")
    if not _is_real(prior.support):
        raise ValueError(f"grid quadrature needs a prior on all of R^Dz, got support {prior.support}")
    n = points_per_dim or (2001 if dz == 1 else 301)
    _check_positive(batch_size=batch_size)
    if n < 2:
        raise ValueError(f"points_per_dim must be >= 2, got {n}")
    axis = torch.linspace(-limit, limit, n, dtype=x.dtype, device=x.device)
    z = torch.cartesian_prod(*[axis] * dz).view(-1, dz)  # (G, Dz)
    log_cell = dz * math.log(2 * limit / (n - 1))
    log_lik = mlp_log_likelihood(model) or partial(_log_likelihood, model)
    with _evaluating(model, None, x.device):
        log_px = torch.cat([_grid_batch(log_lik, xb, z, prior.log_prob(z)) for xb in x.split(batch_size)])
    return _summary(log_px + log_cell)


def _grid_batch(log_lik, x: torch.Tensor, z: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    lse = x.new_full(x.shape[:1], -math.inf)
    chunk = _chunk_size(*x.shape)  # (chunk, B, D)
    for zc, lpc in zip(z.split(chunk), log_prior.split(chunk)):
        log_joint = log_lik(zc.unsqueeze(1), x) + lpc.unsqueeze(1)  # (G_chunk, B)
        lse = torch.logaddexp(lse, torch.logsumexp(log_joint, 0))
    return lse


def _is_real(support) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real
