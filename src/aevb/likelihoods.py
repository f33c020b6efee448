"""Observation models p(x|z): heads that map decoder features to a torch Distribution (paper, Appendix C).

Each head is one output layer `out` (nn.Linear) and `from_outputs(a)`, which turns that layer's n_out
pre-activations into the distribution; full VB (fullvb.py) draws the pre-activations itself and calls
`from_outputs`. A head built with in_dim=None has no output layer: its model computes the pre-activations itself
(the conv decoder, as feature maps turned into the flat layout by `from_maps`).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F
from torch.distributions import Bernoulli, Categorical, ContinuousBernoulli, Independent, Normal, constraints

from .discretized import LEVELS, DiscretizedLogistic, DiscretizedLogisticMixture


class GreyLevelBernoulli(Bernoulli):
    """Bernoulli over pixels whose `log_prob` also accepts grey levels x in [0, 1].

    log p(x|logits) = x log sigmoid(l) + (1 - x) log sigmoid(-l), the cross-entropy the paper uses on MNIST grey
    levels (Appendix C). For x not in {0, 1} this is not a normalized density; it is the paper's objective.
    """

    support = constraints.unit_interval


class _Head(nn.Module):
    """An output layer `out` and `from_outputs`; p(x|h) = from_outputs(out(h)). `support` is the set of data
    values the likelihood models (the trainer refuses data outside it); `levels` is the number of evenly spaced
    values of [0, 1] it puts all its mass on, when it is such a probability mass (None otherwise)."""

    out: nn.Linear | None
    n_out: int
    support = constraints.real
    levels: int | None = None

    def _output_layer(self, in_dim: int | None, n_out: int) -> None:
        """`out` = Linear(in_dim, n_out), or no layer (None) for in_dim=None."""
        self.n_out = n_out
        self.out = nn.Linear(in_dim, n_out) if in_dim is not None else None

    def forward(self, h: torch.Tensor) -> Independent:
        return self.from_outputs(self.out(h) if self.out is not None else h)

    def from_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """The flat pre-activations (..., n_out) of feature maps (..., n_out / (H W), H, W) computed by a conv
        decoder: map m holds outputs m H W .. (m + 1) H W - 1 (for per-value parameters: [a_1(D), a_2(D), ...] with
        each block in C-major order)."""
        return maps.flatten(-3)

    def log_likelihood(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|h) summed over x's dimensions: self(h).log_prob(x), shape broadcast(h, x)[:-1]."""
        return self(h).log_prob(x)


def product_group(d: int) -> int | None:
    """A group size in [16, 112] dividing d, for a sum of logs of numbers in [1/2, 1) taken as the logs of products
    of `group` of them (a product stays above 2^-112, a normal float32); None where there is none."""
    return next((g for g in range(112, 15, -1) if d % g == 0), None)


