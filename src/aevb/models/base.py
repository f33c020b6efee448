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
from .flows import FlowPosterior, build_flow
from .priors import build_prior


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
        self.flow = build_flow(c)  # None without --flow (then no state_dict keys of its own)
        self.learned_prior = build_prior(c)  # None for a standard family
        # whether KL(q(z|x) || p(z)) has a closed form, decided from the two families (no data, no encoder); a
        # learned prior or a flow posterior has none
        learned = self.flow is not None or self.learned_prior is not None
        self.has_analytic_kl = False if learned else analytic_kl(c.posterior, c.prior)
        self._prior = None if self.learned_prior is not None else PRIORS[c.prior][1]
        self.register_buffer("prior_loc", torch.zeros(c.latent_dim))
        self.register_buffer("prior_scale", torch.ones(c.latent_dim))

    def raw_size(self) -> int:
        """Width of the encoder's raw output: q's (base) parameters and, with a flow, what the flow takes."""
        extra = self.flow.n_raw if self.flow is not None else 0
        return self.family.n_out(self.config.latent_dim) + extra

    def likelihood_head(self, in_dim: int | None) -> nn.Module:
        """The configured p(x|z) head on features of width in_dim (None: the decoder computes its pre-activations)."""
        c = self.config
        channels = c.chw[0] if c.chw is not None else 1
        return LIKELIHOODS[c.likelihood](in_dim, c.x_dim, levels=c.levels, mixtures=c.mixtures, channels=channels)

    def prior(self) -> Distribution:
        """p(z), event shape (Dz,): N(0, I) by default, else the standard member of the configured family, or the
        learned mixture (mog, vamp: see priors.py), built at each call so that gradients reach its parameters."""
        if self.learned_prior is not None:
            return self.learned_prior(self)
        if self.config.prior == "normal":
            return Independent(Normal(self.prior_loc, self.prior_scale, validate_args=False), 1)
        return self._prior(self.prior_loc)

    def encoder_params(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's raw outputs (..., n_out) before link functions, e.g. [mu, log sigma^2]."""
        raise NotImplementedError

    def decoder_outputs(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's features (..., F) that `dec_head` turns into p(x|z)."""
        raise NotImplementedError

    def base_posterior(self, raw: torch.Tensor) -> Distribution:
        """q(z|x) before any flow: the family built from the first n_out raw outputs."""
        dz = self.config.latent_dim
        return self.family.build(raw[..., :self.family.n_out(dz)], dz)

    def top_posterior(self, x: torch.Tensor) -> Distribution:
        """The Gaussian of q over the latents a learned prior covers, at inputs x (..., D): q(z|x) before any flow
        (a hierarchy: q(z_L|x)). The VampPrior's components are it at the pseudo-inputs."""
        return self.base_posterior(self.encoder_params(x))

    def posterior(self, raw: torch.Tensor) -> Distribution:
        """q(z|x) from raw encoder outputs (pass raw.detach() for the stop-gradient q of STL and DReG); with a flow
        a FlowPosterior, whose log_prob is known at its own draws only (flows.py)."""
        if self.flow is None:
            return self.family.build(raw, self.config.latent_dim)
        n = self.family.n_out(self.config.latent_dim)
        return FlowPosterior(self.base_posterior(raw), self.flow, raw[..., n:])

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
