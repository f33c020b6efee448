"""Learned priors p(z): a mixture of K Gaussians with learned parameters (`--prior mog`) and the VampPrior
(`--prior vamp`, Tomczak & Welling 2018).

Both are mixtures of K diagonal Gaussians, returned as torch's MixtureSameFamily of Independent Normals (event
shape (Dz,), `log_prob` keeps leading sample dimensions, `sample` works); neither has a closed-form KL to q(z|x),
so a model with one of them trains with estimator A's Monte Carlo KL.

- mog: p(z) = sum_k pi_k N(z; m_k, diag exp(v_k)); the means m_k, log-variances v_k and mixture logits (pi =
  softmax) are parameters. The means start spread as draws of N(0, I), the variances at 1, the weights equal.
- vamp: p(z) = (1/K) sum_k q(z|u_k), the model's own encoder at K learned pseudo-inputs u_k, evaluated at each
  call so that gradients reach the u_k and the encoder. With a flow posterior the components are q's base
  Gaussians at u_k (a flow's density is known only at its own samples). Pseudo-inputs of data in [0, 1] (every
  likelihood of grey levels, and gaussian-sigmoid) are sigmoid(a_k) with a_k ~ N(0, 1) at the start: distinct
  mid-grey images in the data's range; for real-valued data u_k = a_k.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal, constraints

from ..likelihoods import data_support

LEARNED_PRIORS = ("mog", "vamp")
DEFAULT_COMPONENTS = {"mog": 10, "vamp": 500}  # vamp: the paper's K for MNIST


class GaussianMixture(MixtureSameFamily):
    """torch's MixtureSameFamily of Independent Normals whose `support` is its components' (all of R^Dz), not
    torch's MixtureSameFamilyConstraint wrapper, which `biject_to` (HMC, AIS, MAP restoration) and the grid's
    check of a real support do not know."""

    @property
    def support(self):
        return self.component_distribution.support

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log sum_k pi_k N(value; m_k, diag s_k^2), (...,) for value (..., Dz), as one (..., 2 Dz + 1) x
        (2 Dz + 1, K) matrix product and a logsumexp, instead of torch's (..., K, Dz) differences.

        The exponent -(z - m_k)^2 / 2 s_k^2 is expanded as z^2 . (-s^-2 / 2) + z . (m s^-2) - m^2 . s^-2 / 2, with
        the weights and normalizers in the constant column. The expansion cancels when z is near m_k, so it is
        formed in float64 (a float32 expansion would lose digits in proportion to s^-2) and the result returned in
        value's dtype.
        """
        base = self.component_distribution.base_dist
        loc, scale = base.loc.double(), base.scale.double()  # (K, Dz)
        precision = scale.pow(-2)
        constant = (torch.log_softmax(self.mixture_distribution.logits.double(), -1) - scale.log().sum(-1)
                    - 0.5 * (loc * loc * precision).sum(-1) - 0.5 * loc.shape[-1] * math.log(2 * math.pi))
        weights = torch.cat([-0.5 * precision.T, (loc * precision).T, constant[None]])  # (2 Dz + 1, K)
        z = value.double()
        features = torch.cat([z * z, z, torch.ones_like(z[..., :1])], -1)  # (..., 2 Dz + 1)
        return torch.logsumexp(features @ weights, -1).to(value.dtype)


def mixture(logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> Distribution:
    """sum_k softmax(logits)_k N(loc_k, diag scale_k^2): logits (K,), loc and scale (K, Dz); event shape (Dz,)."""
    components = Independent(Normal(loc, scale, validate_args=False), 1)
    return GaussianMixture(Categorical(logits=logits, validate_args=False), components, validate_args=False)


class MixturePrior(nn.Module):
    """p(z) = sum_k pi_k N(z; m_k, diag exp(v_k)) with K learned components (`--prior mog`)."""

    def __init__(self, latent_dim: int, components: int):
        super().__init__()
        self.loc = nn.Parameter(torch.randn(components, latent_dim))
        self.log_var = nn.Parameter(torch.zeros(components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(components))

    def forward(self, model=None) -> Distribution:
        return mixture(self.logits, self.loc, torch.exp(0.5 * self.log_var))


class VampPrior(nn.Module):
    """p(z) = (1/K) sum_k q(z|u_k) over K learned pseudo-inputs u_k (`--prior vamp`); `forward(model)` runs the
    model's encoder on them (through `model.top_posterior`: q's base Gaussian, or a hierarchy's q(z_L|x)), so the
    prior follows the encoder."""

    def __init__(self, x_dim: int, components: int, unit_range: bool):
        super().__init__()
        self.unit_range = unit_range
        self.pseudo_raw = nn.Parameter(torch.randn(components, x_dim))

    def pseudo_inputs(self) -> torch.Tensor:
        """The K pseudo-inputs u_k (K, D), in [0, 1] for data of that range."""
        return torch.sigmoid(self.pseudo_raw) if self.unit_range else self.pseudo_raw

    def forward(self, model) -> Distribution:
        base = model.top_posterior(self.pseudo_inputs()).base_dist  # batch (K,), event (Dz,)
        return mixture(base.loc.new_zeros(base.loc.shape[0]), base.loc, base.scale)


def unit_range(likelihood: str) -> bool:
    """Whether data of this likelihood lie in [0, 1] (pseudo-inputs through a sigmoid)."""
    return likelihood == "gaussian-sigmoid" or data_support(likelihood) is constraints.unit_interval


def build_prior(config) -> nn.Module | None:
    """The learned prior of a ModelConfig, or None for a fixed standard family. In a hierarchy
    (--stochastic-layers L > 1) it is p(z_L), the top layer's."""
    if config.prior == "mog":
        dim = config.latent_dims[-1] if config.stochastic_layers > 1 else config.latent_dim
        return MixturePrior(dim, config.prior_components)
    if config.prior == "vamp":
        return VampPrior(config.x_dim, config.prior_components, unit_range(config.likelihood))
    return None
