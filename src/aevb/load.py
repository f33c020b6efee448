"""`load_run`: a run folder written by `aevb train` (or `fit` with a run_dir and a config) back into a model."""
from __future__ import annotations

from pathlib import Path

import torch

from . import models
from .runs import CONFIG, WEIGHTS, RunError, _short, read_config, read_tensors
from .train.options import TrainConfig


def load_run(path, *, device: str | torch.device = "cpu"):
    """Rebuild a trained model from its run folder.

    Args:
        path: the run folder written by `aevb train`.
        device: where to put the model.

    Returns:
        (model, config): the model in eval mode with its weights loaded, and the run's config dict
        (keys `model`, `train`, `data`, ...).

    Raises:
        RunError: the folder is missing, of another format version, or its weights are not safetensors matching
            the config.
    """
    cfg = read_config(Path(path))
    model = models.build(model_config(cfg, path))
    state = read_tensors(Path(path) / WEIGHTS)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise RunError(f"{path}: weights do not match the config ({_short(e)})") from None
    if missing or unexpected:
        raise RunError(f"{path}: weights do not match the config (missing {missing}, unexpected {unexpected})")
    return model.to(device).eval(), cfg


def model_config(cfg: dict, run_dir):
    """The model config of a run's config dict (its architecture's config class); a tampered or foreign section
    is a RunError."""
    try:
        return models.config_of(cfg["model"])
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        raise RunError(f"{Path(run_dir) / CONFIG}: invalid model section ({_short(e)})") from None


def train_config(cfg: dict, run_dir) -> TrainConfig:
    """The TrainConfig of a run's config dict; a tampered or foreign section is a RunError."""
    try:
        return TrainConfig.from_dict(cfg["train"])
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        raise RunError(f"{Path(run_dir) / CONFIG}: invalid train section ({_short(e)})") from None
