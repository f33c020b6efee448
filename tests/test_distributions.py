"""Oracles for aevb.distributions (paper section 2.4): log_prob, moments, cdf and icdf against scipy.stats; rsample
against scipy with one-sample KS tests; pathwise gradients against closed forms; gradcheck on log_prob.

Randomized tests run at fixed seeds, so each one either always passes or always fails for a given torch build.
Each KS test uses alpha = 1e-3, so a correct sampler fails one of them for an unlucky seed with probability 1e-3;
with the ~60 KS tests below the family-wise false-positive rate is about 6%. Mean-of-samples checks use 4.5 standard
errors (two-sided normal tail 7e-6 each).
"""

import math

import numpy as np
import pytest
import scipy.special as sp
import scipy.stats as st
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs

from aevb import distributions as D
from aevb.distributions.inverse_cdf import scaled_exp1

KS_ALPHA = 1e-3
N_KS = 2000
EULER = 0.5772156649015329

# name -> (class, scipy constructor taking the same keywords, parameter settings); list entries broadcast into
# batch shapes, e.g. (2, 1) with (3,) gives batch (2, 3).
UNIVARIATE = {
    "Exponential": (D.Exponential, lambda rate: st.expon(scale=1 / rate),
                    [dict(rate=0.7), dict(rate=[[0.5], [3.0]])]),
    "Cauchy": (D.Cauchy, lambda loc, scale: st.cauchy(loc, scale),
               [dict(loc=0.3, scale=1.5), dict(loc=[-1.0, 0.0, 2.0], scale=[[0.5], [2.0]])]),
    "Logistic": (D.Logistic, lambda loc, scale: st.logistic(loc, scale),
                 [dict(loc=0.3, scale=1.5), dict(loc=[-1.0, 0.0, 2.0], scale=[[0.1], [4.0]])]),
    "Rayleigh": (D.Rayleigh, lambda scale: st.rayleigh(scale=scale),
                 [dict(scale=2.0), dict(scale=[[0.3], [1.0], [5.0]])]),
    "Pareto": (D.Pareto, lambda scale, alpha: st.pareto(alpha, scale=scale),
               [dict(scale=1.5, alpha=3.5), dict(scale=[[1.0], [2.0]], alpha=[2.5, 4.5, 6.0])]),
    "Weibull": (D.Weibull, lambda scale, concentration: st.weibull_min(concentration, scale=scale),
                [dict(scale=2.0, concentration=1.5), dict(scale=[[0.5], [3.0]], concentration=[0.7, 1.0, 4.0])]),
    "Reciprocal": (D.Reciprocal, lambda low, high: st.reciprocal(low, high),
                   [dict(low=0.5, high=4.0), dict(low=[[0.01], [1.0]], high=[2.0, 10.0, 100.0])]),
    "Gompertz": (D.Gompertz, lambda concentration, scale: st.gompertz(concentration, scale=scale),
                 [dict(concentration=0.4, scale=2.0), dict(concentration=[0.05, 1.0, 5.0], scale=[[0.5], [3.0]])]),
    "Gumbel": (D.Gumbel, lambda loc, scale: st.gumbel_r(loc, scale),
               [dict(loc=0.3, scale=1.5), dict(loc=[-1.0, 0.0, 2.0], scale=[[0.5], [2.0]])]),
    "Erlang": (D.Erlang, lambda concentration, rate: st.erlang(concentration, scale=1 / rate),
               [dict(concentration=3.0, rate=2.0), dict(concentration=[1.0, 2.0, 7.0], rate=[[0.5], [4.0]])]),
    "Laplace": (D.Laplace, lambda loc, scale: st.laplace(loc, scale),
                [dict(loc=0.3, scale=1.5), dict(loc=[-1.0, 0.0, 2.0], scale=[[0.5], [2.0]])]),
    "StudentT": (D.StudentT, lambda df, loc, scale: st.t(df, loc, scale),
                 [dict(df=5.0, loc=0.5, scale=2.0), dict(df=[[2.5], [30.0]], loc=[-1.0, 0.0, 3.0], scale=0.7)]),
    "Uniform": (D.Uniform, lambda low, high: st.uniform(low, high - low),
                [dict(low=-1.0, high=2.0), dict(low=[[0.0], [5.0]], high=[6.0, 7.0, 10.0])]),
    "Triangular": (D.Triangular, lambda c, loc, scale: st.triang(c, loc, scale),
                   [dict(c=0.3, loc=-1.0, scale=2.0), dict(c=[0.0, 0.5, 1.0], loc=[[0.0], [2.0]], scale=1.5)]),
    "Normal": (D.Normal, lambda loc, scale: st.norm(loc, scale),
               [dict(loc=0.3, scale=1.5), dict(loc=[-1.0, 0.0, 2.0], scale=[[0.5], [2.0]])]),
    "LogNormal": (D.LogNormal, lambda loc, scale: st.lognorm(scale, scale=np.exp(loc)),
                  [dict(loc=0.3, scale=0.8), dict(loc=[-1.0, 0.0, 2.0], scale=[[0.2], [1.2]])]),
    "Gamma": (D.Gamma, lambda concentration, rate: st.gamma(concentration, scale=1 / rate),
              [dict(concentration=2.5, rate=1.5), dict(concentration=[0.3, 1.0, 9.0], rate=[[0.5], [4.0]])]),
    "Beta": (D.Beta, lambda concentration1, concentration0: st.beta(concentration1, concentration0),
             [dict(concentration1=2.0, concentration0=3.5),
              dict(concentration1=[0.5, 1.0, 8.0], concentration0=[[0.7], [3.0]])]),
    "Chi2": (D.Chi2, lambda df: st.chi2(df), [dict(df=3.0), dict(df=[[0.8], [2.0], [12.0]])]),
    "FisherSnedecor": (D.FisherSnedecor, lambda df1, df2: st.f(df1, df2),
                       [dict(df1=3.0, df2=12.0), dict(df1=[[2.0], [10.0]], df2=[5.0, 9.0, 30.0])]),
}
OWN = ("Logistic", "Rayleigh", "Reciprocal", "Gompertz", "Erlang", "Triangular")
WITH_ICDF = ("Exponential", "Cauchy", "Logistic", "Rayleigh", "Pareto", "Weibull", "Reciprocal", "Gompertz",
             "Gumbel", "Laplace", "Uniform", "Triangular", "Normal", "LogNormal")
