"""Learned priors (models/priors.py): the mixture of Gaussians (--prior mog) and the VampPrior (--prior vamp).

Densities are checked against an explicit loop over the K components with scipy; log p(x) by importance sampling
against grid quadrature on a 1-D latent; the estimators, the option checks, the run folder and the diagnostics.
"""
import json
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import aevb
from aevb import ModelConfig, models, runs
from aevb.estimators import ESTIMATORS, resolve_estimator
from aevb.inspect import diagnostics, plots
from aevb.marginal import log_likelihood


def _model(prior, k, *, arch="mlp", latent_dim=3, x_dim=16, **kw):
    shape = {"image_shape": (4, 4)} if arch == "conv" or x_dim == 16 else {}
    cfg = ModelConfig(x_dim=x_dim, latent_dim=latent_dim, hidden=(8,), prior=prior, prior_components=k, arch=arch,
                      conv_widths=(4,), **shape, **kw)
    return models.build(cfg)


def _scipy_mixture(z, log_weights, means, variances):
    """log sum_k w_k N(z; m_k, diag v_k), one component at a time with scipy (float64 numpy)."""
    per = np.stack([multivariate_normal(means[k], np.diag(variances[k])).logpdf(z) + log_weights[k]
                    for k in range(len(means))], axis=-1)
    return logsumexp(per, axis=-1)


def test_mixture_prior_density_is_the_explicit_sum_over_components():
    torch.manual_seed(0)
    model = _model("mog", 4).double()
    with torch.no_grad():
        model.learned_prior.log_var.normal_(0, 0.5)
        model.learned_prior.logits.normal_(0, 1)
    p = model.prior()
    assert p.event_shape == (3,) and p.batch_shape == ()
    z = 2 * torch.randn(5, 7, 3, dtype=torch.float64)  # leading sample and batch dimensions
    lp = p.log_prob(z)
    assert lp.shape == (5, 7)
    mp = model.learned_prior
    expected = _scipy_mixture(z.numpy(), torch.log_softmax(mp.logits, 0).detach().numpy(), mp.loc.detach().numpy(),
                              mp.log_var.exp().detach().numpy())
    np.testing.assert_allclose(lp.detach().numpy(), expected, rtol=1e-10, atol=1e-10)
    assert p.sample((11, 2)).shape == (11, 2, 3)
    lp.sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in mp.parameters())


