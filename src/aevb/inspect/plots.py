"""Pictures from a model or from arrays: image grids, random samples, the 2-D manifold (Figures 4 and 5), learning
curves, reconstructions, latent traversals and interpolations, the latent space coloured by label, KL per dimension.

A data row is flat: D = C*H*W values in [0, 1] in C-major order, `image_shape` being [H, W] for one channel and
[C, H, W] for C channels (C = 1 or 3), so `x.reshape(-1, *image_shape)` is NCHW. `as_images` turns rows into
pictures for display, (N, H, W) grey or (N, H, W, 3) RGB; tabular data (`image_shape` None) have none (`is_image`).

Grids are float arrays in [0, 1], (rows, columns) grey or (rows, columns, 3) RGB; figures are matplotlib Figures
drawn without pyplot; `png_bytes` turns either into PNG bytes, and every file is written atomically.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from .. import runs
from .diagnostics import active_units, kl_per_dim, posterior_means
from .layers import decoder_latent_dim

LABEL_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                "#17becf")  # matplotlib's tab10, also used by the report's explorer


def is_image(image_shape) -> bool:
    """Whether a data set's `image_shape` describes pictures aevb can draw: [H, W], or [C, H, W] with C = 1 or 3.
    None (tabular data) is not."""
    if image_shape is None:
        return False
    shape = tuple(image_shape)
    return len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3))


def check_image(image_shape) -> tuple[int, ...]:
    """`image_shape` as a tuple of ints.

    Raises:
        ValueError: (one line) the data have no images (None), or a shape that is not [H, W] or [C, H, W] with
            C = 1 or 3.
    """
    if image_shape is None:
        raise ValueError("the run has no images (its data are tabular, image_shape is null): nothing to draw")
    if not is_image(image_shape):
        raise ValueError(f"cannot draw images of shape {list(image_shape)}: expected [H, W] or [C, H, W] with C = 1 "
                         "or 3")
    return tuple(int(v) for v in image_shape)


def as_images(rows, image_shape) -> np.ndarray:
    """Flat rows (N, D) (numpy or torch; D = C*H*W, C-major) as pictures: (N, H, W) for one channel, (N, H, W, 3)
    for RGB (channels last, as image arrays are displayed)."""
    shape = check_image(image_shape)
    a = rows.detach().cpu().numpy() if torch.is_tensor(rows) else np.asarray(rows)
    if len(shape) == 2 or shape[0] == 1:
        return a.reshape(-1, *shape[-2:])
    return a.reshape(-1, *shape).transpose(0, 2, 3, 1)


def image_grid(images: np.ndarray, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile (N, H, W) grey or (N, H, W, 3) RGB images in [0, 1] into one (rows*(H+pad)+pad, cols*(W+pad)+pad)
    array (with the channel axis last for RGB), white padding."""
    n, h, w = images.shape[:3]
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, *images.shape[3:]), dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    return grid


def grid_png(array: np.ndarray, scale: int = 2) -> bytes:
    """PNG bytes (RGBA, opaque) of a grey-level (H, W) or RGB (H, W, 3) array in [0, 1], each pixel repeated `scale`
    times for legibility; values become round(255 v). Written by Pillow, so that saving a picture does not import
    matplotlib."""
    from PIL import Image

    levels = np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)
    if levels.ndim == 2:
        levels = np.repeat(levels[..., None], 3, axis=2)
    big = np.repeat(np.repeat(levels, scale, 0), scale, 1)
    rgba = np.concatenate([big, np.full((*big.shape[:2], 1), 255, dtype=np.uint8)], axis=2)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="png")
    return buf.getvalue()


