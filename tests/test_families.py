"""Every family of section 2.4 as q(z|x), likelihood heads, the estimator choice, and STL / DReG gradients."""
import math

import numpy as np
import pytest
import torch
from scipy import special

from aevb import VAE, ModelConfig, iwae, sgvb_a, sgvb_b
from aevb.estimators import resolve_estimator
from aevb.distributions.families import POSTERIORS, PRIORS, analytic_kl, check_pair

from linear_gaussian import DiagonalLinearGaussian, LearnableQ

ANALYTIC = {"normal", "laplace", "cauchy", "gumbel", "uniform", "triangular", "beta", "exponential", "rayleigh",
            "weibull", "gamma", "erlang", "chi2", "log_normal", "pareto", "reciprocal", "dirichlet",
            "multivariate_normal"}


@pytest.mark.parametrize("name", sorted(POSTERIORS))
def test_every_family_trains_as_posterior(name):
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=8, latent_dim=3, hidden=(6,), posterior=name))
    x = torch.rand(5, 8)
    q = model.encode(x)
    z = q.rsample((4,))
    assert z.shape == (4, 5, 3)
    assert q.support.check(z).all() and model.prior().support.check(z).all()
    chosen = resolve_estimator("auto", model)
    assert chosen == ("sgvb_b" if name in ANALYTIC else "sgvb_a")
    out = {"sgvb_a": sgvb_a, "sgvb_b": sgvb_b}[chosen](model, x, num_samples=2)
    out["loss"].backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.enc_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(ANALYTIC - {"multivariate_normal", "dirichlet"}))
def test_estimators_a_and_b_agree_in_expectation(name):
    """E[A] = E[B] = ELBO: the Monte Carlo KL of A averages to B's analytic KL."""
    torch.manual_seed(1)
    model = VAE(ModelConfig(x_dim=6, latent_dim=2, hidden=(5,), posterior=name)).double()
    x = torch.rand(3, 6, dtype=torch.float64)
    with torch.no_grad():
        q, p = model.encode(x), model.prior()
        z = q.sample((200_000,))
        log_ratio = q.log_prob(z) - p.log_prob(z)  # (S, B)
        mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(z.shape[0])
        analytic = torch.distributions.kl_divergence(q, p)
    assert torch.all((mc - analytic).abs() < 4.5 * se + 1e-9)


def test_b_without_analytic_kl_is_an_error_not_a_switch():
    model = VAE(ModelConfig(x_dim=4, latent_dim=2, hidden=(3,), posterior="logistic"))
    with pytest.raises(ValueError, match="none for q = logistic, p = logistic"):
        resolve_estimator("sgvb_b", model)
    with pytest.raises(ValueError, match="use sgvb_a"):
        sgvb_b(model, torch.rand(2, 4))
    assert resolve_estimator("sgvb_a", model) == "sgvb_a"


def test_prior_support_must_match():
    check_pair("laplace", "normal")
    check_pair("beta", "uniform")
    with pytest.raises(ValueError, match="does not match"):
        check_pair("normal", "exponential")
    with pytest.raises(ValueError, match="does not match"):
        ModelConfig(x_dim=4, posterior="gamma", prior="laplace")
    assert ModelConfig(x_dim=4, posterior="laplace").prior == "laplace"
    assert set(PRIORS) >= {f.prior for f in POSTERIORS.values()}


# (posterior support, prior support) pairs check_pair accepts: the same support, or one the posterior's lies inside.
ACCEPTED_SUPPORTS = {("real", "real"), ("positive", "positive"), ("unit_interval", "unit_interval"),
                     ("unit_interval", "positive"), ("unit_interval", "real"), ("pareto", "pareto"),
                     ("pareto", "positive"), ("reciprocal", "reciprocal"), ("reciprocal", "positive"),
                     ("simplex", "simplex")}


def test_compatibility_follows_the_declared_supports():
    for posterior, family in POSTERIORS.items():
        for prior, (support, _) in PRIORS.items():
            accepted = (family.support.name, support.name) in ACCEPTED_SUPPORTS
            assert family.support.inside(support) is accepted
            if accepted:
                check_pair(posterior, prior)
            else:
                with pytest.raises(ValueError, match=rf"prior '{prior}' \(support: {support.name}\) does not match "
                                                     rf"posterior '{posterior}' \(support: {family.support.name}\)"):
                    check_pair(posterior, prior)


def _bounds(constraint):
    return getattr(constraint, "lower_bound", -math.inf), getattr(constraint, "upper_bound", math.inf)


def test_declared_supports_hold_their_samples_and_nest():
    """Samples of q and of the prior satisfy the declared constraint, and a support lies inside those it names."""
    torch.manual_seed(0)
    for family in POSTERIORS.values():
        z = family.build(torch.randn(7, family.n_out(3)), 3).sample((5,))
        assert family.support.constraint.check(z).all()
        for outer in family.support.within:
            (lo, hi), (outer_lo, outer_hi) = _bounds(family.support.constraint), _bounds(outer.constraint)
            assert outer_lo <= lo and hi <= outer_hi
    for support, build in PRIORS.values():
        assert support.constraint.check(build(torch.zeros(3)).sample((50,))).all()


