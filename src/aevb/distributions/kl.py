"""Closed-form KL(p || q) pairs torch lacks, registered with ``torch.distributions.kl.register_kl`` on import, and
``has_analytic_kl``, which says whether estimator B (eq. 7) can use an analytic KL for a pair.

Beta||Uniform replaces torch's formula of the same value, which indexes its result with a mask of q's batch shape
and raises IndexError when p's batch shape is larger (a batch of q(z|x) against the prior).

Not closed form, so not registered: Logistic||Logistic, StudentT||StudentT, MultivariateStudentT||anything,
Triangular||Triangular, Gompertz||Gompertz (needs E[(1 + Y)^r] = e^c c^-r Gamma(r + 1, c), whose gradient in r
torch lacks). Erlang is a Gamma subclass, so Erlang||Erlang, Erlang||Gamma and Gamma||Erlang use torch's
Gamma||Gamma closed form.
"""

import math

import torch
from torch.distributions import (
    Beta,
    Distribution,
    Exponential,
    Gamma,
    Laplace,
    LogNormal,
    Normal,
    StudentT,
    Uniform,
    Weibull,
)
from torch.distributions.kl import kl_divergence, register_kl

from .inverse_cdf import _EULER_GAMMA, Logistic, Rayleigh, Reciprocal
from .location_scale import Triangular

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

REGISTERED: list[tuple[type, type]] = []


def _register(type_p, type_q):
    def decorate(fn):
        REGISTERED.append((type_p, type_q))
        return register_kl(type_p, type_q)(fn)

    return decorate


def _normal_cross_entropy(mean_p, second_central_p, q):
    """-E_p[log N(x; q.loc, q.scale)] from the mean and variance of p."""
    return q.scale.log() + _HALF_LOG_2PI + ((mean_p - q.loc).pow(2) + second_central_p) / (2 * q.scale.pow(2))


@_register(Logistic, Normal)
def _kl_logistic_normal(p, q):
    """KL = -(log s + 2) + log sigma + log(2 pi)/2 + ((mu_p - mu_q)^2 + s^2 pi^2/3) / (2 sigma^2)."""
    return _normal_cross_entropy(p.loc, p.variance, q) - p.entropy()


@_register(Logistic, Laplace)
def _kl_logistic_laplace(p, q):
    """KL = -(log s + 2) + log(2 b) + s (2 softplus(a) - a) / b, a = (mu_q - mu_p) / s.

    Uses E|Z - a| = 2 softplus(a) - a for the standard logistic Z.
    """
    a = (q.loc - p.loc) / p.scale
    mean_abs = p.scale * (2 * torch.nn.functional.softplus(a) - a)
    return (2 * q.scale).log() + mean_abs / q.scale - p.entropy()


@_register(StudentT, Normal)
def _kl_studentt_normal(p, q):
    """KL = -H(t) + log sigma + log(2 pi)/2 + ((mu_p - mu_q)^2 + s^2 df / (df - 2)) / (2 sigma^2); +inf if df <= 2."""
    df = p.df.expand(p.batch_shape)
    safe_df = torch.where(df > 2, df, torch.full_like(df, 3.0))
    variance = p.scale.pow(2) * safe_df / (safe_df - 2)
    kl = _normal_cross_entropy(p.loc, variance, q) - p.entropy()
    return torch.where(df > 2, kl, torch.full_like(kl, math.inf))


@_register(Rayleigh, Rayleigh)
def _kl_rayleigh_rayleigh(p, q):
    """KL = 2 log(s_q / s_p) + s_p^2 / s_q^2 - 1."""
    ratio = p.scale / q.scale
    return ratio.pow(2) - 2 * ratio.log() - 1


def _rayleigh_mean_log(p):
    """E[log x] = log s + (log 2 - gamma_E) / 2, since x^2 / (2 s^2) ~ Exponential(1)."""
    return p.scale.log() + 0.5 * (math.log(2) - _EULER_GAMMA)


@_register(Rayleigh, Exponential)
def _kl_rayleigh_exponential(p, q):
    """KL = -H(p) - log rate + rate s sqrt(pi / 2)."""
    return -p.entropy() - q.rate.log() + q.rate * p.mean


@_register(Rayleigh, Gamma)
def _kl_rayleigh_gamma(p, q):
    """KL = -H(p) - a log b + lgamma(a) - (a - 1) E[log x] + b s sqrt(pi / 2), for q = Gamma(a, b)."""
    a, b = q.concentration, q.rate
    cross = -a * b.log() + torch.lgamma(a) - (a - 1) * _rayleigh_mean_log(p) + b * p.mean
    return cross - p.entropy()


