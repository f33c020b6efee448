"""How to train (Algorithm 1): `TrainConfig`, and `DataOptions` (which built-in data set and split).

Each option is declared once, as a field with its default, help and choices (`aevb.options.option`); the parser,
the preset merge, `--resume`'s list of run-defining flags and config.json derive from the declarations.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass

from .. import options as opt
from ..data import DATASETS, SPLITS
from ..estimators import ESTIMATORS, GRADIENTS
from ..optim import OPTIMIZERS
from .fused import PRECISIONS, STEPS
from .presets import PAPER_LR_CANDIDATES

SCHEDULES = ("constant", "cosine")
BINARIZE = ("none", "dynamic", "static")
# The fixed binarization that logged ELBOs of binarized runs use (and `aevb eval` repeats).
EVAL_BINARIZATION_SEEDS = {"train": 12345, "test": 54321}


def _estimators() -> list[str]:
    return ["auto", *sorted(ESTIMATORS)]


def _number(text: str, low: float, strict: bool, what: str) -> float:
    """A finite number above `low` (strictly with `strict`); a one-line ArgumentTypeError otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if math.isinf(value) or not (value > low if strict else value >= low):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_number(text: str) -> float:
    return _number(text, 0.0, True, "a positive finite number")


def nats(text: str) -> float:
    return _number(text, 0.0, False, "a finite number of nats >= 0")


def datapoints(text: str) -> int:
    """A datapoint count >= 0 such as 0, 5e5 or 250000."""
    value = _number(text, 0.0, False, "a whole count of datapoints >= 0 such as 5e5")
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected a whole count of datapoints >= 0 such as 5e5, got {text!r}")
    return int(value)


@dataclass(frozen=True)
class DataOptions:
    """What a run trains on: a built-in data set and its split, or your own data (`data`, docs/data.md)."""

    dataset: str = opt.option("mnist", "built-in data set (default mnist)", choices=lambda: sorted(DATASETS))
    split: str = opt.option("standard", "standard (60k/10k for MNIST) or paper (50k train)", choices=SPLITS)
    data: str | None = opt.option(
        None, "your own data instead of --dataset: a folder of images (searched recursively; sub-folders are "
        "classes), a .npy/.npz array or a .csv/.parquet table of numbers", metavar="PATH")
    test_data: str | None = opt.option(None, "with --data: the test set, a second source of the same kind",
                                       metavar="PATH")
    test_fraction: float = opt.option(
        0.1, "with --data and no --test-data: the fraction held out as the test set (a fixed seeded draw, its "
        "indices stored in the run folder; default 0.1)", parse=opt.fraction)
    image_size: tuple[int, int] | None = opt.option(
        None, "with --data: resize images (shorter side) and crop the centre to H or HxW", parse=opt.image_size,
        metavar="H[xW]")
    channels: int | None = opt.option(None, "with --data: 1 (grey) or 3 (RGB); default: grey when every image is",
                                      choices=(1, 3), parse=int)
    skip_bad: bool = opt.option(False, "with --data: leave out images that cannot be decoded (counted) instead of "
                                "stopping at the first")


