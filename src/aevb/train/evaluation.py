"""Evaluation during training: the logged train and test ELBO at fixed noise, on the weight average when there is
one, appended to metrics.jsonl."""
from __future__ import annotations

import contextlib
import math

import torch

from .. import runs
from ..data import binarize_static
from ..estimators import evaluate
from .options import EVAL_BINARIZATION_SEEDS
from .schedule import kl_weight, lr_factor


@contextlib.contextmanager
def averaged(trainer):
    """Temporarily put the averaged weights into the model (no-op without EMA)."""
    if trainer.ema is None:
        yield
        return
    with torch.no_grad():
        backup = [p.clone() for p in trainer.param_data]
        torch._foreach_copy_(trainer.param_data, trainer.ema)
    try:
        yield
    finally:
        with torch.no_grad():
            torch._foreach_copy_(trainer.param_data, backup)


@contextlib.contextmanager
def eval_rng(trainer):
    """Evaluations draw their noise from a fixed seed and leave the training streams untouched."""
    cuda = [trainer.train_x.device] if trainer.train_x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(trainer.cfg.seed + 3)
        yield


def log_eval(trainer) -> dict:
    """Evaluate the train and test ELBO now, append the record to the history (and metrics.jsonl), return it.

    The ELBOs are the true (beta = 1) bound whatever the training loss weighs; `kl_weight` records the KL weight
    of the training loss at this datapoint count.
    """
    c = trainer.cfg
    with averaged(trainer), eval_rng(trainer):
        kw = dict(estimator=trainer.eval_estimator, num_samples=c.eval_num_samples)
        tr, te = evaluate(trainer.model, trainer.eval_train, **kw), evaluate(trainer.model, trainer.eval_test, **kw)
    bits = 1 / (trainer.test_x.shape[1] * math.log(2))  # nats per datapoint -> bits per dimension
    rec = {
        "samples_seen": trainer.samples_seen, "epoch": trainer.samples_seen / trainer.n_train, "step": trainer.step,
        "train_elbo": tr["elbo"], "test_elbo": te["elbo"], "train_rec": tr["rec"], "train_kl": tr["kl"],
        "test_rec": te["rec"], "test_kl": te["kl"], "train_bpd": -tr["elbo"] * bits, "test_bpd": -te["elbo"] * bits,
        "lr": trainer.lr * lr_factor(c, max(0, trainer.step - 1), trainer.total_steps),
        "kl_weight": kl_weight(c.beta, c.kl_warmup, trainer.samples_seen),  # of the training loss, not the ELBO
        "seconds": round(trainer.seconds, 3),
    }
    if trainer.ema is not None:
        with eval_rng(trainer):
            rec["test_elbo_raw"] = evaluate(trainer.model, trainer.eval_test, **kw)["elbo"]
    rec["grad_norm"] = float(trainer.norm_sum) / trainer.norm_steps if trainer.norm_steps else None
    rec["skipped_updates"] = trainer.skipped
    for k in ("train_elbo", "test_elbo"):
        if not math.isfinite(rec[k]):
            raise FloatingPointError(f"training diverged: {k} is {rec[k]} at {trainer.samples_seen} datapoints; "
                                     "the last checkpoint is intact")
    trainer.norm_sum.zero_()
    trainer.norm_steps = 0
    trainer.history.append(rec)
    if trainer.run_dir is not None:
        runs.append_metrics(trainer.run_dir, rec)
        if c.tensorboard:
            trainer.tb.write(rec, trainer.history)
    return rec


def eval_sets(trainer):
    """The data the logged ELBOs are computed on: the first `eval_train_size` training datapoints (all with 0) and
    the whole test set, binarized once with a fixed seed where training binarizes (the training subset is the first
    rows of the whole training set's binarization, so it does not depend on the subset's size)."""
    c, train, test = trainer.cfg, trainer.train_x, trainer.test_x
    if not torch.is_tensor(train):  # rows on disk: read the subset (all of them with 0)
        train = train[: c.eval_train_size or len(train)].to(test.device)
    if c.binarize != "none":
        seeds = EVAL_BINARIZATION_SEEDS
        train, test = binarize_static(train, seed=seeds["train"]), binarize_static(test, seed=seeds["test"])
    if 0 < c.eval_train_size < train.shape[0]:
        train = train[: c.eval_train_size].clone() if c.binarize != "none" else train[: c.eval_train_size]
    return train, test
