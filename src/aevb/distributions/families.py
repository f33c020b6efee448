"""Approximate posteriors q(z|x) and priors p(z) from every family of section 2.4, with their link functions.

A posterior family maps the encoder's raw outputs (..., n_out) through link functions to a Distribution with event
shape (Dz,); its default prior is the family's standard member, so supports match. Priors are a table of their own
(`--prior`). Each posterior family and each prior declares its `Support` (a torch constraint and the larger supports
it lies inside); `check_pair` accepts a prior whose support holds q's, and `analytic_kl` says by name whether the
pair has a closed-form KL.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.distributions import Distribution, Independent, constraints

from . import catalog as D
from .kl import has_analytic_kl

STUDENT_DF = 5.0  # fixed degrees of freedom of the Student's t families (q and prior)
ERLANG_K = 2  # fixed integer shape of the Erlang family


def _pos(raw: torch.Tensor) -> torch.Tensor:
    """Link to (0, inf): softplus, floored so that scales and rates never reach 0."""
    return F.softplus(raw) + 1e-4


def _unit(raw: torch.Tensor) -> torch.Tensor:
    finfo = torch.finfo(raw.dtype)
    return torch.sigmoid(raw).clamp(finfo.eps, 1 - finfo.eps)


def _ind(dist: Distribution) -> Distribution:
    return Independent(dist, 1)


def _split(raw: torch.Tensor, k: int) -> list[torch.Tensor]:
    """(..., k * Dz) -> k tensors (..., Dz).

    Slices rather than unflatten + unbind: torch.compile (torch 2.13) failed replaying unbind views of a detached
    tensor, the stopped q of STL and DReG (tests/test_estimators.py).
    """
    d = raw.shape[-1] // k
    return [raw[..., i * d:(i + 1) * d] for i in range(k)]


def _tril(raw: torch.Tensor, dz: int) -> torch.Tensor:
    """(..., Dz(Dz+1)/2) -> lower-triangular (..., Dz, Dz) with a positive diagonal (softplus link)."""
    rows, cols = torch.tril_indices(dz, dz, device=raw.device)
    L = raw.new_zeros(*raw.shape[:-1], dz, dz)
    L[..., rows, cols] = raw
    diag = torch.diagonal(L, dim1=-2, dim2=-1)
    return L - torch.diag_embed(diag) + torch.diag_embed(_pos(diag))


RECIPROCAL_RANGE = (-3.0, 3.0)  # the Reciprocal prior's support is [e^-3, e^3]


@dataclass(frozen=True, eq=False)
class Support:
    """Where each coordinate of z lies: a name (used in messages), the torch constraint that checks a value, and the
    larger supports it lies inside that a prior may also have (q's support must lie inside p's)."""

    name: str
    constraint: constraints.Constraint
    within: tuple[Support, ...] = ()

    def __str__(self) -> str:
        return self.name

    def inside(self, other: Support) -> bool:
        """Whether a prior of support `other` may go with a posterior of this support."""
        return other is self or other in self.within


REAL = Support("real", constraints.real)
POSITIVE = Support("positive", constraints.positive)
UNIT_INTERVAL = Support("unit_interval", constraints.unit_interval, within=(POSITIVE, REAL))
PARETO = Support("pareto", constraints.greater_than_eq(1.0), within=(POSITIVE,))
RECIPROCAL = Support("reciprocal", constraints.interval(*map(math.exp, RECIPROCAL_RANGE)), within=(POSITIVE,))
SIMPLEX = Support("simplex", constraints.simplex)


@dataclass(frozen=True)
class Family:
    """A posterior family: raw encoder outputs per latent vector, how to build q from them, its default prior and
    the support of q."""

    n_out: Callable[[int], int]
    build: Callable[[torch.Tensor, int], Distribution]
    prior: str = ""
    support: Support = REAL


def _two(build2):
    return Family(lambda dz: 2 * dz, lambda raw, dz: _ind(build2(*_split(raw, 2))))


def _one(build1):
    return Family(lambda dz: dz, lambda raw, dz: _ind(build1(raw)))


def _with(fam: Family, prior: str, support: Support) -> Family:
    return Family(fam.n_out, fam.build, prior, support)


def _mvn(raw, dz):
    loc, tril = raw[..., :dz], _tril(raw[..., dz:], dz)
    return D.MultivariateNormal(loc, scale_tril=tril, validate_args=False)


def _mvt(raw, dz):
    loc, tril = raw[..., :dz], _tril(raw[..., dz:], dz)
    return D.MultivariateStudentT(torch.full(loc.shape[:-1], STUDENT_DF, dtype=raw.dtype, device=raw.device), loc,
                                  tril, validate_args=False)


def _uniform(a, b):
    low = _unit(a)  # q's support [low, high] lies inside the prior's [0, 1]
    return D.Uniform(low, low + (1 - low) * _unit(b), validate_args=False)


def _triangular(a, b, c):
    loc = _unit(a)
    return D.Triangular(_unit(c), loc, (1 - loc) * _unit(b), validate_args=False)


def _reciprocal(a, b):
    lo, hi = RECIPROCAL_RANGE
    log_low = lo + (hi - lo) * _unit(a)  # q's support inside the prior's [e^lo, e^hi]
    log_high = log_low + (hi - log_low) * _unit(b)
    return D.Reciprocal(log_low.exp(), log_high.exp(), validate_args=False)


def _three(build3):
    return Family(lambda dz: 3 * dz, lambda raw, dz: _ind(build3(*_split(raw, 3))))


# name -> family. Link functions: identity for locations, the paper's log-variance for the Gaussian, softplus for
# other positive parameters, sigmoid for parameters in (0, 1).
POSTERIORS: dict[str, Family] = {
    "normal": _with(_two(lambda m, lv: D.Normal(m, torch.exp(0.5 * lv), validate_args=False)), "normal", REAL),
    "laplace": _with(_two(lambda m, s: D.Laplace(m, _pos(s), validate_args=False)), "laplace", REAL),
    "logistic": _with(_two(lambda m, s: D.Logistic(m, _pos(s), validate_args=False)), "logistic", REAL),
    "student_t": _with(_two(lambda m, s: D.StudentT(torch.full_like(m, STUDENT_DF), m, _pos(s), validate_args=False)),
                       "student_t", REAL),
    "cauchy": _with(_two(lambda m, s: D.Cauchy(m, _pos(s), validate_args=False)), "cauchy", REAL),
    "gumbel": _with(_two(lambda m, s: D.Gumbel(m, _pos(s), validate_args=False)), "gumbel", REAL),
    "uniform": _with(_two(_uniform), "uniform", UNIT_INTERVAL),
    "triangular": _with(_three(_triangular), "uniform", UNIT_INTERVAL),
    "beta": _with(_two(lambda a, b: D.Beta(_pos(a), _pos(b), validate_args=False)), "beta", UNIT_INTERVAL),
    "exponential": _with(_one(lambda r: D.Exponential(_pos(r), validate_args=False)), "exponential", POSITIVE),
    "rayleigh": _with(_one(lambda s: D.Rayleigh(_pos(s), validate_args=False)), "rayleigh", POSITIVE),
    "weibull": _with(_two(lambda s, k: D.Weibull(_pos(s), _pos(k), validate_args=False)), "weibull", POSITIVE),
    "gompertz": _with(_two(lambda c, s: D.Gompertz(_pos(c), _pos(s), validate_args=False)), "gompertz", POSITIVE),
    "gamma": _with(_two(lambda a, r: D.Gamma(_pos(a), _pos(r), validate_args=False)), "gamma", POSITIVE),
    "erlang": _with(_one(lambda r: D.Erlang(torch.full_like(r, ERLANG_K), _pos(r), validate_args=False)),
                    "erlang", POSITIVE),
    "chi2": _with(_one(lambda d: D.Chi2(_pos(d), validate_args=False)), "chi2", POSITIVE),
    "log_normal": _with(_two(lambda m, s: D.LogNormal(m, _pos(s), validate_args=False)), "log_normal", POSITIVE),
    "fisher_snedecor": _with(_two(lambda a, b: D.FisherSnedecor(_pos(a), _pos(b), validate_args=False)),
                             "fisher_snedecor", POSITIVE),
    "pareto": _with(_two(lambda s, a: D.Pareto(1 + _pos(s), _pos(a), validate_args=False)), "pareto", PARETO),
    "reciprocal": _with(_two(_reciprocal), "reciprocal", RECIPROCAL),
    "dirichlet": Family(lambda dz: dz, lambda raw, dz: D.Dirichlet(_pos(raw), validate_args=False), "dirichlet",
                        SIMPLEX),
    "multivariate_normal": Family(lambda dz: dz + dz * (dz + 1) // 2, _mvn, "multivariate_normal", REAL),
    "multivariate_student_t": Family(lambda dz: dz + dz * (dz + 1) // 2, _mvt, "multivariate_student_t", REAL),
}


def _std(cls, *values):
    """A prior built from constants broadcast to the latent dimension: anchor is zeros(Dz) on the model's device."""
    return lambda anchor: _ind(cls(*[anchor + v for v in values], validate_args=False))


