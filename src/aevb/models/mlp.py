"""The variational auto-encoder of section 3: Gaussian MLP encoder q(z|x), prior N(0, I), MLP decoder p(x|z),
registered as architecture "mlp".

The model only builds distributions; estimators (estimators.py) turn them into bounds and losses.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from .. import options as opt
from ..distributions.families import POSTERIORS, PRIORS, analytic_kl, check_pair
from ..likelihoods import LIKELIHOODS
from ..nets import ACTIVATIONS, mlp
from .registry import register

INITS = ("paper", "torch")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a VAE: the data dimension `x_dim` and the options declared below (each with its help, as
    `aevb train --help` shows it). init="paper" draws all weights from N(0, 0.01^2) and zeroes the encoder's
    log-variance weights and bias and the decoder's output bias; prior=None is the posterior family's standard
    member (N(0, I) for "normal")."""

    x_dim: int
    latent_dim: int = opt.option(20, "Nz, the dimension of z (default 20)")
    hidden: tuple[int, ...] = opt.option(
        (500,), "comma-separated hidden widths of the encoder (decoder mirrors)", parse=opt.widths)
    activation: str = opt.option("tanh", "the hidden layers' nonlinearity", choices=lambda: sorted(ACTIVATIONS))
    likelihood: str = opt.option(
        "bernoulli", "p(x|z): bernoulli (MNIST grey levels), gaussian(-sigmoid) (Frey), categorical, "
        "continuous-bernoulli", choices=lambda: sorted(LIKELIHOODS))
    init: str = opt.option("torch", "paper: N(0, 0.01^2) weights; torch: PyTorch's default", choices=INITS)
    posterior: str = opt.option(
        "normal", "family of q(z|x) (default normal)", choices=lambda: sorted(POSTERIORS),
        apply=lambda v: {"posterior": v, "prior": None})  # a new posterior brings its own default prior
    prior: str | None = opt.option(
        None, "p(z), of matching support (default: the posterior's standard member)", choices=lambda: sorted(PRIORS))
    levels: int = opt.option(16, "K grey levels of the categorical likelihood (default 16)")

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.posterior in POSTERIORS and self.prior is None:
            object.__setattr__(self, "prior", POSTERIORS[self.posterior].prior)
        check_pair(self.posterior, self.prior)
        checks = [
            (self.x_dim > 0, f"x_dim must be positive, got {self.x_dim}"),
            (self.latent_dim > 0, f"latent_dim must be positive, got {self.latent_dim}"),
            (all(h > 0 for h in self.hidden), f"hidden widths must be positive, got {self.hidden}"),
            (self.activation in ACTIVATIONS,
             f"unknown activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}"),
            (self.likelihood in LIKELIHOODS,
             f"unknown likelihood {self.likelihood!r}; choose from {', '.join(LIKELIHOODS)}"),
            (self.init in INITS, f"unknown init {self.init!r}; choose from {', '.join(INITS)}"),
            (self.levels >= 2, f"levels must be >= 2, got {self.levels}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        opt.check_fields(cls, d, "model")
        return cls(**d)


@register("mlp")
class VAE(nn.Module):
    """Variational auto-encoder with the public contract `prior()`, `encode(x)`, `decode(z)`.

    Each returns a torch Distribution whose event dimension is explicit (`Independent(..., 1)`), so
    `log_prob` sums over pixels or latent dimensions and keeps any leading sample dimensions:
    z from `encode(x).rsample((S,))` is (S, B, Dz) and `decode(z).log_prob(x)` is (S, B).
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
        self.encoder = mlp(c.x_dim, c.hidden, c.activation)
        enc_out = c.hidden[-1] if c.hidden else c.x_dim
        # one matmul for all of q's raw parameters, e.g. [mu, log sigma^2]
        self.enc_head = nn.Linear(enc_out, self.family.n_out(c.latent_dim))
        dec_hidden = tuple(reversed(c.hidden))
        self.decoder = mlp(c.latent_dim, dec_hidden, c.activation)
        dec_out = dec_hidden[-1] if dec_hidden else c.latent_dim
        self.dec_head = LIKELIHOODS[c.likelihood](dec_out, c.x_dim, levels=c.levels)
        self.register_buffer("prior_loc", torch.zeros(c.latent_dim))
        self.register_buffer("prior_scale", torch.ones(c.latent_dim))
        if c.init == "paper":
            self._paper_init()

    @torch.no_grad()
    def _paper_init(self) -> None:
        for p in self.parameters():
            p.normal_(0.0, 0.01)
        dz = self.config.latent_dim
        if self.config.posterior == "normal":
            self.enc_head.weight[dz:].zero_()
            self.enc_head.bias[dz:].zero_()
        self.dec_head.out.bias.zero_()

    def prior(self) -> Distribution:
        """p(z), event shape (Dz,): N(0, I) by default, else the standard member of the configured family."""
        if self.config.prior == "normal":
            return Independent(Normal(self.prior_loc, self.prior_scale, validate_args=False), 1)
        return self._prior(self.prior_loc)

    def encoder_params(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's raw outputs (..., n_out) before link functions, e.g. [mu, log sigma^2]."""
        return self.enc_head(self.encoder(x))

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
        return self.dec_head(self.decoder(z))

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels, (...,): the value of decode(z).log_prob(x), computed by the likelihood head
        in fewer passes over the (..., D) outputs where it can (Bernoulli). The marginal-likelihood estimators use it
        when a model has it."""
        return self.dec_head.log_likelihood(self.decoder(z), x)

    @torch.no_grad()
    def sample(self, n: int, *, mean: bool = True) -> torch.Tensor:
        """n draws x ~ p(x|z), z ~ p(z); with mean=True the decoder's mean (the usual picture) instead of a draw."""
        p = self.decode(self.prior().sample((n,)))
        return p.mean if mean else p.sample()