WITH_CDF = WITH_ICDF + ("Erlang", "Gamma", "Chi2")
UNIVARIATE_CASES = [pytest.param(name, i, id=f"{name}-{i}")
                    for name, (_, _, sets) in UNIVARIATE.items() for i in range(len(sets))]


def build(name, i, dtype=torch.float64):
    """(torch distribution, frozen scipy distribution, batch shape) for setting i of a univariate family."""
    cls, scipy_fn, sets = UNIVARIATE[name]
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in sets[i].items()}
    dist = cls(**{k: torch.tensor(v, dtype=dtype) for k, v in arrays.items()})
    batch = np.broadcast_shapes(*(a.shape for a in arrays.values()))
    return dist, scipy_fn(**arrays), batch


def ks_pvalue(samples, cdf):
    """One-sample KS p-value of the probability integral transform cdf(samples), pooled over the batch."""
    return st.kstest(np.ravel(cdf(samples)), "uniform").pvalue


def test_tables_cover_the_papers_22_families():
    names = {n for group in D.PAPER_FAMILIES.values() for n in group}
    assert len(names) == 23  # 22 paper names; the elliptical family has two classes
    assert names == set(D.RSAMPLE) == {cls.__name__ for cls in D.BY_NAME.values()}
    assert set(UNIVARIATE) | {"Dirichlet", "MultivariateNormal", "MultivariateStudentT"} == names
    assert {"normal", "laplace", "logistic", "student_t", "gumbel", "cauchy"} <= set(D.BY_NAME)
    assert all(trick in {"inverse_cdf", "location_scale", "composition", "implicit"}
               for trick, _ in D.RSAMPLE.values())


def test_torch_classes_are_reexported_unchanged():
    for name in ("Normal", "Laplace", "Cauchy", "Exponential", "Gumbel", "StudentT", "Uniform", "LogNormal",
                 "Gamma", "Dirichlet", "Beta", "Chi2", "Weibull", "Pareto", "MultivariateNormal", "FisherSnedecor"):
        assert getattr(D, name) is getattr(torch.distributions, name)


