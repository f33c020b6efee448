"""Importance sampling with q(z|x) as the proposal: log p(x) ~ log (1/K) sum_k p(x, z_k) / q(z_k|x)."""
from __future__ import annotations

import math
from functools import partial

import torch

from ..bars import bar as progress_bar
from .common import _check_positive, _chunk_size, _evaluating, _log_likelihood, _summary
from .mlp_likelihood import mlp_log_likelihood


# datapoints done to one decimal: a batch advances the bar as its samples are drawn
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total} datapoints [{elapsed}<{remaining}]"


@torch.no_grad()
def importance_sampling(model, x: torch.Tensor, *, num_samples: int = 5000, chunk_size: int | None = None,
                        batch_size: int = 100, progress: bool = False, seed: int | None = None,
                        compile: bool = False) -> dict:
    """log p(x) ~= log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x) (the encoder as proposal).

    The K samples are drawn `chunk_size` at a time and combined by a running logsumexp, so memory is bounded
    whatever K is. The estimate is a stochastic lower bound (its expectation rises to log p(x) with K).

    Args:
        model: follows the contract prior() / encode(x) / decode(z); a model that also has log_likelihood(z, x)
            (VAE does) is evaluated through it, same value in fewer passes, and the plain MLP VAE with a Bernoulli
            decoder through `mlp_likelihood`'s hand-written forward (the same value up to float32 rounding).
        x: (N, D) data, processed `batch_size` datapoints at a time.
        num_samples: K importance samples per datapoint.
        chunk_size: samples per decoder call; None picks it so that chunk * batch * D < MAX_FLOATS.
        progress: show a tqdm bar over datapoints (advancing by fractions of a batch as its samples are drawn).
        seed: seed of a private RNG stream (None: the global one).
        compile: compute log p(x|z) through torch.compile of the model's log_likelihood (not the hand-written
            decoder), which fuses the decoder's elementwise work (tanh, softplus, the sum over pixels) into loops
            after its matrix products: the same estimate up to float32 rounding (benchmarks/marginal_speed.py
            --compare times the paths), after a one-time compilation. Needs a C++ compiler; the samples z are drawn
            outside the compiled code, so a seed gives the same z either way. For the plain MLP VAE the default
            hand-written decoder measured as fast without it.

    Returns:
        dict with (N,) `log_px` and `elbo` (mean of the same log weights, estimator A's bound), floats
        `mean` and `stderr` of log_px across datapoints.
    """
    _check_positive(num_samples=num_samples, batch_size=batch_size)
    log_px, elbo = [], []
    log_lik = partial(_log_likelihood, model)
    if compile:  # dynamic: one compilation serves every chunk and batch size above 1
        log_lik = torch.compile(log_lik, dynamic=True)
    else:
        log_lik = mlp_log_likelihood(model) or log_lik
    with _evaluating(model, seed, x.device), progress_bar(total=x.shape[0], disable=not progress, desc="IS",
                                                          bar_format=BAR_FORMAT) as bar:
        done = 0
        for xb in x.split(batch_size):
            k = chunk_size or _chunk_size(*xb.shape)  # (k, B, D)
            tick = (lambda drawn, b=xb.shape[0]: bar.update(b * drawn / num_samples)) if progress else None
            lp, el = _is_batch(model, log_lik, xb, num_samples, k, tick)
            log_px.append(lp)
            elbo.append(el)
            done += xb.shape[0]
            bar.update(done - bar.n)  # whole datapoints again, whatever the fractions summed to
    return _summary(torch.cat(log_px), elbo=torch.cat(elbo))


def _is_batch(model, log_lik, x: torch.Tensor, num_samples: int, chunk: int,
              tick=None) -> tuple[torch.Tensor, torch.Tensor]:
    q, prior = model.encode(x), model.prior()
    lse = x.new_full(x.shape[:1], -math.inf)  # running logsumexp of the log weights, (B,)
    total = x.new_zeros(x.shape[:1])  # running sum of the log weights, (B,)
    for start in range(0, num_samples, chunk):
        z = q.sample((min(chunk, num_samples - start),))  # (k, B, Dz)
        log_w = log_lik(z, x) + prior.log_prob(z) - q.log_prob(z)  # (k, B)
        lse = torch.logaddexp(lse, torch.logsumexp(log_w, 0))
        total += log_w.sum(0)
        if tick is not None:
            tick(z.shape[0])
    return lse - math.log(num_samples), total / num_samples
