"""A convolutional VAE for images, registered as architecture "conv".

Data rows stay flat: x is (..., D) with D = C H W in C-major order (`x.reshape(-1, C, H, W)` is torch's NCHW
layout). The encoder pads the image at the bottom and right to a multiple of 2^L (L = len(conv_widths)), then
runs L stride-2 convolutions (4x4 kernels), the i-th to conv_widths[i] channels, each followed by `conv_blocks`
residual blocks, and a linear layer to q's raw parameters. The decoder mirrors it: a linear layer to the smallest
feature map, residual blocks, L stride-2 transposed convolutions (each followed by residual blocks) back to the
padded size, and a 3x3 convolution to the likelihood head's feature maps, cropped to H x W and laid out as the
head's flat pre-activations (`from_maps`). Leading sample dimensions are flattened into the batch and restored.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from ..nets import ACTIVATIONS
from .base import LatentModel
from .config import ModelConfig
from .registry import register


class ResidualBlock(nn.Module):
    """x + conv(act(conv(act(x)))), two 3x3 convolutions at a constant width; the second starts at zero, so a new
    block is the identity."""

    def __init__(self, width: int, activation: str):
        super().__init__()
        act = ACTIVATIONS[activation]
        self.body = nn.Sequential(act(), nn.Conv2d(width, width, 3, padding=1), act(),
                                  nn.Conv2d(width, width, 3, padding=1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _stage(conv: nn.Module, width: int, blocks: int, activation: str) -> list[nn.Module]:
    return [conv, ACTIVATIONS[activation](), *(ResidualBlock(width, activation) for _ in range(blocks))]


@register("conv")
class ConvVAE(LatentModel):
    """Convolutional encoder and decoder behind the same contract as the MLP VAE (see LatentModel); the config's
    image_shape ((C, H, W), or (H, W) for one channel), conv_widths, conv_blocks and activation shape it."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        if c.chw is None:
            raise ValueError("the conv architecture needs image_shape")
        self.channels, self.height, self.width = c.chw
        widths, depth = c.conv_widths, len(c.conv_widths)
        scale = 2 ** depth
        self.small = (math.ceil(self.height / scale), math.ceil(self.width / scale))  # the smallest feature map
        stages: list[nn.Module] = []
        cin = self.channels
        for w in widths:
            stages += _stage(nn.Conv2d(cin, w, 4, stride=2, padding=1), w, c.conv_blocks, c.activation)
            cin = w
        self.encoder = nn.Sequential(*stages)
        flat = widths[-1] * self.small[0] * self.small[1]
        self.enc_head = nn.Linear(flat, self.raw_size())
        self.dec_in = nn.Linear(c.latent_dim, flat)
        stages = [ACTIVATIONS[c.activation](), *(ResidualBlock(widths[-1], c.activation) for _ in range(c.conv_blocks))]
        for i in reversed(range(depth)):
            w_out = widths[max(i - 1, 0)]
            stages += _stage(nn.ConvTranspose2d(widths[i], w_out, 4, stride=2, padding=1), w_out, c.conv_blocks,
                             c.activation)
        self.dec_head = self.likelihood_head(None)
        pixels = self.height * self.width
        stages.append(nn.Conv2d(widths[0], self.dec_head.n_out // pixels, 3, padding=1))
        self.decoder = nn.Sequential(*stages)

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (N, C, H', W'), padded with zeros at the bottom and right to the multiple of 2^L."""
        images = x.reshape(-1, self.channels, self.height, self.width)
        scale = 2 ** len(self.config.conv_widths)
        return F.pad(images, (0, self.small[1] * scale - self.width, 0, self.small[0] * scale - self.height))

    def encoder_params(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's raw outputs (..., n_out) before link functions, e.g. [mu, log sigma^2]; x is (..., D)."""
        features = self.encoder(self._images(x)).flatten(1)
        return self.enc_head(features).reshape(*x.shape[:-1], -1)

    def decoder_outputs(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood head's flat pre-activations (..., n_out) for z (..., Dz)."""
        h = self.dec_in(z.reshape(-1, z.shape[-1])).unflatten(1, (self.config.conv_widths[-1], *self.small))
        maps = self.decoder(h)[..., :self.height, :self.width]
        return self.dec_head.from_maps(maps).reshape(*z.shape[:-1], -1)
