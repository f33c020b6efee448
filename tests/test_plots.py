"""Pictures are the decoder's output at the right latent points (Figures 4 and 5)."""
import numpy as np
import torch
from scipy.stats import norm

from aevb import VAE, ModelConfig
from aevb.plots import image_grid, manifold_grid, sample_grid


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
