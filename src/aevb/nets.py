"""Multilayer perceptrons that return plain tensors (the paper's Appendix C networks and deeper variants)."""
from __future__ import annotations

import torch
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


# the activations of the hand-written paths (train/fused.py, marginal/mlp_likelihood.py)
INPLACE = ("tanh", "relu", "elu")


def inplace_activation(name: str, like: torch.Tensor):
    """(scale, act) for a hand-written forward pass: the product writes scale (W h + b) into a buffer and act turns
    it into the activation in place. tanh(u) = 2 sigmoid(2 u) - 1 with scale 2, as torch's sigmoid is several times
    cheaper than its tanh; act is None for "" (no hidden layer). `like` gives the dtype and device of its constant."""
    if name == "tanh":
        minus_one = torch.tensor(-1.0, dtype=like.dtype, device=like.device)  # 0-dim: a Python number would be
        return 2.0, lambda h: torch.add(minus_one, torch.sigmoid(h, out=h), alpha=2, out=h)  # made a tensor per call
    return 1.0, {"relu": lambda h: h.clamp_(min=0), "elu": nn.functional.elu_, "": None}[name]


def mlp_stack(seq) -> tuple[list[nn.Linear], str] | None:
    """The Linear layers of a stack as `mlp` builds it (Linear, activation, Linear, activation, ...) and the key of
    ACTIVATIONS its activations share ("" for a stack without hidden layers; ELU only with alpha 1); None for any
    other module. The hand-written paths (train/fused.py, marginal/mlp_likelihood.py) take these stacks."""
    if not isinstance(seq, nn.Sequential) or len(seq) % 2:
        return None
    linears, acts = list(seq)[0::2], list(seq)[1::2]
    kinds = {type(m) for m in acts}
    if not all(type(m) is nn.Linear for m in linears) or len(kinds) > 1:
        return None
    name = next((key for key, cls in ACTIVATIONS.items() if kinds == {cls}), None) if acts else ""
    if name is None or (name == "elu" and any(m.alpha != 1.0 for m in acts)):
        return None
    return linears, name
