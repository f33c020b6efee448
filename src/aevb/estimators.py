"""SGVB estimators of the evidence lower bound (section 2.3, eqs. 6-7) and the importance-weighted bound.

Each estimator is `(model, x, *, num_samples) -> dict` with a scalar `loss` that carries the graph
(loss = -mean ELBO per datapoint, eq. 8 up to the factor N) and detached per-datapoint diagnostics in nats.
"""
from __future__ import annotations

import math

import torch
from torch.distributions import kl_divergence


def _check(num_samples: int) -> None:
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")


def sgvb_a(model, x: torch.Tensor, *, num_samples: int = 1) -> dict:
    """Estimator A (eq. 6): (1/L) sum_l [log p(x, z_l) - log q(z_l|x)], z_l = g(eps_l, x).

    Returns:
        dict with `loss` (scalar), and (B,) detached `elbo`, `rec` = mean log p(x|z_l), `kl` = mean of
        log q(z_l|x) - log p(z_l) (a Monte Carlo KL).
    """
    _check(num_samples)
    q = model.encode(x)
    z = q.rsample((num_samples,))  # (L, B, Dz)
    rec = model.decode(z).log_prob(x)  # (L, B)
    kl = q.log_prob(z) - model.prior().log_prob(z)  # (L, B)
    elbo = (rec - kl).mean(0)
    return {"loss": -elbo.mean(), "elbo": elbo.detach(), "rec": rec.mean(0).detach(), "kl": kl.mean(0).detach()}


def sgvb_b(model, x: torch.Tensor, *, num_samples: int = 1) -> dict:
    """Estimator B (eq. 7): -KL(q(z|x) || p(z)) + (1/L) sum_l log p(x|z_l), with the KL in closed form.

    For the Gaussian VAE the KL is Appendix B's -1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2).
    Raises NotImplementedError (from torch's registry) if the pair (q, prior) has no analytic KL.
    """
    _check(num_samples)
    q = model.encode(x)
    kl = kl_divergence(q, model.prior())  # (B,)
    z = q.rsample((num_samples,))  # (L, B, Dz)
    rec = model.decode(z).log_prob(x).mean(0)  # (B,)
    elbo = rec - kl
    return {"loss": -elbo.mean(), "elbo": elbo.detach(), "rec": rec.detach(), "kl": kl.detach()}


def iwae(model, x: torch.Tensor, *, num_samples: int = 1) -> dict:
    """Importance-weighted bound (Burda et al. 2016): log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x).

    Equals estimator A's bound for K = 1 and rises toward log p(x) as K grows.
    Returns `log_w` (K, B) besides `elbo` (the K-sample bound), `rec` and `kl` (sample means).
    """
    _check(num_samples)
    q = model.encode(x)
    z = q.rsample((num_samples,))  # (K, B, Dz)
    rec = model.decode(z).log_prob(x)  # (K, B)
    kl = q.log_prob(z) - model.prior().log_prob(z)  # (K, B)
    log_w = rec - kl
    bound = torch.logsumexp(log_w, 0) - math.log(num_samples)
    return {"loss": -bound.mean(), "elbo": bound.detach(), "rec": rec.mean(0).detach(),
            "kl": kl.mean(0).detach(), "log_w": log_w.detach()}


ESTIMATORS = {"sgvb_a": sgvb_a, "sgvb_b": sgvb_b, "iwae": iwae}


@torch.no_grad()
def evaluate(model, x: torch.Tensor, *, estimator: str = "sgvb_b", num_samples: int = 1,
             batch_size: int = 2000) -> dict:
    """Mean bound and its parts per datapoint over a whole split (nats), in chunks of `batch_size`.

    Returns:
        dict of floats: `elbo`, `rec`, `kl` (means over the N datapoints) and `n`.
    """
    fn = ESTIMATORS[estimator]
    totals = {"elbo": 0.0, "rec": 0.0, "kl": 0.0}
    was_training = model.training
    model.eval()
    sums = {k: torch.zeros((), dtype=torch.float64, device=x.device) for k in totals}
    for chunk in x.split(batch_size):
        out = fn(model, chunk, num_samples=num_samples)
        for k in sums:
            sums[k] += out[k].double().sum()
    model.train(was_training)
    n = x.shape[0]
    return {**{k: float(v) / n for k, v in sums.items()}, "n": n}
