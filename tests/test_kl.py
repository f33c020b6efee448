"""Analytic KL(p || q) against Monte Carlo E_p[log p(z) - log q(z)] for every pair aevb registers and the pairs the
VAE uses (estimator B, eq. 7), and has_analytic_kl against what kl_divergence actually does.

Monte Carlo checks run at fixed seeds with n = 40000 draws and a tolerance of 4.5 standard errors of the mean
log-ratio (two-sided normal tail 7e-6 per batch element).
"""

import math
import warnings

import pytest
import torch
from torch.distributions import Independent, TransformedDistribution, kl_divergence
from torch.distributions.kl import _dispatch_kl
from torch.distributions.transforms import AffineTransform, ExpTransform

from aevb import distributions as D
from aevb.distributions.kl import REGISTERED, has_analytic_kl

N_MC = 40000


def _t(*values):
    return torch.tensor(values, dtype=torch.float64)


# id -> (p, q); every parameter has batch shape (2,) so that each case checks two settings.
PAIRS = {
    # aevb's registrations
    "Logistic||Normal": (D.Logistic(_t(0.3, -1.0), _t(1.2, 0.4)), D.Normal(_t(0.0, 0.5), _t(1.0, 2.0))),
    "Logistic||Laplace": (D.Logistic(_t(0.3, -1.0), _t(1.2, 0.4)), D.Laplace(_t(0.0, 2.0), _t(1.0, 0.7))),
    "StudentT||Normal": (D.StudentT(_t(7.0, 30.0), _t(0.3, -1.0), _t(1.2, 0.4)), D.Normal(_t(0.0, 0.5), _t(1.0, 2.0))),
    "Rayleigh||Rayleigh": (D.Rayleigh(_t(1.0, 3.0)), D.Rayleigh(_t(2.0, 0.5))),
    "Rayleigh||Exponential": (D.Rayleigh(_t(1.0, 3.0)), D.Exponential(_t(2.0, 0.5))),
    "Rayleigh||Gamma": (D.Rayleigh(_t(1.0, 3.0)), D.Gamma(_t(2.0, 0.7), _t(1.5, 0.5))),
    "Exponential||Rayleigh": (D.Exponential(_t(2.0, 0.5)), D.Rayleigh(_t(1.0, 3.0))),
    "Gamma||Rayleigh": (D.Gamma(_t(2.0, 0.7), _t(1.5, 0.5)), D.Rayleigh(_t(1.0, 3.0))),
    "Reciprocal||Reciprocal": (D.Reciprocal(_t(0.5, 2.0), _t(4.0, 3.0)), D.Reciprocal(_t(0.1, 1.0), _t(4.0, 50.0))),
    "Weibull||Weibull": (D.Weibull(_t(1.0, 3.0), _t(1.5, 0.8)), D.Weibull(_t(2.0, 2.5), _t(0.9, 1.7))),
    "LogNormal||LogNormal": (D.LogNormal(_t(0.3, -1.0), _t(0.5, 1.2)), D.LogNormal(_t(0.0, 0.5), _t(1.0, 0.8))),
    "Triangular||Uniform": (D.Triangular(_t(0.3, 1.0), _t(-1.0, 0.0), _t(2.0, 1.0)),
                            D.Uniform(_t(-1.5, 0.0), _t(1.0, 4.0))),
    "Beta||Uniform": (D.Beta(_t(2.0, 0.7), _t(3.0, 1.5)), D.Uniform(_t(-0.5, 0.0), _t(1.0, 4.0))),
    # torch's pairs the VAE relies on, and Erlang through the Gamma formula
    "Normal||Normal": (D.Normal(_t(0.3, -1.0), _t(0.5, 1.2)), D.Normal(_t(0.0, 0.5), _t(1.0, 0.8))),
    "Laplace||Laplace": (D.Laplace(_t(0.3, -1.0), _t(0.5, 1.2)), D.Laplace(_t(0.0, 0.5), _t(1.0, 0.8))),
    "Laplace||Normal": (D.Laplace(_t(0.3, -1.0), _t(0.5, 1.2)), D.Normal(_t(0.0, 0.5), _t(1.0, 0.8))),
    "Normal||Laplace": (D.Normal(_t(0.3, -1.0), _t(0.5, 1.2)), D.Laplace(_t(0.0, 0.5), _t(1.0, 0.8))),
    "Gumbel||Gumbel": (D.Gumbel(_t(0.3, -1.0), _t(0.5, 1.2)), D.Gumbel(_t(0.0, 0.5), _t(1.0, 0.8))),
    "Exponential||Exponential": (D.Exponential(_t(2.0, 0.5)), D.Exponential(_t(1.0, 0.7))),
    "Erlang||Erlang": (D.Erlang(_t(3.0, 1.0), _t(2.0, 0.5)), D.Erlang(_t(2.0, 4.0), _t(1.0, 1.5))),
    "Erlang||Gamma": (D.Erlang(_t(3.0, 1.0), _t(2.0, 0.5)), D.Gamma(_t(2.5, 0.7), _t(1.0, 1.5))),
    "Gamma||Erlang": (D.Gamma(_t(2.5, 0.7), _t(1.0, 1.5)), D.Erlang(_t(3.0, 1.0), _t(2.0, 0.5))),
    "Beta||Beta": (D.Beta(_t(2.0, 0.7), _t(3.0, 1.5)), D.Beta(_t(1.0, 2.0), _t(1.0, 2.0))),
    "Independent(Normal)": (Independent(D.Normal(_t(0.3, -1.0), _t(0.5, 1.2)), 1),
                            Independent(D.Normal(_t(0.0, 0.0), _t(1.0, 1.0)), 1)),
}


