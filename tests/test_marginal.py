"""Marginal-likelihood estimators against exact answers: the linear-Gaussian model's closed form log p(x) and, for a
small nonlinear VAE with Dz = 2, quadrature on a latent grid (marginal.py; the paper's Appendix D estimator).

Tolerances are stated per test. The estimators are random, so every call gets a fixed seed; the tolerances are
several standard errors wide (measured over seeds 0-4), so they do not depend on a lucky seed.
"""
import math
import os
from types import SimpleNamespace

import pytest
import torch

import aevb
from aevb.marginal import common as marginal_common
from aevb.marginal import METHODS, ais, grid, hmc_estimator, importance_sampling, log_likelihood
from aevb.marginal.hmc import SCALE_DRAWS, STEP_PER_SCALE, Joint, _initial_step_size, _step_size_guess

from linear_gaussian import DiagonalLinearGaussian, LinearGaussian

SEED = int(os.environ.get("AEVB_TEST_SEED", 0))  # for checking the tolerances over seeds, not for CI


def imperfect(z_dim: int) -> LinearGaussian:
    """q(z|x) off the exact posterior by a shift of about one posterior std and 30% too wide."""
    return LinearGaussian(x_dim=5, z_dim=z_dim, q_shift=0.2, q_scale=1.3)


def errors(out: dict, exact: torch.Tensor) -> torch.Tensor:
    return (out["log_px"] - exact).double()


# --- the grid --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("z_dim", [1, 2])
def test_grid_is_exact_on_linear_gaussian(z_dim):
    # a Riemann sum of a smooth integrand that vanishes at the ends converges faster than any power of the
    # spacing (0.006 and 0.04 here, posterior std 0.17); float64 rounding is the only error left
    lg = imperfect(z_dim)
    x = lg.sample_x(20)
    out = grid(lg, x)
    torch.testing.assert_close(out["log_px"], lg.log_marginal(x), rtol=0, atol=1e-8)
    assert out["mean"] == pytest.approx(lg.log_marginal(x).mean().item(), abs=1e-8)


def test_grid_resolution_does_not_matter_on_the_nonlinear_model(nonlinear):
    model, x, log_px = nonlinear
    finer = grid(model, x, points_per_dim=501, limit=8.0)["log_px"]
    torch.testing.assert_close(finer, log_px, rtol=0, atol=1e-4)  # float32 sums of 90601 terms


def test_grid_refuses_more_than_two_latent_dimensions():
    model = aevb.VAE(aevb.ModelConfig(x_dim=4, latent_dim=3, hidden=(4,)))
    with pytest.raises(ValueError, match="latent_dim <= 2"):
        grid(model, torch.rand(2, 4))


# --- importance sampling -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("z_dim", [1, 2])
def test_importance_sampling_recovers_log_px(z_dim):
    # K = 2000 with a shifted, widened q: over seeds 0-9, |error| up to 0.095 per datapoint and the mean error
    # within +-0.013; tolerances 0.15 per datapoint and 0.025 for the mean over the 40 datapoints
    lg = imperfect(z_dim)
    x = lg.sample_x(40)
    out = importance_sampling(lg, x, num_samples=2000, seed=SEED)
    err = errors(out, lg.log_marginal(x))
    assert err.abs().max() < 0.15
    assert abs(err.mean()) < 0.025
    assert (out["elbo"] <= out["log_px"]).all()  # Jensen, on the same samples
    assert out["log_px"].shape == (40,) and out["log_px"].dtype == torch.float64


def test_importance_sampling_is_a_bound_that_rises_with_k():
    # E[log p^_K] <= log p(x), rising with K. 20 datapoints x 100 replicates; over seeds 0-4 the means were
    # 1.23-1.30, 0.34-0.41, 0.086-0.104 and 0.008-0.017 nats below exact for K = 1, 3, 10, 100
    lg = imperfect(2)
    x = lg.sample_x(20).repeat(100, 1)
    exact = lg.log_marginal(x).mean().item()
    means = [importance_sampling(lg, x, num_samples=k, seed=SEED, batch_size=2000)["mean"] for k in (1, 3, 10, 100)]
    assert means == sorted(means)
    for m in means[:3]:
        assert m < exact - 0.05
    assert means[3] < exact + 0.01


