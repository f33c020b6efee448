"""Models behind one contract: `prior()`, `encode(x)` and `decode(z)` return torch distributions with an explicit
event dimension (`log_prob` sums over pixels or latent dimensions and keeps leading sample dimensions).

Each architecture is a file of its own that registers its model class with `@register("name")` (see
`registry.py`): `mlp.py` (the paper's VAE) and `conv.py` (a convolutional VAE for images) share `base.py` (prior,
posterior, likelihood head, sampling) and one `ModelConfig` (`config.py`), whose `arch` picks the architecture;
`hierarchical.py` is the MLP with `stochastic_layers` > 1 (L stochastic layers, one concatenated z), built by
`build` from the same config; `build(config_of(section))` turns a run's `model` config section back into a model.
"""
from __future__ import annotations

from .config import INITS, ModelConfig
from .base import LatentModel
from .mlp import VAE
from .conv import ConvVAE
from .hierarchical import HierarchicalVAE
from .registry import HIERARCHICAL, MODELS, build, config_of, register, register_hierarchical

__all__ = ["HIERARCHICAL", "INITS", "MODELS", "ConvVAE", "HierarchicalVAE", "LatentModel", "VAE", "ModelConfig",
           "build", "config_of", "register", "register_hierarchical"]
