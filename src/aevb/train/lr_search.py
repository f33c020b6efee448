"""The paper's step-size rule: train each candidate step size for a while from the same start, keep the best."""
from __future__ import annotations

import copy
import math

from .. import distributed
from ..estimators import evaluate
from .checks import NonFiniteError
from .evaluation import eval_rng


def snapshot(trainer):
    return (copy.deepcopy(trainer.model.state_dict()), trainer.batches.state(), trainer.streams.state(),
            [t.clone() for t in trainer.ema] if trainer.ema is not None else None)


def load_snapshot(trainer, snap) -> None:
    model_state, batch_state, stream_state, ema = snap
    trainer.model.load_state_dict(model_state)
    trainer.batches.load(*copy.deepcopy(batch_state))
    trainer.streams.load(stream_state)
    if ema is not None:
        trainer.ema = [t.clone() for t in ema]


def search_lr(trainer) -> None:
    """Try each candidate step size for cfg.search_samples datapoints from the same start; keep the best.

    A candidate that diverges (NonFiniteError, or a non-finite ELBO) loses; if every candidate does, the last
    NonFiniteError propagates.
    """
    c = trainer.cfg
    steps = math.ceil(c.search_samples / c.batch_size)
    start = snapshot(trainer)
    probe = trainer.eval_train[: min(10_000, trainer.n_train)] if trainer.world.main else None
    best = None
    trainer.checkpointing = False
    for lr in c.lr_candidates:
        load_snapshot(trainer, start)
        trainer.lr, trainer.step, trainer.samples_seen = lr, 0, 0
        trainer.skipped = trainer.streak = trainer.norm_steps = 0
        trainer.norm_sum.zero_()
        trainer.optimizer = trainer.make_optimizer(lr)
        try:
            trainer.train_steps(steps)
        except NonFiniteError as e:
            diverged = e
            if trainer.world.main:
                print(f"step-size search: lr={lr:g} diverged ({trainer.streak} non-finite updates in a row at "
                      f"{trainer.samples_seen} datapoints)")
            continue
        elbo = math.nan
        if trainer.world.main:
            with eval_rng(trainer):
                elbo = evaluate(trainer.model, probe, estimator=trainer.eval_estimator, num_samples=1)["elbo"]
            print(f"step-size search: lr={lr:g} train ELBO {elbo:.2f} after {trainer.samples_seen} datapoints")
        (elbo,) = distributed.broadcast_floats([elbo], trainer.world)
        if not math.isfinite(elbo):
            diverged = NonFiniteError(f"step-size search: lr={lr:g} gave a non-finite train ELBO")
            continue
        if best is None or elbo > best[0]:
            best = (elbo, lr, snapshot(trainer), copy.deepcopy(trainer.optimizer.state_dict()),
                    (trainer.skipped, trainer.norm_steps, trainer.norm_sum.clone()))
    if best is None:
        trainer.checkpointing = True
        raise diverged
    _, trainer.lr, snap, opt_state, (trainer.skipped, trainer.norm_steps, norm_sum) = best
    load_snapshot(trainer, snap)
    trainer.norm_sum.copy_(norm_sum)
    trainer.optimizer = trainer.make_optimizer(trainer.lr)
    trainer.optimizer.load_state_dict(opt_state)
    trainer.checkpointing = True