@dataclass(frozen=True)
class TrainConfig:
    """How to train (Algorithm 1). Every field is described by its option's help (`aevb train --help`).

    Training length is counted in datapoints evaluated (`samples`), the paper's x-axis, or in `epochs`: exactly one
    of them. With `ema` > 0 the logged ELBOs, pictures and saved weights use the average of the weights (`*_raw`
    fields: the last iterate). `shards` splits the global minibatch into shards with their own random streams, so a
    run gives the same result on any number of torchrun processes that divides it (None: the number of processes).
    `lr_candidates` non-empty is the paper's step-size rule: each candidate trains `search_samples` datapoints from
    the same start, the best training ELBO is kept and training continues from it.
    """

    estimator: str = opt.option(
        "sgvb_b", "sgvb_b (analytic KL), sgvb_a, iwae, wake_sleep (the paper's baseline, logged with the ELBO), or "
        "auto: sgvb_b where the KL is analytic, else sgvb_a", choices=_estimators)
    num_samples: int = opt.option(1, "L, samples of z per datapoint (K for iwae)")
    gradient: str = opt.option("standard", "standard, stl (sticking the landing) or dreg (iwae)", choices=GRADIENTS)
    optimizer: str = opt.option("adam", "adagrad (the paper's, with warm-up), adam or adamw", choices=OPTIMIZERS)
    lr: float = opt.option(
        1e-3, "step size, or 'auto' for the paper's rule: best of 0.01, 0.02, 0.1", parse=opt.learning_rate,
        apply=lambda v: {"lr_candidates": PAPER_LR_CANDIDATES} if v == "auto" else {"lr": v})
    lr_candidates: tuple[float, ...] = opt.option((), "step sizes of the paper's rule", flag=False)
    search_samples: int = opt.option(50_000, "datapoints per candidate of the step-size search", flag=False)
    schedule: str = opt.option("cosine", "learning-rate schedule", choices=SCHEDULES)
    min_lr_ratio: float = opt.option(0.0, "the cosine schedule's final step size, as a fraction of lr", flag=False)
    warmup_steps: int = opt.option(
        0, "adagrad: minibatches that only accumulate squared gradients (the paper: 100); other optimizers: steps "
        "of linear warm-up", flag=False)
    weight_decay: float | str = opt.option(
        0.0, "'prior' (N(0, I) on the weights, the paper's MAP) or a number", parse=opt.weight_decay)
    batch_size: int = opt.option(100, "M, datapoints per minibatch")
    replacement: bool = opt.option(False, "draw minibatches with replacement (the paper's code)", flag=False)
    samples: int | None = opt.option(
        None, "training length in datapoints evaluated, e.g. 1e7", parse=opt.count, group="length",
        apply=lambda v: {"samples": v, "epochs": None})
    epochs: float | None = opt.option(
        None, "training length in passes over the training set", parse=float, group="length",
        apply=lambda v: {"samples": None, "epochs": v})
    binarize: str = opt.option("none", "none (grey levels), dynamic or static binarization", choices=BINARIZE)
    beta: float = opt.option(
        1.0, "weight of the KL term in the training loss (beta-VAE; default 1, the ELBO); the logged ELBOs stay the "
        "beta = 1 bound", parse=positive_number)
    kl_warmup: int = opt.option(
        0, "datapoints over which the KL weight rises linearly from 0 to --beta, e.g. 5e5 (default 0: off)",
        parse=datapoints)
    free_bits: float = opt.option(
        0.0, "free bits: nats per latent dimension below which a dimension's KL (averaged over the minibatch) is "
        "not penalized (default 0: off; needs q and p that factorize over the dimensions)", parse=nats)
    eval_num_samples: int = opt.option(1, "L of the logged train and test ELBO", flag=False)
    eval_train_size: int = opt.option(
        10_000, "the logged train ELBO is computed on the first N training datapoints (default 10000; 0: all of "
        "them); the test ELBO always on the whole test set", parse=opt.non_negative_int)
    evals_per_decade: int = opt.option(3, "log-spaced evaluations per factor 10 of datapoints")
    ema: float = opt.option(0.0, "decay of a moving average of the weights (0 = off)")
    grad_clip: float = opt.option(
        0.0, "rescale a step's gradients to this 2-norm when it is larger (default 0: off); the logged grad_norm is "
        "the norm before clipping", parse=nats)
    compile: bool = opt.option(False, "torch.compile the estimator (needs a C++ compiler; the first compilation "
                               "takes about a minute)")
    step: str = opt.option(
        "auto", "the training step: fused (a hand-written forward and backward of the plain MLP VAE with estimator "
        "sgvb_b, its Bernoulli likelihood and normal posterior and prior, in one process), autograd, or auto: fused "
        "where it covers the model and options, else autograd", choices=STEPS)
    precision: str = opt.option(
        "float32", "matrix products of the training step: float32, or bf16 (the fused step's backward products and "
        "its logits in bfloat16 with float32 accumulation, for CPUs with AVX512-BF16 or AMX and GPUs with bf16; the "
        "weights, the optimizer and every logged ELBO stay float32)", choices=PRECISIONS)
    tensorboard: bool = opt.option(False, "also write TensorBoard event files into the run folder (needs: pip "
                                   "install tensorboard)")
    seed: int = opt.option(0, "random seed (default 0)")
    shards: int | None = opt.option(
        None, "split each minibatch into this many shards, each with its own random streams (default: the number "
        "of processes); under torchrun each process computes shards/processes of them, so a run gives the same "
        "result on any number of processes dividing it", parse=opt.positive_int)

    def __post_init__(self):
        object.__setattr__(self, "lr_candidates", tuple(float(v) for v in self.lr_candidates))
        if isinstance(self.kl_warmup, float) and self.kl_warmup.is_integer():  # 5e5 from Python
            object.__setattr__(self, "kl_warmup", int(self.kl_warmup))
        for ok, message in self._checks():
            if not ok:
                raise ValueError(message)

    def _checks(self) -> list[tuple[bool, str]]:
        known = self.estimator in ESTIMATORS
        allowed = ESTIMATORS[self.estimator].gradients if known else GRADIENTS
        return [
            (known or self.estimator == "auto",
             f"unknown estimator {self.estimator!r}; choose from auto, {', '.join(ESTIMATORS)}"),
            (self.gradient in GRADIENTS, f"unknown gradient {self.gradient!r}; choose from {', '.join(GRADIENTS)}"),
            (self.gradient != "dreg" or self.estimator == "iwae", "gradient 'dreg' needs estimator 'iwae'"),
            (self.gradient in allowed,
             f"gradient {self.gradient!r} is not available for estimator {self.estimator!r}; choose from "
             f"{', '.join(allowed)}"),
            (self.optimizer in OPTIMIZERS,
             f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}"),
            (self.step in STEPS, f"unknown step {self.step!r}; choose from {', '.join(STEPS)}"),
            (self.precision in PRECISIONS,
             f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}"),
            (self.binarize in BINARIZE, f"unknown binarization {self.binarize!r}; choose from {', '.join(BINARIZE)}"),
            (all(0 < v < math.inf for v in (self.lr, *self.lr_candidates)),
             "learning rates must be positive and finite"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.num_samples >= 1 and self.eval_num_samples >= 1, "numbers of samples must be >= 1"),
            (self.eval_train_size >= 0, f"eval_train_size must be >= 0, got {self.eval_train_size}"),
            ((self.samples is None) != (self.epochs is None), "give exactly one of samples and epochs"),
            ((self.samples or 1) > 0 and 0 < (self.epochs or 1) < math.inf,
             "the training length must be positive and finite"),
            (self.weight_decay == "prior" or float(self.weight_decay) >= 0, "weight_decay must be 'prior' or >= 0"),
            (math.isfinite(self.grad_clip) and self.grad_clip >= 0,
             f"grad_clip must be a finite number >= 0, got {self.grad_clip}"),
            (0 <= self.ema < 1, f"ema must be in [0, 1), got {self.ema}"),
            (self.shards is None or self.shards >= 1, f"shards must be >= 1, got {self.shards}"),
            *self._kl_checks(),
            (self.shards is None or self.batch_size % self.shards == 0,
             f"the batch size {self.batch_size} must be a multiple of the number of shards {self.shards}"),
        ]

    def _kl_checks(self) -> list[tuple[bool, str]]:
        weighted = self.beta != 1 or self.kl_warmup != 0 or self.free_bits != 0
        fn = ESTIMATORS.get(self.estimator)
        return [
            (0 < self.beta < math.inf, f"beta must be a positive finite number, got {self.beta}"),
            (isinstance(self.kl_warmup, int) and self.kl_warmup >= 0,
             f"kl_warmup must be a whole number of datapoints >= 0, got {self.kl_warmup}"),
            (0 <= self.free_bits < math.inf, f"free_bits must be a finite number of nats >= 0, got {self.free_bits}"),
            (not weighted or fn is None or getattr(fn, "kl_terms", False),
             f"beta, kl_warmup and free_bits weight the KL term of sgvb_a and sgvb_b; estimator {self.estimator} "
             "has no KL term to weight (use sgvb_a, sgvb_b or auto)"),
        ]

    def total_samples(self, n_train: int) -> int:
        return int(self.samples) if self.samples is not None else int(round(self.epochs * n_train))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        opt.check_fields(cls, d, "training")
        # runs from before these options existed: one shard, the train ELBO logged on the whole training set, the
        # autograd step (a resumed run continues bit for bit) (and beta 1, no KL warm-up, no free bits: the dataclass
        # defaults)
        return cls(**{"shards": 1, "eval_train_size": 0, "step": "autograd", **d})
