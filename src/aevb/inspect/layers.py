"""Per-layer diagnostics of hierarchical VAEs (models/hierarchical.py: q(z|x) and p(z) are `Chain`s of L Gaussian
layers, z = [z_1, ..., z_L] concatenated). Per layer l:
active units with E_q[z_l|x] estimated from S ancestral draws of q (the first layer q draws has its exact mean;
every later layer the average of its conditional mean given each draw of the layer it is conditioned on), the
variance over x corrected for the Monte Carlo noise of that average; the layer's KL
E_x E_q[log q(z_l|...) - log p(z_l|z_{l+1})] by Monte Carlo on the same draws (the layers' KLs add up to
E_q[log q(z|x) - log p(z)] on those draws, estimator A's KL); and its KL per dimension where q's and p's
factors of z_l are conditioned on layers q draws before z_l (then each term is an expected KL between one-
dimensional Gaussians), the per-dimension terms of the same Monte Carlo sum.
"""
from __future__ import annotations

import torch

from .diagnostics import ACTIVE_THRESHOLD, _batches

LAYER_SAMPLES = 64  # ancestral draws of q per datapoint


def is_layered(dist) -> bool:
    """Whether `dist` is a hierarchical model's q(z|x) or p(z): a distribution over the concatenation of L > 1
    layers with per-layer factors (models.hierarchical.Chain)."""
    return callable(getattr(dist, "factors", None)) and len(getattr(dist, "dims", ())) > 1


def decoder_latent_dim(model) -> int:
    """How many leading coordinates of z the decoder reads: all of them, except for a hierarchical VAE, whose
    decoder p(x|z_1) reads z_1, the first d_1 (traversals and the report's explorer move those only)."""
    dims = getattr(model, "dims", ())
    return int(dims[0]) if len(dims) > 1 else int(model.config.latent_dim)


def _given(chain, layer: int, inference: str | None, which: str) -> str:
    """The factor's name, e.g. q(z_1|x), q(z_1|z_2, x), p(z_1|z_2), p(z_2)."""
    parent = chain.parent(layer)
    if which == "p":
        cond = "" if parent is None else f"|z_{parent + 1}"
    else:
        cond = "|x" if parent is None else f"|z_{parent + 1}" + (", x" if inference == "top-down" else "")
    return f"{which}(z_{layer + 1}{cond})"


def _whole(dist, which: str) -> str | None:
    """Why a layer's factor has no per-dimension log-density (a template of q, p and prior), or None for a diagonal
    Gaussian: a flow q (--flow) or a learned mixture p(z_L) (--prior mog|vamp)."""
    if hasattr(dist, "base_dist"):
        return None
    if which == "q":
        return "{q} is a flow posterior, whose log-density does not split by dimension"
    return "{p} is a mixture (--prior {prior}), whose log-density does not split by dimension"


def _point(dist) -> torch.Tensor:
    """A factor's mean, or a flow's location (the flow of its base mean), per datapoint."""
    return dist.location if hasattr(type(dist), "location") else dist.mean


def _kl_splits_in_layer(q, prior, layer: int) -> bool:
    """Whether p's factor of the layer is conditioned only on layers q draws before it, so that the layer's KL is
    the expectation over q of a KL between diagonal Gaussians, one per dimension."""
    parent = prior.parent(layer)
    return parent is None or q.order.index(parent) < q.order.index(layer)