@pytest.mark.parametrize("posterior", sorted(POSTERIORS))
def test_analytic_kl_by_name_agrees_with_kl_divergence_on_encoded_q(posterior):
    """Decided from the families alone; the VAE states the same, and kl_divergence on a batch of q agrees."""
    model = VAE(ModelConfig(x_dim=4, latent_dim=3, hidden=(5,), posterior=posterior))
    assert analytic_kl(posterior, model.config.prior) is (posterior in ANALYTIC) is model.has_analytic_kl
    q = model.encode(torch.rand(6, 4))
    if posterior in ANALYTIC:
        assert torch.distributions.kl_divergence(q, model.prior()).shape == (6,)
    else:
        with pytest.raises(NotImplementedError):
            torch.distributions.kl_divergence(q, model.prior())


def test_analytic_kl_for_a_prior_of_another_family():
    assert analytic_kl("beta", "uniform") and analytic_kl("triangular", "uniform")
    assert analytic_kl("uniform", "normal") and not analytic_kl("uniform", "logistic")
    assert not analytic_kl("laplace", "logistic") and not analytic_kl("triangular", "beta")
    model = VAE(ModelConfig(x_dim=4, latent_dim=2, hidden=(3,), posterior="beta", prior="uniform"))
    assert resolve_estimator("auto", model) == "sgvb_b"
    assert torch.isfinite(sgvb_b(model, torch.rand(3, 4))["loss"])
    with pytest.raises(ValueError, match="does not match"):
        analytic_kl("normal", "exponential")


def test_categorical_likelihood_is_softmax_at_the_grey_level():
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=3, latent_dim=2, hidden=(4,), likelihood="categorical", levels=4))
    z = torch.randn(2, 2)
    px = model.decode(z)
    x = torch.tensor([[0.0, 0.34, 1.0], [0.66, 0.2, 0.9]])
    logits = model.dec_head.out(model.decoder(z)).detach().reshape(2, 3, 4).numpy()
    levels = np.array([[0, 1, 3], [2, 1, 3]])
    logp = logits - special.logsumexp(logits, -1, keepdims=True)
    expected = np.take_along_axis(logp, levels[..., None], -1)[..., 0].sum(-1)
    np.testing.assert_allclose(px.log_prob(x).detach().numpy(), expected, rtol=1e-5)


def test_continuous_bernoulli_likelihood_has_its_normalizer():
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=3, latent_dim=2, hidden=(4,), likelihood="continuous-bernoulli")).double()
    z = torch.randn(1, 2, dtype=torch.float64)
    lam = torch.sigmoid(model.dec_head.out(model.decoder(z))).detach().numpy()[0]
    x = np.array([0.1, 0.5, 0.95])
    log_c = np.log(2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam))  # Loaiza-Ganem & Cunningham 2019
    expected = (log_c + x * np.log(lam) + (1 - x) * np.log(1 - lam)).sum()
    got = model.decode(z).log_prob(torch.tensor(x)).item()
    assert got == pytest.approx(expected, rel=1e-6)


def _encoder_grad(model, est, **kw):
    model.zero_grad()
    est(model, model.x, **kw)["loss"].backward()
    return torch.cat([model.a.grad, model.b.grad])


def _lq(a=0.0, b=0.0):
    model = LearnableQ(DiagonalLinearGaussian(), a, b)
    model.x = model.lg.sample_x(4)
    return model


def test_stl_gradient_vanishes_at_the_true_posterior():
    torch.manual_seed(0)
    model = _lq()
    for _ in range(5):
        torch.testing.assert_close(_encoder_grad(model, sgvb_a, num_samples=3, gradient="stl"),
                                   torch.zeros(4, dtype=torch.float64), atol=1e-10, rtol=0)
        torch.testing.assert_close(_encoder_grad(model, iwae, num_samples=3, gradient="dreg"),
                                   torch.zeros(4, dtype=torch.float64), atol=1e-10, rtol=0)
    assert _encoder_grad(model, sgvb_a, num_samples=3).abs().max() > 1e-3  # the standard one is noisy there


@pytest.mark.parametrize("est, gradient", [(sgvb_a, "stl"), (sgvb_b, "stl"), (iwae, "dreg")])
def test_lower_variance_gradients_are_unbiased(est, gradient):
    """Same expected encoder gradient as the standard estimator, away from the true posterior."""
    torch.manual_seed(0)
    model = _lq(a=0.3, b=-0.4)
    k = 5 if est is iwae else 1
    n = 2000
    std = torch.stack([_encoder_grad(model, est, num_samples=k) for _ in range(n)])
    new = torch.stack([_encoder_grad(model, est, num_samples=k, gradient=gradient) for _ in range(n)])
    se = (std.var(0) / n + new.var(0) / n).sqrt()
    assert torch.all((std.mean(0) - new.mean(0)).abs() < 4.5 * se + 1e-9)


def test_stl_is_refused_for_the_importance_weighted_bound():
    model = _lq(a=0.3)
    with pytest.raises(ValueError, match="gradient 'stl'"):
        iwae(model, model.x, num_samples=5, gradient="stl")


def test_dreg_leaves_decoder_gradients_unchanged():
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=6, latent_dim=2, hidden=(4,))).double()
    x = torch.rand(3, 6, dtype=torch.float64)
    grads = {}
    for gradient in ("standard", "dreg"):
        torch.manual_seed(5)
        model.zero_grad()
        iwae(model, x, num_samples=7, gradient=gradient)["loss"].backward()
        grads[gradient] = model.dec_head.out.weight.grad.clone()
    torch.testing.assert_close(grads["dreg"], grads["standard"])
