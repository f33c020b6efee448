"""Per-layer diagnostics of hierarchical VAEs (inspect/layers.layer_diagnostics): each layer's KL and KL per
dimension against the closed form on all-linear two-layer models whose q and p are known Gaussians, active units
against the exact count on models with units forced inactive, the layers' KLs against estimator A's KL on the
same draws, and the command line and report."""
import json
import math

import numpy as np
import pytest
import torch

import aevb
from aevb import ModelConfig, models
from aevb.estimators import sgvb_a
from aevb.inspect.diagnostics import diagnose, kl_per_dim
from aevb.inspect.layers import layer_diagnostics
from aevb.inspect.report import _latent_summary, decoder_spec, explorer_data


def _linear_model(inference, dims=(2, 1), x_dim=5, seed=0):
    """A two-layer model with no hidden layers: every conditional of q and p is a Gaussian with a linear mean."""
    cfg = ModelConfig(x_dim=x_dim, stochastic_layers=len(dims), latent_dims=dims, hidden=(), upper_hidden=(),
                      inference=inference)
    model = models.build(cfg).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.6 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _gauss(linear, inp):
    """[mean, variance] of the Gaussian a head gives at `inp`."""
    mu, log_var = linear(inp).chunk(2, -1)
    return mu, log_var.exp()


def _kl_normal(mq, vq, mp, vp):
    return 0.5 * (torch.log(vp / vq) + (vq + (mq - mp) ** 2) / vp - 1)


def test_bottom_up_layer_kls_equal_the_closed_form():
    torch.manual_seed(0)
    model = _linear_model("bottom-up")
    with torch.no_grad():  # constant variances of q(z_2|z_1) and p(z_1|z_2): the joint stays Gaussian
        model.up[1][-1].weight[1:].zero_()
        model.top_down[0][-1].weight[2:].zero_()
    x = torch.rand(4, 5, dtype=torch.float64)
    rows = layer_diagnostics(model, x, samples=40000, seed=1)
    with torch.no_grad():
        up1, up2, down = model.up[0][-1], model.up[1][-1], model.top_down[0][-1]
        m1, v1 = _gauss(up1, x)  # q(z_1|x) = N(m1, diag v1)
        a, c = up2.weight[:1], up2.bias[:1]  # q(z_2|z_1) mean a z_1 + c, variance v2
        v2 = up2.bias[1:].exp()
        d, e = down.weight[:2], down.bias[:2]  # p(z_1|z_2) mean d z_2 + e, variance vp
        vp = down.bias[2:].exp()
        # layer 2: E_q(z_1|x) KL(q(z_2|z_1) || N(0, 1)), the mean a z_1 + c Gaussian with variance a v1 a^T
        m2 = m1 @ a.T + c
        e_m2_sq = m2.square() + (v1 * a.square()).sum(-1, keepdim=True)
        kl2 = (0.5 * (e_m2_sq + v2 - 1 - v2.log())).sum(-1)
        # layer 1: -H(q(z_1|x)) - E_q log N(z_1; d z_2 + e, vp); r = z_1 - d z_2 - e = (I - d a) z_1 - d (c + eps2) - e
        ident = torch.eye(2, dtype=torch.float64)
        t = ident - d @ a
        r_mean = m1 @ t.T - (c @ d.T + e)
        r_var = torch.stack([torch.diagonal(t @ torch.diag(v) @ t.T + v2 * d @ d.T) for v in v1])
        entropy = 0.5 * (1 + (2 * math.pi * v1).log()).sum(-1)
        cross = (0.5 * (2 * math.pi * vp).log() + (r_var + r_mean.square()) / (2 * vp)).sum(-1)
        kl1 = cross - entropy
    assert [r["layer"] for r in rows] == [1, 2] and [r["latent_dim"] for r in rows] == [2, 1]
    assert (rows[0]["q"], rows[0]["p"], rows[1]["q"], rows[1]["p"]) == ("q(z_1|x)", "p(z_1|z_2)", "q(z_2|z_1)",
                                                                        "p(z_2)")
    assert rows[0]["kl"] == pytest.approx(float(kl1.mean()), abs=0.02)
    assert rows[1]["kl"] == pytest.approx(float(kl2.mean()), abs=0.02)
    # per dimension only where p's factor is conditioned on what q drew before: the top layer, not z_1
    assert rows[0]["kl_per_dim"] is None and "z_2" in rows[0]["kl_per_dim_unavailable"]
    assert rows[1]["kl_per_dim"] == pytest.approx([rows[1]["kl"]], abs=1e-6)
    with pytest.raises(ValueError, match="layer 1"):
        kl_per_dim(model, x)


