"""Pictures are the decoder's output at the right latent points (Figures 4 and 5)."""
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm

from aevb import VAE, ModelConfig
from aevb.inspect.plots import image_grid, manifold_grid, sample_grid


def test_image_grid_places_tiles():
    imgs = np.arange(6 * 2 * 3, dtype=np.float32).reshape(6, 2, 3) / 36
    grid = image_grid(imgs, ncol=3, pad=1)
    assert grid.shape == (2 * 3 + 1, 3 * 4 + 1)
    np.testing.assert_array_equal(grid[1:3, 1:4], imgs[0])
    np.testing.assert_array_equal(grid[4:6, 9:12], imgs[5])
    assert grid[0].min() == 1.0  # white padding


def test_manifold_tiles_decode_inverse_cdf_points():
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=6, latent_dim=2, hidden=(5,)))
    n = 4
    grid = manifold_grid(model, (2, 3), n=n)
    u = (np.arange(n) + 0.5) / n
    row, col = 0, 2  # top row holds the largest value of the first latent dimension
    z = torch.tensor([[norm.ppf(u[n - 1 - row]), norm.ppf(u[col])]], dtype=torch.float32)
    expected = model.decode(z).mean.detach().numpy().reshape(2, 3)
    np.testing.assert_allclose(grid[1 + row * 3: 3 + row * 3, 1 + col * 4: 4 + col * 4], expected, rtol=1e-5)


def test_sample_grid_is_decoder_mean_of_prior_draws():
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=4, latent_dim=3, hidden=(5,)))
    grid = sample_grid(model, (2, 2), n=4, seed=7)
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(7))
    first = model.decode(z).mean[0].detach().numpy().reshape(2, 2)
    np.testing.assert_allclose(grid[1:3, 1:3], first, rtol=1e-5)


# -- issue 6: curves, reconstructions, traversals, interpolations, latent space, KL per dimension, `aevb plot` --

import pytest

from aevb.cli import main
from aevb.inspect.plots import (interpolation_grid, kl_figure, learning_curves_figure, project_2d,
                                reconstruction_grid, traversal_grid)


def _tile(grid, row, col, shape, pad=1):
    h, w = shape
    return grid[pad + row * (h + pad): pad + row * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w]


@pytest.fixture
def small_vae():
    torch.manual_seed(0)
    return VAE(ModelConfig(x_dim=6, latent_dim=3, hidden=(5,))).eval()


def test_reconstructions_alternate_with_inputs(small_vae):
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(0))
    grid = reconstruction_grid(small_vae, x, (2, 3), ncol=2)
    with torch.no_grad():
        rec = small_vae.decode(small_vae.encode(x).mean).mean.numpy()
    np.testing.assert_allclose(_tile(grid, 0, 1, (2, 3)), x[1].numpy().reshape(2, 3))
    np.testing.assert_allclose(_tile(grid, 1, 1, (2, 3)), rec[1].reshape(2, 3), rtol=1e-6)
    np.testing.assert_allclose(_tile(grid, 3, 0, (2, 3)), rec[2].reshape(2, 3), rtol=1e-6)


def test_traversal_tiles_set_one_dimension(small_vae):
    base = torch.tensor([0.3, -0.2, 0.1])
    values = torch.tensor([-1.0, 0.0, 2.0])
    grid = traversal_grid(small_vae, base, [2, 0], (2, 3), values)
    z = base.clone()
    z[0] = 2.0  # row 1 traverses dimension 0; column 2 holds the value 2
    with torch.no_grad():
        expected = small_vae.decode(z[None]).mean[0].numpy().reshape(2, 3)
    np.testing.assert_allclose(_tile(grid, 1, 2, (2, 3)), expected, rtol=1e-6)


def test_interpolation_ends_at_the_inputs_and_passes_the_midpoint(small_vae):
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 6, generator=g), torch.rand(2, 6, generator=g)
    grid = interpolation_grid(small_vae, a, b, (2, 3), steps=5)
    np.testing.assert_allclose(_tile(grid, 1, 0, (2, 3)), a[1].numpy().reshape(2, 3))
    np.testing.assert_allclose(_tile(grid, 1, 6, (2, 3)), b[1].numpy().reshape(2, 3))
    with torch.no_grad():
        mid = (small_vae.encode(a).mean + small_vae.encode(b).mean) / 2
        expected = small_vae.decode(mid).mean[1].numpy().reshape(2, 3)
    np.testing.assert_allclose(_tile(grid, 1, 3, (2, 3)), expected, rtol=1e-5)


def test_projection_is_pca_beyond_two_dimensions():
    g = np.random.default_rng(0)
    means = g.normal(size=(500, 4)) * np.array([3.0, 0.5, 2.0, 0.1])
    pts, labels = project_2d(means)
    eig = np.sort(np.linalg.eigvalsh(np.cov(means.T)))[::-1]
    np.testing.assert_allclose(pts.var(0, ddof=1), eig[:2], rtol=1e-10)
    assert labels[0].startswith("PC 1")
    two, labels2 = project_2d(means[:, :2])
    np.testing.assert_array_equal(two, means[:, :2])
    assert labels2 == ["z[0]", "z[1]"]


def test_kl_bars_are_sorted_and_coloured_by_activity():
    kl = np.array([0.5, 2.0, 0.0, 1.0])
    fig = kl_figure(kl, np.array([0.5, 1.0, 0.001, 0.2]), 0.01)
    bars = fig.axes[0].patches
    assert [round(b.get_height(), 6) for b in bars] == [2.0, 1.0, 0.5, 0.0]
    grey = [b.get_facecolor()[:3] == (0xbb / 255,) * 3 for b in bars]
    assert grey == [False, False, False, True]
    assert "3 of 4 units active" in fig.axes[0].get_title()


def test_learning_curves_plot_the_records():
    metrics = [{"samples_seen": n, "train_elbo": -100 + i, "test_elbo": -101 + i} for i, n in
               enumerate([100, 1000, 10000])]
    ax = learning_curves_figure(metrics).axes[0]
    assert ax.get_xscale() == "log"
    train, test = ax.get_lines()
    np.testing.assert_array_equal(train.get_xdata(), [100, 1000, 10000])
    np.testing.assert_array_equal(test.get_ydata(), [-101, -100, -99])
    with pytest.raises(ValueError, match="no evaluations"):
        learning_curves_figure([])


@pytest.mark.parametrize("latent_dim, names", [
    (2, ["curves", "reconstructions", "samples", "manifold", "latent", "kl"]),
    (3, ["curves", "reconstructions", "samples", "traversals", "interpolations", "latent", "kl"]),
])
def test_plot_command_writes_every_picture(tmp_path, capsys, latent_dim, names):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--latent-dim", str(latent_dim), "--hidden", "16", "--samples",
                 "3000", "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["plot", str(run), "--out", str(tmp_path / "p")]) == 0
    printed = capsys.readouterr().out.split()
    assert [Path(p).stem for p in printed] == names
    for p in printed:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_command_bad_run(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "none")]) == 2
    assert "not found" in capsys.readouterr().err