def test_importance_sampling_is_exact_for_the_true_posterior_whatever_the_chunks(monkeypatch):
    # with q = p(z|x) every log weight equals log p(x), so any split of the K samples into chunks and of the data
    # into batches must give log p(x) to float64 rounding; a lost or double-counted chunk would show
    lg = DiagonalLinearGaussian(x_dim=5, z_dim=2)
    x = lg.sample_x(7)
    exact = lg.log_marginal(x)
    for kw in [dict(chunk_size=7), dict(chunk_size=1000, batch_size=3), dict(chunk_size=None, batch_size=2)]:
        out = importance_sampling(lg, x, num_samples=5001, seed=SEED, **kw)
        torch.testing.assert_close(out["log_px"], exact, rtol=0, atol=1e-9)
        torch.testing.assert_close(out["elbo"], exact, rtol=0, atol=1e-9)


def test_importance_sampling_uses_a_models_fused_likelihood_and_gets_the_contracts_value(nonlinear):
    # a model with log_likelihood(z, x) is evaluated through it; with the same seed the draws are the same, so the
    # estimate must equal the one through decode(z).log_prob(x) to float32 rounding
    model, x, _ = nonlinear
    calls = []

    def counted(z, xb):
        calls.append(z.shape)
        return model.log_likelihood(z, xb)

    contract = SimpleNamespace(prior=model.prior, encode=model.encode, decode=model.decode)
    fused = SimpleNamespace(prior=model.prior, encode=model.encode, decode=model.decode, log_likelihood=counted)
    a = importance_sampling(contract, x, num_samples=500, chunk_size=64, seed=SEED)
    b = importance_sampling(fused, x, num_samples=500, chunk_size=64, seed=SEED)
    assert len(calls) == 8  # ceil(500 / 64) chunks of one batch
    torch.testing.assert_close(b["log_px"], a["log_px"], rtol=0, atol=1e-5)
    torch.testing.assert_close(b["elbo"], a["elbo"], rtol=0, atol=1e-5)


def test_compiled_importance_sampling_gets_the_eager_value():
    # compile=True runs log p(x|z) through torch.compile (where the Bernoulli head sums softplus as grouped products,
    # see likelihoods._softplus_sum); the z are drawn outside it, so with the same seed the estimate must equal the
    # eager one to float32 rounding. D = 784 so that the grouped form (groups of 56) is the one compiled; a batch
    # size that does not divide N and a K that does not divide into the chunks give three shapes to one compilation.
    torch.manual_seed(0)
    model = aevb.VAE(aevb.ModelConfig(x_dim=784, latent_dim=4, hidden=(16,), activation="tanh")).eval()
    x = torch.bernoulli(torch.full((5, 784), 0.3))
    kw = dict(num_samples=100, chunk_size=30, batch_size=3, seed=SEED)
    eager = importance_sampling(model, x, **kw)
    compiled = importance_sampling(model, x, compile=True, **kw)
    torch.testing.assert_close(compiled["log_px"], eager["log_px"], rtol=1e-6, atol=0)
    torch.testing.assert_close(compiled["elbo"], eager["elbo"], rtol=1e-6, atol=0)


def test_importance_sampling_memory_stays_under_budget(monkeypatch):
    # every decoder call sees at most MAX_FLOATS = chunk * batch * D numbers, whatever K is
    monkeypatch.setattr(marginal_common, "MAX_FLOATS", 1000)
    sizes = []

    class Spy(LinearGaussian):
        def decode(self, z):
            sizes.append(z.shape[:-1].numel() * self.W.shape[0])
            return super().decode(z)

    lg = Spy(x_dim=5, z_dim=2, q_shift=0.2, q_scale=1.3)
    x = lg.sample_x(30)
    a = importance_sampling(lg, x, num_samples=5000, batch_size=10, seed=SEED)
    assert max(sizes) <= 1000 and len(sizes) == 3 * 250  # 3 batches of 5000 / (1000 // 50) chunks
    monkeypatch.undo()
    b = importance_sampling(lg, x, num_samples=20000, seed=SEED + 1)
    # independent runs: |a - b| measured up to 0.071 per datapoint over 20 seeds (K = 5000's Monte Carlo error)
    torch.testing.assert_close(a["log_px"], b["log_px"], rtol=0, atol=0.12)


# --- the paper's HMC estimator -----------------------------------------------------------------------------------

@pytest.mark.parametrize("z_dim", [1, 2])
def test_hmc_estimator_paper_settings(z_dim):
    # the paper's settings (50 samples, 4 leapfrog steps, 5 burn-in transitions). With 25 samples to fit q and
    # 25 to average, from a chain that starts at an encoder sample, single datapoints can be off by several nats
    # (a few in a hundred by more than 1); over seeds 0-9 the mean error over 80 datapoints stayed within 0.082
    # and the median |error| below 0.18. Tolerances 0.15 and 0.3
    lg = imperfect(z_dim)
    x = lg.sample_x(80)
    out = hmc_estimator(lg, x, seed=SEED)
    err = errors(out, lg.log_marginal(x))
    assert abs(err.mean()) < 0.15
    assert err.abs().median() < 0.3
    assert 0.8 < out["accept_rate"] < 0.97  # tuned toward 0.9


