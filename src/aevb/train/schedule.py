"""When to evaluate, how fast to step and how much the KL weighs: log-spaced evaluation points, the learning-rate
schedule and the KL weight's warm-up."""
from __future__ import annotations

import math


def eval_points(total: int, per_decade: int) -> list[int]:
    """Log-spaced sample counts at which to evaluate (1, 2, 5 x 10^k for 3 per decade), always ending at `total`.

    The first point is 1e4, or a tenth of the order of magnitude of `total` for short runs.
    """
    start = min(10_000, 10 ** max(0, math.floor(math.log10(total)) - 1))
    mantissas = {1: (1,), 2: (1, 3), 3: (1, 2, 5)}.get(per_decade)
    if mantissas is None:
        mantissas = tuple(10 ** (i / per_decade) for i in range(per_decade))
    points, decade = [], 10 ** math.floor(math.log10(start))
    while decade <= total:
        points += [int(round(m * decade)) for m in mantissas if start <= m * decade < total]
        decade *= 10
    return sorted(set(points)) + [total]


def lr_factor(cfg, step: int, total_steps: int) -> float:
    """Multiplier of cfg.lr at a step: warm-up, then constant or cosine decay.

    Adagrad's warm-up is the paper's: step size 0, so the minibatches only accumulate squared gradients. Other
    optimizers warm up linearly.
    """
    warm = cfg.warmup_steps
    if step < warm:
        return 0.0 if cfg.optimizer == "adagrad" else (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    t = min(1.0, (step - warm) / max(1, total_steps - warm))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def kl_weight(beta: float, warmup: int, samples_seen: int) -> float:
    """The KL term's weight in the training loss after `samples_seen` datapoints: beta * min(1, samples_seen /
    warmup), rising linearly from 0 over the first `warmup` datapoints; beta throughout without warm-up (0).

    It depends on the datapoint count only, so a resumed run continues the warm-up where it stopped.
    """
    if warmup <= 0 or samples_seen >= warmup:
        return float(beta)
    return beta * (samples_seen / warmup)