def _rayleigh_cross_entropy(mean_log_p, second_moment_p, q):
    """-E_p[log Rayleigh(x; s)] = -E[log x] + 2 log s + E[x^2] / (2 s^2)."""
    return -mean_log_p + 2 * q.scale.log() + second_moment_p / (2 * q.scale.pow(2))


@_register(Exponential, Rayleigh)
def _kl_exponential_rayleigh(p, q):
    """KL = 2 log(rate s) + gamma_E - 1 + 1 / (rate s)^2 (E[log x] = -gamma_E - log rate, E[x^2] = 2 / rate^2)."""
    mean_log = -_EULER_GAMMA - p.rate.log()
    return _rayleigh_cross_entropy(mean_log, 2 / p.rate.pow(2), q) - p.entropy()


@_register(Gamma, Rayleigh)
def _kl_gamma_rayleigh(p, q):
    """KL = -H(p) - digamma(a) + log b + 2 log s + a (a + 1) / (2 b^2 s^2), for p = Gamma(a, b)."""
    a, b = p.concentration, p.rate
    mean_log = torch.digamma(a) - b.log()
    return _rayleigh_cross_entropy(mean_log, a * (a + 1) / b.pow(2), q) - p.entropy()


@_register(Reciprocal, Reciprocal)
def _kl_reciprocal_reciprocal(p, q):
    """KL = log log(high_q / low_q) - log log(high_p / low_p) if [low_p, high_p] lies in [low_q, high_q], else inf."""
    kl = q._log_ratio.log() - p._log_ratio.log()
    inside = (q.low <= p.low) & (p.high <= q.high)
    return torch.where(inside, kl, torch.full_like(kl, math.inf))


@_register(Weibull, Weibull)
def _kl_weibull_weibull(p, q):
    """Bauckhage (2014), with scales l, shapes k:
    KL = log(k_p / l_p^k_p) - log(k_q / l_q^k_q) + (k_p - k_q)(log l_p - gamma_E / k_p)
         + (l_p / l_q)^k_q Gamma(k_q / k_p + 1) - 1.
    """
    kp, kq, lp, lq = p.concentration, q.concentration, p.scale, q.scale
    log_norm = kp.log() - kp * lp.log() - kq.log() + kq * lq.log()
    power = torch.exp(kq * (lp.log() - lq.log()) + torch.lgamma(kq / kp + 1))
    return log_norm + (kp - kq) * (lp.log() - _EULER_GAMMA / kp) + power - 1


@_register(LogNormal, LogNormal)
def _kl_lognormal_lognormal(p, q):
    """KL is invariant under x -> exp(x): KL(N(mu_p, s_p^2) || N(mu_q, s_q^2))
    = log(s_q / s_p) + (s_p^2 + (mu_p - mu_q)^2) / (2 s_q^2) - 1/2.
    """
    return _normal_cross_entropy(p.loc, p.scale.pow(2), q) - p.base_dist.entropy()


@_register(Triangular, Uniform)
def _kl_triangular_uniform(p, q):
    """KL = log(high - low) - 1/2 - log(scale / 2) if [loc, loc + scale] lies in [low, high], else inf."""
    kl = (q.high - q.low).log() - p.entropy()
    inside = (q.low <= p.loc) & (p.loc + p.scale <= q.high)
    return torch.where(inside, kl, torch.full_like(kl, math.inf))


@_register(Beta, Uniform)
def _kl_beta_uniform(p, q):
    """KL = -H(p) + log(high - low) if [0, 1] lies in [low, high], else inf."""
    kl = -p.entropy() + (q.high - q.low).log()
    inside = (q.low <= 0) & (1 <= q.high)
    return torch.where(inside, kl, torch.full_like(kl, math.inf))


def has_analytic_kl(p, q) -> bool:
    """Whether ``torch.distributions.kl_divergence(p, q)`` has a closed form for these two instances (torch's pairs
    plus aevb's), asked through the public API: the KL is computed once, without gradient, and a
    NotImplementedError means there is none. kl_divergence never falls back to Monte Carlo, so neither does this.

    Raises:
        TypeError: p or q is not a Distribution instance.
    """
    for d in (p, q):
        if not isinstance(d, Distribution):
            raise TypeError(f"expected a Distribution instance, got {d!r}")
    try:
        with torch.no_grad():
            kl_divergence(p, q)
    except NotImplementedError:
        return False
    return True