@pytest.mark.parametrize("name,i", UNIVARIATE_CASES)
def test_log_prob_matches_scipy(name, i):
    dist, ref, batch = build(name, i)
    x = ref.rvs(size=(4,) + batch, random_state=np.random.default_rng(i))
    got = dist.log_prob(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, ref.logpdf(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name,i", UNIVARIATE_CASES)
def test_rsample_ks_against_scipy(name, i):
    dist, ref, batch = build(name, i)
    assert dist.has_rsample
    torch.manual_seed(100 + i)
    n = max(N_KS // max(int(np.prod(batch)), 1), 400)
    x = dist.rsample((n,))
    assert x.shape == (n,) + batch and x.dtype == torch.float64
    assert ks_pvalue(x.numpy(), ref.cdf) > KS_ALPHA


@pytest.mark.parametrize("name", OWN)
def test_own_classes_in_float32(name):
    dist, ref, batch = build(name, 0, dtype=torch.float32)
    torch.manual_seed(7)
    x = dist.rsample((N_KS,))
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    assert dist.support.check(x).all()
    assert ks_pvalue(x.double().numpy(), ref.cdf) > KS_ALPHA
    np.testing.assert_allclose(dist.log_prob(x).numpy(), ref.logpdf(x.double().numpy()), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,i", UNIVARIATE_CASES)
def test_mean_and_variance_match_scipy(name, i):
    dist, ref, batch = build(name, i)
    mean, var = ref.stats(moments="mv")
    for got, want in ((dist.mean, mean), (dist.variance, var)):
        got, want = np.broadcast_to(got.numpy(), batch), np.broadcast_to(want, batch)
        defined = np.isfinite(want)
        assert not np.isfinite(got[~defined]).any()  # undefined moments are nan or inf on both sides
        np.testing.assert_allclose(got[defined], want[defined], rtol=1e-6 if name == "Gompertz" else 1e-9)


@pytest.mark.parametrize("name", OWN + ("Normal", "Laplace", "Gumbel", "Exponential", "Weibull", "Pareto"))
def test_entropy_matches_scipy(name):
    for i in range(len(UNIVARIATE[name][2])):
        dist, ref, batch = build(name, i)
        np.testing.assert_allclose(np.broadcast_to(dist.entropy().numpy(), batch), ref.entropy(), rtol=1e-9)


@pytest.mark.parametrize("name", WITH_ICDF)
def test_cdf_icdf_round_trip_and_scipy_ppf(name):
    for i in range(len(UNIVARIATE[name][2])):
        dist, ref, batch = build(name, i)
        u = torch.tensor([1e-6, 0.01, 0.3, 0.5, 0.77, 0.999], dtype=torch.float64).reshape((-1,) + (1,) * len(batch))
        x = dist.icdf(u)
        np.testing.assert_allclose(dist.cdf(x).numpy(), np.broadcast_to(u.numpy(), x.shape), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(x.numpy(), ref.ppf(u.numpy()), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", WITH_CDF)
def test_cdf_matches_scipy(name):
    for i in range(len(UNIVARIATE[name][2])):
        dist, ref, batch = build(name, i)
        x = ref.rvs(size=(5,) + batch, random_state=np.random.default_rng(3))
        np.testing.assert_allclose(dist.cdf(torch.tensor(x)).numpy(), ref.cdf(x), rtol=1e-9, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(c=hs.floats(0, 1), u=hs.floats(1e-9, 1 - 1e-9), scale=hs.floats(0.01, 100), loc=hs.floats(-50, 50))
def test_triangular_against_scipy_for_any_mode(c, u, scale, loc):
    dist, ref = D.Triangular(torch.tensor(c, dtype=torch.float64), loc, scale), st.triang(c, loc, scale)
    x = dist.icdf(torch.tensor(u, dtype=torch.float64))
    assert math.isclose(x.item(), ref.ppf(u), rel_tol=1e-9, abs_tol=1e-9 * scale)
    assert math.isclose(dist.cdf(x).item(), u, rel_tol=1e-6, abs_tol=1e-10)
    if ref.pdf(x.item()) > 1e-6 / scale:
        assert math.isclose(dist.log_prob(x).item(), ref.logpdf(x.item()), rel_tol=1e-7, abs_tol=1e-7)


def test_scaled_exp1_matches_scipy():
    x = torch.tensor(np.concatenate([np.logspace(-8, 2.5, 300), [1.0, 1 - 1e-12, 1 + 1e-12]]))
    np.testing.assert_allclose(scaled_exp1(x).numpy(), np.exp(x.numpy()) * sp.exp1(x.numpy()), rtol=1e-12)


def test_sample_shape_first_and_expand():
    for name in OWN:
        dist, _, _ = build(name, 1)
        big = dist.expand((4,) + dist.batch_shape)
        assert dist.rsample((5, 2)).shape == (5, 2) + dist.batch_shape
        assert big.rsample((3,)).shape == (3, 4) + dist.batch_shape
        x = dist.sample((2,))
        torch.testing.assert_close(big.log_prob(x.unsqueeze(1)), dist.log_prob(x).unsqueeze(1).expand(2, 4, -1, -1))


@pytest.mark.parametrize("make", [
    lambda: D.Erlang(torch.tensor(2.5), torch.tensor(1.0), validate_args=True),
    lambda: D.Reciprocal(torch.tensor(2.0), torch.tensor(1.0), validate_args=True),
    lambda: D.Triangular(torch.tensor(1.5), 0.0, 1.0, validate_args=True),
    lambda: D.Rayleigh(torch.tensor(-1.0), validate_args=True),
])
def test_invalid_parameters_raise(make):
    with pytest.raises(ValueError):
        make()


def test_erlang_accepts_integer_shape_and_is_a_gamma():
    dist = D.Erlang(torch.tensor([1, 4]), torch.tensor([2.0, 0.5]))
    assert dist.concentration.dtype == torch.float32 and isinstance(dist, D.Gamma)
    assert dist.rsample((3,)).shape == (3, 2)


# ---------------------------------------------------------------- multivariate families

def _mv_params(d=3, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(batch, d, generator=g, dtype=torch.float64)
    raw = torch.randn(batch, d, d, generator=g, dtype=torch.float64)
    scale_tril = raw.tril(-1) * 0.5 + torch.diag_embed(raw.diagonal(dim1=-2, dim2=-1).exp())
    return loc, scale_tril


def _scipy_mv(dist, b):
    if isinstance(dist, D.Dirichlet):
        return st.dirichlet(dist.concentration[b].numpy())
    cov = (dist.scale_tril[b] @ dist.scale_tril[b].T).numpy()
    if isinstance(dist, D.MultivariateStudentT):
        return st.multivariate_t(dist.loc[b].numpy(), cov, df=dist.df[b].item())
    return st.multivariate_normal(dist.loc[b].numpy(), cov)


def _multivariate():
    loc, scale_tril = _mv_params()
    return {
        "MultivariateNormal": D.MultivariateNormal(loc, scale_tril=scale_tril),
        "MultivariateStudentT": D.MultivariateStudentT(torch.tensor([3.0, 12.0], dtype=torch.float64), loc,
                                                       scale_tril),
        "Dirichlet": D.Dirichlet(torch.tensor([[0.5, 1.0, 3.0], [4.0, 2.0, 7.0]], dtype=torch.float64)),
    }


@pytest.mark.parametrize("name", ["MultivariateNormal", "MultivariateStudentT", "Dirichlet"])
def test_multivariate_log_prob_matches_scipy(name):
    dist = _multivariate()[name]
    torch.manual_seed(0)
    x = dist.sample((6,))  # (6, 2, d)
    got = dist.log_prob(x)
    for b in range(2):
        ref = _scipy_mv(dist, b)
        xb = x[:, b].numpy()
        want = ref.logpdf(xb.T) if name == "Dirichlet" else ref.logpdf(xb)
        np.testing.assert_allclose(got[:, b].numpy(), want, rtol=1e-9)


@pytest.mark.parametrize("name", ["MultivariateNormal", "MultivariateStudentT"])
def test_elliptical_rsample_radius_and_projection(name):
    """Mahalanobis distance M ~ chi2(d) (MVN) or M / d ~ F(d, df) (MVT); a projection a^T z is N or Student's t."""
    dist = _multivariate()[name]
    torch.manual_seed(11)
    z = dist.rsample((N_KS,))  # (N, 2, d)
    d = dist.event_shape[0]
    white = torch.linalg.solve_triangular(dist.scale_tril, (z - dist.loc).unsqueeze(-1), upper=False)
    maha = white.squeeze(-1).pow(2).sum(-1).numpy()  # (N, 2)
    a = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    proj = (z @ a).numpy()
    for b in range(2):
        spread = (dist.scale_tril[b].T @ a).norm().item()
        centre = (dist.loc[b] @ a).item()
        if name == "MultivariateNormal":
            radius, line = st.chi2(d).cdf(maha[:, b]), st.norm(centre, spread).cdf(proj[:, b])
        else:
            df = dist.df[b].item()
            radius, line = st.f(d, df).cdf(maha[:, b] / d), st.t(df, centre, spread).cdf(proj[:, b])
        assert st.kstest(radius, "uniform").pvalue > KS_ALPHA
        assert st.kstest(line, "uniform").pvalue > KS_ALPHA


def test_dirichlet_rsample_marginals_are_beta():
    dist = _multivariate()["Dirichlet"]
    torch.manual_seed(12)
    x = dist.rsample((N_KS,)).numpy()
    alpha = dist.concentration.numpy()
    for b in range(2):
        for k in range(3):
            marginal = st.beta(alpha[b, k], alpha[b].sum() - alpha[b, k])
            assert st.kstest(x[:, b, k], marginal.cdf).pvalue > KS_ALPHA


def test_multivariate_moments_and_entropy():
    mvt, mvn, dirichlet = (_multivariate()[k] for k in ("MultivariateStudentT", "MultivariateNormal", "Dirichlet"))
    a = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    for b in range(2):
        df = mvt.df[b].item()
        # Oracle: every projection a^T z of a MVT is t(df, a^T loc, |L^T a|).
        spread = (mvt.scale_tril[b].T @ a).norm().item()
        assert math.isclose((a @ mvt.covariance_matrix[b] @ a).item(), st.t(df, 0, spread).var(), rel_tol=1e-9)
        marg_var = [st.t(df, 0, mvt.scale_tril[b, i].norm().item()).var() for i in range(3)]
        np.testing.assert_allclose(mvt.variance[b].numpy(), marg_var, rtol=1e-9)
        assert math.isclose(mvt.entropy()[b].item(), _scipy_mv(mvt, b).entropy(), rel_tol=1e-9)
        assert math.isclose(mvn.entropy()[b].item(), _scipy_mv(mvn, b).entropy(), rel_tol=1e-9)
        np.testing.assert_allclose(dirichlet.variance[b].numpy(), _scipy_mv(dirichlet, b).var(), rtol=1e-9)
        np.testing.assert_allclose(dirichlet.mean[b].numpy(), _scipy_mv(dirichlet, b).mean(), rtol=1e-9)
    torch.testing.assert_close(mvt.mean, mvt.loc)
    cauchy_like = D.MultivariateStudentT(torch.tensor([0.5, 1.5]), torch.zeros(2, 2), torch.eye(2))
    assert torch.isnan(cauchy_like.mean[0]).all() and torch.isinf(cauchy_like.variance[1]).all()


def test_multivariate_student_t_batch_and_expand():
    loc, scale_tril = _mv_params(d=2, batch=3)
    dist = D.MultivariateStudentT(torch.tensor(4.0, dtype=torch.float64), loc[:, None], scale_tril)  # batch (3, 3)
    assert dist.batch_shape == (3, 3) and dist.event_shape == (2,)
    assert dist.rsample((5,)).shape == (5, 3, 3, 2)
    big = dist.expand((4, 3, 3))
    x = dist.sample((2,))
    torch.testing.assert_close(big.log_prob(x.unsqueeze(1)), dist.log_prob(x).unsqueeze(1).expand(2, 4, 3, 3))


# ---------------------------------------------------------------- pathwise gradients

def per_sample_grads(cls, params, wrt, f, n=20000, seed=0):
    """Mean and standard error of d f(z) / d params[wrt] over n one-sample estimates: each sample gets its own
    copy of the parameters (batch shape (n,)), so one backward pass gives n independent gradient draws."""
    torch.manual_seed(seed)
    leaves = {k: torch.full((n,), float(v), dtype=torch.float64, requires_grad=(k == wrt)) for k, v in params.items()}
    f(cls(**leaves).rsample()).sum().backward()
    g = leaves[wrt].grad
    return g.mean().item(), g.std().item() / math.sqrt(n)


def _gompertz_mean_grad_c(c, s):
    return s * (math.exp(c) * sp.exp1(c) - 1 / c)  # d/dc e^c E1(c) = e^c E1(c) - 1/c


def _reciprocal_mean_grad(a, b, wrt):
    r = math.log(b / a)
    return (-r + (b - a) / a) / r**2 if wrt == "low" else (r - (b - a) / b) / r**2


square = torch.square


def identity(z):
    return z


# (class, parameters, parameter to differentiate, f, closed form of d/dparam E[f(z)])
PATHWISE = {
    "Normal-loc": (D.Normal, dict(loc=0.7, scale=1.3), "loc", square, 2 * 0.7),
    "Normal-scale": (D.Normal, dict(loc=0.7, scale=1.3), "scale", square, 2 * 1.3),
    "Exponential-rate": (D.Exponential, dict(rate=1.7), "rate", identity, -1 / 1.7**2),
    "Cauchy-scale": (D.Cauchy, dict(loc=0.5, scale=1.2), "scale", lambda z: torch.log1p(z**2),
                     2 * 2.2 / (0.5**2 + 2.2**2)),  # E log(1 + z^2) = log(loc^2 + (scale + 1)^2)
    "Logistic-loc": (D.Logistic, dict(loc=0.5, scale=1.2), "loc", square, 2 * 0.5),
    "Logistic-scale": (D.Logistic, dict(loc=0.5, scale=1.2), "scale", square, 2 * 1.2 * math.pi**2 / 3),
    "Rayleigh-scale": (D.Rayleigh, dict(scale=1.4), "scale", identity, math.sqrt(math.pi / 2)),
    "Pareto-alpha": (D.Pareto, dict(scale=1.5, alpha=3.0), "alpha", identity, -1.5 / 2.0**2),
    "Weibull-concentration": (D.Weibull, dict(scale=2.0, concentration=1.5), "concentration", identity,
                              -2.0 * math.gamma(1 + 1 / 1.5) * sp.digamma(1 + 1 / 1.5) / 1.5**2),
    "Reciprocal-low": (D.Reciprocal, dict(low=0.5, high=4.0), "low", identity, _reciprocal_mean_grad(0.5, 4.0, "low")),
    "Reciprocal-high": (D.Reciprocal, dict(low=0.5, high=4.0), "high", identity,
                        _reciprocal_mean_grad(0.5, 4.0, "high")),
    "Gompertz-concentration": (D.Gompertz, dict(concentration=0.6, scale=2.0), "concentration", identity,
                               _gompertz_mean_grad_c(0.6, 2.0)),
    "Gompertz-scale": (D.Gompertz, dict(concentration=0.6, scale=2.0), "scale", identity,
                       math.exp(0.6) * sp.exp1(0.6)),
    "Gumbel-scale": (D.Gumbel, dict(loc=0.3, scale=1.5), "scale", identity, EULER),
    "Erlang-rate": (D.Erlang, dict(concentration=3.0, rate=2.0), "rate", identity, -3.0 / 2.0**2),
    "Laplace-scale": (D.Laplace, dict(loc=0.3, scale=1.5), "scale", square, 4 * 1.5),
    "StudentT-scale": (D.StudentT, dict(df=6.0, loc=0.0, scale=1.5), "scale", square, 2 * 1.5 * 6.0 / 4.0),
    "Uniform-high": (D.Uniform, dict(low=-1.0, high=2.0), "high", identity, 0.5),
    "Triangular-c": (D.Triangular, dict(c=0.3, loc=-1.0, scale=2.0), "c", identity, 2.0 / 3),
    "Triangular-scale": (D.Triangular, dict(c=0.3, loc=-1.0, scale=2.0), "scale", identity, 1.3 / 3),
    "LogNormal-scale": (D.LogNormal, dict(loc=0.2, scale=0.5), "scale", identity, 0.5 * math.exp(0.2 + 0.125)),
    "Gamma-concentration": (D.Gamma, dict(concentration=2.5, rate=1.5), "concentration", identity, 1 / 1.5),
    "Beta-concentration1": (D.Beta, dict(concentration1=2.0, concentration0=3.0), "concentration1", identity,
                            3.0 / 25.0),
    "Chi2-df": (D.Chi2, dict(df=3.0), "df", identity, 1.0),
    "FisherSnedecor-df1": (D.FisherSnedecor, dict(df1=4.0, df2=12.0), "df1", identity, 0.0),  # mean d2/(d2-2)
}


@pytest.mark.parametrize("case", PATHWISE)
def test_pathwise_gradient_matches_closed_form(case):
    cls, params, wrt, f, expected = PATHWISE[case]
    mean, se = per_sample_grads(cls, params, wrt, f)
    assert abs(mean - expected) <= 4.5 * se + 1e-9, (mean, se, expected)


def test_multivariate_student_t_pathwise_gradients():
    """E|z - loc|^2 = df / (df - 2) |L|_F^2: d/dL = 2 df / (df - 2) L, d/ddf = -2 / (df - 2)^2 |L|_F^2."""
    n, df0 = 20000, 9.0
    torch.manual_seed(3)
    L0 = torch.tensor([[1.0, 0.0], [0.4, 0.7]], dtype=torch.float64)
    df = torch.full((n,), df0, dtype=torch.float64, requires_grad=True)
    L = L0.expand(n, 2, 2).clone().requires_grad_()
    loc = torch.zeros(n, 2, dtype=torch.float64)
    z = D.MultivariateStudentT(df, loc, L).rsample()
    z.pow(2).sum().backward()
    g_df, g_L = df.grad, L.grad
    want_df = -2 / (df0 - 2) ** 2 * L0.pow(2).sum().item()
    assert abs(g_df.mean().item() - want_df) <= 4.5 * g_df.std().item() / math.sqrt(n)
    want_L = 2 * df0 / (df0 - 2) * L0
    se_L = g_L.std(0) / math.sqrt(n)
    for i, j in [(0, 0), (1, 0), (1, 1)]:
        assert abs(g_L.mean(0)[i, j] - want_L[i, j]) <= 4.5 * se_L[i, j]


# ---------------------------------------------------------------- gradcheck on the new classes

def _t(*values):
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


# class, differentiable parameters, constant keyword parameters, values inside the support
GRADCHECK = {
    "Logistic": (D.Logistic, dict(loc=_t(0.3, -1.0), scale=_t(1.5, 0.4)), {}, _t(0.2, 1.7)),
    "Rayleigh": (D.Rayleigh, dict(scale=_t(1.5, 0.4)), {}, _t(0.2, 1.7)),
    "Reciprocal": (D.Reciprocal, dict(low=_t(0.5, 0.1), high=_t(4.0, 2.0)), {}, _t(1.2, 0.3)),
    "Gompertz": (D.Gompertz, dict(concentration=_t(0.4, 3.0), scale=_t(2.0, 0.5)), {}, _t(0.2, 1.7)),
    "Erlang": (D.Erlang, dict(rate=_t(2.0, 0.5)), dict(concentration=torch.tensor([3.0, 1.0])), _t(0.2, 1.7)),
    "Triangular": (D.Triangular, dict(c=_t(0.3, 0.8), loc=_t(-1.0, 0.0), scale=_t(2.0, 1.0)), {}, _t(-0.8, 0.9)),
    "MultivariateStudentT": (D.MultivariateStudentT,
                             dict(df=_t(3.0), loc=_t(0.3, -1.0), scale_tril=_t([1.0, 0.0], [0.4, 0.7])),
                             {}, _t([0.2, 0.5], [-1.0, 2.0])),
}


@pytest.mark.parametrize("name", GRADCHECK)
def test_gradcheck_log_prob(name):
    cls, params, const, value = GRADCHECK[name]
    names = list(params)

    def log_prob(x, *args):
        return cls(**dict(zip(names, args)), **const, validate_args=False).log_prob(x)

    assert torch.autograd.gradcheck(log_prob, (value, *params.values()))


@pytest.mark.parametrize("name", GRADCHECK)
def test_gradcheck_rsample_at_fixed_noise(name):
    """The reparameterized sample is a differentiable function of the parameters for fixed eps."""
    cls, params, const, _ = GRADCHECK[name]
    if name == "MultivariateStudentT":  # df enters through torch's Gamma sampler (implicit gradient, not pathwise)
        const, params = dict(df=params["df"].detach()), {k: v for k, v in params.items() if k != "df"}
    names = list(params)

    def draw(*args):
        torch.manual_seed(5)
        return cls(**dict(zip(names, args)), **const, validate_args=False).rsample((3,))

    assert torch.autograd.gradcheck(draw, tuple(params.values()))
