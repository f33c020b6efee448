"""Posterior diagnostics of a trained VAE: active units, KL per latent dimension, the mutual information between x
and z, and the amortization gap.

- Active units (Burda et al. 2016): dimension j is active when Cov_x(E_q[z_j | x]) > 0.01 over the data.
- KL per dimension: E_x KL(q(z_j|x) || p(z_j)) for factorized posteriors; the total is the ELBO's KL term. For a
  mixture prior of diagonal Gaussians (--prior mog, vamp) p(z_j) is the prior's marginal and the terms, by Monte
  Carlo, need not add up to the ELBO's KL (the prior does not factorize); a flow posterior has none.
- Mutual information under q(x, z) = p_data(x) q(z|x) (Hoffman & Johnson 2016):
  I(x; z) = E_x E_q(z|x)[log q(z|x) - log q(z)], with the aggregate posterior q(z) = (1/N) sum_n q(z|x_n) taken over
  the same N datapoints. With one z_n ~ q(z|x_n) each, this is the InfoNCE form with critic log q(z|x): a lower
  bound of I in expectation that cannot exceed log N. E_x KL(q(z|x) || p(z)) is an upper bound, so
  I lies between the two.
- Hierarchical VAEs (q(z|x) a `Chain` of L Gaussian layers, z = [z_1, ..., z_L] concatenated): per layer l,
  active units with E_q[z_l|x] estimated from S ancestral draws of q (the first layer q draws has its exact mean;
  every later layer the average of its conditional mean given each draw of the layer it is conditioned on), the
  variance over x corrected for the Monte Carlo noise of that average; the layer's KL
  E_x E_q[log q(z_l|...) - log p(z_l|z_{l+1})] by Monte Carlo on the same draws (the layers' KLs add up to
  E_q[log q(z|x) - log p(z)] on those draws, estimator A's KL); and its KL per dimension where q's and p's
  factors of z_l are conditioned on layers q draws before z_l (then each term is an expected KL between one-
  dimensional Gaussians), the per-dimension terms of the same Monte Carlo sum.
- Amortization gap (Cremer et al. 2018): the ELBO with q's parameters optimized for each datapoint, minus the ELBO
  with the encoder's q. With log p(x) from importance sampling, log p(x) - ELBO(encoder) splits into the
  approximation gap (log p(x) - optimized ELBO) and the amortization gap.
"""
from __future__ import annotations

import math

import torch
from torch.distributions import Independent, MixtureSameFamily, Normal, kl_divergence

ACTIVE_THRESHOLD = 0.01
LAYER_SAMPLES = 64  # ancestral draws of q per datapoint for a hierarchical model's per-layer diagnostics
MAX_FLOATS = 2**22  # elements per (chunk, N, Dz) block of the aggregate-posterior density


def _batches(x: torch.Tensor, batch_size: int):
    return x.split(batch_size) if x.shape[0] else []


def posterior_location(q) -> torch.Tensor:
    """E_q[z] (batch..., Dz); the median where the family has no finite mean (e.g. Cauchy); for a flow posterior
    (no closed-form mean) its `location`, the flow of the base Gaussian's mean."""
    if hasattr(type(q), "location"):
        return q.location
    try:
        m = q.mean
        if torch.isfinite(m).all():
            return m
    except NotImplementedError:
        pass
    base = q.base_dist if isinstance(q, Independent) else q
    try:
        device = next(v.device for v in vars(base).values() if torch.is_tensor(v))
        return base.icdf(torch.full(base.batch_shape, 0.5, device=device))
    except NotImplementedError:
        raise ValueError(f"posterior {type(base).__name__} has neither a finite mean nor an inverse CDF") from None


