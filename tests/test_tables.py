"""Pictures of runs on tables (inspect/tables.py): the standardization undone, the histograms and correlations
against numpy, a decoder of known output, and `aevb plot` / `aevb report` on a table; and the image pictures of a
test set too small for eight interpolation pairs."""
import json
import math
import types

import numpy as np
import pytest
import torch
from handmade_run import make_data, make_run

from aevb import VAE, ModelConfig
from aevb.cli import main
from aevb.inspect.plots import run_figures
from aevb.inspect.tables import (MAX_COLUMNS, column_histograms, column_names, correlations, source_units,
                                 table_figures)

SCALER = {"mean": [1000.0, -3.0, 0.5], "std": [50.0, 0.1, 2.0]}
TABLE_CONFIG = {"data": {"image_shape": None, "source": {"kind": "table", "scaler": SCALER,
                                                         "columns": ["price", "temp", "load"]}}}


def test_source_units_undo_the_standardization_and_leave_other_data_alone():
    z = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.25]])
    np.testing.assert_allclose(source_units(z, TABLE_CONFIG), [[1000.0, -3.0, 0.5], [1050.0, -3.2, 1.0]], rtol=1e-15)
    assert source_units(z, TABLE_CONFIG).dtype == np.float64
    np.testing.assert_array_equal(source_units(z, {"data": {"image_shape": None}}), z.numpy())
    assert column_names(TABLE_CONFIG, 3) == ["price", "temp", "load"]
    assert column_names({"data": {}}, 2) == ["column 1", "column 2"]
    assert column_names(TABLE_CONFIG, 4) == [f"column {j}" for j in range(1, 5)]  # names that do not fit


def test_column_histograms_match_numpy_on_shared_bins():
    rng = np.random.default_rng(0)
    data = np.column_stack([rng.normal(5, 2, 4000), np.full(4000, 3.0)])
    draws = np.column_stack([rng.normal(5, 3, 3000), rng.normal(3, 1, 3000)])
    (e0, d0, m0), (e1, d1, m1) = column_histograms(data, draws, bins=20)
    lo, hi = np.percentile(data[:, 0], [0.5, 99.5])
    np.testing.assert_allclose(e0, np.linspace(lo, hi, 21))
    width = e0[1] - e0[0]
    np.testing.assert_allclose(d0, np.histogram(data[:, 0], e0)[0] / (4000 * width))
    np.testing.assert_allclose(m0, np.histogram(draws[:, 0], e0)[0] / (3000 * width))
    # densities of all rows: what falls inside integrates to its share (99% of the data by construction)
    assert d0.sum() * width == pytest.approx(np.mean((data[:, 0] >= lo) & (data[:, 0] <= hi)), abs=1e-12)
    assert d0.sum() * width == pytest.approx(0.99, abs=0.002)
    # a constant column: bins of width 1/20 around its value, all of the data in one of them
    np.testing.assert_allclose(e1[[0, -1]], [2.5, 3.5])
    assert d1.max() * (e1[1] - e1[0]) == pytest.approx(1.0)


def test_correlations_match_numpy_and_a_constant_column_correlates_zero():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(500, 3))
    a[:, 2] = a[:, 0] * 2 + 0.1 * a[:, 1]
    np.testing.assert_allclose(correlations(a), np.corrcoef(a, rowvar=False), atol=1e-12)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = correlations(np.column_stack([a[:, :2], np.ones(500)]))
    np.testing.assert_allclose(c[2], [0, 0, 1])
    np.testing.assert_allclose(c[:2, :2], np.corrcoef(a[:, :2], rowvar=False), atol=1e-12)


def _known_decoder(x_dim: int, mean: list[float], log_var: list[float]) -> VAE:
    """A Gaussian VAE whose decoder ignores z: p(x|z) = N(mean, exp(log_var)) for every z."""
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=x_dim, latent_dim=2, hidden=(8,), likelihood="gaussian"))
    with torch.no_grad():
        model.dec_head.out.weight.zero_()
        model.dec_head.out.bias.copy_(torch.tensor([*mean, *log_var]))
    return model.eval()


