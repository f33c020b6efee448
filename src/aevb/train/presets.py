"""Named settings: the paper's Figure 2 panels (section 5) and aevb's defaults, as plain dicts of config fields,
and `merge`, the one place where a preset and the options given on top of it become a run's settings."""
from __future__ import annotations

import copy

# The paper's step-size rule (`--lr auto`): the best of these after 5e4 datapoints.
PAPER_LR_CANDIDATES = (0.01, 0.02, 0.1)
# A data set's own likelihood where it is not aevb's default (bernoulli), used when no preset says otherwise.
DATASET_LIKELIHOOD = {"frey": "gaussian-sigmoid"}


def _paper(dataset: str, latent_dim: int, hidden: int, likelihood: str, lr: float) -> dict:
    return {
        "data": {"dataset": dataset, "split": "paper"},
        "model": {"latent_dim": latent_dim, "hidden": (hidden,), "activation": "tanh", "likelihood": likelihood,
                  "init": "paper"},
        "train": {"estimator": "sgvb_b", "num_samples": 1, "optimizer": "adagrad", "lr": lr, "schedule": "constant",
                  "warmup_steps": 100, "weight_decay": "prior", "batch_size": 100, "replacement": True,
                  "samples": 10_000_000, "binarize": "none"},
    }


# aevb's defaults (no --preset): chosen to reach the best test ELBO within 1e7 datapoints. Two ELU
# layers of 512 units, Adam with a cosine decay to zero and an average of the weights (Polyak/EMA).
DEFAULTS: dict = {
    "data": {"dataset": "mnist", "split": "standard"},
    "model": {"latent_dim": 20, "hidden": (512, 512), "activation": "elu", "likelihood": "bernoulli",
              "init": "torch"},
    "train": {"estimator": "auto", "num_samples": 1, "optimizer": "adam", "lr": 1e-3, "schedule": "cosine",
              "warmup_steps": 0, "weight_decay": 0.0, "batch_size": 100, "replacement": False,
              "samples": 10_000_000, "binarize": "none", "ema": 0.999},
}


PRESETS: dict[str, dict] = {
    **{f"paper-mnist-{nz}": _paper("mnist", nz, 500, "bernoulli", 0.02) for nz in (3, 5, 10, 20, 200)},
    # Step sizes: the winners of the paper's rule (`--lr auto`: best of 0.01, 0.02, 0.1 after 5e4 datapoints).
    **{f"paper-frey-{nz}": _paper("frey", nz, 200, "gaussian-sigmoid", 0.01) for nz in (2, 5, 10, 20)},
    # Burda et al. (2015)'s one-stochastic-layer architecture on dynamically binarized MNIST (60k/10k), trained as a
    # plain VAE with sticking-the-landing gradients for 6e7 datapoints (1,000 epochs); Burda et al. trained 3,280
    # epochs (--samples 196800000). Add --estimator iwae --num-samples 50 --gradient dreg for their IWAE.
    "iwae-mnist": {
        "data": DEFAULTS["data"],
        "model": {**DEFAULTS["model"], "latent_dim": 50, "hidden": (200, 200), "activation": "tanh"},
        "train": {**DEFAULTS["train"], "samples": 60_000_000, "binarize": "dynamic", "gradient": "stl"},
    },
}


def merge(preset: str | None, given: dict[str, dict], *, dataset_default: bool = True) -> dict[str, dict]:
    """A run's settings: the options `given` (per section: data, model, train) over the preset (or aevb's
    defaults when `preset` is None). Returns new dicts; the presets are never modified.

    Without a preset, a data set with a likelihood of its own (Frey Face: gaussian-sigmoid) gets it unless the
    likelihood is given.
    """
    base = copy.deepcopy(PRESETS[preset] if preset else DEFAULTS)
    for section, values in given.items():
        base[section].update(values)
    dataset = base["data"]["dataset"]
    if dataset_default and not preset and dataset in DATASET_LIKELIHOOD and "likelihood" not in given.get("model", {}):
        base["model"]["likelihood"] = DATASET_LIKELIHOOD[dataset]
    return base
