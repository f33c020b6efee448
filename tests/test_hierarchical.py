"""Hierarchical VAEs (models/hierarchical.py): --stochastic-layers L, bottom-up and top-down (ladder) inference.

Densities of p(z) and q(z|x) against the explicit product of their Gaussian factors with scipy; prior samples'
moments on a linear-Gaussian hierarchy; log p(x) by importance sampling (and the grid, AIS) against a 2-D
quadrature over (z_1, z_2) of p(x|z_1) p(z_1|z_2) p(z_2) on a tiny model; the estimators' gradients and refusals;
training on digits; the run folder; L = 1 unchanged; the command line.
"""
import json
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import norm

import aevb
from aevb import ModelConfig, models, runs
from aevb.estimators import ESTIMATORS, kl_splits, resolve_estimator
from aevb.marginal import log_likelihood
from aevb.models.hierarchical import NO_RAW, HierarchicalVAE

MODES = ["bottom-up", "top-down"]


def _model(inference="bottom-up", dims=(3, 2), x_dim=16, upper=(6,), **kw):
    cfg = ModelConfig(x_dim=x_dim, stochastic_layers=len(dims), latent_dims=dims, hidden=(8,), upper_hidden=upper,
                      inference=inference, **kw)
    return models.build(cfg)


def _randomize(model, scale=0.3, seed=3):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def _split(params):
    mu, log_var = np.split(params.detach().numpy(), 2, -1)
    return mu, np.exp(0.5 * log_var)


def test_prior_log_prob_is_the_product_of_its_gaussian_factors():
    torch.manual_seed(0)
    model = _randomize(_model(dims=(3, 2, 2)).double())
    z = torch.randn(5, 4, 7, dtype=torch.float64)
    z1, z2, z3 = z[..., :3], z[..., 3:5], z[..., 5:]
    m2, s2 = _split(model.top_down[1](z3))
    m1, s1 = _split(model.top_down[0](z2))
    expected = (norm.logpdf(z3.numpy()).sum(-1) + norm.logpdf(z2.numpy(), m2, s2).sum(-1)
                + norm.logpdf(z1.numpy(), m1, s1).sum(-1))
    got = model.prior().log_prob(z)
    assert got.shape == (5, 4)
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-10, atol=1e-10)


def test_bottom_up_posterior_log_prob_is_the_product_of_its_gaussian_factors():
    torch.manual_seed(0)
    model = _randomize(_model("bottom-up").double())
    x = torch.rand(4, 16, dtype=torch.float64)
    z = torch.randn(6, 4, 5, dtype=torch.float64)  # any z, not only the posterior's own draws
    m1, s1 = _split(model.up[0](x))
    m2, s2 = _split(model.up[1](z[..., :3]))
    expected = norm.logpdf(z[..., :3].numpy(), m1, s1).sum(-1) + norm.logpdf(z[..., 3:].numpy(), m2, s2).sum(-1)
    np.testing.assert_allclose(model.encode(x).log_prob(z).detach().numpy(), expected, rtol=1e-10, atol=1e-10)