def _monte_carlo_kl(p, q, n=N_MC, seed=0):
    torch.manual_seed(seed)
    z = p.sample((n,))
    log_ratio = p.log_prob(z) - q.log_prob(z)  # (n, B...)
    return log_ratio.mean(0), log_ratio.std(0) / math.sqrt(n)


@pytest.mark.parametrize("pair", PAIRS)
def test_analytic_kl_matches_monte_carlo(pair):
    p, q = PAIRS[pair]
    analytic = kl_divergence(p, q)
    mc, se = _monte_carlo_kl(p, q)
    assert analytic.shape == p.batch_shape
    assert torch.all((analytic - mc).abs() <= 4.5 * se + 1e-12), (analytic, mc, se)


def test_every_registered_pair_is_checked_against_monte_carlo():
    checked = {(type(p), type(q)) for p, q in PAIRS.values()}
    assert set(REGISTERED) <= checked


@pytest.mark.parametrize("pair", [k for k in PAIRS if k.split("||")[0] == k.split("||")[-1]])
def test_kl_of_a_distribution_with_itself_is_zero(pair):
    p, _ = PAIRS[pair]
    torch.testing.assert_close(kl_divergence(p, p), torch.zeros(p.batch_shape, dtype=torch.float64))


def test_normal_kl_is_appendix_b():
    """-KL(N(mu, sigma^2) || N(0, I)) = 1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)."""
    mu, sigma = _t(0.3, -1.0, 2.0), _t(0.5, 1.2, 0.1)
    q = Independent(D.Normal(mu, sigma), 1)
    prior = Independent(D.Normal(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)), 1)
    neg_kl = 0.5 * (1 + sigma.pow(2).log() - mu.pow(2) - sigma.pow(2)).sum()
    torch.testing.assert_close(-kl_divergence(q, prior), neg_kl)


def test_infinite_kls():
    outside = kl_divergence(D.Reciprocal(_t(0.5), _t(4.0)), D.Reciprocal(_t(1.0), _t(8.0)))
    heavy = kl_divergence(D.StudentT(_t(2.0, 1.5)), D.Normal(_t(0.0, 0.0), _t(1.0, 1.0)))
    wider = kl_divergence(D.Triangular(_t(0.5), _t(0.0), _t(3.0)), D.Uniform(_t(0.0), _t(2.0)))
    narrow = kl_divergence(D.Beta(_t(2.0), _t(3.0)), D.Uniform(_t(0.0), _t(0.9)))
    assert torch.isinf(outside).all() and torch.isinf(heavy).all() and torch.isinf(wider).all()
    assert torch.isinf(narrow).all()


def test_beta_uniform_kl_broadcasts_a_batch_of_q_against_the_prior():
    """torch's own Beta||Uniform raised IndexError here; the value is torch's formula element by element."""
    p = Independent(D.Beta(_t(2.0, 0.7, 1.0, 3.0).reshape(2, 2), _t(3.0, 1.5, 1.0, 0.5).reshape(2, 2)), 1)
    q = Independent(D.Uniform(_t(0.0, -1.0), _t(1.0, 1.0)), 1)
    expected = (-p.base_dist.entropy() + (q.base_dist.high - q.base_dist.low).log()).sum(-1)
    torch.testing.assert_close(kl_divergence(p, q), expected, rtol=0, atol=0)


def test_kl_gradients_match_monte_carlo_gradients():
    """The pathwise gradient of the Monte Carlo KL estimates the gradient of the analytic KL (estimator A vs B)."""
    n = N_MC
    for make in (lambda s: (D.Logistic(_t(0.3), s), D.Normal(_t(0.0), _t(1.0))),
                 lambda s: (D.Rayleigh(s), D.Gamma(_t(2.0), _t(1.5)))):
        s = _t(1.2).requires_grad_()
        p, q = make(s)
        (g_analytic,) = torch.autograd.grad(kl_divergence(p, q).sum(), s)
        s_rep = s.detach().expand(n).clone().requires_grad_()
        p, q = make(s_rep)
        torch.manual_seed(1)
        z = p.rsample()
        (g,) = torch.autograd.grad((p.log_prob(z) - q.log_prob(z)).sum(), s_rep)  # n one-sample gradients
        assert abs(g.mean() - g_analytic) <= 4.5 * g.std() / math.sqrt(n)


