"""Estimates of the marginal likelihood log p(x): importance sampling, the paper's HMC estimator (Appendix D),
annealed importance sampling and, for Dz <= 2, exact quadrature on a latent grid.
"""
from __future__ import annotations

import torch

from .ais import ais, sigmoid_schedule
from .grid import grid
from .hmc import hmc_estimator
from .importance import importance_sampling

__all__ = ["METHODS", "ais", "grid", "hmc_estimator", "importance_sampling", "log_likelihood", "sigmoid_schedule"]

METHODS = {"is": importance_sampling, "hmc": hmc_estimator, "ais": ais, "grid": grid}


def log_likelihood(model, x: torch.Tensor, method: str, **kw) -> dict:
    """log p(x) per datapoint by one of METHODS; keyword arguments go to that method.

    Raises:
        ValueError: unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return METHODS[method](model, x, **kw)
