"""HMC, AIS and the paper's HMC estimator with `precision="bf16"`: the gradients inside each leapfrog trajectory
come from a cheaper function (`Joint.inner`, bfloat16 autocast), the end points and the Metropolis test from the
exact target. The chains must stay exact whatever `inner` returns; that is checked with a deliberately wrong
interior gradient on the linear-Gaussian model, whose posterior is known. Then bf16 AIS and HMC against the
exact answers, and the refusals. The speed is measured by benchmarks/ais_speed.py --bf16.
"""
import json
import os

import pytest
import torch

import aevb
from aevb.cli import main
from aevb.marginal import ais, hmc_estimator
from aevb.marginal import hmc as hmc_module
from aevb.marginal.hmc import Joint, _State, hmc_step
from aevb.train.fused import bf16_supported

from linear_gaussian import LinearGaussian

SEED = int(os.environ.get("AEVB_TEST_SEED", 0))
needs_bf16 = pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no native bf16 matrix products")


class WrongInside(Joint):
    """The exact target at the end points; inside a trajectory a gradient that is a fixed but wrong function of u
    (scaled, shifted and bent) and values that are NaN, which nothing may read."""

    def inner(self, u):
        s = self(u)
        bent = 0.6 * s.grad_lik + 2 * torch.sin(3 * u) + 1
        return _State(torch.full_like(s.log_prior, float("nan")), torch.full_like(s.log_lik, float("nan")),
                      s.grad_prior, bent)


def _posterior_after_transitions(target_cls, n_chains=80000, transitions=4):
    lg = LinearGaussian(x_dim=5, z_dim=2, noise=0.5)
    x = lg.sample_x(1)
    post = lg.exact_posterior(x)  # batch (1,), event (2,)
    g = torch.Generator().manual_seed(SEED + 1000)  # not the momenta's stream: they must be independent of u
    torch.manual_seed(SEED)
    u = post.mean + torch.randn(n_chains, 1, 2, generator=g, dtype=torch.float64) @ \
        torch.linalg.cholesky(post.covariance_matrix)[0].T  # (C, 1, 2): exact posterior draws
    target = target_cls(lg, x)
    state = target(u)
    eps = torch.full((n_chains, 1, 1), 0.25, dtype=torch.float64)  # each chain its own jitter
    accepted = []
    for _ in range(transitions):
        u, state, a = hmc_step(target, u, state, eps, 5)
        accepted.append(a.mean())
    return u[:, 0], post, float(torch.stack(accepted).mean())


@pytest.mark.parametrize("target_cls", [Joint, WrongInside])
def test_hmc_stays_exact_whatever_the_interior_gradient(target_cls):
    # started at exact posterior draws, exact transitions keep them exact: the mean within 4.5 standard errors and
    # the covariance within 3% entrywise of the posterior's; measured on seeds 0-4 at most 2.1 SE and 1.5%
    u, post, accept = _posterior_after_transitions(target_cls)
    mean, cov = post.mean[0], post.covariance_matrix[0]
    se = (cov.diagonal() / u.shape[0]).sqrt()
    assert ((u.mean(0) - mean).abs() / se).max() < 4.5
    assert ((u.T.cov() - cov).abs() / cov.diagonal().sqrt().outer(cov.diagonal().sqrt())).max() < 0.03
    assert 0.2 < accept < 1.0  # the chains moved, and the wrong gradient still lets them


def test_an_asymmetric_trajectory_is_caught_by_the_check_above(monkeypatch):
    # the power of the check: the wrong gradient in the last half step only (not reversible) shows as a bias of the
    # mean; measured 8.6-11.4 standard errors over seeds 0-4, against at most 2.1 for the exact kernels above
    def lopsided(target, u, p, state, eps, steps, beta=1.0):
        p = p + 0.5 * eps * state.grad(beta)
        for i in range(steps):
            u = u + eps * p
            state = target(u)
            g = state.grad(beta) if i < steps - 1 else target.inner(u).grad(beta)
            p = p + (eps if i < steps - 1 else 0.5 * eps) * g
        return u, p, state

    monkeypatch.setattr(hmc_module, "_leapfrog", lopsided)
    u, post, _ = _posterior_after_transitions(WrongInside)
    se = (post.covariance_matrix[0].diagonal() / u.shape[0]).sqrt()
    assert ((u.mean(0) - post.mean[0]).abs() / se).max() > 7


def test_float32_inner_is_the_target_itself():
    lg = LinearGaussian(x_dim=5, z_dim=2)
    joint = Joint(lg, lg.sample_x(3))
    u = torch.randn(4, 3, 2, dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(joint(u), joint.inner(u)))


@needs_bf16
def test_bf16_ais_and_hmc_match_the_exact_answer():
    # a small VAE (Dz = 2) whose log p(x|z) runs under bf16 autocast inside the trajectories, against the exact
    # log p(x) on a grid. AIS (200 temperatures, 16 chains): over seeds 0-4 the mean error stayed within 0.008 (float32
    # alike) and the acceptance rate at 0.66; tolerances 0.05 and 0.6. The HMC estimator (paper settings, biased
    # upward by Jensen): mean error -0.044-0.103 (float32 -0.029-0.112); tolerance 0.2
    torch.manual_seed(0)
    model = aevb.VAE(aevb.ModelConfig(x_dim=64, latent_dim=2, hidden=(32,))).eval()
    x = torch.bernoulli(torch.full((24, 64), 0.3), generator=torch.Generator().manual_seed(1))
    exact = aevb.marginal.grid(model, x)["log_px"].double()
    a = ais(model, x, num_steps=200, seed=SEED, precision="bf16")
    h = hmc_estimator(model, x, seed=SEED, precision="bf16")
    assert abs((a["log_px"].double() - exact).mean()) < 0.05 and a["accept_rate"] > 0.6
    assert abs((h["log_px"].double() - exact).mean()) < 0.2


@pytest.mark.parametrize("fn", [ais, hmc_estimator])
def test_bf16_is_refused_without_native_bf16_and_unknown_precisions_always(fn, monkeypatch):
    lg = LinearGaussian(x_dim=5, z_dim=2)
    x = lg.sample_x(2)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        fn(lg, x, precision="fp8")
    monkeypatch.setattr("aevb.train.fused.bf16_supported", lambda device: False)
    with pytest.raises(ValueError, match="precision bf16 needs native bf16 matrix products"):
        fn(lg, x, precision="bf16")


@needs_bf16
def test_eval_ais_with_bf16_reports_its_precision(digits2_run, capsys):
    assert main(["eval", str(digits2_run), "--method", "ais", "--chains", "3", "--ais-steps", "20", "--limit", "4",
                 "--precision", "bf16", "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["precision"] == "bf16" and r["n"] == 4 and r["log_likelihood"] < 0


@pytest.mark.parametrize("args, message", [
    (["--method", "is", "--precision", "bf16"], "--precision bf16 applies to --method ais and hmc"),
    (["--precision", "bf16"], "--precision bf16 applies to --method ais and hmc"),
])
def test_eval_refuses_precision_where_it_does_not_apply(digits2_run, capsys, args, message):
    assert main(["eval", str(digits2_run), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"aevb: error: {message}") and len(err.strip().splitlines()) == 1


def test_eval_refuses_bf16_without_native_bf16(digits2_run, capsys, monkeypatch):
    monkeypatch.setattr("aevb.train.fused.bf16_supported", lambda device: False)
    assert main(["eval", str(digits2_run), "--method", "ais", "--precision", "bf16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aevb: error: precision bf16 needs native bf16") and len(err.strip().splitlines()) == 1