@torch.no_grad()
def layer_diagnostics(model, x: torch.Tensor, *, samples: int = LAYER_SAMPLES, threshold: float = ACTIVE_THRESHOLD,
                      batch_size: int = 1000, seed: int = 0) -> list[dict]:
    """Per stochastic layer of a hierarchical model (z = [z_1, ..., z_L]), from `samples` ancestral draws
    z ~ q(z|x) per datapoint (seeded by `seed`, in batches of `batch_size` datapoints):

    - `posterior_mean_variance`: Var_x(E_q[z_lj|x]) per unit, and `active_units`, the units above `threshold`.
      E_q[z_l|x] is exact for the layer q draws first; for every other layer it is the mean over the draws of the
      conditional mean of q(z_l|z_parent) at each draw of its parent layer, and the variance over x of these
      estimates, less the mean over x of their Monte Carlo variance (the within-x variance over the draws / S),
      is an unbiased estimate of Var_x(E_q[z_lj|x]) (clamped at 0).
    - `kl`: E_x E_q[log q(z_l|...) - log p(z_l|z_{l+1})], the mean over x and draws; the layers' values add up to
      the mean of log q(z|x) - log p(z) at the same draws (estimator A's KL with `samples` samples).
    - `kl_per_dim`: where p's factor of z_l is conditioned only on layers q draws before z_l, the same mean
      taken per dimension (each term then estimates E_q KL(q(z_lj|...) || p(z_lj|...)) >= 0, and they add up to
      `kl`); else None, with `kl_per_dim_unavailable` saying why.

    Returns a list of L JSON-ready dicts, z_1 first, each also with `layer` (1-based), `latent_dim`, `q` and `p`
    (the factors' names, e.g. q(z_1|x), p(z_1|z_2)) and `kl_active` (the KL of the active units, where per-dimension
    KLs exist).

    Raises:
        ValueError: a model whose q(z|x) is not layered, fewer than 2 datapoints, or samples < 1.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    n = x.shape[0]
    if n < 2:
        raise ValueError("active units need at least 2 datapoints")
    prior = model.prior()
    inference = getattr(getattr(model, "config", None), "inference", None)
    q = None
    means, noise, kls = None, None, None
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        for xb in _batches(x, batch_size):
            q = model.encode(xb)
            if not (is_layered(q) and is_layered(prior)):
                raise ValueError("per-layer diagnostics need a hierarchical model (--stochastic-layers 2 or more)")
            dims = q.dims
            if means is None:
                means = [[] for _ in dims]
                noise = [torch.zeros(d, dtype=torch.float64, device=x.device) for d in dims]
                kls = [0.0] * len(dims)  # tensors (d,) once summed; (1,) where the log-densities do not split
                why = [None] * len(dims)
            z = q.rsample((samples,))  # (S, B, Dz)
            parts = q.split(z)  # the layers as drawn (a flow layer's log-density is known at those only)
            qf, pf = q.factors(z), prior.factors(z)
            for layer, zl in enumerate(parts):
                whole = _whole(qf[layer], "q") or _whole(pf[layer], "p")
                if whole:  # a flow q or a learned mixture p(z_L): one log-density, no per-dimension terms
                    why[layer] = whole
                    log_ratio = (qf[layer].log_prob(zl) - pf[layer].log_prob(zl)).double()[..., None]
                else:
                    log_ratio = (qf[layer].base_dist.log_prob(zl) - pf[layer].base_dist.log_prob(zl)).double()
                kls[layer] = kls[layer] + log_ratio.mean(0).sum(0)  # (d,) or (1,): summed over the batch
                m = _point(qf[layer]).double().expand_as(zl)  # (S, B, d); the first layer's is the same at each draw
                means[layer].append(m.mean(0))
                if samples > 1:
                    noise[layer] += (m.var(0, unbiased=True) / samples).sum(0)
    out = []
    for layer, d in enumerate(q.dims):
        mu = torch.cat(means[layer])  # (N, d)
        var = (mu.var(0, unbiased=True) - noise[layer] / n).clamp(min=0)
        active = var > threshold
        kl_dims = kls[layer] / n
        row = {"layer": layer + 1, "latent_dim": int(d), "q": _given(q, layer, inference, "q"),
               "p": _given(prior, layer, inference, "p"), "active_units": int(active.sum()),
               "posterior_mean_variance": [round(float(v), 6) for v in var], "kl": float(kl_dims.sum())}
        if why[layer] is None and _kl_splits_in_layer(q, prior, layer):
            row["kl_per_dim"] = [round(float(v), 6) for v in kl_dims]
            row["kl_active"] = float(kl_dims[active].sum())
        else:
            row["kl_per_dim"] = None
            row["kl_active"] = None
            row["kl_per_dim_unavailable"] = (
                why[layer].format(q=row["q"], p=row["p"], prior=model.config.prior) if why[layer] else
                f"{row['p']} is conditioned on z_{prior.parent(layer) + 1}, which q draws after z_{layer + 1}: the "
                f"layer's KL is no expected KL between {row['q']} and {row['p']} and does not split by dimension")
        out.append(row)
    return out


def layered_kl_per_dim(rows: list[dict]) -> torch.Tensor:
    """The per-dimension KLs of every layer, concatenated as z is (z_1 first), or a ValueError naming a layer
    without them."""
    missing = [r for r in rows if r["kl_per_dim"] is None]
    if missing:
        raise ValueError(f"KL per dimension is not defined in layer {missing[0]['layer']}: "
                         f"{missing[0]['kl_per_dim_unavailable']}")
    return torch.tensor([v for r in rows for v in r["kl_per_dim"]], dtype=torch.float64)


LAYERED_NO_MI = ("the estimate needs q(z|x_m) of every datapoint at every other datapoint's draw through the "
                 "encoder's outputs, which a hierarchical VAE's q (a chain of networks of samples) does not have")
LAYERED_NO_GAP = ("the amortization gap optimizes each datapoint's own q parameters, and a hierarchical VAE's q has "
                  "none: each layer's factor is a network of the layer drawn before it")


def diagnose_layers(model, x: torch.Tensor, threshold: float, seed: int) -> dict:
    """diagnose's active units and KLs for a hierarchical model: the totals over the layers and `layers`, one
    `layer_diagnostics` row per stochastic layer (z_1 first)."""
    rows = layer_diagnostics(model, x, threshold=threshold, seed=seed)
    out = {"n": int(x.shape[0]), "latent_dim": sum(r["latent_dim"] for r in rows),
           "active_units": sum(r["active_units"] for r in rows), "active_threshold": threshold,
           "layer_samples": LAYER_SAMPLES,
           "posterior_mean_variance": [v for r in rows for v in r["posterior_mean_variance"]],
           "kl_total": sum(r["kl"] for r in rows)}
    try:
        kl = layered_kl_per_dim(rows)
        out["kl_per_dim"] = [round(float(v), 6) for v in kl]
        out["kl_active"] = sum(r["kl_active"] for r in rows)
    except ValueError as e:
        out["kl_per_dim"] = None
        out["kl_per_dim_unavailable"] = str(e) + "; each layer's total KL is in `layers`"
    out["layers"] = rows
    return out