# name -> (support, builder(anchor) -> Distribution with event shape (Dz,))
PRIORS: dict[str, tuple[Support, Callable[[torch.Tensor], Distribution]]] = {
    "normal": (REAL, _std(D.Normal, 0.0, 1.0)),
    "laplace": (REAL, _std(D.Laplace, 0.0, 1.0)),
    "logistic": (REAL, _std(D.Logistic, 0.0, 1.0)),
    "student_t": (REAL, _std(D.StudentT, STUDENT_DF, 0.0, 1.0)),
    "cauchy": (REAL, _std(D.Cauchy, 0.0, 1.0)),
    "gumbel": (REAL, _std(D.Gumbel, 0.0, 1.0)),
    "uniform": (UNIT_INTERVAL, _std(D.Uniform, 0.0, 1.0)),
    "beta": (UNIT_INTERVAL, _std(D.Beta, 1.0, 1.0)),
    "exponential": (POSITIVE, _std(D.Exponential, 1.0)),
    "rayleigh": (POSITIVE, _std(D.Rayleigh, 1.0)),
    "weibull": (POSITIVE, _std(D.Weibull, 1.0, 1.0)),
    "gompertz": (POSITIVE, _std(D.Gompertz, 1.0, 1.0)),
    "gamma": (POSITIVE, _std(D.Gamma, 1.0, 1.0)),
    "erlang": (POSITIVE, _std(D.Erlang, float(ERLANG_K), 1.0)),
    "chi2": (POSITIVE, _std(D.Chi2, 1.0)),
    "log_normal": (POSITIVE, _std(D.LogNormal, 0.0, 1.0)),
    "fisher_snedecor": (POSITIVE, _std(D.FisherSnedecor, 5.0, 5.0)),
    "pareto": (PARETO, _std(D.Pareto, 1.0, 1.0)),
    "reciprocal": (RECIPROCAL, lambda a: _ind(D.Reciprocal((a + RECIPROCAL_RANGE[0]).exp(),
                                                           (a + RECIPROCAL_RANGE[1]).exp(), validate_args=False))),
    "dirichlet": (SIMPLEX, lambda a: D.Dirichlet(a + 1.0, validate_args=False)),
    "multivariate_normal": (REAL, lambda a: D.MultivariateNormal(a, scale_tril=torch.diag_embed(a + 1.0),
                                                                 validate_args=False)),
    "multivariate_student_t": (REAL, lambda a: D.MultivariateStudentT(
        a.new_tensor(STUDENT_DF), a, torch.diag_embed(a + 1.0), validate_args=False)),
}


@functools.lru_cache(maxsize=None)
def analytic_kl(posterior: str, prior: str) -> bool:
    """Whether KL(q || p) has a closed form for a posterior family and a prior, by name: decided on a q built from
    zero raw parameters and the standard prior (Dz = 2), without data or an encoder."""
    check_pair(posterior, prior)
    dz, fam = 2, POSTERIORS[posterior]
    q = fam.build(torch.zeros(1, fam.n_out(dz)), dz)
    return has_analytic_kl(q, PRIORS[prior][1](torch.zeros(dz)))


def check_pair(posterior: str, prior: str) -> None:
    """Raise ValueError unless both names exist and q's support lies inside the prior's."""
    if posterior not in POSTERIORS:
        raise ValueError(f"unknown posterior {posterior!r}; choose from {', '.join(POSTERIORS)}")
    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; choose from {', '.join(PRIORS)}")
    q_support, p_support = POSTERIORS[posterior].support, PRIORS[prior][0]
    if not q_support.inside(p_support):
        raise ValueError(f"prior {prior!r} (support: {p_support}) does not match posterior {posterior!r} "
                         f"(support: {q_support}); the default prior for it is {POSTERIORS[posterior].prior!r}")
