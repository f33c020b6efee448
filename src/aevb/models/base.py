"""What every built-in architecture shares: the prior p(z), q(z|x) from the encoder's raw outputs, p(x|z) through a
likelihood head, and sampling. An architecture adds its networks: `encoder_params(x)` and `decoder_outputs(z)`.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from ..distributions.families import POSTERIORS, PRIORS, analytic_kl
from ..likelihoods import LIKELIHOODS
from .config import ModelConfig


class LatentModel(nn.Module):
    """The model contract `prior()`, `encode(x)`, `decode(z)` over an architecture's networks.

    Each returns a torch Distribution whose event dimension is explicit, so `log_prob` sums over pixels or latent
    dimensions and keeps any leading sample dimensions: z from `encode(x).rsample((S,))` is (S, B, Dz) and
    `decode(z).log_prob(x)` is (S, B). A subclass builds its networks after calling `__init__` and implements
    `encoder_params(x)` (raw parameters of q, (..., n_out)) and `decoder_outputs(z)`, the input of `dec_head`.
    """

    config_class = ModelConfig

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.family = POSTERIORS[c.posterior]
        # whether KL(q(z|x) || p(z)) has a closed form, decided from the two families (no data, no encoder)
        self.has_analytic_kl = analytic_kl(c.posterior, c.prior)
        self._prior = PRIORS[c.prior][1]
        self.register_buffer("prior_loc", torch.zeros(c.latent_dim))
        self.register_buffer("prior_scale", torch.ones(c.latent_dim))

    def likelihood_head(self, in_dim: int | None) -> nn.Module:
        """The configured p(x|z) head on features of width in_dim (None: the decoder computes its pre-activations)."""
        c = self.config
        channels = c.chw[0] if c.chw is not None else 1
        return LIKELIHOODS[c.likelihood](in_dim, c.x_dim, levels=c.levels, mixtures=c.mixtures, channels=channels)

    def prior(self) -> Distribution:
        """p(z), event shape (Dz,): N(0, I) by default, else the standard member of the configured family."""
        if self.config.prior == "normal":
            return Independent(Normal(self.prior_loc, self.prior_scale, validate_args=False), 1)
        return self._prior(self.prior_loc)

    def encoder_params(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's raw outputs (..., n_out) before link functions, e.g. [mu, log sigma^2]."""
        raise NotImplementedError

    def decoder_outputs(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's features (..., F) that `dec_head` turns into p(x|z)."""
        raise NotImplementedError

    def posterior(self, raw: torch.Tensor) -> Distribution:
        """q(z|x) from raw encoder outputs (pass raw.detach() for the stop-gradient q of STL and DReG)."""
        return self.family.build(raw, self.config.latent_dim)

    def encode(self, x: torch.Tensor) -> Distribution:
        """q(z|x); x is (..., D), the distribution has batch shape (...) and event shape (Dz,).

        For the paper's "normal" family: N(mu(x), diag sigma^2(x)) from the outputs [mu, log sigma^2].
        """
        return self.posterior(self.encoder_params(x))

    def decode(self, z: torch.Tensor) -> Distribution:
        """p(x|z) with event shape (D,); z is (..., Dz)."""
        return self.dec_head(self.decoder_outputs(z))

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels, (...,): the value of decode(z).log_prob(x), computed by the likelihood head
        in fewer passes over the (..., D) outputs where it can (Bernoulli with an output layer). The
        marginal-likelihood estimators use it when a model has it."""
        return self.dec_head.log_likelihood(self.decoder_outputs(z), x)

    @torch.no_grad()
    def sample(self, n: int, *, mean: bool = True) -> torch.Tensor:
        """n draws x ~ p(x|z), z ~ p(z); with mean=True the decoder's mean (the usual picture) instead of a draw."""
        p = self.decode(self.prior().sample((n,)))
        return p.mean if mean else p.sample()
