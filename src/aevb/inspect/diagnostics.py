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
- Hierarchical VAEs (--stochastic-layers L > 1): per-layer active units and KLs, in layers.py; the totals
  and `layers` in `diagnose`.
- Amortization gap (Cremer et al. 2018): the ELBO with q's parameters optimized for each datapoint, minus the ELBO
  with the encoder's q. With log p(x) from importance sampling, log p(x) - ELBO(encoder) splits into the
  approximation gap (log p(x) - optimized ELBO) and the amortization gap.
"""
from __future__ import annotations

import math

import torch
from torch.distributions import Independent, MixtureSameFamily, Normal, kl_divergence

ACTIVE_THRESHOLD = 0.01
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


@torch.no_grad()
def kl_per_dim(model, x: torch.Tensor, *, batch_size: int = 1000, mc_samples: int = 256,
               layer_samples: int | None = None) -> torch.Tensor:
    """E_x KL(q(z_j|x) || p(z_j)) for each latent dimension j, in nats: (Dz,) float64.

    Analytic where torch or aevb.distributions.kl has the pair, else a Monte Carlo average of `mc_samples` draws
    (against the marginals p(z_j) for a mixture prior). A flow posterior has no per-dimension KL (ValueError).
    For a hierarchical model, the per-dimension KLs of layers.layer_diagnostics (`layer_samples` ancestral draws,
    default layers.LAYER_SAMPLES),
    concatenated as z is; a ValueError where a layer has none (bottom-up inference below the top layer).
    """
    from .layers import LAYER_SAMPLES, is_layered, layer_diagnostics, layered_kl_per_dim

    if x.shape[0] and is_layered(model.prior()):
        return layered_kl_per_dim(layer_diagnostics(model, x, samples=layer_samples or LAYER_SAMPLES,
                                                    batch_size=batch_size))
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
    from .layers import LAYERED_NO_GAP, LAYERED_NO_MI, diagnose_layers, is_layered

    if is_layered(model.prior()):
        out = diagnose_layers(model, x, threshold, seed)
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
