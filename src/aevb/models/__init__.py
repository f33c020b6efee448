"""Models behind one contract: `prior()`, `encode(x)` and `decode(z)` return torch distributions with an explicit
event dimension (`log_prob` sums over pixels or latent dimensions and keeps leading sample dimensions).

Each architecture is a file of its own that registers its model class with `@register("name")` (see
`registry.py`); `build(section)` turns a run's `model` config section back into a model.
"""
from __future__ import annotations

from .mlp import INITS, VAE, ModelConfig
from .registry import MODELS, build, config_of, register

__all__ = ["INITS", "MODELS", "VAE", "ModelConfig", "build", "config_of", "register"]
