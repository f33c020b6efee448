"""Run folders written by hand for the picture tests: config.json (data.image_shape [H, W], [C, H, W] or null) and
the weights of an untrained MLP VAE with x_dim = C*H*W, without training or a data set on disk; and an in-memory
data set to go with it."""
import math
import types
from pathlib import Path

import torch

from aevb import VAE, ModelConfig, TrainConfig, runs


def make_run(run: Path, image_shape, *, x_dim: int | None = None, latent_dim: int = 3, hidden=(16,),
             class_names=None, seed: int = 0, gain: float = 4.0) -> VAE:
    """Write a run folder for an untrained VAE; the output layer's weights are scaled by `gain` so that decoded
    images span more of [0, 1] than an untrained decoder's greys around 0.5. Returns the model (eval mode)."""
    torch.manual_seed(seed)
    d = x_dim or math.prod(image_shape)
    model = VAE(ModelConfig(x_dim=d, latent_dim=latent_dim, hidden=tuple(hidden)))
    with torch.no_grad():
        model.dec_head.out.weight.mul_(gain)
        model.dec_head.out.bias.normal_(0, 1, generator=torch.Generator().manual_seed(seed))
    data = {"dataset": "handmade", "split": None, "data_dir": None, "x_dim": d,
            "image_shape": list(image_shape) if image_shape is not None else None, "n_train": 40, "n_test": 30}
    if class_names is not None:
        data["class_names"] = list(class_names)
    run.mkdir(parents=True)
    runs.write_json(run / runs.CONFIG, {
        "format_version": runs.FORMAT_VERSION, "preset": None, "data": data, "model": model.config.to_dict(),
        "train": TrainConfig(samples=1000).to_dict(), "created": "2024-01-01T00:00:00"})
    runs.write_tensors(run / runs.WEIGHTS, model.state_dict())
    for i, n in enumerate((100, 1000, 10000)):
        runs.append_metrics(run, {"samples_seen": n, "train_elbo": -50.0 + i, "test_elbo": -51.0 + i})
    return model.eval()


def make_data(x_dim: int, image_shape, *, n_classes: int = 3, seed: int = 0):
    """A stand-in for a DataSet: 40 train and 30 test rows in [0, 1], labels 0..n_classes-1 in turn."""
    gen = torch.Generator().manual_seed(seed)
    return types.SimpleNamespace(
        name="handmade", train=torch.rand(40, x_dim, generator=gen), test=torch.rand(30, x_dim, generator=gen),
        train_labels=torch.arange(40) % n_classes, test_labels=torch.arange(30) % n_classes,
        image_shape=tuple(image_shape) if image_shape is not None else None)
