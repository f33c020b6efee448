"""AIS started at the encoder's q(z|x) (`ais(..., start="encoder")`) against exact answers: the linear-Gaussian
model's closed form, the nonlinear VAE's grid (conftest's fixture) and a Gamma posterior's
long-run importance sampling. Tolerances are stated per test, measured over seeds 0-9 (AEVB_TEST_SEED)."""
import json
import os

import pytest
import torch

import aevb
from aevb.cli import main
from aevb.marginal import ais, importance_sampling, log_likelihood

from linear_gaussian import DiagonalLinearGaussian, LinearGaussian

SEED = int(os.environ.get("AEVB_TEST_SEED", 0))


def test_the_exact_posterior_as_start_makes_every_weight_exact():
    # q(z|x) = p(z|x): along q^(1-beta) p(x, z)^beta = q p(x)^beta every log weight increment is
    # (beta_t - beta_t-1) log p(x), whatever the chains do, so three temperatures and one chain give log p(x) to
    # float64 rounding. The prior's path with three temperatures is off by nats
    lg = DiagonalLinearGaussian(x_dim=5, z_dim=2)
    x = lg.sample_x(20)
    exact = lg.log_marginal(x)
    out = ais(lg, x, num_steps=3, num_chains=1, seed=SEED, start="encoder")
    torch.testing.assert_close(out["log_px"], exact, atol=1e-9, rtol=0)
    from_prior = ais(lg, x, num_steps=3, num_chains=1, seed=SEED)
    assert (from_prior["log_px"] - exact).abs().max() > 0.5


@pytest.mark.parametrize("z_dim", [1, 2])
def test_an_imperfect_encoder_start_recovers_log_px_in_a_tenth_of_the_temperatures(z_dim):
    # q shifted by about one posterior std and 30% too wide; 50 temperatures, 32 chains. Over seeds 0-9 |error|
    # was at most 0.15 per datapoint and the mean error within 0.032 (the prior's path at 500 temperatures: 0.22
    # and 0.06, test_marginal); tolerances 0.25 and 0.06
    lg = LinearGaussian(x_dim=5, z_dim=z_dim, q_shift=0.2, q_scale=1.3)
    x = lg.sample_x(10)
    err = ais(lg, x, num_steps=50, num_chains=32, seed=SEED, start="encoder")["log_px"] - lg.log_marginal(x)
    assert err.abs().max() < 0.25
    assert abs(err.mean()) < 0.06


def test_encoder_start_matches_grid_on_nonlinear_vae(nonlinear):
    # 50 temperatures, 32 chains. Over seeds 0-9 |error| up to 0.23 per datapoint, mean within 0.027; over seeds
    # 0-4 the spread of a datapoint's error was 0.041 at 30 temperatures, as the prior's path's at 300 (0.043);
    # tolerances 0.35 and 0.06
    model, x, exact = nonlinear
    err = ais(model, x, num_steps=50, num_chains=32, seed=SEED, start="encoder")["log_px"] - exact
    assert err.abs().max() < 0.35
    assert abs(err.mean()) < 0.06


def test_encoder_start_on_a_constrained_posterior():
    # a Gamma posterior (z > 0): q's density picks up log |dz/du| as the prior's does. Reference IS with K = 50000.
    # This model is untrained, its q(z|x) no nearer the posterior than the prior, so the encoder's path is no
    # shorter: over seeds 0-9 it was within 0.08 of the reference at 300 temperatures; tolerance 0.15
    torch.manual_seed(0)
    model = aevb.VAE(aevb.ModelConfig(x_dim=6, latent_dim=2, hidden=(8,), posterior="gamma"))
    x = torch.bernoulli(torch.full((4, 6), 0.5), generator=torch.Generator().manual_seed(1))
    exact = importance_sampling(model, x, num_samples=50000, seed=SEED)["log_px"]
    err = ais(model, x, num_steps=300, seed=SEED, start="encoder")["log_px"] - exact
    assert err.abs().max() < 0.15


def test_a_flow_posterior_or_an_unknown_start_is_refused():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((3, 6), 0.5), generator=torch.Generator().manual_seed(1))
    flow = aevb.VAE(aevb.ModelConfig(x_dim=6, latent_dim=2, hidden=(8,), flow="planar", flow_steps=2))
    with pytest.raises(ValueError, match="flow.*start AIS from the prior"):
        ais(flow, x, num_steps=2, start="encoder")
    assert ais(flow, x, num_steps=2)["log_px"].shape == (3,)  # the prior's path needs no density of q
    plain = aevb.VAE(aevb.ModelConfig(x_dim=6, latent_dim=2, hidden=(8,)))
    with pytest.raises(ValueError, match="unknown start 'posterior'; choose from prior, encoder"):
        log_likelihood(plain, x, "ais", num_steps=2, start="posterior")


# --- the command line ----------------------------------------------------------------------------------------

def test_eval_ais_start_reaches_the_estimator_and_the_record(digits2_run, capsys):
    base = ["eval", str(digits2_run), "--method", "ais", "--chains", "3", "--ais-steps", "5", "--limit", "4",
            "--no-progress"]
    records = {}
    for start in ("prior", "encoder"):
        assert main([*base, "--ais-start", start]) == 0
        records[start] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert records[start]["ais_start"] == start
    assert main(base) == 0
    default = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert default["ais_start"] == "prior" and default["log_likelihood"] == records["prior"]["log_likelihood"]
    assert records["encoder"]["log_likelihood"] != records["prior"]["log_likelihood"]


def test_eval_ais_start_is_refused_in_one_line_where_it_does_not_apply(digits2_run, tmp_path, capsys):
    assert main(["eval", str(digits2_run), "--method", "is", "--ais-start", "encoder"]) == 2
    assert capsys.readouterr().err.strip() == "aevb: error: --ais-start applies to --method ais"
    flow = tmp_path / "flow"
    assert main(["train", "--dataset", "digits", "--latent-dim", "2", "--hidden", "16", "--samples", "200",
                 "--flow", "planar", "--out", str(flow), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(flow), "--method", "ais", "--ais-start", "encoder", "--ais-steps", "2", "--limit",
                 "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aevb: error: AIS from the encoder needs q(z|x)'s density at any z") and \
        len(err.strip().splitlines()) == 1
