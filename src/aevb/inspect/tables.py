"""Pictures of a run whose data are not images (a table, or vectors of no image shape): the learning curves, each
column's distribution in the data against the model's draws, the two correlation matrices, the latent space and KL
per dimension.

A table's rows are standardized for training (each column by the training rows' mean and standard deviation,
`data.source.scaler` in config.json); the column pictures undo that, so their axes are in the columns' own units.
"""
from __future__ import annotations

import numpy as np
import torch

from .diagnostics import active_units, kl_per_dim, posterior_means
from .plots import (LABEL_COLORS, check_image, check_test_split, class_names, display_scale, kl_figure,
                    latent_figure, learning_curves_figure, run_figures)

MAX_COLUMNS = 16  # columns drawn in the column picture (the first ones); the correlations show them all


def source_units(x, config: dict) -> np.ndarray:
    """Rows (N, D) in the model's units as float64 in the data's own units: the table's standardization undone
    (x std + mean); other data are returned as they are."""
    a = x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)
    scaler = ((config.get("data") or {}).get("source") or {}).get("scaler")
    if scaler is None:
        return a
    return a * np.asarray(scaler["std"], dtype=np.float64) + np.asarray(scaler["mean"], dtype=np.float64)


def column_names(config: dict, d: int) -> list[str]:
    """The table's column names (config.json `data.source.columns`), else "column 1" ... "column D"."""
    names = ((config.get("data") or {}).get("source") or {}).get("columns") or []
    return [str(v) for v in names] if len(names) == d else [f"column {j + 1}" for j in range(d)]


def column_histograms(data: np.ndarray, draws: np.ndarray, bins: int = 30) -> list[tuple[np.ndarray, ...]]:
    """Per column: (edges, density of the data, density of the draws) on shared bins spanning the data's 0.5th to
    99.5th percentile (a constant column: +-0.5 around its value); values outside fall in no bin."""
    out = []
    for j in range(data.shape[1]):
        lo, hi = np.percentile(data[:, j], [0.5, 99.5])
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
        width = edges[1] - edges[0]
        dens = [np.histogram(v[:, j], bins=edges)[0] / (len(v) * width) for v in (data, draws)]
        out.append((edges, *dens))
    return out


def correlations(rows: np.ndarray) -> np.ndarray:
    """Pearson correlation matrix of the columns (D, D); a constant column correlates 0 with the others, 1 with
    itself."""
    c = np.atleast_2d(np.corrcoef(rows, rowvar=False))
    c = np.nan_to_num(c, nan=0.0)
    np.fill_diagonal(c, 1.0)
    return c


def columns_figure(data: np.ndarray, draws: np.ndarray, names: list[str]):
    """Small histograms, one per column (the first MAX_COLUMNS): the data filled, the draws as a line."""
    from matplotlib.figure import Figure

    d = min(data.shape[1], MAX_COLUMNS)
    ncol = min(4, d)
    nrow = -(-d // ncol)
    fig = Figure(figsize=(2.6 * ncol, 2.0 * nrow + 0.6), layout="constrained")
    hists = column_histograms(data[:, :d], draws[:, :d])
    for j, (edges, h_data, h_draws) in enumerate(hists):
        ax = fig.add_subplot(nrow, ncol, j + 1)
        ax.stairs(h_data, edges, fill=True, color=LABEL_COLORS[0], alpha=0.35, label="data")
        ax.stairs(h_draws, edges, color=LABEL_COLORS[1], linewidth=1.5, label="model")
        outside = 1.0 - h_draws.sum() * (edges[1] - edges[0])  # the draws' share beyond the rows' range
        ax.set_title(names[j] + (f" ({outside:.0%} of draws off the axis)" if outside >= 0.05 else ""), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
        if j == 0:
            ax.legend(fontsize=7)
    more = f" (the first {d} of {data.shape[1]} columns)" if data.shape[1] > d else ""
    fig.suptitle(f"Each column: {len(data):,} training rows against {len(draws):,} draws x ~ p(x|z), z ~ p(z){more}",
                 fontsize=9)
    return fig


def correlations_figure(data: np.ndarray, draws: np.ndarray, names: list[str]):
    """The columns' correlation matrices side by side: the data's and the draws'."""
    from matplotlib.figure import Figure

    cd, cm = correlations(data), correlations(draws)
    d = len(cd)
    fig = Figure(figsize=(9.5, 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, c, title in ((axes[0], cd, "training rows"), (axes[1], cm, "model draws")):
        im = ax.imshow(c, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(title, fontsize=9)
        if d <= 20:  # names on both x axes, on the left y axis only
            ax.set_xticks(range(d), names, rotation=90, fontsize=7)
            ax.set_yticks(range(d), names if ax is axes[0] else [], fontsize=7)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    fig.suptitle(f"Correlations of the columns; largest difference {np.abs(cd - cm).max():.2f}", fontsize=10)
    return fig


@torch.no_grad()
def table_figures(model, config: dict, ds, metrics: list[dict], *, n_draws: int = 5000, n_rows: int = 10_000,
                  n_latent: int = 2000, seed: int = 0, threshold: float = 0.01) -> dict[str, tuple[str, object]]:
    """Every picture of a run on data without images: name -> (caption, Figure). The columns and correlations
    compare the first `n_rows` training rows with `n_draws` draws x ~ p(x|z), z ~ p(z) (torch's generator seeded
    with `seed`, restored afterwards); the latent space and KL use the test split."""
    device = next(model.parameters()).device
    x = check_test_split(ds.test).to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        draws = source_units(model.sample(n_draws, mean=False), config)
    data = source_units(ds.train[:n_rows], config)
    names = column_names(config, data.shape[1])
    table = ((config.get("data") or {}).get("source") or {}).get("scaler") is not None
    units = "the columns' own units" if table else "the data's units"
    out: dict[str, tuple[str, object]] = {}
    if metrics:
        out["curves"] = ("Train and test ELBO against datapoints evaluated (log axis).",
                         learning_curves_figure(metrics))
    out["columns"] = (f"Each column's histogram in {units}: the training rows (filled) against draws from the "
                      "model (line).", columns_figure(data, draws, names))
    if data.shape[1] > 1:
        out["correlations"] = ("Correlation matrices of the columns: the training rows and the model's draws.",
                               correlations_figure(data, draws, names))
    means = posterior_means(model, x)
    var, _ = active_units(means, threshold)
    labels = ds.test_labels[:n_latent].numpy() if ds.test_labels is not None else None
    out["latent"] = ("Posterior means of the test rows" + ("" if means.shape[1] == 2 else
                     " (first two principal components)") + ".",
                     latent_figure(means[:n_latent].cpu().numpy(), labels, class_names(config, ds)))
    try:
        kl = kl_per_dim(model, x).cpu().numpy()
        out["kl"] = ("KL per latent dimension on the test set; active units in colour.",
                     kl_figure(kl, var.cpu().numpy(), threshold))
    except ValueError:
        pass  # a posterior that does not factorize over dimensions has no per-dimension KL
    return out


def run_pictures(model, config: dict, ds, metrics: list[dict], *, seed: int = 0) -> tuple[dict, int]:
    """Every picture of a run, of either kind, and the pixel repetition of its image grids: `plots.run_figures` and
    `display_scale` for images, `table_figures` (repetition 1) for data without an `image_shape`.

    Raises:
        ValueError: an `image_shape` that is not a picture aevb can draw.
    """
    shape = config["data"].get("image_shape")
    if shape is None:
        return table_figures(model, config, ds, metrics, seed=seed), 1
    return run_figures(model, config, ds, metrics, seed=seed), display_scale(check_image(shape))
