"""SGVB estimators A and B and the IWAE bound against exact answers (Appendix B; a linear-Gaussian model)."""
import math

import numpy as np
import pytest
import torch

from aevb import VAE, ModelConfig, iwae, sgvb_a, sgvb_b
from aevb.likelihoods import GreyLevelBernoulli

from linear_gaussian import DiagonalLinearGaussian, LinearGaussian


def test_sgvb_b_kl_is_appendix_b():
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=12, latent_dim=4, hidden=(8,)))
    x = torch.rand(7, 12)
    q = model.encode(x)
    mu, var = q.base_dist.loc, q.base_dist.scale**2
    expected = -0.5 * (1 + var.log() - mu**2 - var).sum(-1)  # Appendix B, negated
    out = sgvb_b(model, x)
    torch.testing.assert_close(out["kl"], expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["elbo"], out["rec"] - out["kl"])
    assert out["loss"].item() == pytest.approx(-out["elbo"].mean().item(), rel=1e-6)


def test_grey_level_bernoulli_is_the_papers_cross_entropy():
    logits = torch.tensor([[-2.0, 0.3, 4.0]], dtype=torch.float64)
    x = torch.tensor([[0.0, 0.25, 0.9]], dtype=torch.float64)
    y = 1 / (1 + np.exp(-logits.numpy()))
    expected = (x.numpy() * np.log(y) + (1 - x.numpy()) * np.log(1 - y)).sum()
    assert GreyLevelBernoulli(logits=logits).log_prob(x).sum().item() == pytest.approx(expected, rel=1e-12)


def test_exact_posterior_makes_both_estimators_equal_log_px():
    model = DiagonalLinearGaussian()
    x = model.sample_x(6)
    exact = model.log_marginal(x)
    for est in (sgvb_a, sgvb_b):
        out = est(model, x, num_samples=4000)
        # A has zero variance at the true posterior; B's reconstruction term is Monte Carlo (tolerance ~4 SE)
        torch.testing.assert_close(out["elbo"], exact, rtol=0, atol=0.08)
    a = sgvb_a(model, x, num_samples=3)["elbo"]
    torch.testing.assert_close(a, exact, rtol=0, atol=1e-9)


def test_imperfect_q_bounds_agree_in_expectation_and_stay_below_log_px():
    torch.manual_seed(1)
    model = LinearGaussian(q_shift=0.4, q_scale=1.3)
    x = model.sample_x(5)
    exact = model.log_marginal(x)
    a = sgvb_a(model, x, num_samples=200_000)["elbo"]
    b = sgvb_b(model, x, num_samples=200_000)["elbo"]
    # Exact ELBO = E_q[log p(x|z)] - KL, with both pieces in closed form for a Gaussian q and linear decoder.
    q = model.encode(x)
    m, v = q.base_dist.loc, q.base_dist.scale**2
    resid = x - m @ model.W.T - model.b
    rec = (-0.5 * x.shape[1] * math.log(2 * math.pi * model.s**2)
           - 0.5 * ((resid**2).sum(-1) + (v[:, None, :] * model.W[None] ** 2).sum((-1, -2))) / model.s**2)
    kl = 0.5 * (v + m**2 - 1 - v.log()).sum(-1)
    torch.testing.assert_close(a, rec - kl, rtol=0, atol=0.03)
    torch.testing.assert_close(b, rec - kl, rtol=0, atol=0.03)
    assert torch.all(rec - kl < exact - 0.05)


def test_iwae_bound_rises_with_k_toward_log_px():
    torch.manual_seed(2)
    model = LinearGaussian(q_shift=0.3, q_scale=1.2)
    x = model.sample_x(4)
    exact = model.log_marginal(x)
    means, ses = [], []
    for k in (1, 10, 100, 1000):
        reps = torch.stack([iwae(model, x, num_samples=k)["elbo"] for _ in range(200)])  # (200, B)
        means.append(reps.mean(0))
        ses.append(reps.std(0) / math.sqrt(reps.shape[0]))
    for lo, hi in zip(means, means[1:]):
        assert torch.all(hi > lo)
    # E[bound_K] <= log p(x): the averaged bound may exceed it only by noise (4 standard errors)
    assert torch.all(means[-1] <= exact + 4 * ses[-1])
    torch.testing.assert_close(means[-1], exact, rtol=0, atol=0.03)


def test_estimators_keep_sample_dimension_first():
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=10, latent_dim=3, hidden=(6,)))
    x = torch.rand(4, 10)
    out = iwae(model, x, num_samples=5)
    assert out["log_w"].shape == (5, 4)
    torch.testing.assert_close(out["elbo"], torch.logsumexp(out["log_w"], 0) - math.log(5))


def test_bad_num_samples_is_an_error():
    model = VAE(ModelConfig(x_dim=4, latent_dim=2, hidden=(3,)))
    with pytest.raises(ValueError, match="num_samples"):
        sgvb_b(model, torch.rand(2, 4), num_samples=0)


@pytest.mark.parametrize("gradient", ["standard", "stl"])
def test_compiled_sgvb_b_gives_the_eager_loss_and_gradients(gradient):
    # `aevb train --compile` runs the estimator through torch.compile; with inductor drawing its noise from torch's
    # own generator (fallback_random) the compiled loss and every gradient must equal the eager ones. Regression:
    # with gradient="stl" the compiled step used to fail replaying a view of the stopped encoder outputs.
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=12, latent_dim=3, hidden=(8,), activation="tanh"))
    x = torch.bernoulli(torch.full((4, 12), 0.4))
    # compile from scratch, as `aevb train --compile` does at its start: a graph cached by another test, or torch's
    # memo of KL functions (filled by any earlier kl_divergence, and then traced without a graph break), hid it
    torch._dynamo.reset()
    torch.distributions.kl._KL_MEMOIZE.clear()
    compiled = torch.compile(sgvb_b)
    results = []
    with torch._inductor.config.patch(fallback_random=True):
        for fn in (compiled, sgvb_b):
            torch.manual_seed(1)
            out = fn(model, x, num_samples=2, gradient=gradient)
            results.append((out["loss"], torch.autograd.grad(out["loss"], list(model.parameters()))))
    (loss_c, grads_c), (loss, grads) = results
    torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-5)
    for g, g_c in zip(grads, grads_c):
        torch.testing.assert_close(g_c, g, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("x, message", [
    (torch.rand(5, 10), r"non-empty \(N, 6\) tensor of datapoints, got shape \(5, 10\)"),
    (torch.rand(0, 6), r"got shape \(0, 6\)"),
    (torch.rand(6), r"got shape \(6,\)"),
])
def test_evaluate_names_data_of_the_wrong_shape(x, message):
    from aevb import evaluate

    model = VAE(ModelConfig(x_dim=6, latent_dim=2, hidden=(4,)))
    with pytest.raises(ValueError, match=message):
        evaluate(model, x)
    with pytest.raises(ValueError, match="unknown estimator 'elbo'; choose from"):
        evaluate(model, torch.rand(3, 6), estimator="elbo")
    # and the bound of a known answer: mean over rows of sgvb_b's per-row elbo, in float64 sums
    x = torch.rand(7, 6)
    torch.manual_seed(0)
    got = evaluate(model, x, batch_size=3)
    torch.manual_seed(0)
    want = torch.cat([sgvb_b(model.eval(), c)["elbo"] for c in x.split(3)]).double().mean()
    assert got["n"] == 7 and got["elbo"] == pytest.approx(float(want), rel=1e-12)