def test_registrations_create_no_ambiguous_dispatch():
    classes = list(D.BY_NAME.values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for type_p in classes:
            for type_q in classes:
                _dispatch_kl(type_p, type_q)


def _standard(cls):
    """A scalar-batch instance of a class of D.BY_NAME (see _one_of_each)."""
    return next(d for d in _one_of_each() if type(d) is cls)


@pytest.mark.parametrize("p,q,expected", [
    (D.Normal, D.Normal, True),
    (D.Laplace, D.Laplace, True),
    (D.Logistic, D.Normal, True),
    (D.Logistic, D.Logistic, False),
    (D.StudentT, D.StudentT, False),
    (D.MultivariateStudentT, D.MultivariateStudentT, False),
    (D.MultivariateNormal, D.MultivariateNormal, True),
    (D.Gompertz, D.Gompertz, False),
    (D.Triangular, D.Triangular, False),
    (D.FisherSnedecor, D.FisherSnedecor, False),
    (D.Erlang, D.Gamma, True),
    (D.Chi2, D.Erlang, True),
    (D.LogNormal, D.LogNormal, True),
    (D.Weibull, D.Weibull, True),
])
def test_has_analytic_kl_of_standard_members(p, q, expected):
    assert has_analytic_kl(_standard(p), _standard(q)) is expected


def _normal(batch=(2,)):
    return D.Normal(torch.zeros(batch), torch.ones(batch))


@pytest.mark.parametrize("p,q,expected", [
    (Independent(_normal(), 1), Independent(_normal(), 1), True),
    (Independent(_normal((2, 3)), 2), Independent(_normal((2, 3)), 1), False),
    (Independent(D.Logistic(torch.zeros(2), torch.ones(2)), 1),
     Independent(D.Logistic(torch.zeros(2), torch.ones(2)), 1), False),
    (Independent(D.Logistic(torch.zeros(2), torch.ones(2)), 1), Independent(_normal(), 1), True),
    (TransformedDistribution(_normal(), [AffineTransform(1.0, 2.0)]),
     TransformedDistribution(_normal(), [AffineTransform(1.0, 2.0)]), True),
    (TransformedDistribution(_normal(), [AffineTransform(1.0, 2.0)]),
     TransformedDistribution(_normal(), [AffineTransform(0.0, 2.0)]), False),
    (TransformedDistribution(D.Logistic(0.0, 1.0), [ExpTransform()]),
     TransformedDistribution(D.Logistic(0.0, 1.0), [ExpTransform()]), False),
    (D.Gamma(1.0, 2.0), D.Beta(1.0, 2.0), True),
    (torch.distributions.Binomial(5, probs=0.3), torch.distributions.Binomial(5, probs=0.6), True),
    (torch.distributions.Binomial(3, probs=0.3), torch.distributions.Binomial(5, probs=0.6), False),
])
def test_has_analytic_kl_by_instance_agrees_with_kl_divergence(p, q, expected):
    assert has_analytic_kl(p, q) is expected
    if expected:
        assert torch.isfinite(kl_divergence(p, q)).all() or torch.isinf(kl_divergence(p, q)).all()
    else:
        with pytest.raises(NotImplementedError):
            kl_divergence(p, q)


def _one_of_each():
    """A scalar-batch instance of every class in BY_NAME (event shape (2,) for the multivariate ones)."""
    one, two = torch.tensor(1.0), torch.tensor(2.0)
    vec, eye = torch.zeros(2), torch.eye(2)
    make = {
        "Dirichlet": lambda: D.Dirichlet(torch.ones(2)),
        "MultivariateNormal": lambda: D.MultivariateNormal(vec, scale_tril=eye),
        "MultivariateStudentT": lambda: D.MultivariateStudentT(two, vec, eye),
        "Uniform": lambda: D.Uniform(torch.tensor(0.0), one),
        "Triangular": lambda: D.Triangular(torch.tensor(0.5), 0.0, 1.0),
        "Reciprocal": lambda: D.Reciprocal(one, two),
        "StudentT": lambda: D.StudentT(two),
        "Chi2": lambda: D.Chi2(two),
        "Exponential": lambda: D.Exponential(one),
        "Rayleigh": lambda: D.Rayleigh(one),
    }
    out = []
    for cls in D.BY_NAME.values():
        if cls.__name__ in make:
            out.append(make[cls.__name__]())
        else:
            out.append(cls(two, two))  # two positive parameters
    return out


def test_has_analytic_kl_never_claims_a_pair_kl_divergence_lacks():
    """No silent fallback: True exactly when kl_divergence returns a value, False when it raises."""
    dists = _one_of_each()
    for p in dists:
        for q in dists:
            if p.event_shape != q.event_shape:
                continue
            try:
                kl_divergence(p, q)
                works = True
            except NotImplementedError:
                works = False
            assert has_analytic_kl(p, q) is works, (type(p).__name__, type(q).__name__)


def test_has_analytic_kl_rejects_non_distributions():
    with pytest.raises(TypeError):
        has_analytic_kl(torch.zeros(2), D.Normal(0.0, 1.0))
    with pytest.raises(TypeError):  # classes are not instances: the answer can depend on the instances
        has_analytic_kl(D.Normal, D.Normal)