@torch.no_grad()
def posterior_means(model, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """E_q[z|x] for each row of x: (N, Dz)."""
    return torch.cat([posterior_location(model.encode(xb)) for xb in _batches(x, batch_size)])


def active_units(means: torch.Tensor, threshold: float = ACTIVE_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension variance over the data of the posterior means (N, Dz), and the mask variance > threshold."""
    if means.shape[0] < 2:
        raise ValueError("active units need at least 2 datapoints")
    var = means.double().var(0, unbiased=True)
    return var, var > threshold


def _per_dim_kl(q, prior, samples: int, generator: torch.Generator | None) -> torch.Tensor:
    if isinstance(q, Independent) and isinstance(prior, MixtureSameFamily):
        return _per_dim_kl_mixture(q.base_dist, prior, samples)
    if getattr(q, "own_samples_only", False):
        raise ValueError("KL per dimension needs a posterior that factorizes over dimensions; a flow posterior "
                         "does not")
    if not (isinstance(q, Independent) and isinstance(prior, Independent)):
        raise ValueError(f"KL per dimension needs a factorized posterior and prior; got {type(q).__name__} and "
                         f"{type(prior).__name__}")
    qb, pb = q.base_dist, prior.base_dist
    try:
        return kl_divergence(qb, pb)
    except NotImplementedError:  # Monte Carlo, per dimension
        z = qb.sample((samples,))
        return (qb.log_prob(z) - pb.log_prob(z)).mean(0)


def _per_dim_kl_mixture(qb, prior: MixtureSameFamily, samples: int) -> torch.Tensor:
    """KL(q(z_j|x) || p(z_j)) by Monte Carlo against the marginals p(z_j) = sum_k pi_k p_k(z_j) of a mixture of
    factorized components: (B, Dz)."""
    comp = prior.component_distribution
    if not isinstance(comp, Independent):
        raise ValueError(f"KL per dimension needs factorized mixture components; got {type(comp).__name__}")
    z = qb.sample((samples,))  # (S, B, Dz)
    log_pi = prior.mixture_distribution.logits.log_softmax(-1)  # (K,)
    chunk = max(1, MAX_FLOATS // max(1, z[0].numel() * log_pi.numel()))
    log_p = torch.cat([torch.logsumexp(comp.base_dist.log_prob(zc.unsqueeze(-2)) + log_pi.unsqueeze(-1), dim=-2)
                       for zc in z.split(chunk)])  # (S, B, Dz)
    return (qb.log_prob(z) - log_p).mean(0)


def is_layered(dist) -> bool:
    """Whether `dist` is a hierarchical model's q(z|x) or p(z): a distribution over the concatenation of L > 1
    layers with per-layer factors (models.hierarchical.Chain)."""
    return callable(getattr(dist, "factors", None)) and len(getattr(dist, "dims", ())) > 1


def _given(chain, layer: int, inference: str | None, which: str) -> str:
    """The factor's name, e.g. q(z_1|x), q(z_1|z_2, x), p(z_1|z_2), p(z_2)."""
    parent = chain.parent(layer)
    if which == "p":
        cond = "" if parent is None else f"|z_{parent + 1}"
    else:
        cond = "|x" if parent is None else f"|z_{parent + 1}" + (", x" if inference == "top-down" else "")
    return f"{which}(z_{layer + 1}{cond})"


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
                kls = [torch.zeros(d, dtype=torch.float64, device=x.device) for d in dims]
            z = q.rsample((samples,))  # (S, B, Dz)
            parts = z.split(dims, -1)
            qf, pf = q.factors(z), prior.factors(z)
            for layer, zl in enumerate(parts):
                log_ratio = (qf[layer].base_dist.log_prob(zl) - pf[layer].base_dist.log_prob(zl)).double()
                kls[layer] += log_ratio.mean(0).sum(0)  # (d,): summed over the batch
                m = qf[layer].mean.double().expand_as(zl)  # (S, B, d); the first layer's is the same at every draw
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
        if _kl_splits_in_layer(q, prior, layer):
            row["kl_per_dim"] = [round(float(v), 6) for v in kl_dims]
            row["kl_active"] = float(kl_dims[active].sum())
        else:
            row["kl_per_dim"] = None
            row["kl_active"] = None
            row["kl_per_dim_unavailable"] = (
                f"{row['p']} is conditioned on z_{prior.parent(layer) + 1}, which q draws after z_{layer + 1}: the "
                f"layer's KL is no expected KL between {row['q']} and {row['p']} and does not split by dimension")
        out.append(row)
    return out


def _layered_kl_per_dim(rows: list[dict]) -> torch.Tensor:
    """The per-dimension KLs of every layer, concatenated as z is (z_1 first), or a ValueError naming a layer
    without them."""
    missing = [r for r in rows if r["kl_per_dim"] is None]
    if missing:
        raise ValueError(f"KL per dimension is not defined in layer {missing[0]['layer']}: "
                         f"{missing[0]['kl_per_dim_unavailable']}")
    return torch.tensor([v for r in rows for v in r["kl_per_dim"]], dtype=torch.float64)


@torch.no_grad()
def kl_per_dim(model, x: torch.Tensor, *, batch_size: int = 1000, mc_samples: int = 256,
               layer_samples: int = LAYER_SAMPLES) -> torch.Tensor:
    """E_x KL(q(z_j|x) || p(z_j)) for each latent dimension j, in nats: (Dz,) float64.

    Analytic where torch or aevb.distributions.kl has the pair, else a Monte Carlo average of `mc_samples` draws
    (against the marginals p(z_j) for a mixture prior). A flow posterior has no per-dimension KL (ValueError).
    For a hierarchical model, the per-dimension KLs of `layer_diagnostics` (`layer_samples` ancestral draws),
    concatenated as z is; a ValueError where a layer has none (bottom-up inference below the top layer).
    """
    if x.shape[0] and is_layered(model.prior()):
        return _layered_kl_per_dim(layer_diagnostics(model, x, samples=layer_samples, batch_size=batch_size))
    prior = model.prior()
    total = None
    for xb in _batches(x, batch_size):
        kl = _per_dim_kl(model.encode(xb), prior, mc_samples, None).double().sum(0)
        total = kl if total is None else total + kl
    if total is None:
        raise ValueError("no datapoints")
    return total / x.shape[0]


def _log_aggregate(q_all, z: torch.Tensor) -> torch.Tensor:
    """log sum_m q(z_n | x_m) for each row z_n of z (N, Dz): (N,).

    For a diagonal Gaussian q the N x N log densities are three matrix products in float64:
    sum_j [(z_j - mu_j)^2 / s_j^2] = z^2 @ (1/s^2)^T - 2 z @ (mu/s^2)^T + sum_j mu_j^2 / s_j^2. Other families
    evaluate q's log_prob broadcast over blocks of z.
    """
    base = q_all.base_dist if isinstance(q_all, Independent) else None
    if isinstance(base, Normal):
        mu, var = base.loc.double(), base.scale.double().square()
        inv = 1 / var
        const = (mu.square() * inv).sum(-1) + var.log().sum(-1) + mu.shape[-1] * math.log(2 * math.pi)  # (N,)
        out = []
        for zc in z.double().split(max(1, MAX_FLOATS // z.shape[0])):
            quad = zc.square() @ inv.T - 2 * zc @ (mu * inv).T + const  # (c, N)
            out.append(torch.logsumexp(-0.5 * quad, dim=1))
        return torch.cat(out).to(z.dtype)
    chunk = max(1, MAX_FLOATS // (z.shape[0] * z.shape[-1]))
    return torch.cat([torch.logsumexp(q_all.log_prob(zc.unsqueeze(1)), dim=1) for zc in z.split(chunk)])


@torch.no_grad()
def mutual_information(model, x: torch.Tensor, *, seed: int = 0, batch_size: int = 1000) -> dict:
    """I(x; z) under p_data(x) q(z|x), with one z_n ~ q(z|x_n) per datapoint and q(z) the mixture over all N.

    Raises:
        ValueError: a flow posterior (its density is known at its own draws only).

    Returns:
        dict: `mutual_information` (nats; a lower bound of I in expectation), `log_n` (its ceiling),
        `avg_kl` = E_x KL(q(z|x) || p(z)) (an upper bound of I, by Monte Carlo with the same z),
        `marginal_kl` = avg_kl - mutual_information (KL(q(z) || p(z)) when the estimate is tight), and `n`.
    """
    n = x.shape[0]
    if n < 2:
        raise ValueError("the mutual information needs at least 2 datapoints")
    raw = torch.cat([model.encoder_params(xb) for xb in _batches(x, batch_size)])  # (N, n_out)
    q_all = model.posterior(raw)
    if getattr(q_all, "own_samples_only", False):
        raise ValueError("the mutual information needs q(z|x_m) at other datapoints' samples, which a flow "
                         "posterior cannot evaluate")
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):  # private RNG stream
        torch.manual_seed(seed)
        z = q_all.sample()  # (N, Dz): z_n ~ q(z|x_n)
    log_q_own = q_all.log_prob(z)  # (N,)
    log_p = model.prior().log_prob(z)
    log_qz = _log_aggregate(q_all, z) - math.log(n)
    mi = float((log_q_own - log_qz).double().mean())
    avg_kl = float((log_q_own - log_p).double().mean())
    return {"mutual_information": mi, "log_n": math.log(n), "avg_kl": avg_kl, "marginal_kl": avg_kl - mi, "n": n}


def _elbo_of(model, raw: torch.Tensor, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Per-datapoint ELBO of q = model.posterior(raw): analytic KL where it exists, else estimator A's."""
    q, prior = model.posterior(raw), model.prior()
    z = q.rsample((num_samples,))
    rec = model.decode(z).log_prob(x).mean(0)
    try:
        kl = kl_divergence(q, prior)
    except NotImplementedError:
        kl = (q.log_prob(z) - prior.log_prob(z)).mean(0)
    return rec - kl


def _eval_elbo(model, raw, x, num_samples: int, chunk: int = 50) -> torch.Tensor:
    """ELBO with `num_samples` samples, in chunks of samples, averaged: (B,)."""
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    done = 0
    while done < num_samples:
        k = min(chunk, num_samples - done)
        total += _elbo_of(model, raw, x, k).double() * k
        done += k
    return total / num_samples


def _optimize_q(model, raw0: torch.Tensor, x: torch.Tensor, steps: int, lr: float, num_samples: int):
    """Each datapoint's raw q parameters, from the encoder's `raw0`, after `steps` Adam steps on its ELBO (step size
    lr with a cosine decay to 0); the decoder stays fixed."""
    raw = raw0.clone().requires_grad_(True)
    opt = torch.optim.Adam([raw], lr=lr)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = -_elbo_of(model, raw, x, num_samples).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return raw


def amortization_gap(model, x: torch.Tensor, *, steps: int = 300, lr: float = 0.02, num_samples: int = 10,
                     eval_samples: int = 1000, is_samples: int = 0, batch_size: int = 500, seed: int = 0) -> dict:
    """The ELBO of q optimized per datapoint against the encoder's (Cremer et al. 2018).

    Each datapoint's raw posterior parameters (for the Gaussian: mu and log sigma^2) start at the encoder's
    output and are optimized alone with Adam (`steps` steps, step size `lr` with a cosine decay to 0, `num_samples`
    reparameterized samples per step) while the decoder stays fixed. Both ELBOs are then estimated with the same
    `eval_samples` samples per datapoint.

    Returns:
        dict of floats: `elbo_encoder`, `elbo_optimized`, `amortization_gap` (their difference, >= 0 up to noise
        and incomplete optimization), `improved` (fraction of datapoints whose ELBO rose), `n`; with
        `is_samples` > 0 also `log_px` (importance sampling with that K, encoder proposal) and
        `approximation_gap` = log_px - elbo_optimized.
    """
    for name, v in (("steps", steps), ("num_samples", num_samples), ("eval_samples", eval_samples)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    was_training = model.training
    model.eval()
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    enc, opt_, lp = [], [], []
    try:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(seed)
            for xb in _batches(x, batch_size):
                with torch.no_grad():
                    raw0 = model.encoder_params(xb)
                raw = _optimize_q(model, raw0, xb, steps, lr, num_samples)
                with torch.no_grad():
                    enc.append(_eval_elbo(model, raw0, xb, eval_samples))
                    opt_.append(_eval_elbo(model, raw.detach(), xb, eval_samples))
            if is_samples:
                from ..marginal import importance_sampling

                lp.append(importance_sampling(model, x, num_samples=is_samples)["log_px"].double())
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
        model.train(was_training)
    e, o = torch.cat(enc), torch.cat(opt_)
    out = {"elbo_encoder": float(e.mean()), "elbo_optimized": float(o.mean()),
           "amortization_gap": float((o - e).mean()), "improved": float((o > e).double().mean()),
           "n": int(x.shape[0]), "steps": steps, "lr": lr, "num_samples": num_samples, "eval_samples": eval_samples}
    if is_samples:
        log_px = torch.cat(lp)
        out.update({"log_px": float(log_px.mean()), "is_samples": is_samples,
                    "approximation_gap": float((log_px - o).mean()),
                    "inference_gap": float((log_px - e).mean())})
    return out


def diagnose(model, x: torch.Tensor, *, threshold: float = ACTIVE_THRESHOLD, gap_points: int = 500,
             gap_steps: int = 300, gap_lr: float = 0.02, gap_is_samples: int = 1000, seed: int = 0) -> dict:
    """All diagnostics on data x (N, D): active units, KL per dimension, mutual information and, on the first
    `gap_points` datapoints (0 skips it), the amortization gap. Returns a JSON-ready dict."""
    if is_layered(model.prior()):
        out = _diagnose_layers(model, x, threshold, seed)
    else:
        means = posterior_means(model, x)
        var, active = active_units(means, threshold)
        out = {"n": int(x.shape[0]), "latent_dim": int(means.shape[1]), "active_units": int(active.sum()),
               "active_threshold": threshold, "posterior_mean_variance": [round(float(v), 6) for v in var]}
        try:
            kl = kl_per_dim(model, x)
            out["kl_per_dim"] = [round(float(v), 6) for v in kl]
            out["kl_total"] = float(kl.sum())
            out["kl_active"] = float(kl[active].sum())
            if isinstance(model.prior(), MixtureSameFamily):
                out["kl_per_dim_note"] = ("against the mixture prior's marginals p(z_j), by Monte Carlo: the terms "
                                          "need not add up to the ELBO's KL")
        except ValueError as e:
            out["kl_per_dim"] = None
            out["kl_per_dim_unavailable"] = str(e)
    layered = is_layered(model.prior())
    if layered:
        out["mutual_information"] = None
        out["mutual_information_unavailable"] = LAYERED_NO_MI
    else:
        try:
            out.update({f"mi_{k}" if k != "mutual_information" else k: v
                        for k, v in mutual_information(model, x, seed=seed).items() if k != "n"})
        except ValueError as e:
            out["mutual_information"] = None
            out["mutual_information_unavailable"] = str(e)
    if gap_points:
        if layered:
            out["amortization"] = None
            out["amortization_unavailable"] = LAYERED_NO_GAP
        else:
            out["amortization"] = amortization_gap(model, x[:gap_points], steps=gap_steps, lr=gap_lr,
                                                   is_samples=gap_is_samples, seed=seed)
    return out


LAYERED_NO_MI = ("the estimate needs q(z|x_m) of every datapoint at every other datapoint's draw through the "
                 "encoder's outputs, which a hierarchical VAE's q (a chain of networks of samples) does not have")
LAYERED_NO_GAP = ("the amortization gap optimizes each datapoint's own q parameters, and a hierarchical VAE's q has "
                  "none: each layer's factor is a network of the layer drawn before it")


def _diagnose_layers(model, x: torch.Tensor, threshold: float, seed: int) -> dict:
    """diagnose's active units and KLs for a hierarchical model: the totals over the layers and `layers`, one
    `layer_diagnostics` row per stochastic layer (z_1 first)."""
    rows = layer_diagnostics(model, x, threshold=threshold, seed=seed)
    out = {"n": int(x.shape[0]), "latent_dim": sum(r["latent_dim"] for r in rows),
           "active_units": sum(r["active_units"] for r in rows), "active_threshold": threshold,
           "layer_samples": LAYER_SAMPLES,
           "posterior_mean_variance": [v for r in rows for v in r["posterior_mean_variance"]],
           "kl_total": sum(r["kl"] for r in rows)}
    try:
        kl = _layered_kl_per_dim(rows)
        out["kl_per_dim"] = [round(float(v), 6) for v in kl]
        out["kl_active"] = sum(r["kl_active"] for r in rows)
    except ValueError as e:
        out["kl_per_dim"] = None
        out["kl_per_dim_unavailable"] = str(e) + "; each layer's total KL is in `layers`"
    out["layers"] = rows
    return out
