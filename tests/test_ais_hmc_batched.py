"""AIS and the paper's HMC estimator with all chains of a batch moving together (issue 22): the batching does not
change the estimate, the float budget bounds the decoder calls, and the eval flags --chains, --ais-steps,
--threads and --no-progress. Values only; the speed is measured by benchmarks/ais_speed.py.
"""
import json
import os

import pytest
import torch

import aevb
from aevb.cli import main
from aevb.marginal import ais, hmc_estimator
from aevb.marginal import common as marginal_common

from linear_gaussian import LinearGaussian

SEED = int(os.environ.get("AEVB_TEST_SEED", 0))


def imperfect(z_dim: int) -> LinearGaussian:
    return LinearGaussian(x_dim=5, z_dim=z_dim, q_shift=0.2, q_scale=1.3)


@pytest.fixture(scope="module")
def small_vae():
    torch.manual_seed(0)
    model = aevb.VAE(aevb.ModelConfig(x_dim=12, latent_dim=2, hidden=(8,))).eval()
    x = torch.bernoulli(torch.full((6, 12), 0.4), generator=torch.Generator().manual_seed(3))
    return model, x


@pytest.mark.parametrize("method, kw", [("ais", dict(num_steps=20, num_chains=3)),
                                        ("hmc", dict(num_samples=8, burn_in=2))])
def test_a_datapoints_estimate_does_not_depend_on_the_other_datapoints_of_its_batch(small_vae, method, kw):
    # same seed and batch shape, so the same random numbers: a datapoint's chains, step size and estimate see only
    # its own x (the step-size search draws momenta for every datapoint of the batch, moving or not)
    model, x = small_vae
    other = x.clone()
    other[1:] = 1 - other[1:]
    fn = ais if method == "ais" else hmc_estimator
    a, b = (fn(model, xs, seed=SEED, **kw) for xs in (x, other))
    assert torch.equal(a["log_px"][0], b["log_px"][0]) and torch.equal(a["step_size"][0], b["step_size"][0])
    assert not torch.equal(a["log_px"][1:], b["log_px"][1:])


def test_ais_matches_the_exact_answer_whatever_the_batches():
    # 40 datapoints in one batch or in batches of 7: 200 temperatures, 16 chains, Dz = 2. Over seeds 0-4 the
    # |error| stayed below 0.51 per datapoint and the mean error within 0.095 either way, and the two runs
    # (independent draws) within 0.082 of each other on the mean; tolerances 0.75, 0.15 and 0.15
    lg = imperfect(2)
    x = lg.sample_x(40)
    exact = lg.log_marginal(x)
    means = []
    for batch_size in (None, 7):
        out = ais(lg, x, num_steps=200, batch_size=batch_size, seed=SEED)
        err = (out["log_px"] - exact).double()
        assert err.abs().max() < 0.75 and abs(err.mean()) < 0.15
        means.append(out["mean"])
    assert means[0] == pytest.approx(means[1], abs=0.15)


def test_hmc_estimator_matches_the_exact_answer_whatever_the_batches():
    # the paper's settings on 80 datapoints, in one batch or in batches of 9: over seeds 0-4 the mean error
    # stayed within 0.076 and the median |error| below 0.17; tolerances 0.15 and 0.3 (as for the unbatched test)
    lg = imperfect(2)
    x = lg.sample_x(80)
    exact = lg.log_marginal(x)
    for batch_size in (None, 9):
        err = (hmc_estimator(lg, x, batch_size=batch_size, seed=SEED)["log_px"] - exact).double()
        assert abs(err.mean()) < 0.15 and err.abs().median() < 0.3


@pytest.mark.parametrize("method", ["ais", "hmc"])
def test_decoder_calls_stay_under_the_float_budget(small_vae, monkeypatch, method):
    # with HMC_FLOATS = 600 and D = 12 a decoder call may hold 50 rows: AIS's 2 + 4 pilot chains take 8 datapoints
    # a batch, the HMC estimator 50 datapoints (one chain each) and its step-size search 3 (16 trajectories each)
    model, x = small_vae
    x = x.repeat(4, 1)  # 24 datapoints
    monkeypatch.setattr(marginal_common, "HMC_FLOATS", 600)
    rows = []

    class Spy:
        def prior(self):
            return model.prior()

        def encode(self, xb):
            return model.encode(xb)

        def decode(self, z):
            rows.append(z.shape[:-1].numel())
            return model.decode(z)

        def log_likelihood(self, z, xb):
            rows.append(z.shape[:-1].numel())
            return model.log_likelihood(z, xb)

    if method == "ais":
        ais(Spy(), x, num_steps=3, num_chains=2, seed=SEED)
    else:
        hmc_estimator(Spy(), x, num_samples=4, burn_in=1, seed=SEED)
    assert max(rows) * x.shape[1] <= 600
    assert max(rows) == 48


# --- the command line ----------------------------------------------------------------------------------------

def test_eval_ais_takes_chains_and_temperatures(digits2_run, capsys):
    assert main(["eval", str(digits2_run), "--method", "ais", "--chains", "3", "--ais-steps", "7", "--limit", "4",
                 "--threads", "1"]) == 0
    captured = capsys.readouterr()
    r = json.loads(captured.out.strip().splitlines()[-1])
    assert (r["chains"], r["ais_steps"], r["k"], r["n"]) == (3, 7, 3, 4)
    assert "AIS" in captured.err  # the progress bar, on stderr
    assert main(["eval", str(digits2_run), "--method", "ais", "--k", "3", "--ais-steps", "7", "--limit", "4",
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    same = json.loads(captured.out.strip().splitlines()[-1])
    assert same["log_likelihood"] == r["log_likelihood"]  # --k is --chains for ais; the same seed, the same value
    assert captured.err == ""


def test_eval_hmc_shows_progress_unless_asked_not_to(digits2_run, capsys):
    for extra, shown in (([], True), (["--no-progress"], False)):
        assert main(["eval", str(digits2_run), "--method", "hmc", "--k", "6", "--limit", "3", *extra]) == 0
        assert ("HMC" in capsys.readouterr().err) == shown


@pytest.mark.parametrize("args, message", [
    (["--method", "ais", "--ais-steps", "0"], "--ais-steps must be >= 1, got 0"),
    (["--method", "ais", "--chains", "-2"], "--chains must be >= 1, got -2"),
    (["--method", "ais", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["--method", "hmc", "--chains", "4"], "--chains applies to --method ais"),
    (["--method", "is", "--ais-steps", "50"], "--ais-steps applies to --method ais"),
    (["--ais-steps", "50"], "--ais-steps applies to --method ais"),
    (["--method", "ais", "--chains", "4", "--k", "4"], "--k and --chains both set the chains of --method ais"),
])
def test_eval_refuses_bad_ais_flags_in_one_line(digits2_run, capsys, args, message):
    assert main(["eval", str(digits2_run), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"aevb: error: {message}") and len(err.strip().splitlines()) == 1