def figure_png(fig, dpi: int = 100) -> bytes:
    """PNG bytes of a matplotlib Figure (drawn with the Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def png_bytes(picture, scale: int = 2) -> bytes:
    """PNG bytes of a grid array or a Figure."""
    return grid_png(picture, scale) if isinstance(picture, np.ndarray) else figure_png(picture)


def display_scale(image_shape) -> int:
    """Pixel repetition that draws each image about 56 pixels across its longer side (2 for MNIST's 28x28, 7 for
    8x8 digits, 2 for 32x32); images larger than 56 pixels are drawn as they are (1)."""
    longest = max(check_image(image_shape)[-2:])
    return max(2, 56 // longest) if longest <= 56 else 1


def save_image(path, array: np.ndarray, scale: int = 2) -> Path:
    """Write a grey-level (H, W) or RGB (H, W, 3) array in [0, 1] as a PNG (atomically), each pixel repeated
    `scale` times."""
    runs.write_bytes(Path(path), grid_png(array, scale))
    return Path(path)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def decode_mean(model, z: torch.Tensor) -> np.ndarray:
    """Decoder means at z (N, Dz), clamped to [0, 1] for display: (N, D) float32 array."""
    return model.decode(z.to(_device(model))).mean.clamp(0, 1).cpu().numpy()


@torch.no_grad()
def sample_grid(model, image_shape, n: int = 100, seed: int = 0) -> np.ndarray:
    """Decoder means of n draws z ~ p(z) (Figure 5), tiled into one array; `image_shape` [H, W] or [C, H, W]."""
    c = model.config
    if getattr(c, "prior", "normal") == "normal" and getattr(c, "stochastic_layers", 1) == 1:  # N(0, I), as before
        z = torch.randn(n, model.config.latent_dim, generator=torch.Generator().manual_seed(seed))
    else:  # any other family, or a learned prior (mog, vamp): draws from the model's own p(z)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            z = model.prior().sample((n,)).cpu()
    return image_grid(as_images(decode_mean(model, z), image_shape))


@torch.no_grad()
def pseudo_inputs_grid(model, image_shape, n: int = 100) -> np.ndarray:
    """The VampPrior's first n pseudo-inputs u_k (`--prior vamp`) as pictures, clamped to [0, 1].

    Raises:
        ValueError: the model's prior has no pseudo-inputs.
    """
    u = getattr(getattr(model, "learned_prior", None), "pseudo_inputs", None)
    if u is None:
        raise ValueError("only the VampPrior (--prior vamp) has pseudo-inputs")
    return image_grid(as_images(u()[:n].clamp(0, 1), image_shape))


@torch.no_grad()
def manifold_grid(model, image_shape, n: int = 20, dims: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Figure 4: a regular grid on the unit square mapped through the inverse Gaussian CDF into two latent dims.

    Other latent dimensions are held at the prior mean 0.
    """
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    v = torch.special.ndtri(u).float()
    dz = model.config.latent_dim
    z = torch.zeros(n, n, dz)
    z[..., dims[0]] = v.flip(0)[:, None]  # first dim grows upward
    z[..., dims[1]] = v[None, :]
    return image_grid(as_images(decode_mean(model, z.reshape(-1, dz)), image_shape), ncol=n)


@torch.no_grad()
def reconstruct(model, x: torch.Tensor) -> np.ndarray:
    """Posterior reconstructions: decoder means at the posterior means E_q[z|x], clamped to [0, 1]: (N, D)."""
    return decode_mean(model, posterior_means(model, x.to(_device(model))))


@torch.no_grad()
def reconstruction_grid(model, x: torch.Tensor, image_shape, ncol: int = 10) -> np.ndarray:
    """Inputs and their reconstructions in alternating rows: row 2k holds inputs, row 2k+1 their reconstructions."""
    n = x.shape[0] - x.shape[0] % ncol or x.shape[0]
    x = x[:n]
    rec = reconstruct(model, x)
    rows = []
    for start in range(0, n, ncol):
        rows += [x[start:start + ncol].cpu().numpy(), rec[start:start + ncol]]
    return image_grid(as_images(np.concatenate(rows), image_shape), ncol=min(ncol, n))


@torch.no_grad()
def traversal_grid(model, base: torch.Tensor, dims, image_shape,
                   values: torch.Tensor | None = None) -> np.ndarray:
    """One row per latent dimension j in `dims`: decoder means at `base` (Dz,) with z_j set to each of `values`
    (default 11 values from -3 to 3)."""
    values = torch.linspace(-3, 3, 11) if values is None else values
    dims = list(dims)
    z = base.detach().cpu().float().expand(len(dims), len(values), -1).clone()
    for row, j in enumerate(dims):
        z[row, :, j] = values
    x = decode_mean(model, z.reshape(-1, z.shape[-1]))
    return image_grid(as_images(x, image_shape), ncol=len(values))


@torch.no_grad()
def interpolation_grid(model, x_a: torch.Tensor, x_b: torch.Tensor, image_shape,
                       steps: int = 10) -> np.ndarray:
    """One row per pair: input a, decoder means along the straight line between E_q[z|a] and E_q[z|b] (`steps`
    points, ends included), input b."""
    za, zb = posterior_means(model, x_a.to(_device(model))).cpu(), posterior_means(model, x_b.to(_device(model))).cpu()
    t = torch.linspace(0, 1, steps)[None, :, None]
    z = za[:, None] + t * (zb - za)[:, None]  # (P, steps, Dz)
    dec = decode_mean(model, z.reshape(-1, z.shape[-1])).reshape(len(za), steps, -1)
    rows = np.concatenate([x_a.cpu().numpy()[:, None], dec, x_b.cpu().numpy()[:, None]], axis=1)
    return image_grid(as_images(rows.reshape(-1, rows.shape[-1]), image_shape), ncol=steps + 2)


