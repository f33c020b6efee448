"""Pictures from a model or from arrays: image grids, random samples, the 2-D manifold (Figures 4 and 5)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def image_grid(images: np.ndarray, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile (N, H, W) images in [0, 1] into one (rows*(H+pad)+pad, cols*(W+pad)+pad) array, white padding."""
    n, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad), dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    return grid


def save_image(path, array: np.ndarray, scale: int = 2) -> Path:
    """Write a grey-level array in [0, 1] as a PNG (atomically), each pixel repeated `scale` times for legibility."""
    import matplotlib.image

    from .runs import _atomic_write

    big = np.kron(np.clip(array, 0, 1), np.ones((scale, scale), dtype=np.float32))
    _atomic_write(Path(path), lambda tmp: matplotlib.image.imsave(tmp, big, cmap="gray", vmin=0.0, vmax=1.0,
                                                                  format="png"))
    return Path(path)


@torch.no_grad()
def sample_grid(model, image_shape: tuple[int, int], n: int = 100, seed: int = 0) -> np.ndarray:
    """Decoder means of n draws z ~ p(z) (Figure 5), tiled into one array."""
    gen = torch.Generator().manual_seed(seed)
    dz = model.config.latent_dim
    device = next(model.parameters()).device
    z = torch.randn(n, dz, generator=gen).to(device)
    x = model.decode(z).mean.clamp(0, 1).cpu().numpy()
    return image_grid(x.reshape(n, *image_shape))


@torch.no_grad()
def manifold_grid(model, image_shape: tuple[int, int], n: int = 20, dims: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Figure 4: a regular grid on the unit square mapped through the inverse Gaussian CDF into two latent dims.

    Other latent dimensions are held at the prior mean 0.
    """
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    v = torch.special.ndtri(u).float()
    dz = model.config.latent_dim
    device = next(model.parameters()).device
    z = torch.zeros(n, n, dz)
    z[..., dims[0]] = v.flip(0)[:, None]  # first dim grows upward
    z[..., dims[1]] = v[None, :]
    x = model.decode(z.reshape(-1, dz).to(device)).mean.clamp(0, 1).cpu().numpy()
    return image_grid(x.reshape(n * n, *image_shape), ncol=n)