def test_top_down_layer_kls_and_kls_per_dimension_equal_the_closed_form():
    torch.manual_seed(0)
    model = _linear_model("top-down", dims=(2, 2))
    with torch.no_grad():
        model.top_down[0][-1].weight[2:].zero_()  # constant variances of p(z_1|z_2): the closed form stays Gaussian
    x = torch.rand(3, 5, dtype=torch.float64)
    rows = layer_diagnostics(model, x, samples=40000, seed=2)
    with torch.no_grad():
        mh1, vh1 = _gauss(model.heads[0], x)  # the data's Gaussian of z_1
        m2, v2 = _gauss(model.heads[1], x)  # q(z_2|x)
        down = model.top_down[0][-1]
        d, e = down.weight[:2], down.bias[:2]
        lvp = down.bias[2:]  # p(z_1|z_2): mean d z_2 + e, log variance lvp (no weight on z_2: zeroed above)
    with torch.no_grad():
        vp = lvp.exp()
        kl2 = _kl_normal(m2, v2, torch.zeros_like(m2), torch.ones_like(v2))  # (B, 2)
        # q(z_1|z_2, x): precision-weighted product of N(mh1, vh1) and N(d z_2 + e, vp)
        vq = 1 / (1 / vh1 + 1 / vp)
        wa = vq / vh1  # weight of the data's mean; mq - mp = wa (mh1 - (d z_2 + e))
        diff_mean = wa * (mh1 - (m2 @ d.T + e))
        diff_var = wa.square() * (v2 @ d.T.square())
        kl1 = 0.5 * (torch.log(vp / vq) + (vq + diff_mean.square() + diff_var) / vp - 1)  # (B, 2)
    assert (rows[0]["q"], rows[0]["p"], rows[1]["q"]) == ("q(z_1|z_2, x)", "p(z_1|z_2)", "q(z_2|x)")
    np.testing.assert_allclose(rows[0]["kl_per_dim"], kl1.mean(0).numpy(), atol=0.01)
    np.testing.assert_allclose(rows[1]["kl_per_dim"], kl2.mean(0).numpy(), atol=0.01)
    for r in rows:
        assert sum(r["kl_per_dim"]) == pytest.approx(r["kl"], abs=1e-5)
    concatenated = kl_per_dim(model, x, layer_samples=40000)
    assert concatenated.shape == (4,)


@pytest.mark.parametrize("inference", ["bottom-up", "top-down"])
def test_layer_kls_add_up_to_estimator_a_kl_on_the_same_draws(inference):
    torch.manual_seed(0)
    cfg = ModelConfig(x_dim=12, stochastic_layers=3, latent_dims=(4, 3, 2), hidden=(8,), upper_hidden=(6,),
                      inference=inference)
    model = models.build(cfg).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.rand(30, 12, dtype=torch.float64)
    rows = layer_diagnostics(model, x, samples=7, seed=5)
    torch.manual_seed(5)
    with torch.no_grad():
        kl_a = float(sgvb_a(model, x, num_samples=7)["kl"].mean())
    assert sum(r["kl"] for r in rows) == pytest.approx(kl_a, rel=1e-10)
    out = diagnose(model, x, gap_points=0, seed=5)
    assert out["latent_dim"] == 9 and [r["latent_dim"] for r in out["layers"]] == [4, 3, 2]
    assert out["active_units"] == sum(r["active_units"] for r in out["layers"])
    assert out["mutual_information"] is None and "hierarchical" in out["mutual_information_unavailable"]