@pytest.mark.parametrize("density, tol", [("gaussian", 0.25), ("kde", 0.4)])
def test_hmc_estimator_converges_with_more_samples(density, tol):
    # 400 samples and 20 burn-in transitions, over seeds 0-9: |error| up to 0.085 per datapoint with the
    # Gaussian density; with the KDE (noisier on a Gaussian posterior) the largest of 20 |errors| was 0.07-0.17
    # (0.08-0.73 while the step-size search started at 1, whatever the encoder), median |error| 0.004-0.04.
    # Mean error within 0.025. Tolerances `tol` per datapoint, 0.06 for the mean and 0.1 for the median |error|
    # over 20 datapoints
    lg = imperfect(2)
    x = lg.sample_x(20)
    out = hmc_estimator(lg, x, num_samples=400, burn_in=20, density=density, seed=SEED)
    err = errors(out, lg.log_marginal(x))
    assert err.abs().max() < tol
    assert abs(err.mean()) < 0.06
    assert err.abs().median() < 0.1


def test_step_size_search_starts_at_the_encoders_spread():
    # a 1-D Gaussian posterior of std sigma: a trajectory's acceptance depends on eps / sigma only, so the search
    # started at 0.8 times the spread of 16 encoder draws ends where the search from 1 does, up to its sqrt(2)
    # steps and the noise of 16 momenta (the ratio was 0.54-1.83 over seeds 0-9), after 3.6-4.6x fewer decoder
    # rows, below leapfrog's stability limit eps = 2 sigma (0.55-1.39 sigma over those seeds)
    torch.manual_seed(SEED)
    lg = LinearGaussian(x_dim=5, z_dim=1, noise=0.1)
    x = lg.sample_x(20)
    sigma = lg.posterior_cov().sqrt().item()
    draws = lg.encode(x).sample((SCALE_DRAWS,))  # (16, 20, 1)
    guess = _step_size_guess(draws)
    torch.testing.assert_close(guess, STEP_PER_SCALE * draws.std(0), rtol=0, atol=0)
    rows, decode = [], lg.decode
    lg.decode = lambda z: (rows.append(z.shape[:-1].numel()), decode(z))[1]
    joint, u = Joint(lg, x), draws[0]
    state = joint(u)
    found = {}
    for name, eps0 in (("one", torch.ones_like(guess)), ("guess", guess)):
        rows.clear()
        found[name] = (_initial_step_size(joint, u, state, 4, 0.9, eps0) / sigma, sum(rows))
    ratio = found["guess"][0] / found["one"][0]
    assert ((ratio > 0.4) & (ratio < 2.5)).all()
    assert 3 * found["guess"][1] < found["one"][1]
    assert ((found["guess"][0] > 0.4) & (found["guess"][0] < 2)).all()
    still = torch.zeros(16, 3, 2)  # a chain start that never spreads: the search starts at 1
    assert torch.equal(_step_size_guess(still), torch.ones(3, 1))
    assert torch.equal(_step_size_guess(torch.full((16, 3, 2), math.nan)), torch.ones(3, 1))


# --- annealed importance sampling --------------------------------------------------------------------------------

@pytest.mark.parametrize("z_dim", [1, 2])
def test_ais_recovers_log_px(z_dim):
    # 500 sigmoid-spaced temperatures, 32 chains: over seeds 0-9, |error| up to 0.22 per datapoint (the
    # posterior is 6x narrower than the prior) and mean error within 0.06; tolerances 0.35 per datapoint and
    # 0.1 for the mean over 10 datapoints
    lg = imperfect(z_dim)
    x = lg.sample_x(10)
    out = ais(lg, x, num_steps=500, num_chains=32, seed=SEED)
    err = errors(out, lg.log_marginal(x))
    assert err.abs().max() < 0.35
    assert abs(err.mean()) < 0.1
    assert 0.55 < out["accept_rate"] < 0.75  # tuned toward 0.65


def test_ais_is_a_bound_in_expectation():
    # E[log Z^] <= log Z: with 1 chain and 50 temperatures the weights are noisy and the mean over 400 datapoints
    # was 0.39-0.73 nats below exact over seeds 0-4; a step-size adaptation driven by the weighted chains' own
    # states (before the pilot chains) pushed such means up by about 0.1
    lg = imperfect(1)
    x = lg.sample_x(400)
    out = ais(lg, x, num_steps=50, num_chains=1, seed=SEED, batch_size=400)
    assert out["mean"] < lg.log_marginal(x).mean().item() - 0.2