def project_2d(means: np.ndarray, dims: tuple[int, int] | None = None) -> tuple[np.ndarray, list[str]]:
    """(N, Dz) -> (N, 2): the latent coordinates for Dz = 2 (or the two `dims`), else the first two principal
    components of the posterior means. Returns the points and the axis labels."""
    if means.shape[1] == 2 and dims is None:
        return means, ["z[0]", "z[1]"]
    if dims is not None:
        return means[:, list(dims)], [f"z[{dims[0]}]", f"z[{dims[1]}]"]
    centred = means - means.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    share = s**2 / max((s**2).sum(), 1e-30)
    return centred @ vt[:2].T, [f"PC 1 ({share[0]:.0%} of variance)", f"PC 2 ({share[1]:.0%} of variance)"]


def label_name(k: int, class_names=None) -> str:
    """A label's name in legends: its class name where the data set has them (folder data sets), else the number."""
    return str(class_names[k]) if class_names is not None and 0 <= k < len(class_names) else str(k)


def latent_figure(means: np.ndarray, labels: np.ndarray | None, class_names=None):
    """Scatter of the posterior means coloured by label: direct for Dz = 2, a PCA projection otherwise. The legend
    names each label by `class_names[label]` when given."""
    from matplotlib.figure import Figure

    pts, axis_labels = project_2d(means)
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.6, color=LABEL_COLORS[0], linewidths=0)
    else:
        for k in np.unique(labels):
            sel = labels == k
            ax.scatter(pts[sel, 0], pts[sel, 1], s=3, alpha=0.6, color=LABEL_COLORS[int(k) % 10], linewidths=0,
                       label=label_name(int(k), class_names))
        ax.legend(markerscale=4, fontsize=8, loc="upper right", title="class" if class_names else "label",
                  title_fontsize=8)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    how = "posterior means" if means.shape[1] == 2 else f"posterior means, Nz = {means.shape[1]}, projected by PCA"
    ax.set_title(f"Latent space ({how})", fontsize=10)
    return fig


def kl_figure(kl: np.ndarray, variance: np.ndarray, threshold: float):
    """Bars of E_x KL(q(z_j|x) || p(z_j)) per dimension, sorted, active units (Cov of the mean > threshold)
    in colour, inactive in grey."""
    from matplotlib.figure import Figure

    order = np.argsort(-kl)
    active = variance > threshold
    fig = Figure(figsize=(max(5.0, min(14.0, 0.25 * len(kl) + 2)), 3.2))
    ax = fig.add_subplot()
    colors = [LABEL_COLORS[0] if active[j] else "#bbbbbb" for j in order]
    ax.bar(np.arange(len(kl)), kl[order], color=colors)
    if len(kl) <= 40:
        ax.set_xticks(np.arange(len(kl)), [str(j) for j in order], fontsize=7)
    ax.set_xlabel("latent dimension (sorted by KL)")
    ax.set_ylabel("KL (nats)")
    ax.set_title(f"KL per dimension: {int(active.sum())} of {len(kl)} units active (Cov_x E[z_j|x] > {threshold:g}, "
                 f"in colour); total {kl.sum():.2f} nats", fontsize=9)
    return fig