def test_active_units_count_the_units_forced_inactive_exactly():
    torch.manual_seed(0)
    cfg = ModelConfig(x_dim=10, stochastic_layers=2, latent_dims=(5, 4), hidden=(16,), upper_hidden=(8,))
    model = models.build(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
        model.up[0][-1].weight[[0, 3]] = 0.0  # E_q[z_1j|x] constant for j = 0, 3
        model.up[1][-1].weight[[1, 2, 3]] = 0.0  # q(z_2j|z_1) mean constant for j = 1, 2, 3
    x = torch.rand(500, 10)
    rows = layer_diagnostics(model, x, samples=16)
    assert [r["active_units"] for r in rows] == [3, 1]
    for r, dead in zip(rows, ([0, 3], [1, 2, 3])):
        assert [r["posterior_mean_variance"][j] for j in dead] == [0.0] * len(dead)
        assert all(v > 0.01 for j, v in enumerate(r["posterior_mean_variance"]) if j not in dead)
    out = diagnose(model, x, gap_points=5)
    assert out["active_units"] == 4 and out["amortization"] is None


def test_the_monte_carlo_noise_of_upper_means_is_not_counted_as_activity():
    """E_q[z_2|x] = 2 E[z_1|x] + c is the same for every x (q(z_1|x) ignores x), while each draw's conditional mean
    2 z_1 + c varies: without the correction 64 draws would show a variance of about 4 / 64 over x."""
    model = _linear_model("bottom-up", dims=(1, 1), x_dim=3)
    with torch.no_grad():
        up1, up2 = model.up[0][-1], model.up[1][-1]
        up1.weight.zero_()
        up1.bias.copy_(torch.tensor([0.5, 0.0]))  # q(z_1|x) = N(0.5, 1)
        up2.weight.copy_(torch.tensor([[2.0], [0.0]]))
    x = torch.rand(4000, 3, dtype=torch.float64)
    rows = layer_diagnostics(model, x, samples=64)
    assert rows[0]["posterior_mean_variance"] == [0.0]
    assert rows[1]["posterior_mean_variance"][0] < 0.005 and rows[1]["active_units"] == 0


def test_layer_diagnostics_refuse_a_model_without_layers():
    model = aevb.VAE(ModelConfig(x_dim=4, latent_dim=2, hidden=(3,)))
    with pytest.raises(ValueError, match="hierarchical"):
        layer_diagnostics(model, torch.rand(5, 4))


def test_the_explorer_of_a_hierarchy_moves_z_1_the_decoders_input():
    torch.manual_seed(0)
    cfg = ModelConfig(x_dim=12, stochastic_layers=2, latent_dims=(3, 2), hidden=(8,), upper_hidden=(4,),
                      activation="tanh")
    model = models.build(cfg)
    data = explorer_data(model, torch.rand(20, 12), None, (3, 4))
    assert data["latent_dim"] == 3 and all(0 <= d < 3 for d in data["dims"]) and len(data["extent"]) == 3
    spec = decoder_spec(model)
    z1 = torch.randn(3)

    def f32(b64):
        import base64
        return torch.from_numpy(np.frombuffer(base64.b64decode(b64), dtype="<f4").copy())

    h = z1
    for layer in spec["layers"]:
        h = torch.tanh(f32(layer["W"]).reshape(layer["n_out"], layer["n_in"]) @ h + f32(layer["b"]))
    head = spec["head"]
    mean = torch.sigmoid(f32(head["W"]).reshape(head["n_out"], head["n_in"]) @ h + f32(head["b"]))
    with torch.no_grad():
        expected = model.decode(torch.cat([z1, torch.randn(2)])).mean  # z_2 does not reach p(x|z_1)
    torch.testing.assert_close(mean, expected, rtol=1e-5, atol=1e-6)


def test_the_report_names_a_mixture_priors_dimension_sum_for_what_it_is():
    torch.manual_seed(0)
    model = models.build(ModelConfig(x_dim=6, latent_dim=2, hidden=(4,), prior="vamp", prior_components=3))
    summary, table = _latent_summary(model, torch.rand(20, 6))
    labels = [k for k, _ in summary]
    assert table == "" and not any(k.startswith("KL(q(z|x) || p(z))") for k in labels)
    assert any("prior's marginals" in k for k in labels)


def test_eval_diagnostics_and_the_report_of_a_hierarchical_run(tmp_path, capsys):
    from aevb.cli import main
    torch.set_num_threads(1)
    out = tmp_path / "h"
    assert main(["train", "--dataset", "digits", "--stochastic-layers", "2", "--latent-dims", "6,3", "--hidden",
                 "32", "--upper-hidden", "16", "--samples", "2000", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--diagnostics", "--limit", "200", "--gap-points", "10"]) == 0
    result = json.loads(capsys.readouterr().out)
    layers = result["layers"]
    assert [(r["layer"], r["latent_dim"]) for r in layers] == [(1, 6), (2, 3)]
    assert result["kl_total"] == pytest.approx(sum(r["kl"] for r in layers))
    assert result["active_units"] == sum(r["active_units"] for r in layers)
    assert len(result["posterior_mean_variance"]) == 9
    assert result["amortization"] is None and "hierarchical" in result["amortization_unavailable"]
    assert main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "<h3>Stochastic layers</h3>" in page and "q(z_2|z_1)" in page and "p(z_1|z_2)" in page
    assert "two dimensions of z_1, the decoder&#x27;s input" in page or "two dimensions of z_1" in page


def test_a_hierarchys_traversals_move_the_dimensions_the_decoder_reads():
    from aevb.inspect.plots import run_figures
    torch.manual_seed(0)
    cfg = ModelConfig(x_dim=64, stochastic_layers=2, latent_dims=(3, 4), hidden=(8,), upper_hidden=(4,))
    model = models.build(cfg)
    with torch.no_grad():
        model.up[1][-1].weight.mul_(50.0)  # z_2's posterior means vary most: they must still not be traversed
    ds = aevb.data.load("digits")
    figures = run_figures(model, {"data": {"image_shape": [8, 8]}}, ds, [])
    caption, grid = figures["traversals"]
    assert "dimension of z_1" in caption
    assert grid.shape[0] == 3 * 9 + 1  # three rows of 8x8 tiles in 1-pixel borders: z_1's three dimensions
    for r in range(3):
        tiles = [grid[1 + r * 9:9 + r * 9, 1 + c * 9:9 + c * 9] for c in range(11)]
        assert max(float(np.abs(t - tiles[0]).max()) for t in tiles) > 0  # every row moves the picture
