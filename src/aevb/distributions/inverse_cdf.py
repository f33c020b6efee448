"""Families torch lacks whose ``rsample`` is the paper's first trick (section 2.4): z = F^-1(eps), eps ~ U(0, 1).

Logistic, Rayleigh, Reciprocal and Gompertz by inverse CDF; Erlang (listed with them in the paper) by composition,
a sum of k inverse-CDF Exponentials. Parameter names follow torch, or scipy where torch has none.
"""

import functools
import math

import numpy as np
import torch
from torch.distributions import Distribution, Gamma, constraints
from torch.distributions.utils import broadcast_all

_EULER_GAMMA = 0.5772156649015329


def uniform_eps(shape, like):
    """eps ~ U(0, 1) clamped to [tiny, 1 - eps] so that log(eps) and log1p(-eps) stay finite (as torch's Gumbel)."""
    finfo = torch.finfo(like.dtype)
    u = torch.rand(shape, dtype=like.dtype, device=like.device)
    return u.clamp(min=finfo.tiny, max=1 - finfo.eps)


class _InverseCdf(Distribution):
    """Base class: ``rsample`` is ``icdf(eps)`` with eps ~ U(0, 1), differentiable in the parameters.

    Subclasses list their tensor parameters in ``_param_names``; ``expand`` and the dtype of eps follow them.
    """

    has_rsample = True
    _param_names: tuple[str, ...] = ()

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        return self.icdf(uniform_eps(shape, getattr(self, self._param_names[0])))

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        batch_shape = torch.Size(batch_shape)
        for name in self._param_names:
            setattr(new, name, getattr(self, name).expand(batch_shape))
        Distribution.__init__(new, batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new


class Logistic(_InverseCdf):
    """Logistic(loc, scale): p(x) = exp(-z) / (scale (1 + exp(-z))^2), z = (x - loc) / scale (scipy ``logistic``).

    Trick: inverse CDF, which here is also location-scale: z = loc + scale * (log eps - log(1 - eps)),
    eps ~ U(0, 1). CDF sigmoid(z); mean loc; variance scale^2 pi^2 / 3; entropy log(scale) + 2.
    """

    _param_names = ("loc", "scale")
    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real

    def __init__(self, loc, scale, validate_args=None):
        self.loc, self.scale = broadcast_all(loc, scale)
        super().__init__(self.loc.shape, validate_args=validate_args)


    @property
    def mean(self):
        return self.loc

    @property
    def mode(self):
        return self.loc

    @property
    def variance(self):
        return self.scale.pow(2) * (math.pi**2 / 3)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        z = (value - self.loc) / self.scale
        return -torch.nn.functional.softplus(-z) - torch.nn.functional.softplus(z) - self.scale.log()

    def cdf(self, value):
        return torch.sigmoid((value - self.loc) / self.scale)

    def icdf(self, value):
        return self.loc + self.scale * torch.logit(value)

    def entropy(self):
        return self.scale.log() + 2.0


class Rayleigh(_InverseCdf):
    """Rayleigh(scale): p(x) = x / scale^2 exp(-x^2 / (2 scale^2)), x >= 0 (scipy ``rayleigh``).

    Trick: inverse CDF, z = scale * sqrt(-2 log(1 - eps)), eps ~ U(0, 1). CDF 1 - exp(-x^2 / (2 scale^2));
    mean scale sqrt(pi / 2); variance (4 - pi) / 2 scale^2; entropy 1 + log(scale / sqrt 2) + gamma_E / 2.
    """

    _param_names = ("scale",)
    arg_constraints = {"scale": constraints.positive}
    support = constraints.nonnegative

    def __init__(self, scale, validate_args=None):
        (self.scale,) = broadcast_all(scale)
        super().__init__(self.scale.shape, validate_args=validate_args)


    @property
    def mean(self):
        return self.scale * math.sqrt(math.pi / 2)

    @property
    def mode(self):
        return self.scale

    @property
    def variance(self):
        return self.scale.pow(2) * ((4 - math.pi) / 2)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return value.log() - 2 * self.scale.log() - value.pow(2) / (2 * self.scale.pow(2))

    def cdf(self, value):
        return -torch.expm1(-value.pow(2) / (2 * self.scale.pow(2)))

    def icdf(self, value):
        return self.scale * torch.sqrt(-2 * torch.log1p(-value))

    def entropy(self):
        return 1 + self.scale.log() - 0.5 * math.log(2) + 0.5 * _EULER_GAMMA


class Reciprocal(_InverseCdf):
    """Reciprocal (log-uniform) on [low, high]: p(x) = 1 / (x log(high / low)) (scipy ``reciprocal``/``loguniform``).

    Trick: inverse CDF, z = low (high / low)^eps = exp(log low + eps log(high / low)), eps ~ U(0, 1).
    CDF log(x / low) / log(high / low); mean (high - low) / log(high / low);
    variance (high^2 - low^2) / (2 log(high / low)) - mean^2; entropy (log low + log high) / 2 + log log(high / low).
    """

    _param_names = ("low", "high")
    arg_constraints = {"low": constraints.positive, "high": constraints.dependent(is_discrete=False, event_dim=0)}

    def __init__(self, low, high, validate_args=None):
        self.low, self.high = broadcast_all(low, high)
        super().__init__(self.low.shape, validate_args=validate_args)
        if self._validate_args and not torch.all(self.high > self.low):
            raise ValueError("Reciprocal needs high > low")


    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.interval(self.low, self.high)

    @property
    def _log_ratio(self):
        return self.high.log() - self.low.log()

    @property
    def mean(self):
        return (self.high - self.low) / self._log_ratio

    @property
    def mode(self):
        return self.low

    @property
    def variance(self):
        return (self.high.pow(2) - self.low.pow(2)) / (2 * self._log_ratio) - self.mean.pow(2)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        inside = (value >= self.low) & (value <= self.high)
        safe = torch.where(inside, value, self.low)
        lp = -safe.log() - self._log_ratio.log()
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def cdf(self, value):
        value = torch.maximum(torch.minimum(value, self.high), self.low)
        return (value.log() - self.low.log()) / self._log_ratio

    def icdf(self, value):
        return torch.exp(self.low.log() + value * self._log_ratio)

    def entropy(self):
        return 0.5 * (self.low.log() + self.high.log()) + self._log_ratio.log()


def scaled_exp1(x, series_terms=30, fraction_terms=64):
    """e^x E1(x) for x > 0, E1 the exponential integral (Abramowitz & Stegun 5.1.11 and 5.1.22).

    Power series for x <= 1; for x > 1 the continued fraction 1/(x+1- 1/(x+3- 4/(x+5- ...))), evaluated
    backwards from a fixed depth (relative error below 1e-12 in float64 against scipy.special.exp1).
    """
    small = x <= 1
    xs = torch.where(small, x, torch.ones_like(x))
    term, total = torch.ones_like(xs), torch.zeros_like(xs)
    for k in range(1, series_terms + 1):
        term = term * (-xs) / k
        total = total + term / k
    series = torch.exp(xs) * (-_EULER_GAMMA - xs.log() - total)
    xl = torch.where(small, torch.full_like(x, 2.0), x)
    tail = torch.zeros_like(xl)
    for n in range(fraction_terms, 0, -1):
        tail = n * n / (xl + 2 * n + 1 - tail)
    return torch.where(small, series, 1 / (xl + 1 - tail))


@functools.lru_cache(maxsize=None)
def _laguerre(n):
    return np.polynomial.laguerre.laggauss(n)


def _gompertz_second_moment(c, laguerre_nodes=100):
    """E[log(1 + Y)^2] for Y ~ Exponential(c), the second moment of the standard Gompertz(c).

    For c <= 1: 2 e^c int_c^inf E1(t)/t dt with the series (log^2 c)/2 + gamma log c + pi^2/12 + gamma^2/2
    + sum_k (-c)^k / (k^2 k!); for c > 1 (where that series cancels) Gauss-Laguerre quadrature of
    int_0^inf log(1 + t/c)^2 e^-t dt, whose integrand is analytic at distance c >= 1 from the real half-line.
    """
    small = c <= 1
    cs = torch.where(small, c, torch.ones_like(c))
    term, total = torch.ones_like(cs), torch.zeros_like(cs)
    for k in range(1, 40):
        term = term * (-cs) / k
        total = total + term / k**2
    log_c = cs.log()
    integral = 0.5 * log_c**2 + _EULER_GAMMA * log_c + math.pi**2 / 12 + _EULER_GAMMA**2 / 2 + total
    series = 2 * torch.exp(cs) * integral
    nodes, weights = (torch.as_tensor(a, dtype=c.dtype, device=c.device)
                      for a in _laguerre(laguerre_nodes))
    cl = torch.where(small, torch.full_like(c, 2.0), c)
    quadrature = (torch.log1p(nodes / cl.unsqueeze(-1)).pow(2) * weights).sum(-1)
    return torch.where(small, series, quadrature)


class Gompertz(_InverseCdf):
    """Gompertz(concentration c, scale s) as scipy ``gompertz(c, scale=s)``: with y = x / s, x >= 0,
    p(x) = (c / s) exp(y - c (e^y - 1)).

    Trick: inverse CDF, z = s log(1 - log(1 - eps) / c), eps ~ U(0, 1). CDF 1 - exp(-c (e^y - 1)).
    Since e^y - 1 ~ Exponential(c): mean s e^c E1(c); entropy log(s / c) + 1 - e^c E1(c) (E1 the exponential
    integral, see ``scaled_exp1``); variance from ``_gompertz_second_moment``.
    """

    _param_names = ("concentration", "scale")
    arg_constraints = {"concentration": constraints.positive, "scale": constraints.positive}
    support = constraints.nonnegative

    def __init__(self, concentration, scale, validate_args=None):
        self.concentration, self.scale = broadcast_all(concentration, scale)
        super().__init__(self.scale.shape, validate_args=validate_args)


    @property
    def mean(self):
        return self.scale * scaled_exp1(self.concentration)

    @property
    def mode(self):
        c = self.concentration
        return self.scale * torch.where(c < 1, -c.log(), torch.zeros_like(c))

    @property
    def variance(self):
        second = _gompertz_second_moment(self.concentration)
        return self.scale.pow(2) * (second - scaled_exp1(self.concentration).pow(2))

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        y = value / self.scale
        return self.concentration.log() - self.scale.log() + y - self.concentration * torch.expm1(y)

    def cdf(self, value):
        return -torch.expm1(-self.concentration * torch.expm1(value / self.scale))

    def icdf(self, value):
        return self.scale * torch.log1p(-torch.log1p(-value) / self.concentration)

    def entropy(self):
        return self.scale.log() - self.concentration.log() + 1 - scaled_exp1(self.concentration)


class Erlang(Gamma):
    """Erlang(concentration k, rate): a Gamma with integer shape k (scipy ``erlang(k, scale=1/rate)``).

    Trick: the paper's composition (section 2.4, "a sum over exponentially distributed variables"):
    z = -sum_{j=1}^k log(eps_j) / rate, eps_j ~ U(0, 1), i.e. a sum of k inverse-CDF Exponentials; pathwise in
    rate, with no gradient for the integer k. Costs max(k) uniforms per draw. log_prob, mean, variance, entropy,
    cdf and the KL pairs come from torch's Gamma, so Erlang||Erlang, Erlang||Gamma and Gamma||Erlang use the
    Gamma||Gamma closed form.
    """

    arg_constraints = {"concentration": constraints.positive_integer, "rate": constraints.positive}

    def __init__(self, concentration, rate, validate_args=None):
        if isinstance(rate, torch.Tensor):
            dtype, device = rate.dtype, rate.device
        else:
            dtype, device = torch.get_default_dtype(), None
        if not (isinstance(concentration, torch.Tensor) and concentration.is_floating_point()):
            concentration = torch.as_tensor(concentration, dtype=dtype, device=device)
        super().__init__(concentration, rate, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Erlang, _instance)
        return super().expand(batch_shape, new)

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        k_max = int(self.concentration.max().item())
        eps = uniform_eps((k_max,) + tuple(shape), self.rate)  # (k_max, S..., B...)
        j = torch.arange(k_max, device=self.rate.device).view((k_max,) + (1,) * len(shape))
        keep = j < self.concentration.expand(shape)
        exponentials = torch.where(keep, -eps.log(), torch.zeros_like(eps))
        return exponentials.sum(0) / self.rate.expand(shape)