def learning_curves_figure(metrics: list[dict]):
    """Train and test ELBO against datapoints evaluated (log x axis), from metrics.jsonl records."""
    from matplotlib.figure import Figure

    if not metrics:
        raise ValueError("no evaluations in metrics.jsonl to plot")
    n = np.array([r["samples_seen"] for r in metrics], dtype=np.float64)
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    for key, label, style in (("train_elbo", "train", "o-"), ("test_elbo", "test", "s--")):
        ax.plot(n, [r[key] for r in metrics], style, ms=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("datapoints evaluated")
    ax.set_ylabel("ELBO per datapoint (nats)")
    last = metrics[-1]
    lo = min(min(r["train_elbo"], r["test_elbo"]) for r in metrics[len(metrics) // 3:])
    hi = max(max(r["train_elbo"], r["test_elbo"]) for r in metrics)
    ax.set_ylim(lo - 0.1 * (hi - lo + 1), hi + 0.05 * (hi - lo + 1))  # the early, very low points leave the frame
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(f"Learning curves: test ELBO {last['test_elbo']:.2f} at {int(last['samples_seen']):,}", fontsize=10)
    return fig


def check_test_split(x):
    """The test split, which the pictures of the latent space need at least two datapoints of (a ValueError)."""
    if x.shape[0] < 2:
        raise ValueError(f"the test split holds {x.shape[0]} datapoint(s) and the pictures of the latent space need "
                         "at least 2: hold out more (--test-fraction, --test-data)")
    return x


def top_dims(variance: np.ndarray, k: int) -> list[int]:
    """The k dimensions whose posterior means vary most over the data (the most active units)."""
    return [int(j) for j in np.argsort(-variance)[:k]]


@torch.no_grad()
def run_figures(model, config: dict, ds, metrics: list[dict], *, n_latent: int = 2000, seed: int = 0,
                threshold: float = 0.01) -> dict[str, tuple[str, object]]:
    """Every picture of a trained run: name -> (caption, grid array or Figure).

    Uses the test split: reconstructions of its first images, its first `n_latent` points for the latent space,
    the whole split for KL per dimension and active units. The latent space's legend uses the config's
    `data.class_names` when present.

    Raises:
        ValueError: the run's data have no images (`data.image_shape` null).
    """
    shape = check_image(config["data"].get("image_shape"))
    dz = model.config.latent_dim
    device = _device(model)
    x = check_test_split(ds.test).to(device)
    means_all = posterior_means(model, x)
    var, _ = active_units(means_all, threshold)
    var = var.cpu().numpy()
    out: dict[str, tuple[str, object]] = {}
    if metrics:
        out["curves"] = ("Train and test ELBO against datapoints evaluated (log axis).",
                         learning_curves_figure(metrics))
    out["reconstructions"] = ("Rows 1, 3, 5, ...: test images; the row below each: its reconstruction, the decoder "
                              "mean at the posterior mean.", reconstruction_grid(model, x[:50], shape))
    out["samples"] = ("Decoder means of 100 draws z ~ p(z).", sample_grid(model, shape, seed=seed))
    if getattr(model.config, "prior", None) == "vamp":
        out["pseudo_inputs"] = ("The VampPrior's pseudo-inputs u_k: p(z) = (1/K) sum_k q(z|u_k).",
                                pseudo_inputs_grid(model, shape))
    if dz == 2:
        out["manifold"] = ("The learned 2-D manifold: decoder means on the inverse-Gaussian-CDF grid (Figure 4).",
                           manifold_grid(model, shape))
    else:
        reach = decoder_latent_dim(model)  # a hierarchy's decoder reads z_1 only: traverse its dimensions
        dims = top_dims(var[:reach], min(10, reach))
        base = means_all[0].cpu()
        what = "latent dimension" if reach == dz else "dimension of z_1, the decoder's input"
        out["traversals"] = (f"Latent traversals from the first test image's posterior mean: one row per {what} "
                             f"({', '.join(map(str, dims))}, the most active first), z_j from -3 to 3.",
                             traversal_grid(model, base, dims, shape))
        pairs = min(8, x.shape[0] // 2)  # a test set of fewer than 16 images gives fewer rows, one image none
        if pairs:
            gen = torch.Generator().manual_seed(seed)
            idx = torch.randperm(x.shape[0], generator=gen)[:2 * pairs].to(device)
            out["interpolations"] = ("Interpolations between the posterior means of pairs of test images (inputs at "
                                     "both ends).", interpolation_grid(model, x[idx[:pairs]], x[idx[pairs:]], shape))
    labels = ds.test_labels[:n_latent].numpy() if ds.test_labels is not None else None
    out["latent"] = ("Posterior means of test images coloured by label" + ("" if dz == 2 else
                     " (first two principal components)") + ".",
                     latent_figure(means_all[:n_latent].cpu().numpy(), labels, class_names(config, ds)))
    try:
        kl = kl_per_dim(model, x).cpu().numpy()
        out["kl"] = ("KL per latent dimension on the test set; active units in colour.", kl_figure(kl, var, threshold))
    except ValueError:
        pass  # a posterior that does not factorize over dimensions has no per-dimension KL
    return out


def class_names(config: dict, ds=None) -> list[str] | None:
    """The class names of a run's labels (index = label): the config's `data.class_names`, else the data set's
    `class_names` attribute, else None."""
    names = config.get("data", {}).get("class_names") or getattr(ds, "class_names", None)
    return [str(v) for v in names] if names else None


def write_figures(figures: dict[str, tuple[str, object]], out_dir, scale: int = 2) -> list[Path]:
    """Render every picture to PNG first (grids with each pixel repeated `scale` times), then write each as
    OUT_DIR/<name>.png atomically; returns the paths."""
    rendered = {name: png_bytes(pic, scale) for name, (_, pic) in figures.items()}
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise runs.RunError(f"cannot write to the output folder {out_dir}: {e.strerror or e}") from None
    paths = []
    for name, data in rendered.items():
        runs.write_bytes(out_dir / f"{name}.png", data)
        paths.append(out_dir / f"{name}.png")
    return paths