def test_table_figures_draw_the_model_in_the_columns_units():
    model = _known_decoder(3, [0.0, 2.0, -1.0], [0.0, math.log(0.25), math.log(4.0)])
    gen = torch.Generator().manual_seed(3)
    ds = types.SimpleNamespace(train=torch.randn(300, 3, generator=gen), test=torch.randn(40, 3, generator=gen),
                               test_labels=None, class_names=None)
    metrics = [{"samples_seen": n, "train_elbo": -5.0 + i, "test_elbo": -5.5 + i} for i, n in enumerate((10, 100))]
    state = torch.get_rng_state()
    figs = table_figures(model, TABLE_CONFIG, ds, metrics, n_draws=20000, seed=4)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left as it was
    assert list(figs) == ["curves", "columns", "correlations", "latent", "kl"]
    axes = figs["columns"][1].axes
    assert [ax.get_title().split(" (")[0] for ax in axes] == ["price", "temp", "load"]
    # the model's draws are N(mean, sigma^2) in standardized units: in the columns' units N(m std + mu, (s std)^2)
    expect_mean, expect_sd = [1000.0, -2.8, -1.5], [50.0, 0.05, 4.0]
    for ax, m, s in zip(axes, expect_mean, expect_sd):
        steps = ax.patches[1]  # the draws' line (the data's histogram is patches[0])
        edges, dens = steps.get_data().edges, steps.get_data().values
        centres = (edges[:-1] + edges[1:]) / 2
        width = edges[1] - edges[0]
        inside = dens.sum() * width
        # the data span their own range; the draws' mass and mean inside it follow the normal law
        from scipy.stats import norm
        lo, hi = edges[0], edges[-1]
        assert inside == pytest.approx(norm.cdf(hi, m, s) - norm.cdf(lo, m, s), abs=0.02)
        off = f" ({1 - inside:.0%} of draws off the axis)" if 1 - inside >= 0.05 else ""
        assert ax.get_title() == ax.get_title().split(" (")[0] + off
        if inside > 0.5:
            mean_in = (centres * dens).sum() * width / inside
            lo_t, hi_t = (lo - m) / s, (hi - m) / s
            exact = m + s * (norm.pdf(lo_t) - norm.pdf(hi_t)) / (norm.cdf(hi_t) - norm.cdf(lo_t))
            assert mean_in == pytest.approx(exact, abs=0.05 * s + width)
    # the draws' correlation matrix: a decoder that ignores z gives independent columns
    draws_corr = figs["correlations"][1].axes[1].get_images()[0].get_array()
    np.testing.assert_allclose(np.asarray(draws_corr), np.eye(3), atol=0.04)


def test_a_wide_table_draws_its_first_columns():
    model = _known_decoder(MAX_COLUMNS + 3, [0.0] * (MAX_COLUMNS + 3), [0.0] * (MAX_COLUMNS + 3))
    ds = types.SimpleNamespace(train=torch.randn(50, MAX_COLUMNS + 3), test=torch.randn(20, MAX_COLUMNS + 3),
                               test_labels=None, class_names=None)
    figs = table_figures(model, {"data": {"image_shape": None}}, ds, [], n_draws=500)
    assert "curves" not in figs  # no evaluations yet
    assert len(figs["columns"][1].axes) == MAX_COLUMNS
    assert f"the first {MAX_COLUMNS} of {MAX_COLUMNS + 3} columns" in figs["columns"][1]._suptitle.get_text()


@pytest.mark.parametrize("command", ["plot", "report"])
def test_plot_and_report_draw_a_table(tmp_path, monkeypatch, capsys, command):
    run = tmp_path / "tabular"
    make_run(run, None, x_dim=7)
    import aevb.cli.inspecting as inspecting
    from aevb import load_run

    monkeypatch.setattr(inspecting, "run_and_data", lambda r, d, device="cpu": (*load_run(r), make_data(7, None)))
    assert main([command, str(run)]) == 0
    if command == "plot":
        names = ["columns", "correlations", "curves", "kl", "latent"]
        assert sorted(p.name for p in (run / "plots").iterdir()) == [f"{n}.png" for n in names]
        assert all((run / "plots" / f"{n}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)
    else:
        page = (run / "report.html").read_text()
        for name in ("curves", "columns", "correlations", "latent", "kl"):
            assert f"id='fig-{name}'" in page
        assert "these data are not images" in page and "aevb-explorer-data" not in page
        assert "<td>test rows</td><td>30</td>" in page
        assert "handmade, aevb&#x27;s defaults and flags (no preset), created" in page and "preset None" not in page


@pytest.mark.parametrize("n_test, rows", [(30, 8), (5, 2), (3, 1)])
def test_interpolations_of_a_small_test_set(tmp_path, n_test, rows):
    model = make_run(tmp_path / "run", (4, 4))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    ds = make_data(16, (4, 4))
    ds.test, ds.test_labels = ds.test[:n_test], ds.test_labels[:n_test]
    grid = run_figures(model, config, ds, [])["interpolations"][1]
    assert grid.shape == (rows * 5 + 1, 12 * 5 + 1)  # rows of 12 4-pixel images, 1-pixel padding


def test_pictures_of_a_test_split_of_one_datapoint_name_the_split():
    model = _known_decoder(3, [0.0] * 3, [0.0] * 3)
    ds = types.SimpleNamespace(train=torch.randn(50, 3), test=torch.randn(1, 3), test_labels=None, class_names=None)
    message = r"the test split holds 1 datapoint\(s\) and the pictures of the latent space need at least 2"
    with pytest.raises(ValueError, match=message):
        table_figures(model, TABLE_CONFIG, ds, [])
    with pytest.raises(ValueError, match=message):
        run_figures(model, {"data": {"image_shape": [1, 3]}}, ds, [])