def test_top_down_posterior_is_the_precision_weighted_product():
    torch.manual_seed(0)
    model = _randomize(_model("top-down").double())
    x = torch.rand(4, 16, dtype=torch.float64)
    z = torch.randn(6, 4, 5, dtype=torch.float64)
    h1 = model.features[0](x)
    d1, ds1 = _split(model.heads[0](h1))  # the data's Gaussian for z_1
    d2, ds2 = _split(model.heads[1](model.features[1](h1)))  # q(z_2|x)
    p1, ps1 = _split(model.top_down[0](z[..., 3:]))  # p(z_1|z_2)
    var = 1 / (1 / ds1**2 + 1 / ps1**2)
    mean = var * (d1 / ds1**2 + p1 / ps1**2)
    expected = (norm.logpdf(z[..., 3:].numpy(), d2, ds2).sum(-1)
                + norm.logpdf(z[..., :3].numpy(), mean, np.sqrt(var)).sum(-1))
    np.testing.assert_allclose(model.encode(x).log_prob(z).detach().numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("inference", MODES)
def test_log_q_of_its_own_draw_reuses_the_factors_it_was_drawn_from(inference):
    torch.manual_seed(0)
    model = _randomize(_model(inference).double())
    calls = []
    net = model.top_down[0] if inference == "top-down" else model.up[1]
    net.register_forward_hook(lambda *_: calls.append(1))
    x = torch.rand(4, 16, dtype=torch.float64)
    q = model.encode(x)
    z = q.rsample((3,))
    drawn = len(calls)
    own = q.log_prob(z)
    assert len(calls) == drawn  # no network ran again
    torch.testing.assert_close(own, q.log_prob(z.clone()), rtol=1e-12, atol=1e-12)
    assert own.requires_grad
    z = q.sample((2,))  # drawn without gradients
    drawn = len(calls)
    with torch.no_grad():
        q.log_prob(z)
    assert len(calls) == drawn
    assert q.log_prob(z).requires_grad and len(calls) == drawn + 1  # built again, with gradients this time


def test_prior_samples_have_the_moments_of_a_linear_gaussian_hierarchy():
    # p(z_1|z_2) = N(A z_2 + b, diag s^2) with constant s: z_1 ~ N(b, A A^T + diag s^2), Cov(z_1, z_2) = A
    torch.manual_seed(0)
    model = _model(dims=(2, 3), upper=()).double()
    head = model.top_down[0][-1]
    with torch.no_grad():
        A = torch.tensor([[1.0, -0.5, 0.3], [0.2, 0.8, -1.0]], dtype=torch.float64)
        b = torch.tensor([0.5, -1.0], dtype=torch.float64)
        log_var = torch.tensor([-1.0, 0.4], dtype=torch.float64)
        head.weight.zero_()
        head.weight[:2] = A
        head.bias.copy_(torch.cat([b, log_var]))
    z = model.prior().sample((200_000,))
    assert z.shape == (200_000, 5)
    cov = torch.cov(z.T)
    expected = torch.zeros(5, 5, dtype=torch.float64)
    expected[:2, :2] = A @ A.T + torch.diag(log_var.exp())
    expected[:2, 2:], expected[2:, :2], expected[2:, 2:] = A, A.T, torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(z.mean(0), torch.cat([b, torch.zeros(3, dtype=torch.float64)]), atol=0.02, rtol=0)
    torch.testing.assert_close(cov, expected, atol=0.03, rtol=0)


def _exact_log_px(model, x, limit=8.0, n=801, log_top=norm.logpdf):
    """log p(x) = log sum over a grid of (z_1, z_2) of p(x|z_1) p(z_1|z_2) p(z_2) dz_1 dz_2 (1-D latents): the
    prior factors with scipy (p(z_2) = log_top, N(0, 1) by default), p(x|z_1) from the decoder, without the model's
    prior()."""
    axis = torch.linspace(-limit, limit, n, dtype=torch.float64)
    m1, s1 = _split(model.top_down[0](axis[:, None]))  # p(z_1|z_2) for each z_2 on the axis, (n, 1)
    log_p2 = log_top(axis.numpy())  # (n,)
    log_p12 = norm.logpdf(axis.numpy()[None, :], m1, s1)  # (n z_2, n z_1)
    log_prior = torch.from_numpy(log_p12 + log_p2[:, None])
    log_lik = model.decode(axis[:, None, None]).log_prob(x)  # (n z_1, B)
    joint = log_prior[:, :, None] + log_lik[None]  # (z_2, z_1, B)
    return torch.logsumexp(joint.reshape(-1, x.shape[0]), 0) + 2 * math.log(2 * limit / (n - 1))


@pytest.mark.parametrize("inference", MODES)
def test_importance_sampling_agrees_with_quadrature_over_both_layers(inference):
    torch.manual_seed(1)
    model = _randomize(_model(inference, dims=(1, 1), x_dim=3, upper=(4,), likelihood="gaussian").double(), 0.5)
    with torch.no_grad():  # q wider than the posterior: bounded importance weights
        heads = [net[-1] for net in model.up] if inference == "bottom-up" else list(model.heads)
        for head in heads:
            head.bias[1] += 2.0  # the log-variance output
    x = torch.randn(4, 3, dtype=torch.float64)
    with torch.no_grad():
        exact = _exact_log_px(model, x)
        est = log_likelihood(model, x, "is", num_samples=100_000, seed=0)["log_px"]
        on_grid = log_likelihood(model, x, "grid", points_per_dim=601, limit=8.0)["log_px"]
    torch.testing.assert_close(est, exact, atol=0.02, rtol=0)
    torch.testing.assert_close(on_grid, exact, atol=1e-4, rtol=0)
    ais = log_likelihood(model, x, "ais", num_steps=200, num_chains=16, seed=0)["log_px"]
    torch.testing.assert_close(ais, exact, atol=0.1, rtol=0)
    # AIS from q(z|x) over both layers: this q, made wide on purpose, is no nearer the posterior than the prior,
    # so the path needs as many temperatures (errors up to 0.10 at 500, 0.53 at 50)
    from_q = log_likelihood(model, x, "ais", num_steps=500, num_chains=16, seed=0, start="encoder")["log_px"]
    torch.testing.assert_close(from_q, exact, atol=0.15, rtol=0)


def _vamp_components(model):
    """q(z_L|u_k) at the pseudo-inputs, by hand from the top-down networks: means and scales (K, d_L)."""
    h = model.learned_prior.pseudo_inputs()
    for features in model.features:
        h = features(h)
    return _split(model.heads[-1](h))


def test_a_vamp_top_layer_is_the_mixture_of_q_top_at_the_pseudo_inputs():
    torch.manual_seed(0)
    model = _randomize(_model("top-down", prior="vamp", prior_components=3).double())
    z = torch.randn(5, 4, 5, dtype=torch.float64)
    z1, z2 = z[..., :3].numpy(), z[..., 3:].numpy()
    m, s = _vamp_components(model)
    per = np.stack([norm.logpdf(z2, m[k], s[k]).sum(-1) for k in range(3)], -1)
    m1, s1 = _split(model.top_down[0](z[..., 3:]))
    expected = logsumexp(per, -1) - math.log(3) + norm.logpdf(z1, m1, s1).sum(-1)
    np.testing.assert_allclose(model.prior().log_prob(z).detach().numpy(), expected, rtol=1e-10, atol=1e-10)
    draws = model.prior().sample((4000,))  # ancestral draws: z_2 from the mixture, z_1 from p(z_1|z_2)
    assert draws.shape == (4000, 5)
    torch.testing.assert_close(draws[:, 3:].mean(0), torch.from_numpy(m.mean(0)), atol=0.1, rtol=0)


def test_a_mog_top_layer_with_bottom_up_inference():
    torch.manual_seed(0)
    assert float(_model("bottom-up", prior="mog", prior_components=40, init="paper").learned_prior.loc.std()) > 0.5
    model = _randomize(_model("bottom-up", prior="mog", prior_components=4).double())
    prior = model.learned_prior
    assert prior.loc.shape == (4, 2)  # p(z_L) covers the top layer only
    z = torch.randn(6, 5, dtype=torch.float64)
    z1, z2 = z[..., :3].numpy(), z[..., 3:].numpy()
    m, s = prior.loc.detach().numpy(), np.exp(0.5 * prior.log_var.detach().numpy())
    log_w = torch.log_softmax(prior.logits, 0).detach().numpy()
    per = np.stack([norm.logpdf(z2, m[k], s[k]).sum(-1) + log_w[k] for k in range(4)], -1)
    m1, s1 = _split(model.top_down[0](z[..., 3:]))
    expected = logsumexp(per, -1) + norm.logpdf(z1, m1, s1).sum(-1)
    np.testing.assert_allclose(model.prior().log_prob(z).detach().numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("inference", MODES)
@pytest.mark.parametrize("flow", ["planar", "iaf"])
def test_importance_sampling_with_a_flow_on_q_agrees_with_quadrature(inference, flow):
    # the flow transforms the layer q draws first; a wrong log q(z|x) of the chain would bias the IS estimate
    torch.manual_seed(4)
    extra = {"flow_hidden": 6} if flow == "iaf" else {}
    model = _model(inference, dims=(1, 1), x_dim=3, upper=(4,), likelihood="gaussian", flow=flow, flow_steps=2,
                   **extra).double()
    with torch.no_grad():
        for name, p in model.named_parameters():  # a milder flow keeps the importance weights' variance bounded
            p.add_((0.2 if name.startswith("flow") else 0.5) * torch.randn_like(p))
        heads = [net[-1] for net in model.up] if inference == "bottom-up" else list(model.heads)
        for head in heads:
            head.bias[1] += 2.0
    x = torch.randn(4, 3, dtype=torch.float64)
    with torch.no_grad():
        exact = _exact_log_px(model, x)
        est = log_likelihood(model, x, "is", num_samples=100_000, seed=0)["log_px"]
    torch.testing.assert_close(est, exact, atol=0.03, rtol=0)  # a missing log-determinant is off by nats
    q = model.encode(x)
    z = q.rsample((3,))
    assert q.own_samples_only and torch.isfinite(q.log_prob(z)).all()
    with pytest.raises(ValueError, match="only at the samples it drew"):
        q.log_prob(z.clone())


def test_importance_sampling_with_a_vamp_top_layer_agrees_with_quadrature():
    torch.manual_seed(2)
    model = _randomize(_model("top-down", dims=(1, 1), x_dim=3, upper=(4,), likelihood="gaussian", prior="vamp",
                              prior_components=3).double(), 0.5)
    with torch.no_grad():
        for head in model.heads:
            head.bias[1] += 2.0
    m, s = _vamp_components(model)

    def log_top(z):
        return logsumexp(norm.logpdf(z[:, None], m[:, 0], s[:, 0]), -1) - math.log(3)
    x = torch.randn(4, 3, dtype=torch.float64)
    with torch.no_grad():
        exact = _exact_log_px(model, x, log_top=log_top)
        est = log_likelihood(model, x, "is", num_samples=100_000, seed=0)["log_px"]
    torch.testing.assert_close(est, exact, atol=0.02, rtol=0)


@pytest.mark.parametrize("inference", MODES)
@pytest.mark.parametrize("estimator", ["sgvb_a", "iwae"])
def test_estimators_give_finite_gradients_to_every_parameter(inference, estimator):
    torch.manual_seed(0)
    model = _model(inference, dims=(3, 2, 2))
    out = ESTIMATORS[estimator](model, torch.rand(5, 16).round(), num_samples=3)
    assert torch.isfinite(out["elbo"]).all() and out["elbo"].shape == (5,)
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_the_kl_weight_acts_on_the_monte_carlo_kl():
    model = _model("top-down")
    x = torch.rand(5, 16).round()
    torch.manual_seed(4)
    plain = ESTIMATORS["sgvb_a"](model, x, num_samples=2)
    torch.manual_seed(4)
    weighted = ESTIMATORS["sgvb_a"](model, x, num_samples=2, kl_weight=0.25)
    torch.testing.assert_close(weighted["elbo"], plain["elbo"])
    torch.testing.assert_close(weighted["loss"], 0.25 * plain["kl"].mean() - plain["rec"].mean())


def test_refusals_stl_dreg_sgvb_b_and_free_bits():
    model = _model("bottom-up")
    assert "\n" not in NO_RAW
    for estimator, gradient in [("sgvb_a", "stl"), ("iwae", "dreg")]:
        with pytest.raises(ValueError, match="use --gradient standard"):
            ESTIMATORS[estimator](model, torch.rand(3, 16), num_samples=2, gradient=gradient)
    assert resolve_estimator("auto", model) == "sgvb_a" and model.has_analytic_kl is False
    with pytest.raises(ValueError, match="needs an analytic KL"):
        resolve_estimator("sgvb_b", model)
    assert kl_splits(model) is False
    with pytest.raises(ValueError, match="free bits"):
        ESTIMATORS["sgvb_a"](model, torch.rand(3, 16), free_bits=0.1)


@pytest.mark.parametrize("inference", MODES)
def test_training_on_digits_improves_the_elbo(inference):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ds = aevb.data.load("digits")
    x, test = ds.train, ds.test[:300]
    model = models.build(ModelConfig(x_dim=x.shape[1], stochastic_layers=2, latent_dims=(8, 4), hidden=(64,),
                                     upper_hidden=(32,), inference=inference))
    before = aevb.evaluate(model, test, estimator="sgvb_a", num_samples=5)["elbo"]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(300):
        batch = x[torch.randint(0, x.shape[0], (100,))]
        loss = ESTIMATORS["sgvb_a"](model, batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = aevb.evaluate(model, test, estimator="sgvb_a", num_samples=5)["elbo"]
    assert after > before + 10, (before, after)


def test_a_single_layer_is_todays_vae():
    old = {"x_dim": 16, "latent_dim": 3, "hidden": [8], "activation": "tanh", "likelihood": "bernoulli"}
    cfg = models.config_of(old)  # a config.json section written before the option existed
    assert cfg.stochastic_layers == 1 and cfg.latent_dims is None and cfg.inference is None
    torch.manual_seed(0)
    a = models.build(cfg)
    torch.manual_seed(0)
    b = models.build(ModelConfig(x_dim=16, latent_dim=3, hidden=(8,), stochastic_layers=1))
    assert type(a) is type(b) is models.VAE
    assert list(a.state_dict()) == ["prior_loc", "prior_scale", "encoder.0.weight", "encoder.0.bias",
                                    "enc_head.weight", "enc_head.bias", "decoder.0.weight", "decoder.0.bias",
                                    "dec_head.out.weight", "dec_head.out.bias"]
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    x = torch.rand(4, 16)
    torch.manual_seed(1)
    oa = ESTIMATORS["sgvb_b"](a, x)
    torch.manual_seed(1)
    ob = ESTIMATORS["sgvb_b"](b, x)
    assert torch.equal(oa["elbo"], ob["elbo"])


@pytest.mark.parametrize("inference", MODES)
def test_log_variances_are_floored_at_min_log_var(inference):
    # every Gaussian factor of q and p: a log-variance output of -10 becomes the floor -6; "none" leaves it
    torch.manual_seed(0)
    for floor, expected in [(None, -6.0), (-3.5, -3.5), ("none", -10.0)]:
        model = _model(inference, min_log_var=floor)
        heads = [net[-1] for net in model.top_down] + ([net[-1] for net in model.up] if inference == "bottom-up"
                                                       else list(model.heads))
        with torch.no_grad():
            for head in heads:
                d = head.out_features // 2
                head.weight[d:].zero_()
                head.bias[d:] = -10.0
        x = torch.rand(4, 16)
        z = model.encode(x).rsample()
        p_z1 = model.prior().factors(z)[0]
        torch.testing.assert_close(p_z1.base_dist.scale.log() * 2, torch.full((4, 3), expected))
        q_layers = model.encode(x).factors(z)
        if inference == "bottom-up":
            got = q_layers[0].base_dist.scale.log() * 2
            torch.testing.assert_close(got, torch.full((4, 3), expected))
        else:  # q(z_1|z_2, x): the product of two Gaussians of variance e^floor
            got = q_layers[0].base_dist.scale.log() * 2
            torch.testing.assert_close(got, torch.full((4, 3), expected - math.log(2)))


def test_runs_written_before_the_floor_load_without_one():
    section = ModelConfig(x_dim=16, stochastic_layers=2).to_dict()
    assert section["min_log_var"] == -6.0
    del section["min_log_var"]
    assert models.config_of(section).min_log_var == "none"
    again = ModelConfig(x_dim=16, stochastic_layers=2, min_log_var="none")
    assert models.config_of(json.loads(json.dumps(again.to_dict()))) == again
    assert ModelConfig(x_dim=16).min_log_var is None


def test_config_fills_each_layer_and_round_trips():
    cfg = ModelConfig(x_dim=16, latent_dim=5, stochastic_layers=3)
    assert cfg.latent_dims == (5, 5, 5) and cfg.latent_dim == 15 and cfg.upper_hidden == (100, 100)
    assert cfg.inference == "bottom-up"
    again = models.config_of(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert isinstance(models.build(again), HierarchicalVAE)
    cfg = ModelConfig(x_dim=16, stochastic_layers=2, latent_dims=(100, 50))
    assert cfg.latent_dim == 150
    cfg = ModelConfig(x_dim=16, stochastic_layers=2, prior="vamp")  # the VampPrior needs q(z_L|x): top-down
    assert cfg.inference == "top-down" and cfg.prior_components == 500
    flows = [ModelConfig(x_dim=16, stochastic_layers=2, latent_dims=(5, 3), inference=inference, flow="iaf")
             for inference in MODES]
    assert [c.flow_latent_dim for c in flows] == [5, 3]  # the layer q draws first


@pytest.mark.parametrize("kw, message", [
    ({"latent_dims": (3, 2)}, "--latent-dims needs --stochastic-layers"),
    ({"stochastic_layers": 2, "latent_dims": (3, 2, 1)}, "gives 3 sizes"),
    ({"stochastic_layers": 2, "arch": "conv", "image_shape": (4, 4)}, "--arch mlp only"),
    ({"stochastic_layers": 2, "prior": "laplace"}, "normal, mog or vamp prior"),
    ({"stochastic_layers": 2, "prior": "vamp", "inference": "bottom-up"}, "--prior vamp needs --inference top-down"),
    ({"inference": "top-down"}, "--inference needs --stochastic-layers"),
    ({"min_log_var": -6.0}, "--min-log-var needs --stochastic-layers"),
    ({"stochastic_layers": 2, "min_log_var": float("inf")}, "finite number or none"),
])
def test_config_refusals(kw, message):
    with pytest.raises(ValueError, match=message) as e:
        ModelConfig(x_dim=16, **kw)
    assert "\n" not in str(e.value)


def test_a_hierarchical_run_from_the_command_line(tmp_path, capsys):
    from aevb.cli import main
    torch.set_num_threads(1)
    out = tmp_path / "h"
    assert main(["train", "--dataset", "digits", "--stochastic-layers", "2", "--latent-dims", "4,2", "--hidden",
                 "32", "--upper-hidden", "16", "--inference", "top-down", "--samples", "2000", "--out", str(out),
                 "--no-progress"]) == 0
    assert "estimator auto -> sgvb_a" in capsys.readouterr().out
    config = json.loads((out / runs.CONFIG).read_text())
    assert config["train"]["estimator"] == "sgvb_a"
    assert config["model"]["latent_dims"] == [4, 2] and config["model"]["inference"] == "top-down"
    model, _ = aevb.load_run(out)
    assert isinstance(model, HierarchicalVAE) and model.config.latent_dim == 6
    x = aevb.data.load("digits").test[:20]
    first = log_likelihood(model, x, "is", num_samples=50, seed=0)["log_px"]
    again, _ = aevb.load_run(out)
    torch.testing.assert_close(log_likelihood(again, x, "is", num_samples=50, seed=0)["log_px"], first)
    assert torch.isfinite(first).all()
    assert main(["plot", str(out), "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "reconstructions.png").exists()


def test_a_hierarchy_with_a_vamp_prior_from_the_command_line(tmp_path, capsys):
    from aevb.cli import main
    torch.set_num_threads(1)
    out = tmp_path / "hv"
    assert main(["train", "--dataset", "digits", "--stochastic-layers", "2", "--latent-dims", "4,2", "--hidden",
                 "32", "--upper-hidden", "16", "--prior", "vamp", "--prior-components", "6", "--samples", "2000",
                 "--out", str(out), "--no-progress"]) == 0
    assert "estimator auto -> sgvb_a" in capsys.readouterr().out
    config = json.loads((out / runs.CONFIG).read_text())
    assert (config["model"]["prior"], config["model"]["inference"]) == ("vamp", "top-down")
    model, _ = aevb.load_run(out)
    assert model.learned_prior.pseudo_inputs().shape == (6, 64)
    assert main(["eval", str(out), "--diagnostics", "--limit", "100", "--gap-points", "10"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert layers[0]["kl_per_dim"] is not None and layers[1]["kl_per_dim"] is None
    assert "mixture" in layers[1]["kl_per_dim_unavailable"]
    assert main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "<h3>Stochastic layers</h3>" in page and "pseudo" in page.lower()


def test_a_hierarchy_with_an_iaf_from_the_command_line(tmp_path, capsys):
    from aevb.cli import main
    torch.set_num_threads(1)
    out = tmp_path / "hf"
    assert main(["train", "--dataset", "digits", "--stochastic-layers", "2", "--latent-dims", "4,2", "--hidden",
                 "32", "--upper-hidden", "16", "--prior", "vamp", "--prior-components", "6", "--flow", "iaf",
                 "--flow-steps", "2", "--flow-hidden", "8", "--samples", "2000", "--out", str(out),
                 "--no-progress"]) == 0
    capsys.readouterr()
    model, _ = aevb.load_run(out)
    assert model.flow.made[0].inp.in_features == 2 and model.flow_head.out_features == model.flow.n_raw
    assert main(["eval", str(out), "--method", "is", "--k", "50", "--limit", "50"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert math.isfinite(result["nll"]) and result["nll"] <= -result["elbo"] + 1e-6
    assert main(["eval", str(out), "--diagnostics", "--limit", "100", "--gap-points", "10"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert "flow posterior" in layers[1]["kl_per_dim_unavailable"]
    assert main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 0


@pytest.mark.parametrize("args, message", [
    (["--stochastic-layers", "2", "--gradient", "stl"], "use --gradient standard"),
    (["--stochastic-layers", "2", "--free-bits", "0.1"], "free bits"),
    (["--stochastic-layers", "2", "--estimator", "sgvb_b"], "needs an analytic KL"),
    (["--stochastic-layers", "2", "--arch", "conv"], "--arch mlp only"),
    (["--latent-dims", "4,2"], "--latent-dims needs --stochastic-layers"),
    (["--stochastic-layers", "2", "--inference", "sideways"], "invalid choice"),
    (["--stochastic-layers", "2", "--min-log-var", "inf"], "finite log-variance or none"),
])
def test_command_line_refusals_exit_2_in_one_line(tmp_path, capsys, args, message):
    from aevb.cli import main
    torch.set_num_threads(1)
    try:
        code = main(["train", "--dataset", "digits", "--latent-dim", "2", "--hidden", "16", "--samples", "200",
                     "--out", str(tmp_path / "r"), "--no-progress", *args])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert message in err[-1], err
    assert not (tmp_path / "r").exists()  # nothing left behind, also for refusals found once training starts
