"""Flow posteriors (models/flows.py): planar flows and inverse autoregressive flows after a diagonal Gaussian.

Log-determinants are checked against autograd Jacobians (slogdet) per datapoint, and log q(z|x) of a sample
against the base density minus the log-determinant of the whole map computed independently; the IAF's Jacobians
are triangular in each step's order; planar steps satisfy w.u^ >= -1; estimators, IS against grid quadrature, the
run folder, the refusals and the diagnostics.
"""
import json

import pytest
import torch
from torch.autograd.functional import jacobian

import aevb
from aevb import ModelConfig, models, runs
from aevb.estimators import ESTIMATORS, resolve_estimator
from aevb.inspect import diagnostics
from aevb.marginal import log_likelihood
from aevb.models.flows import FOREIGN, made_masks, planar_step, planar_u_hat


def _model(flow, *, arch="mlp", latent_dim=3, x_dim=16, steps=None, **kw):
    shape = {"image_shape": (4, 4)} if x_dim == 16 else {}
    cfg = ModelConfig(x_dim=x_dim, latent_dim=latent_dim, hidden=(8,), flow=flow, flow_steps=steps, arch=arch,
                      conv_widths=(4,), **shape, **kw)
    return models.build(cfg)


def _randomize(model):
    """Larger random flow weights than the near-identity start, so that the Jacobians are far from diagonal."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _whole_map_log_q(model, x, seed):
    """log q(z|x) for the draw z that q.rsample((2,)) makes with this seed, computed without the flow's own
    log-determinants: the base density of z0 minus log |det dz/dz0| from autograd, per sample and datapoint."""
    raw = model.encoder_params(x).detach()
    q = model.posterior(raw)
    torch.manual_seed(seed)
    z = q.rsample((2,))
    log_q = q.log_prob(z)
    base, params = model.base_posterior(raw), raw[..., model.family.n_out(3):]
    torch.manual_seed(seed)
    z0 = base.rsample((2,))
    expected = torch.empty_like(log_q)
    for s in range(2):
        for b in range(x.shape[0]):
            J = jacobian(lambda v: model.flow(v, params[b])[0], z0[s, b])
            expected[s, b] = base.log_prob(z0)[s, b] - torch.linalg.slogdet(J)[1]
            torch.testing.assert_close(model.flow(z0[s, b], params[b])[0], z[s, b])
    return log_q, expected


@pytest.mark.parametrize("flow", ["planar", "iaf"])
def test_log_q_is_the_base_density_minus_the_autograd_log_determinant(flow):
    torch.manual_seed(0)
    model = _randomize(_model(flow, steps=3).double())
    x = torch.rand(4, 16, dtype=torch.float64)
    log_q, expected = _whole_map_log_q(model, x, seed=5)
    torch.testing.assert_close(log_q, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("flow", ["planar", "iaf"])
def test_each_steps_log_determinant_against_autograd(flow):
    torch.manual_seed(0)
    model = _randomize(_model(flow, steps=3).double())
    raw = model.encoder_params(torch.rand(5, 16, dtype=torch.float64)).detach()
    params = raw[..., 6:]
    z0 = torch.randn(5, 3, dtype=torch.float64)
    steps = model.flow(z0, params, every=True)
    inputs = [z0] + [z for z, _ in steps[:-1]]
    for t, ((z_out, log_det), z_in) in enumerate(zip(steps, inputs)):
        for b in range(5):
            J = jacobian(lambda v: _one_step(model, flow, t, v, params[b]), z_in[b])
            torch.testing.assert_close(_one_step(model, flow, t, z_in[b], params[b]), z_out[b])
            torch.testing.assert_close(log_det[b], torch.linalg.slogdet(J)[1], rtol=1e-10, atol=1e-10)
            if flow == "iaf":  # autoregressive: lower-triangular in step 0's order, upper in the reversed one
                part = torch.triu(J, 1) if t % 2 == 0 else torch.tril(J, -1)
                assert torch.count_nonzero(part) == 0, (t, J)
                assert torch.count_nonzero(J - torch.diag_embed(J.diagonal())) > 0  # not trivially diagonal


def _one_step(model, flow, t, z, params):
    if flow == "planar":
        u, w, b = model.flow.split(params)[t]
        return planar_step(z, u, w, b)[0]
    m, s = model.flow.made[t](z, params)
    return torch.sigmoid(s) * z + torch.sigmoid(-s) * m


def test_made_masks_are_autoregressive_in_each_order():
    for reverse in (False, True):
        first, middle, last = made_masks(4, 10, reverse)
        reach = (last @ middle @ first) > 0  # output i reaches input j
        order = torch.arange(4).flip(0) if reverse else torch.arange(4)
        for i in range(4):
            for j in range(4):
                assert bool(reach[i, j]) == bool(order[j] < order[i]), (reverse, i, j)


def test_planar_steps_are_invertible():
    # u^ = u + (m(w.u) - w.u) w / |w|^2 gives w.u^ = m(w.u) = -1 + softplus(w.u) > -1, even for u against w
    torch.manual_seed(0)
    w = torch.randn(1000, 5, dtype=torch.float64)
    u = torch.cat([-7 * w[:500], torch.randn(500, 5, dtype=torch.float64) * 3])
    b = torch.randn(1000, 1, dtype=torch.float64)
    wu = (w * u).sum(-1)
    assert (wu[:500] < -1).all()  # the raw parameters violate the condition
    u_hat, _ = planar_u_hat(u, w)
    wu_hat = (w * u_hat).sum(-1)
    assert (wu_hat >= -1 - 1e-12).all()  # up to the rounding of |w.u| ~ 35
    torch.testing.assert_close(wu_hat, torch.nn.functional.softplus(wu) - 1, rtol=0, atol=1e-12)
    z = torch.cat([torch.randn(999, 5, dtype=torch.float64), torch.zeros(1, 5, dtype=torch.float64)])
    b[-1] = 0.0  # tanh' = 1 exactly at a point where w.u^ is -1 + 1e-15: the log-det is still finite
    f, log_det = planar_step(z, u, w, b)
    torch.testing.assert_close(f, z + u_hat * torch.tanh((w * z).sum(-1, keepdim=True) + b))
    assert torch.isfinite(log_det).all()
    # invertible: along w the map is t -> t + (w.u^) tanh(t + b), increasing when w.u^ > -1
    t = torch.linspace(-6, 6, 2001, dtype=torch.float64)
    for k in range(0, 1000, 97):
        along = t[:, None] * w[k] / w[k].square().sum()
        proj = (w[k] * planar_step(along, u[k], w[k], b[k])[0]).sum(-1)
        assert (proj.diff() > 0).all()


def test_options_defaults_and_refusals():
    assert ModelConfig(x_dim=4, flow="planar").flow_steps == 10
    cfg = ModelConfig(x_dim=4, flow="iaf")
    assert cfg.flow_steps == 4 and cfg.flow_hidden == 128
    for kw, message in [({"flow": "planar", "posterior": "laplace"}, "--flow planar needs --posterior normal"),
                        ({"flow_steps": 3}, "--flow-steps needs --flow planar or iaf"),
                        ({"flow": "planar", "flow_hidden": 8}, "--flow-hidden needs --flow iaf"),
                        ({"flow": "glow"}, "unknown flow 'glow'"),
                        ({"flow": "iaf", "flow_steps": 0}, "flow_steps must be >= 1")]:
        with pytest.raises(ValueError, match=message):
            ModelConfig(x_dim=4, **kw)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("flow", ["planar", "iaf"])
def test_the_encoder_grows_by_what_the_flow_takes(arch, flow):
    model = _model(flow, arch=arch, steps=2, **({"flow_hidden": 7} if flow == "iaf" else {}))
    extra = 2 * (2 * 3 + 1) if flow == "planar" else 7
    assert model.enc_head.out_features == 6 + extra
    q = model.encode(torch.rand(5, 16))
    z = q.rsample((4,))
    assert z.shape == (4, 5, 3) and q.log_prob(z).shape == (4, 5) and q.batch_shape == (5,)
    assert q.sample().shape == (5, 3) and q.location.shape == (5, 3)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("flow, prior", [("planar", None), ("iaf", None), ("iaf", "vamp"), ("planar", "mog")])
@pytest.mark.parametrize("estimator, kw", [("sgvb_a", {}), ("iwae", {"num_samples": 4})])
def test_estimators_give_finite_gradients_to_every_parameter(arch, flow, prior, estimator, kw):
    torch.manual_seed(0)
    extra = {"prior": prior, "prior_components": 4} if prior else {}
    model = _model(flow, arch=arch, **extra)
    assert model.has_analytic_kl is False and resolve_estimator("auto", model) == "sgvb_a"
    out = ESTIMATORS[estimator](model, torch.rand(6, 16), **kw)
    assert torch.isfinite(out["loss"]) and out["elbo"].shape == (6,)
    out["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert all(".body." in n for n in missing), missing  # conv: a new residual block's zero convolution
    assert all(p.grad.abs().sum() > 0 for p in model.flow.parameters())


@pytest.mark.parametrize("estimator, gradient", [("sgvb_a", "stl"), ("iwae", "dreg")])
def test_stl_and_dreg_are_refused_in_one_line(estimator, gradient):
    model = _model("iaf")
    with pytest.raises(ValueError, match="use --gradient standard") as e:
        ESTIMATORS[estimator](model, torch.rand(3, 16), num_samples=2, gradient=gradient)
    assert "\n" not in str(e.value)


def test_log_prob_is_exact_only_for_its_own_draws():
    torch.manual_seed(0)
    q = _model("iaf").encode(torch.rand(3, 16))
    with pytest.raises(ValueError, match="only at the samples it drew itself"):
        q.log_prob(torch.zeros(3, 3))
    z = q.sample((2,))
    assert q.log_prob(z).shape == (2, 3)
    with pytest.raises(ValueError):
        q.log_prob(z.clone())  # the same numbers, but not the draw: refused rather than guessed
    assert "\n" not in FOREIGN


@pytest.mark.parametrize("flow, prior", [("planar", "vamp"), ("iaf", "vamp"), ("iaf", None)])
def test_importance_sampling_agrees_with_grid_quadrature(flow, prior):
    # a 2-D latent, a flow posterior as the proposal: IS with 100,000 samples against quadrature on a 401^2 grid
    torch.manual_seed(2)
    extra = {"prior": prior, "prior_components": 3} if prior else {}
    model = _model(flow, latent_dim=2, x_dim=5, likelihood="gaussian", steps=2, **extra).double()
    with torch.no_grad():
        # IS converges fast when q is wider than the posterior (bounded weights): base log-variances of +1. And
        # planar parameters of order 1: u^ = u + (m(w.u) - w.u) w / |w|^2 is large where |w| is small (w.u^ = m(w.u)
        # ~ -0.3 whatever |w| is), and an untrained encoder's small outputs shift q far from the posterior (seen:
        # IS -9.6 at K = 5e4, -8.6 at 5e5, against -6.83 by quadrature)
        model.enc_head.bias[2:4] += 1.0
        if flow == "planar":
            model.enc_head.weight[4:] *= 0.2
            model.enc_head.bias[4:] = torch.randn(model.enc_head.bias[4:].shape, dtype=torch.float64)
    x = torch.randn(3, 5, dtype=torch.float64)
    q = model.encode(x)
    z = q.rsample((100,))
    assert (q.log_prob(z) - q.base.log_prob(z)).abs().mean() > 0.1  # the flow changes q
    exact = log_likelihood(model, x, "grid", points_per_dim=401, limit=8.0)["log_px"]
    est = log_likelihood(model, x, "is", num_samples=100000, seed=0)["log_px"]
    # seeds 0-2 at K = 5e4 were within 0.021 of the quadrature; a wrong log q would be off by tenths of a nat
    torch.testing.assert_close(est, exact, rtol=0, atol=0.03)


def test_hmc_chains_start_at_flow_samples():
    # the paper's HMC estimator starts its chains at encoder draws (q.sample()), which a flow posterior makes; the
    # estimator itself is biased upward (Jensen, a density fitted to 50 chain states: +0.25 nats seen here), so
    # this checks the path, with a loose tolerance
    torch.manual_seed(2)
    model = _model("iaf", latent_dim=2, x_dim=5, likelihood="gaussian", steps=2).double()
    x = torch.randn(2, 5, dtype=torch.float64)
    exact = log_likelihood(model, x, "grid", points_per_dim=401, limit=8.0)["log_px"]
    hmc = log_likelihood(model, x, "hmc", num_samples=100, seed=0)["log_px"]
    assert torch.isfinite(hmc).all()
    torch.testing.assert_close(hmc, exact, rtol=0, atol=0.5)


@pytest.mark.parametrize("flow", ["planar", "iaf"])
def test_save_and_load_round_trip(flow, tmp_path):
    torch.manual_seed(0)
    model = _randomize(_model(flow, prior="vamp", prior_components=4)).eval()
    section = json.loads(json.dumps(model.config.to_dict()))
    assert section["flow"] == flow and models.config_of(section) == model.config
    runs.write_tensors(tmp_path / runs.WEIGHTS, model.state_dict())
    runs.write_json(tmp_path / runs.CONFIG, {"format_version": runs.FORMAT_VERSION, "model": section, "train": {},
                                             "data": {}})
    loaded, _ = aevb.load_run(tmp_path)
    x = torch.rand(3, 16)
    torch.testing.assert_close(loaded.encode(x).location, model.encode(x).location, rtol=0, atol=0)
    torch.manual_seed(1)
    q = loaded.encode(x)
    a = q.log_prob(q.rsample((2,)))
    torch.manual_seed(1)
    q = model.encode(x)
    torch.testing.assert_close(a, q.log_prob(q.rsample((2,))), rtol=0, atol=0)


def test_diagnostics_degrade_with_a_message():
    torch.manual_seed(0)
    model = _model("planar").eval()
    x = torch.rand(20, 16)
    assert diagnostics.posterior_means(model, x).shape == (20, 3)
    with pytest.raises(ValueError, match="a flow posterior does not"):
        diagnostics.kl_per_dim(model, x)
    with pytest.raises(ValueError, match="which a flow posterior cannot evaluate"):
        diagnostics.mutual_information(model, x)
    out = diagnostics.diagnose(model, x, gap_points=5, gap_steps=3, gap_is_samples=20)
    assert out["kl_per_dim"] is None and out["mutual_information"] is None
    assert "flow" in out["kl_per_dim_unavailable"] and "flow" in out["mutual_information_unavailable"]
    assert out["amortization"]["elbo_optimized"] == out["amortization"]["elbo_optimized"]  # not NaN


def test_an_iaf_run_from_the_command_line(tmp_path, capsys):
    # aevb train --flow iaf: auto -> sgvb_a in config.json; plot draws every figure; --gradient stl is refused
    from aevb.cli import main
    torch.set_num_threads(1)
    out = tmp_path / "iaf"
    assert main(["train", "--dataset", "digits", "--latent-dim", "3", "--hidden", "16", "--samples", "1000",
                 "--flow", "iaf", "--flow-steps", "2", "--flow-hidden", "16", "--out", str(out),
                 "--no-progress"]) == 0
    assert "estimator auto -> sgvb_a" in capsys.readouterr().out
    config = json.loads((out / runs.CONFIG).read_text())
    assert config["train"]["estimator"] == "sgvb_a" and config["model"]["flow"] == "iaf"
    assert main(["plot", str(out), "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "reconstructions.png").exists()
    assert main(["train", "--dataset", "digits", "--latent-dim", "3", "--hidden", "16", "--samples", "200",
                 "--flow", "planar", "--gradient", "stl", "--out", str(tmp_path / "stl"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "use --gradient standard" in err
