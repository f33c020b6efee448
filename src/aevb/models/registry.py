"""The model registry: architecture name -> model class (whose `config_class` is its frozen config dataclass).

A run's config.json stores the model section as the config's fields; its `arch` key names the architecture, and a
section without one is the paper's MLP VAE ("mlp"), as every run folder written before the registry existed.
The built-in architectures ("mlp", "conv") share one config class, `ModelConfig`, whose `arch` field picks the
model; an architecture with a config class of its own is found by that class. A config with
`stochastic_layers` > 1 builds the hierarchical model registered for its architecture (`register_hierarchical`,
hierarchical.py), not an architecture of its own: `--arch` stays the network family.
"""
from __future__ import annotations

MODELS: dict[str, type] = {}
HIERARCHICAL: dict[str, type] = {}  # architecture -> its model with several stochastic layers
DEFAULT_ARCH = "mlp"


def _registrar(table: dict, name: str):
    def decorate(cls):
        table[name] = cls
        cls.arch = name
        return cls
    return decorate


def register(name: str):
    """Class decorator: make a model class (with a `config_class` attribute) buildable by name."""
    return _registrar(MODELS, name)


def register_hierarchical(arch: str):
    """Class decorator: the model that a config of architecture `arch` with stochastic_layers > 1 builds."""
    return _registrar(HIERARCHICAL, arch)


def config_of(section: dict):
    """The model config of a config.json model section (its `arch`, "mlp" when it has none).

    Raises:
        ValueError: an unknown architecture or a section its config refuses.
    """
    d = dict(section)
    arch = d.get("arch", DEFAULT_ARCH)
    if arch not in MODELS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(sorted(MODELS))}")
    cls = MODELS[arch].config_class
    if "arch" in {f for f in getattr(cls, "__dataclass_fields__", {})}:
        d["arch"] = arch
    else:
        d.pop("arch", None)
    return cls.from_dict(d)


def build(config):
    """The model of a config made by `config_of` (or any registered model's config): the architecture its `arch`
    names, else the registered model whose config class it is."""
    arch = getattr(config, "arch", None)
    if getattr(config, "stochastic_layers", 1) > 1:
        if arch not in HIERARCHICAL:
            raise ValueError(f"no hierarchical model for --arch {arch}")
        return HIERARCHICAL[arch](config)
    if arch in MODELS and isinstance(config, MODELS[arch].config_class):
        return MODELS[arch](config)
    for cls in MODELS.values():
        if isinstance(config, cls.config_class):
            return cls(config)
    raise ValueError(f"no registered model takes a {type(config).__name__}")
