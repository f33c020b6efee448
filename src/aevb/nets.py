"""Multilayer perceptrons that return plain tensors (the paper's Appendix C networks and deeper variants)."""
from __future__ import annotations

from torch import nn

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
}


def mlp(in_dim: int, hidden: tuple[int, ...], activation: str) -> nn.Sequential:
    """Hidden layers only: Linear -> activation for each width in `hidden`.

    Args:
        in_dim: input width.
        hidden: widths of the hidden layers, e.g. (500,) for the paper's one-layer networks.
        activation: a key of ACTIVATIONS.

    Returns:
        An nn.Sequential mapping (..., in_dim) to (..., hidden[-1]) (identity if `hidden` is empty).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), ACTIVATIONS[activation]()]
        in_dim = width
    return nn.Sequential(*layers)