def test_float32_mixture_density_near_narrow_components_keeps_its_digits():
    """z within 0.01 of far-off means (|m| up to 20) with scales down to 0.02, the regime where the expanded squared
    distance cancels: the float32 density and its gradients against scipy and a float64 autograd reference."""
    from aevb.models.priors import mixture

    g = torch.Generator().manual_seed(3)
    k, d = 50, 6
    loc = 20 * torch.rand(k, d, generator=g) - 10
    scale = 0.02 + torch.rand(k, d, generator=g)
    logits = torch.randn(k, generator=g)
    z = (loc[:8] + 0.01 * torch.randn(4, 8, d, generator=g)).requires_grad_()
    lp = mixture(logits, loc, scale).log_prob(z)
    assert lp.dtype == torch.float32 and lp.shape == (4, 8)
    expected = _scipy_mixture(z.detach().double().numpy(), torch.log_softmax(logits.double(), 0).numpy(),
                              loc.double().numpy(), scale.double().pow(2).numpy())
    np.testing.assert_allclose(lp.detach().numpy(), expected, rtol=0, atol=2e-4)  # float32 of values near 30
    z64 = z.detach().double().requires_grad_()
    direct = torch.logsumexp(torch.distributions.Normal(loc.double(), scale.double()).log_prob(z64[..., None, :])
                             .sum(-1) + torch.log_softmax(logits.double(), 0), -1)
    (grad,) = torch.autograd.grad(lp.sum(), z)
    (grad64,) = torch.autograd.grad(direct.sum(), z64)
    np.testing.assert_allclose(grad.numpy(), grad64.numpy(), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_vamp_prior_is_the_encoders_posteriors_at_the_pseudo_inputs(arch):
    torch.manual_seed(0)
    model = _model("vamp", 6, arch=arch).double()
    u = model.learned_prior.pseudo_inputs()
    u = u.detach()
    assert u.shape == (6, 16) and 0 <= float(u.min()) and float(u.max()) <= 1  # grey levels: in the data's range
    raw = model.encoder_params(u).detach().numpy()  # (K, 2 Dz): [mu, log sigma^2]
    z = 3 * torch.randn(4, 5, 3, dtype=torch.float64)
    lp = model.prior().log_prob(z)
    expected = _scipy_mixture(z.numpy(), np.full(6, -math.log(6)), raw[:, :3], np.exp(raw[:, 3:]))
    np.testing.assert_allclose(lp.detach().numpy(), expected, rtol=1e-10, atol=1e-10)
    lp.sum().backward()  # gradients reach the pseudo-inputs and the encoder through the prior
    assert model.learned_prior.pseudo_raw.grad.abs().sum() > 0
    assert model.enc_head.weight.grad.abs().sum() > 0
    assert model.prior().sample((9,)).shape == (9, 3)


def test_vamp_pseudo_inputs_are_unconstrained_for_real_valued_data():
    model = _model("vamp", 5, x_dim=6, likelihood="gaussian")
    assert model.learned_prior.unit_range is False
    assert torch.equal(model.learned_prior.pseudo_inputs(), model.learned_prior.pseudo_raw)
    assert _model("vamp", 5, likelihood="gaussian-sigmoid").learned_prior.unit_range


def test_options_defaults_and_refusals():
    assert ModelConfig(x_dim=4, prior="vamp").prior_components == 500
    assert ModelConfig(x_dim=4, prior="mog").prior_components == 10
    assert ModelConfig(x_dim=4).prior_components is None
    for kw, message in [({"prior": "vamp", "posterior": "laplace"}, "--prior vamp needs --posterior normal"),
                        ({"prior": "mog", "posterior": "beta"}, "--prior mog needs --posterior normal"),
                        ({"prior_components": 5}, "--prior-components needs --prior mog or vamp"),
                        ({"prior": "mog", "prior_components": 0}, "prior_components must be >= 1"),
                        ({"prior": "wishart"}, "unknown prior 'wishart'")]:
        with pytest.raises(ValueError, match=message):
            ModelConfig(x_dim=4, **kw)


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_no_analytic_kl_so_auto_is_estimator_a(prior):
    model = _model(prior, 3)
    assert model.has_analytic_kl is False
    assert resolve_estimator("auto", model) == "sgvb_a"
    with pytest.raises(ValueError, match="needs an analytic KL"):
        resolve_estimator("sgvb_b", model)
    assert resolve_estimator("auto", _model(None, None)) == "sgvb_b"  # the standard prior keeps estimator B


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("prior", ["mog", "vamp"])
@pytest.mark.parametrize("estimator, kw", [("sgvb_a", {}), ("sgvb_a", {"gradient": "stl", "num_samples": 2}),
                                           ("iwae", {"num_samples": 4}),
                                           ("iwae", {"num_samples": 4, "gradient": "dreg"})])
def test_estimators_give_finite_gradients_to_every_parameter(arch, prior, estimator, kw):
    torch.manual_seed(0)
    model = _model(prior, 5, arch=arch)
    x = torch.rand(6, 16)
    out = ESTIMATORS[estimator](model, x, **kw)
    assert torch.isfinite(out["loss"]) and out["elbo"].shape == (6,)
    out["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    # conv: a new residual block's last convolution starts at zero, so the one before it gets no gradient yet
    assert all(".body." in n for n in missing), missing
    assert all(p.grad.abs().sum() > 0 for p in model.learned_prior.parameters())


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_importance_sampling_agrees_with_grid_quadrature(prior):
    # a 1-D latent: log p(x) = log int p(x|z) p(z) dz by quadrature on a fine grid against IS with 200,000 samples
    torch.manual_seed(1)
    model = _model(prior, 4, latent_dim=1, x_dim=5, likelihood="gaussian").double()
    if prior == "mog":
        with torch.no_grad():
            model.learned_prior.loc.mul_(2)
            model.learned_prior.log_var.normal_(-1, 0.5)
    x = torch.randn(4, 5, dtype=torch.float64)
    exact = log_likelihood(model, x, "grid", points_per_dim=8001, limit=12.0)["log_px"]
    est = log_likelihood(model, x, "is", num_samples=200000, seed=0)["log_px"]
    torch.testing.assert_close(est, exact, rtol=0, atol=0.02)


def test_ais_and_hmc_run_with_a_learned_prior():
    # the annealed and HMC estimators move in the prior's unconstrained coordinates (biject_to of its support): a
    # mixture prior is all of R^Dz. Short chains, so a loose tolerance around the quadrature: over seeds 0-9 the
    # HMC estimator (100 samples) was within 0.07-0.24 of it per seed (0.04-0.48 with its step-size search
    # started at 1); tolerance 0.35
    torch.manual_seed(1)
    model = _model("vamp", 4, latent_dim=1, x_dim=5, likelihood="gaussian").double()
    x = torch.randn(3, 5, dtype=torch.float64)
    exact = log_likelihood(model, x, "grid", points_per_dim=8001, limit=12.0)["log_px"]
    ais = log_likelihood(model, x, "ais", num_steps=40, num_chains=8, leapfrog_steps=5, seed=0)["log_px"]
    hmc = log_likelihood(model, x, "hmc", num_samples=100, seed=0)["log_px"]
    torch.testing.assert_close(ais, exact, rtol=0, atol=0.15)
    torch.testing.assert_close(hmc, exact, rtol=0, atol=0.35)


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_save_and_load_round_trip(prior, tmp_path):
    torch.manual_seed(0)
    model = _model(prior, 7).eval()
    section = json.loads(json.dumps(model.config.to_dict()))
    assert section["prior"] == prior and section["prior_components"] == 7
    assert models.config_of(section) == model.config
    runs.write_tensors(tmp_path / runs.WEIGHTS, model.state_dict())
    runs.write_json(tmp_path / runs.CONFIG, {"format_version": runs.FORMAT_VERSION, "model": section, "train": {},
                                             "data": {}})
    loaded, _ = aevb.load_run(tmp_path)
    z = torch.randn(3, 3)
    torch.testing.assert_close(loaded.prior().log_prob(z), model.prior().log_prob(z), rtol=0, atol=0)


def test_old_sections_without_the_new_keys_still_load():
    old = {"x_dim": 6, "latent_dim": 2, "hidden": [5], "activation": "tanh", "likelihood": "bernoulli",
           "init": "torch", "posterior": "normal", "prior": "normal", "levels": 16, "arch": "mlp",
           "image_shape": None, "mixtures": 1, "conv_widths": [32, 64], "conv_blocks": 1}
    cfg = models.config_of(old)
    assert cfg.prior_components is None and cfg.flow is None
    model = models.build(cfg)
    assert model.learned_prior is None and model.flow is None and model.has_analytic_kl
    assert not any(k.startswith(("learned_prior", "flow")) for k in model.state_dict())


def test_paper_init_leaves_the_learned_prior_alone():
    torch.manual_seed(0)
    model = _model("mog", 10, init="paper")
    assert float(model.learned_prior.loc.detach().std()) > 0.5  # spread as N(0, 1) draws, not N(0, 0.01^2)
    assert float(model.enc_head.weight[3:].abs().max()) == 0.0  # log-variance head zeroed as before


def test_kl_per_dimension_against_the_mixtures_marginals():
    # E_x KL(q(z_j|x) || p(z_j)) with p(z_j) the mixture's marginal: Monte Carlo against 1-D quadrature
    torch.manual_seed(0)
    model = _model("vamp", 3, latent_dim=2).double().eval()
    x = torch.rand(3, 16, dtype=torch.float64)
    got = diagnostics.kl_per_dim(model, x, mc_samples=40000)
    raw = model.encoder_params(x).detach()
    praw = model.encoder_params(model.learned_prior.pseudo_inputs()).detach()
    grid = torch.linspace(-15, 15, 30001, dtype=torch.float64)
    dz = grid[1] - grid[0]
    expected = torch.zeros(2, dtype=torch.float64)
    normal = torch.distributions.Normal
    for j in range(2):
        log_p = torch.logsumexp(normal(praw[:, j], praw[:, 2 + j].mul(0.5).exp()).log_prob(grid[:, None]), 1) \
            - math.log(3)
        for i in range(3):
            log_q = normal(raw[i, j], raw[i, 2 + j].mul(0.5).exp()).log_prob(grid)
            expected[j] += (log_q.exp() * (log_q - log_p)).sum() * dz / 3
    torch.testing.assert_close(got, expected, rtol=0, atol=0.03)
    out = diagnostics.diagnose(model.float(), x.float(), gap_points=0)
    assert out["kl_per_dim"] is not None and "kl_per_dim_note" in out and out["mutual_information"] is not None


def test_a_vamp_run_from_the_command_line(tmp_path, capsys):
    # aevb train with --prior vamp: auto resolves to sgvb_a (printed and stored), the run loads, and its figures
    # include the pseudo-inputs
    from aevb.cli import main
    torch.set_num_threads(1)
    out = tmp_path / "vamp"
    assert main(["train", "--dataset", "digits", "--latent-dim", "3", "--hidden", "16", "--samples", "1000",
                 "--prior", "vamp", "--prior-components", "12", "--out", str(out), "--no-progress"]) == 0
    assert "estimator auto -> sgvb_a" in capsys.readouterr().out
    config = json.loads((out / runs.CONFIG).read_text())
    assert config["train"]["estimator"] == "sgvb_a" and config["model"]["prior"] == "vamp"
    model, config = aevb.load_run(out)
    shape = config["data"]["image_shape"]
    grid = plots.pseudo_inputs_grid(model, shape)
    assert grid.shape == (3 * (8 + 1) + 1, 4 * (8 + 1) + 1) and 0 <= grid.min() and grid.max() <= 1
    with pytest.raises(ValueError, match="only the VampPrior"):
        plots.pseudo_inputs_grid(_model("mog", 3), (4, 4))
