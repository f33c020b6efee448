"""Posterior diagnostics against hand computations and known answers: active units, KL per dimension, the mutual
information estimator, and the amortization gap of a linear-Gaussian model whose exact posterior is diagonal."""
import json
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import norm
from torch.distributions import Independent, Laplace, Normal

from aevb import VAE, ModelConfig
from aevb.cli import main
from aevb.inspect.diagnostics import _log_aggregate, active_units, amortization_gap, kl_per_dim, mutual_information
from aevb.estimators import evaluate

from linear_gaussian import DiagonalLinearGaussian, LearnableQ


def test_active_units_are_variances_of_posterior_means_above_threshold():
    means = torch.tensor([[0.0, 1.0, 5.0], [0.1, 1.0, -5.0], [0.3, 1.001, 0.0]])
    var, active = active_units(means)
    np.testing.assert_allclose(var.numpy(), np.var(means.numpy().astype(np.float64), axis=0, ddof=1), rtol=1e-6)
    assert active.tolist() == [True, False, True]  # 0.0233 > 0.01; 3.3e-7; 25


def test_kl_per_dim_is_appendix_b_per_dimension():
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=10, latent_dim=4, hidden=(8,)))
    x = torch.rand(50, 10)
    kl = kl_per_dim(model, x, batch_size=7).numpy()
    with torch.no_grad():
        mu, log_var = model.encoder_params(x).double().chunk(2, -1)
    expected = (0.5 * (mu.square() + log_var.exp() - 1 - log_var)).mean(0).numpy()
    np.testing.assert_allclose(kl, expected, rtol=1e-5)
    torch.manual_seed(0)
    assert kl.sum() == pytest.approx(evaluate(model, x)["kl"], rel=1e-5)  # the ELBO's KL term, split by dimension


def test_kl_per_dim_refuses_a_posterior_that_does_not_factorize():
    model = VAE(ModelConfig(x_dim=6, latent_dim=2, hidden=(4,), posterior="multivariate_normal"))
    with pytest.raises(ValueError, match="factorized"):
        kl_per_dim(model, torch.rand(3, 6))


def test_mutual_information_matches_a_hand_computation():
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=6, latent_dim=3, hidden=(5,)))
    x = torch.rand(7, 6)
    out = mutual_information(model, x, seed=3)
    with torch.no_grad():
        mu, log_var = model.encoder_params(x).double().chunk(2, -1)
        with torch.random.fork_rng():
            torch.manual_seed(3)
            z = model.encode(x).sample().double().numpy()
    mu, sd = mu.numpy(), (0.5 * log_var).exp().numpy()
    log_q = norm.logpdf(z[:, None, :], mu[None], sd[None]).sum(-1)  # (n, m): log q(z_n | x_m)
    mi = np.mean(np.diag(log_q) - (logsumexp(log_q, axis=1) - math.log(7)))
    avg_kl = np.mean(np.diag(log_q) - norm.logpdf(z).sum(-1))
    assert out["mutual_information"] == pytest.approx(mi, abs=1e-5)
    assert out["avg_kl"] == pytest.approx(avg_kl, abs=1e-5)
    assert out["marginal_kl"] == pytest.approx(avg_kl - mi, abs=1e-5)
    assert out["mutual_information"] <= out["log_n"] == pytest.approx(math.log(7))


def test_mutual_information_is_zero_when_the_encoder_ignores_x():
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=6, latent_dim=3, hidden=(5,)))
    with torch.no_grad():
        model.enc_head.weight.zero_()  # q(z|x) is the same Gaussian for every x
    out = mutual_information(model, torch.rand(40, 6))
    assert out["mutual_information"] == pytest.approx(0.0, abs=1e-6)


def test_fast_gaussian_aggregate_equals_the_generic_one():
    g = torch.Generator().manual_seed(0)
    q = Independent(Normal(torch.randn(30, 4, generator=g), torch.rand(30, 4, generator=g) + 0.2), 1)
    z = torch.randn(30, 4, generator=g)
    generic = torch.logsumexp(q.log_prob(z.unsqueeze(1)), 1)
    torch.testing.assert_close(_log_aggregate(q, z), generic, rtol=1e-5, atol=1e-5)
    lap = Independent(Laplace(q.base_dist.loc, q.base_dist.scale), 1)  # the generic path
    torch.testing.assert_close(_log_aggregate(lap, z), torch.logsumexp(lap.log_prob(z.unsqueeze(1)), 1))


def test_amortization_gap_recovers_the_exact_posterior():
    """A diagonal exact posterior: optimizing each q reaches log p(x) (approximation gap 0), and the gap equals
    the encoder's KL(q || p(z|x)), known in closed form for the shifted and widened q."""
    lg = DiagonalLinearGaussian()
    model = LearnableQ(lg, a=0.4, b=0.3)
    x = lg.sample_x(40)
    out = amortization_gap(model, x, steps=400, lr=0.05, eval_samples=4000, is_samples=2000, batch_size=16)
    log_px = lg.log_marginal(x)
    with torch.no_grad():
        q = model.encode(x)
        exact = lg.exact_posterior(x)
        exact_diag = Independent(Normal(exact.mean, exact.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()), 1)
        kl = torch.distributions.kl_divergence(q, exact_diag)
    assert out["elbo_optimized"] == pytest.approx(float(log_px.mean()), abs=0.02)
    assert out["amortization_gap"] == pytest.approx(float(kl.mean()), abs=0.03)
    assert out["approximation_gap"] == pytest.approx(0.0, abs=0.03)
    assert out["improved"] == 1.0 and out["n"] == 40
    assert [p.requires_grad for p in model.parameters()] == [True, True]  # restored


def test_amortization_gap_is_zero_at_the_exact_posterior():
    lg = DiagonalLinearGaussian()
    model = LearnableQ(lg)
    out = amortization_gap(model, lg.sample_x(30), steps=100, lr=0.01, eval_samples=4000)
    assert out["amortization_gap"] == pytest.approx(0.0, abs=0.01)


def test_diagnose_and_cli(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--latent-dim", "4", "--hidden", "16", "--samples", "5000",
                 "--threads", "1", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--diagnostics", "--limit", "100", "--gap-points", "20", "--gap-steps", "30",
                 "--gap-is", "100"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["n"] == 100 and r["latent_dim"] == 4 and len(r["kl_per_dim"]) == 4
    assert r["active_units"] == sum(v > 0.01 for v in r["posterior_mean_variance"])
    assert r["kl_total"] == pytest.approx(sum(r["kl_per_dim"]), abs=1e-4)
    assert r["mutual_information"] <= r["mi_log_n"] == pytest.approx(math.log(100))
    gap = r["amortization"]
    assert gap["n"] == 20 and gap["amortization_gap"] == pytest.approx(gap["elbo_optimized"] - gap["elbo_encoder"])
    assert gap["inference_gap"] == pytest.approx(gap["approximation_gap"] + gap["amortization_gap"])


@pytest.mark.parametrize("argv, message", [
    (["--diagnostics", "--method", "is"], "separate evaluations"),
    (["--diagnostics", "--gap-steps", "0"], "--gap-steps"),
    (["--diagnostics", "--gap-points", "-1"], "--gap-points"),
])
def test_diagnostics_bad_input(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--latent-dim", "2", "--hidden", "8", "--samples", "500",
                 "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
