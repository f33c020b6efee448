"""The variational auto-encoder of section 3: Gaussian MLP encoder q(z|x), prior N(0, I), MLP decoder p(x|z),
registered as architecture "mlp".

The model only builds distributions; estimators (estimators.py) turn them into bounds and losses.
"""
from __future__ import annotations

import torch
from torch import nn

from ..nets import mlp
from .base import LatentModel
from .config import INITS, ModelConfig
from .registry import register

__all__ = ["INITS", "ModelConfig", "VAE"]


@register("mlp")
class VAE(LatentModel):
    """Variational auto-encoder with the public contract `prior()`, `encode(x)`, `decode(z)` (see LatentModel):
    an MLP encoder with one linear head for q's raw parameters, and an MLP decoder (the encoder's widths reversed)
    under the likelihood head's output layer.
    """

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        self.encoder = mlp(c.x_dim, c.hidden, c.activation)
        enc_out = c.hidden[-1] if c.hidden else c.x_dim
        # one matmul for all of q's raw parameters, e.g. [mu, log sigma^2]
        self.enc_head = nn.Linear(enc_out, self.raw_size())
        dec_hidden = tuple(reversed(c.hidden))
        self.decoder = mlp(c.latent_dim, dec_hidden, c.activation)
        dec_out = dec_hidden[-1] if dec_hidden else c.latent_dim
        self.dec_head = self.likelihood_head(dec_out)
        if c.init == "paper":
            self._paper_init()

    @torch.no_grad()
    def _paper_init(self) -> None:
        for name, p in self.named_parameters():
            if not name.startswith(("flow.", "learned_prior.")):  # those keep their own initialization
                p.normal_(0.0, 0.01)
        dz = self.config.latent_dim
        if self.config.posterior == "normal":
            self.enc_head.weight[dz:2 * dz].zero_()
            self.enc_head.bias[dz:2 * dz].zero_()
        self.dec_head.out.bias.zero_()

    def encoder_params(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's raw outputs (..., n_out) before link functions, e.g. [mu, log sigma^2]."""
        return self.enc_head(self.encoder(x))

    def decoder_outputs(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's last hidden layer (..., H), the input of the likelihood head's output layer."""
        return self.decoder(z)
