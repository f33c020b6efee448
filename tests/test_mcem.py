"""Monte Carlo EM (Appendix E) on a linear-Gaussian model, where the answers are exact.

p(z) = N(0, I), p(x|z) = N(W z + b + c, s^2 I): the marginal is N(b + c, W W^T + s^2 I), so the maximum-likelihood
shift is c* = mean(x) - b; and with the weights held fixed the chains must sample the exact posterior
N(m(x), S), S = (I + W^T W / s^2)^-1.
"""
import pytest
import torch
from torch.distributions import Independent, Normal

from aevb.marginal import hmc_estimator
from aevb.paper.mcem import MCEM, MCEMConfig, PriorStart

from linear_gaussian import LinearGaussian


class Shifted(torch.nn.Module):
    def __init__(self, lg):
        super().__init__()
        self.lg = lg
        self.c = torch.nn.Parameter(torch.zeros(lg.W.shape[0], dtype=torch.float64))

    def prior(self):
        return self.lg.prior()

    def decode(self, z):
        return Independent(Normal(z @ self.lg.W.T + self.lg.b + self.c, torch.full_like(self.c, self.lg.s)), 1)


def test_chains_sample_the_exact_posterior_when_the_weights_are_fixed():
    torch.manual_seed(0)
    lg = LinearGaussian(x_dim=5, z_dim=2, noise=0.5)
    x = lg.sample_x(200)
    model = Shifted(lg)
    em = MCEM(model, x, MCEMConfig(lr=1e-12, batch_size=200, weight_decay=0.0), params=[model.c])
    em.run(50)  # burn-in
    draws = []
    for _ in range(400):
        em.run(1)
        draws.append(em.chains.clone())
    draws = torch.stack(draws)  # (T, N, Dz)
    resid = draws - lg.posterior_mean(x)
    # the pooled posterior residual has mean 0 and covariance S (exact), over 200 chains x 400 states
    torch.testing.assert_close(resid.mean((0, 1)), torch.zeros(2, dtype=torch.float64), atol=0.03, rtol=0)
    cov = torch.einsum("tni,tnj->ij", resid, resid) / (resid.shape[0] * resid.shape[1])
    torch.testing.assert_close(cov, lg.posterior_cov(), atol=0.03, rtol=0.1)
    assert 0.75 < em.accept_rate <= 1.0


def test_learns_the_maximum_likelihood_shift():
    torch.manual_seed(1)
    lg = LinearGaussian(x_dim=5, z_dim=2, noise=0.5)
    x = lg.sample_x(500) + torch.tensor([0.5, -0.5, 1.0, 0.0, 0.3], dtype=torch.float64)
    model = Shifted(lg)
    em = MCEM(model, x, MCEMConfig(lr=0.05, batch_size=100, weight_decay=0.0), params=[model.c])
    em.run(1500)
    torch.testing.assert_close(model.c.detach(), x.mean(0) - lg.b, atol=0.08, rtol=0)
    assert em.samples_seen == 1500 * 100


def test_prior_start_gives_the_hmc_estimator_the_exact_answer():
    """A model with no encoder, evaluated by the paper's estimator with chains started at the prior."""
    torch.manual_seed(2)
    lg = LinearGaussian(x_dim=5, z_dim=2, noise=0.5)
    x = lg.sample_x(40)
    r = hmc_estimator(PriorStart(Shifted(lg)), x, num_samples=200, burn_in=30, seed=0)
    err = r["log_px"] - lg.log_marginal(x)
    assert abs(float(err.mean())) < 0.06  # the tolerances of the encoder-started case in test_marginal.py
    assert float(err.abs().median()) < 0.1
    assert float(err.abs().max()) < 0.35


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"leapfrog_steps": 0}, {"target_accept": 1.0},
                                 {"initial_step_size": -1.0}])
def test_bad_settings_are_errors(bad):
    with pytest.raises(ValueError):
        MCEMConfig(**bad)