def _softplus_sum(a: torch.Tensor) -> torch.Tensor:
    """sum_d softplus(a_d) over the last dim as sum_d max(a_d, 0) + sum_groups log prod_d (1 + exp(-|a_d|)).

    One exp per element and one log per group of up to 64 elements, instead of an exp and a log1p per element:
    under torch.compile it is one fused loop, used when the group size divides D (56 for MNIST's 784 and Frey
    Face's 560; D without a divisor in [16, 64] falls back to softplus). Each factor lies in (1, 2],
    so a product of 64 stays below 2^64 in float32. Rounding: a product of n factors is off by about n ulp, and
    1 + exp(-|a|) drops an exp(-|a|) below one ulp of 1, so the sum can come out low by at most D ulp(1) (5e-5
    nats for MNIST in float32). At a_d = 0 exactly autograd gives this form the subgradient 0 instead of
    sigmoid(0); it is meant for evaluation.
    """
    d = a.shape[-1]
    group = next((g for g in range(64, 15, -1) if d % g == 0), None)
    if group is None:
        return F.softplus(a).sum(-1)
    factors = (1 + torch.exp(-a.abs())).unflatten(-1, (d // group, group))
    return a.clamp(min=0).sum(-1) + factors.prod(-1).log().sum(-1)


class BernoulliHead(_Head):
    """Bernoulli MLP decoder output: logits = W h + b (the sigmoid lives inside the log-probability)."""

    support = constraints.unit_interval  # grey levels (the paper's cross-entropy), or the continuous Bernoulli's

    def __init__(self, in_dim: int | None, x_dim: int, dist=GreyLevelBernoulli):
        super().__init__()
        self._output_layer(in_dim, x_dim)
        self.dist = dist

    def log_likelihood(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """sum_d x_d a_d - softplus(a_d) with a = W h + b: the same value as self(h).log_prob(x), with fewer passes.

        The data term sum_d x_d a_d = h . (W^T x) + b . x costs a product over the hidden width instead of the D
        pixels, which leaves one softplus and one sum over the (..., D) logits. Importance sampling decodes
        thousands of z per datapoint, so this is where its time goes.
        """
        if self.dist is not GreyLevelBernoulli or self.out is None:
            return super().log_likelihood(h, x)
        data_term = (h * (x @ self.out.weight)).sum(-1) + x @ self.out.bias
        a = self.out(h)
        return data_term - (_softplus_sum(a) if torch.compiler.is_compiling() else F.softplus(a).sum(-1))

    def from_outputs(self, a: torch.Tensor) -> Independent:
        """p(x|z) from the output layer's pre-activations a = W h + b (the logits)."""
        return Independent(self.dist(logits=a, validate_args=False), 1)


class GaussianHead(_Head):
    """Gaussian MLP decoder output: mean = W4 h + b4 (optionally through a sigmoid), log sigma^2 = W5 h + b5.

    The sigmoid-constrained mean is the paper's Frey Face decoder (section 5); the log-variance stays a linear,
    input-dependent output.
    """

    def __init__(self, in_dim: int | None, x_dim: int, sigmoid_mean: bool = False):
        super().__init__()
        self._output_layer(in_dim, 2 * x_dim)  # one matmul for [mean, log-variance]
        self.sigmoid_mean = sigmoid_mean

    def from_outputs(self, a: torch.Tensor) -> Independent:
        """p(x|z) from the output layer's pre-activations a = [W4 h + b4, W5 h + b5]."""
        mean, log_var = a.chunk(2, dim=-1)
        if self.sigmoid_mean:
            mean = torch.sigmoid(mean)
        return Independent(Normal(mean, torch.exp(0.5 * log_var), validate_args=False), 1)


class GreyLevels(Categorical):
    """Categorical over K grey levels per pixel, evaluated at grey levels x in [0, 1] (level round(x (K - 1))).

    `mean` and `sample` are returned as grey levels in [0, 1] so pictures need no special case.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        k = self.logits.shape[-1]
        return super().log_prob((value * (k - 1)).round().long())

    @property
    def mean(self) -> torch.Tensor:
        k = self.logits.shape[-1]
        return (self.probs * torch.linspace(0, 1, k, device=self.probs.device, dtype=self.probs.dtype)).sum(-1)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return super().sample(sample_shape).to(self.logits.dtype) / (self.logits.shape[-1] - 1)


class CategoricalHead(_Head):
    """Softmax over K grey levels for each pixel: logits = W h + b reshaped to (..., D, K)."""

    support = constraints.unit_interval

    def __init__(self, in_dim: int | None, x_dim: int, levels: int):
        super().__init__()
        self._output_layer(in_dim, x_dim * levels)
        self.levels = levels

    def from_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """Maps (..., C K, H, W), map c K + k holding level k's logits of channel c, to the flat (D, K) layout."""
        return maps.unflatten(-3, (-1, self.levels)).movedim(-3, -1).flatten(-4)

    def from_outputs(self, a: torch.Tensor) -> Independent:
        """p(x|z) from the output layer's pre-activations a = W h + b, D * K of them."""
        logits = a.unflatten(-1, (-1, self.levels))  # (..., D, K)
        return Independent(GreyLevels(logits=F.log_softmax(logits, -1), validate_args=False), 1)


class DiscretizedLogisticHead(_Head):
    """Discretized logistic per value (8-bit images, x = k / 255): a = [loc(D), log_scale(D)], locations on [0, 1]'s
    scale as they are (no link), log scales clamped to [-10, 10]."""

    support = constraints.unit_interval
    levels = LEVELS

    def __init__(self, in_dim: int | None, x_dim: int):
        super().__init__()
        self._output_layer(in_dim, 2 * x_dim)

    def from_outputs(self, a: torch.Tensor) -> Independent:
        """p(x|z) from the pre-activations a = [loc, log_scale]."""
        loc, log_scale = a.chunk(2, dim=-1)
        return Independent(DiscretizedLogistic(loc, log_scale, validate_args=False), 1)


class LogisticMixtureHead(_Head):
    """A mixture of K discretized logistics over each pixel's C channels, with PixelCNN++'s coupling of a channel's
    location to the earlier channels' values (coefficients through tanh). Per pixel M = K (1 + 2 C + C (C - 1) / 2)
    outputs; a is M blocks of the P = D / C pixels: K blocks of logits, K C of locations, K C of log scales and
    K C (C - 1) / 2 of coefficients (each group component-major)."""

    support = constraints.unit_interval
    levels = LEVELS

    def __init__(self, in_dim: int | None, x_dim: int, mixtures: int, channels: int):
        super().__init__()
        if x_dim % channels:
            raise ValueError(f"{x_dim} values are not whole pixels of {channels} channels")
        self.mixtures, self.channels, self.pixels = mixtures, channels, x_dim // channels
        self.per_pixel = mixtures * (1 + 2 * channels + channels * (channels - 1) // 2)
        self._output_layer(in_dim, self.per_pixel * self.pixels)

    def from_outputs(self, a: torch.Tensor) -> DiscretizedLogisticMixture:
        """p(x|z) from the pre-activations a (M blocks of P, see the class)."""
        k, c = self.mixtures, self.channels
        blocks = a.unflatten(-1, (self.per_pixel, self.pixels))
        logits, loc, log_scale, coeffs = blocks.split([k, k * c, k * c, k * c * (c - 1) // 2], dim=-2)
        return DiscretizedLogisticMixture(logits, loc.unflatten(-2, (k, c)), log_scale.unflatten(-2, (k, c)),
                                          torch.tanh(coeffs).unflatten(-2, (k, -1)))


def _discretized_logistic(in_dim, x_dim, mixtures=1, channels=1, **_):
    if mixtures == 1:
        return DiscretizedLogisticHead(in_dim, x_dim)
    return LogisticMixtureHead(in_dim, x_dim, mixtures, channels)


# name -> head factory (in_dim, x_dim, *, levels, mixtures, channels), each taking the options it uses.
LIKELIHOODS = {
    "bernoulli": lambda in_dim, x_dim, **_: BernoulliHead(in_dim, x_dim),
    "continuous-bernoulli": lambda in_dim, x_dim, **_: BernoulliHead(in_dim, x_dim, ContinuousBernoulli),
    "gaussian": lambda in_dim, x_dim, **_: GaussianHead(in_dim, x_dim, sigmoid_mean=False),
    "gaussian-sigmoid": lambda in_dim, x_dim, **_: GaussianHead(in_dim, x_dim, sigmoid_mean=True),
    "categorical": lambda in_dim, x_dim, levels=16, **_: CategoricalHead(in_dim, x_dim, levels),
    "discretized-logistic": _discretized_logistic,
}

# The head class of each likelihood (its facts, such as `support`, without building it).
HEAD_CLASSES = {"bernoulli": BernoulliHead, "continuous-bernoulli": BernoulliHead, "gaussian": GaussianHead,
                "gaussian-sigmoid": GaussianHead, "categorical": CategoricalHead,
                "discretized-logistic": DiscretizedLogisticHead}


def data_support(name: str):
    """The constraint data must satisfy for the likelihood `name` (unit interval for grey levels, real otherwise)."""
    return HEAD_CLASSES[name].support


def discrete_levels(config) -> int | None:
    """L when p(x|z) of a model config (or its config.json section) is a probability mass over L evenly spaced
    values of [0, 1] per datapoint value, so that -log p(x) / (D ln 2) is a true bits/dim: 256 for
    discretized-logistic, `levels` for categorical; None for densities and for the Bernoulli on grey levels."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    name = get("likelihood", "bernoulli")
    if name == "categorical":
        return int(get("levels", 16))
    return HEAD_CLASSES[name].levels