# --- the nonlinear VAE: every estimator against the grid ---------------------------------------------------------

def test_importance_sampling_matches_grid_on_nonlinear_vae(nonlinear):
    # K = 20000 (float32): measured |error| below 0.05; tolerance 0.1 per datapoint, 0.03 for the mean
    model, x, exact = nonlinear
    err = errors(importance_sampling(model, x, num_samples=20000, seed=SEED), exact)
    assert err.abs().max() < 0.1
    assert abs(err.mean()) < 0.03


def test_ais_matches_grid_on_nonlinear_vae(nonlinear):
    # 300 temperatures, 32 chains: measured |error| up to 0.1; tolerance 0.25 per datapoint, 0.1 for the mean
    model, x, exact = nonlinear
    err = errors(ais(model, x, num_steps=300, num_chains=32, seed=SEED), exact)
    assert err.abs().max() < 0.25
    assert abs(err.mean()) < 0.1


def test_hmc_estimator_matches_grid_on_nonlinear_vae(nonlinear):
    # 1000 samples, 20 burn-in transitions, KDE (by "auto"). Over seeds 0-9: |error| up to 0.15 per datapoint,
    # mean error within 0.013, median |error| below 0.04 (while the step-size search started at 1, one of the 80
    # was off by 0.41: a chain whose step size adapted poorly mixes slowly along the long axis of a skewed
    # posterior). Tolerances 0.5 per datapoint, 0.12 for the mean and 0.08 for the median |error| over 8
    model, x, exact = nonlinear
    err = errors(hmc_estimator(model, x, num_samples=1000, burn_in=20, seed=SEED), exact)
    assert err.abs().max() < 0.5
    assert abs(err.mean()) < 0.12
    assert err.abs().median() < 0.08


def test_constrained_prior_runs_in_unconstrained_coordinates():
    # a Gamma prior and posterior (support z > 0): HMC and AIS move u = log z and add log |dz/du| to the prior's
    # density. Reference: IS with K = 50000 (spread over seeds 0-9 below 0.025). Over those seeds AIS (200
    # temperatures) was within 0.031 of it and HMC (400 samples) within 0.28; tolerances 0.1 and 0.35
    torch.manual_seed(0)
    model = aevb.VAE(aevb.ModelConfig(x_dim=6, latent_dim=2, hidden=(8,), posterior="gamma"))
    x = torch.bernoulli(torch.full((4, 6), 0.5), generator=torch.Generator().manual_seed(1))
    exact = importance_sampling(model, x, num_samples=50000, seed=SEED)["log_px"]
    assert errors(ais(model, x, num_steps=200, seed=SEED), exact).abs().max() < 0.1
    assert errors(hmc_estimator(model, x, num_samples=400, burn_in=20, seed=SEED), exact).abs().max() < 0.35
    with pytest.raises(ValueError, match="all of R"):
        grid(model, x)


# --- dispatch and arguments --------------------------------------------------------------------------------------

def test_log_likelihood_dispatches_and_rejects_unknown_names():
    lg = imperfect(1)
    x = lg.sample_x(3)
    assert set(METHODS) == {"is", "hmc", "ais", "grid"}
    torch.testing.assert_close(log_likelihood(lg, x, "grid")["log_px"], lg.log_marginal(x), rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="unknown method"):
        log_likelihood(lg, x, "harmonic")
    with pytest.raises(ValueError, match="unknown density"):
        hmc_estimator(lg, x, density="histogram")
    with pytest.raises(ValueError, match="num_samples"):
        importance_sampling(lg, x, num_samples=0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_estimates_carry_no_autograd_graph(nonlinear, method):
    # the estimators run without gradients: a graph kept over every chunk would grow memory with the work done
    model, x, _ = nonlinear
    kw = {"is": dict(num_samples=20), "hmc": dict(num_samples=4), "ais": dict(num_steps=3, num_chains=2),
          "grid": dict(points_per_dim=9)}[method]
    if method != "grid":
        kw["seed"] = 0
    assert not log_likelihood(model, x[:2], method, **kw)["log_px"].requires_grad


def test_seed_is_reproducible_and_leaves_the_global_stream_alone():
    lg = imperfect(2)
    x = lg.sample_x(3)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = hmc_estimator(lg, x, seed=7)["log_px"]
    assert torch.equal(torch.rand(1), expected_next)
    torch.testing.assert_close(hmc_estimator(lg, x, seed=7)["log_px"], a, rtol=0, atol=0)
