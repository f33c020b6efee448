"""Image restoration with a trained VAE as the prior over images: denoising, inpainting, super-resolution.

Every task compares the VAE's answers with naive baselines by PSNR (per image, 10 log10(1 / MSE) for grey levels
in [0, 1], then averaged over images):

- denoise: Gaussian noise of std `noise`, clipped to [0, 1]. VAE: the posterior reconstruction, the decoder mean
  at the encoder's posterior mean of the noisy image (`reconstruction`), and latent optimization under the known
  noise model (`optimize`: z maximizing -|mean(z) - noisy|^2 / (2 noise^2) + log p(z) by Adam from the encoder's
  posterior mean; the output is the decoder mean there). Baselines: the noisy image itself (`noisy`) and a 3x3
  box filter (`box3`).
- inpaint: a mask of missing pixels. VAE: `iterative` (fill with the pixel means, then repeat `steps` times:
  encode, decode, keep the observed pixels, replace the missing ones by the decoder mean at the posterior mean),
  `optimize` (latent optimization: z maximizing log p(x_observed | z) + log p(z) by Adam, started at the
  encoder's posterior mean of the mean-filled image; the missing pixels are the decoder mean there) and
  `importance` (the model's conditional p(x_missing | x_observed) by self-normalized importance sampling with
  the encoder's q on the `optimize` completion as proposal: its predictive mean, and log p(x_missing | x_observed)).
  Baseline: the training set's per-pixel mean (`mean_fill`). Also reported: PSNR on the missing pixels alone and
  the log-likelihood of the missing pixels (nats per image) under each method's predictive distribution, where
  one is defined (the mean fill has one for the Bernoulli likelihood: independent Bernoulli pixels with the
  training means as probabilities).
- superres: the observation is the f x f block average (f = 2 or 4). VAE: `iterative` (start from the bilinear
  upsampling, then repeat: encode, decode, project onto the images in [0, 1] whose block averages are the
  observation: per block, shift all pixels by one constant and clip, the shift found by bisection) and `optimize`
  (z minimizing |pool(mean(z)) - y|^2 / (2 obs_noise^2) - log p(z), then the same back-projection). Baselines:
  `nearest` and `bilinear` upsampling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.distributions import biject_to

from .diagnostics import posterior_means

TASKS = ("denoise", "inpaint", "superres")
MASKS = ("center", "half", "random")
FACTORS = (2, 4)
PSNR_CAP = 100.0  # dB, for an exact match (MSE floored at 1e-10)


@dataclass
class Restoration:
    """What a task produced: (N, D) tensors of grey levels in [0, 1]; `truth` is None for observed-only inputs.

    `observed` is the corrupted input as an (N, D) picture (noisy image, image with missing pixels at 0.5, or the
    low-resolution image upsampled by repetition). `outputs` maps method -> images, `kinds` method -> "baseline"
    or "vae", `loglik_missing` method -> (N,) nats where defined, `missing` the (N, D) mask for inpainting.
    """

    task: str
    observed: torch.Tensor
    outputs: dict[str, torch.Tensor]
    kinds: dict[str, str]
    truth: torch.Tensor | None = None
    missing: torch.Tensor | None = None
    loglik_missing: dict[str, torch.Tensor] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


# --- measures and corruptions --------------------------------------------------------------------------------

def psnr(estimate: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image PSNR in dB of (N, D) grey levels in [0, 1]: 10 log10(1 / MSE), over the pixels where `mask` is
    True (all pixels without a mask). MSE is floored at 1e-10 (100 dB)."""
    err = (estimate.double() - truth.double()).square()
    if mask is None:
        mse = err.mean(-1)
    else:
        m = mask.double()
        if (m.sum(-1) == 0).any():
            raise ValueError("PSNR over an empty mask")
        mse = (err * m).sum(-1) / m.sum(-1)
    return -10 * torch.log10(mse.clamp_min(10 ** (-PSNR_CAP / 10)))


def add_noise(x: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """x + N(0, std^2) noise from a private seeded generator, clipped to [0, 1]."""
    if not std > 0:
        raise ValueError(f"the noise std must be positive, got {std}")
    gen = torch.Generator(device=x.device).manual_seed(seed)
    return (x + std * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)).clamp(0, 1)


def make_mask(kind: str, n: int, image_shape: tuple[int, int], *, fraction: float = 0.5, seed: int = 0,
              device=None) -> torch.Tensor:
    """(n, H*W) bool mask, True where pixels are missing.

    center: the centred square block of side H/2 x W/2 (rounded down, centred); half: the bottom half of the rows;
    random: each pixel independently with probability `fraction` (a private seeded generator).
    """
    h, w = image_shape
    if kind == "center":
        m = torch.zeros(h, w, dtype=torch.bool)
        bh, bw = h // 2, w // 2
        top, left = (h - bh) // 2, (w - bw) // 2
        m[top:top + bh, left:left + bw] = True
        return m.reshape(1, -1).expand(n, -1).clone().to(device)
    if kind == "half":
        m = torch.zeros(h, w, dtype=torch.bool)
        m[h // 2:] = True
        return m.reshape(1, -1).expand(n, -1).clone().to(device)
    if kind == "random":
        if not 0 < fraction < 1:
            raise ValueError(f"the missing fraction must be in (0, 1), got {fraction}")
        gen = torch.Generator().manual_seed(seed)
        return (torch.rand(n, h * w, generator=gen) < fraction).to(device)
    raise ValueError(f"unknown mask {kind!r}; choose from {', '.join(MASKS)} or give a mask file")


def _check_factor(image_shape: tuple[int, int], factor: int) -> None:
    if factor not in FACTORS:
        raise ValueError(f"the super-resolution factor must be one of {', '.join(map(str, FACTORS))}, got {factor}")
    if image_shape[0] % factor or image_shape[1] % factor:
        raise ValueError(f"images of {image_shape[0]}x{image_shape[1]} pixels do not divide into {factor}x{factor} "
                         "blocks")


def downsample(x: torch.Tensor, image_shape: tuple[int, int], factor: int) -> torch.Tensor:
    """f x f block averages: (N, H*W) -> (N, (H/f)*(W/f))."""
    _check_factor(image_shape, factor)
    return F.avg_pool2d(x.reshape(-1, 1, *image_shape), factor).flatten(1)


def upsample(y: torch.Tensor, image_shape: tuple[int, int], factor: int, mode: str) -> torch.Tensor:
    """(N, (H/f)*(W/f)) -> (N, H*W) by `nearest` (repetition) or `bilinear` (half-pixel centres, edges clamped)."""
    _check_factor(image_shape, factor)
    h, w = image_shape
    small = y.reshape(-1, 1, h // factor, w // factor)
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(small, size=(h, w), mode=mode, **kw).flatten(1).clamp(0, 1)


def box_filter(x: torch.Tensor, image_shape: tuple[int, int]) -> torch.Tensor:
    """3x3 mean filter (at the borders, the mean of the pixels inside the image)."""
    out = F.avg_pool2d(x.reshape(-1, 1, *image_shape), 3, stride=1, padding=1, count_include_pad=False)
    return out.flatten(1)


# --- model pieces --------------------------------------------------------------------------------------------

def _dev(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _decode_mean(model, z: torch.Tensor) -> torch.Tensor:
    return model.decode(z).mean.clamp(0, 1)


@torch.no_grad()
def posterior_reconstruction(model, x: torch.Tensor) -> torch.Tensor:
    """Decoder mean at the posterior mean of x, clipped to [0, 1]."""
    return _decode_mean(model, posterior_means(model, x))


def _chunks(total: int, per_sample: int, max_floats: int = 2**22):
    step = max(1, max_floats // max(1, per_sample))
    for start in range(0, total, step):
        yield min(step, total - start)


def _pixel_log_prob(model, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x_d | z) per pixel: (..., D)."""
    return model.decode(z).base_dist.log_prob(x)


def _map_latent(model, z0: torch.Tensor, log_lik, steps: int, lr: float) -> torch.Tensor:
    """argmax_z log_lik(z) + log p(z) by Adam with a cosine decay, in the prior's unconstrained coordinates,
    started at z0 (B, Dz). The decoder's parameters are left untouched."""
    prior = model.prior()
    t = biject_to(prior.support)
    u = t.inv(z0).detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([u], lr=lr)
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            z = t(u)
            objective = log_lik(z) + prior.log_prob(z) + t.log_abs_det_jacobian(u, z).reshape(z.shape[0], -1).sum(-1)
            opt.zero_grad(set_to_none=True)
            (-objective.sum()).backward()
            opt.step()
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
    return t(u).detach()


def denoise_optimize(model, y: torch.Tensor, noise: float, *, steps: int = 300, lr: float = 0.05) -> torch.Tensor:
    """z* = argmax -|mean(z) - y|^2 / (2 noise^2) + log p(z) from the encoder's posterior mean of y (the noise
    model without its clipping); returns the decoder mean at z*."""
    with torch.no_grad():
        z0 = posterior_means(model, y)
    z = _map_latent(model, z0, lambda z: -(model.decode(z).mean - y).square().sum(-1) / (2 * noise**2), steps, lr)
    return _decode_mean(model, z)


# --- inpainting ----------------------------------------------------------------------------------------------

@torch.no_grad()
def inpaint_iterative(model, x_obs: torch.Tensor, missing: torch.Tensor, fill: torch.Tensor,
                      steps: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Start with `fill` in the missing pixels; `steps` times: encode, decode (mean at the posterior mean), keep
    the observed pixels. Returns the completion and the last posterior mean z."""
    x = torch.where(missing, fill.expand_as(x_obs), x_obs)
    z = posterior_means(model, x)
    for _ in range(steps):
        x = torch.where(missing, _decode_mean(model, z), x_obs)
        z = posterior_means(model, x)
    return x, z


def inpaint_optimize(model, x_obs: torch.Tensor, missing: torch.Tensor, fill: torch.Tensor, *, steps: int = 300,
                     lr: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """z* = argmax log p(x_observed | z) + log p(z); the missing pixels become the decoder mean at z*.
    Returns the completion and z*."""
    observed = (~missing).to(x_obs.dtype)
    with torch.no_grad():
        z0 = posterior_means(model, torch.where(missing, fill.expand_as(x_obs), x_obs))
    z = _map_latent(model, z0, lambda z: (_pixel_log_prob(model, z, x_obs) * observed).sum(-1), steps, lr)
    return torch.where(missing, _decode_mean(model, z), x_obs), z


@torch.no_grad()
def inpaint_importance(model, x_obs: torch.Tensor, missing: torch.Tensor, proposal_input: torch.Tensor, *,
                       samples: int = 200, truth: torch.Tensor | None = None):
    """p(x_missing | x_observed) by self-normalized importance sampling, z_k ~ q(z | proposal_input):
    w_k = p(x_observed | z_k) p(z_k) / q(z_k | proposal_input). Returns the completion with the predictive mean
    sum_k w~_k E[x_missing | z_k] and, given the true image, log p(x_missing | x_observed) per image
    = logsumexp_k (log w_k + log p(x_missing | z_k)) - logsumexp_k log w_k."""
    q, prior = model.encode(proposal_input), model.prior()
    observed = (~missing).to(x_obs.dtype)
    log_w, lik_miss = [], []
    top = torch.full(x_obs.shape[:1], -math.inf, dtype=x_obs.dtype, device=x_obs.device)  # running max of log w
    acc = torch.zeros_like(x_obs)  # sum_k exp(log w_k - top) E[x | z_k]
    norm = torch.zeros_like(top)  # sum_k exp(log w_k - top)
    for k in _chunks(samples, x_obs.shape[0] * x_obs.shape[1]):
        z = q.sample((k,))  # (k, B, Dz)
        p = model.decode(z)
        per_pixel = p.base_dist.log_prob(x_obs)  # observed pixels are exact in x_obs; missing ones are ignored
        lw = (per_pixel * observed).sum(-1) + prior.log_prob(z) - q.log_prob(z)  # (k, B)
        new_top = torch.maximum(top, lw.max(0).values)
        rescale = torch.exp(top - new_top)
        w = torch.exp(lw - new_top)
        acc = acc * rescale.unsqueeze(-1) + (w.unsqueeze(-1) * p.mean.clamp(0, 1)).sum(0)
        norm = norm * rescale + w.sum(0)
        top = new_top
        log_w.append(lw)
        if truth is not None:
            lik_miss.append((p.base_dist.log_prob(truth) * (1 - observed)).sum(-1))
    completion = torch.where(missing, acc / norm.unsqueeze(-1), x_obs)
    loglik = None
    if truth is not None:
        log_w = torch.cat(log_w)  # (K, B)
        loglik = torch.logsumexp(log_w + torch.cat(lik_miss), 0) - torch.logsumexp(log_w, 0)
    return completion, loglik


# --- super-resolution ----------------------------------------------------------------------------------------

def _back_project(x: torch.Tensor, y: torch.Tensor, image_shape, factor: int, iterations: int = 50) -> torch.Tensor:
    """The nearest image in [0, 1] whose f x f block averages are y (x in [0, 1], y in [0, 1]): per block,
    clip(x + c, 0, 1) with the shift c that makes its average y, found by bisection on [-1, 1] (the Euclidean
    projection onto the intersection of the box and the block's average constraint)."""
    h, w = image_shape
    n, f = x.shape[0], factor
    blocks = x.reshape(n, h // f, f, w // f, f).permute(0, 1, 3, 2, 4).reshape(n, -1, f * f)
    lo = torch.full(y.shape, -1.0, dtype=x.dtype, device=x.device)
    hi = torch.full(y.shape, 1.0, dtype=x.dtype, device=x.device)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        low = (blocks + mid.unsqueeze(-1)).clamp(0, 1).mean(-1) < y
        lo, hi = torch.where(low, mid, lo), torch.where(low, hi, mid)
    out = (blocks + ((lo + hi) / 2).unsqueeze(-1)).clamp(0, 1)
    return out.reshape(n, h // f, w // f, f, f).permute(0, 1, 3, 2, 4).reshape(n, h * w)


@torch.no_grad()
def superres_iterative(model, y: torch.Tensor, image_shape, factor: int, steps: int = 50) -> torch.Tensor:
    """From the bilinear upsampling of y, `steps` times: encode, decode (mean at the posterior mean), project
    onto the images in [0, 1] whose f x f block averages are y."""
    x = upsample(y, image_shape, factor, "bilinear")
    for _ in range(steps):
        x = _back_project(posterior_reconstruction(model, x), y, image_shape, factor)
    return x


def superres_optimize(model, y: torch.Tensor, image_shape, factor: int, *, steps: int = 300, lr: float = 0.05,
                      obs_noise: float = 0.05) -> torch.Tensor:
    """z* = argmin |pool(mean(z)) - y|^2 / (2 obs_noise^2) - log p(z) from the encoder's posterior mean of the
    bilinear upsampling; returns the decoder mean at z* projected onto the images consistent with y."""
    with torch.no_grad():
        z0 = posterior_means(model, upsample(y, image_shape, factor, "bilinear"))

    def log_lik(z):
        mean = model.decode(z).mean
        return -(downsample(mean, image_shape, factor) - y).square().sum(-1) / (2 * obs_noise**2)

    z = _map_latent(model, z0, log_lik, steps, lr)
    return _back_project(_decode_mean(model, z), y, image_shape, factor)


# --- tasks ---------------------------------------------------------------------------------------------------

def _batched(fn, batch_size: int, *tensors):
    """Apply fn to aligned row blocks of the tensors; concatenates each output (tensors or tuples of tensors)."""
    outs = [fn(*parts) for parts in zip(*(t.split(batch_size) for t in tensors))]
    if isinstance(outs[0], tuple):
        return tuple(None if o[0] is None else torch.cat(o) for o in zip(*outs))
    return torch.cat(outs)


def run_task(model, task: str, image_shape: tuple[int, int], *, truth: torch.Tensor | None = None,
             observed: torch.Tensor | None = None, missing: torch.Tensor | None = None,
             pixel_mean: torch.Tensor | None = None, noise: float = 0.3, factor: int = 2, steps: int = 50,
             opt_steps: int = 300, samples: int = 200, seed: int = 0, batch_size: int = 500) -> Restoration:
    """Corrupt `truth` (N, D) for `task` (or take `observed` as given) and restore it with every method.

    Args:
        truth: clean images; when given, they are corrupted here and every metric is defined.
        observed: already corrupted inputs instead: noisy images (denoise), images whose `missing` pixels are
            ignored (inpaint), or low-resolution images (N, (H/f)*(W/f)) (superres).
        missing: (N, D) bool, True where pixels are missing (inpaint; required).
        pixel_mean: (D,) training-set pixel means (inpaint's baseline and starting fill; required).
        noise: std of the Gaussian noise (denoise). factor: 2 or 4 (superres).
        steps: iterations of the iterative methods; opt_steps: Adam steps of latent optimization;
        samples: importance samples per image (inpaint).
        seed: seeds the noise, and every random draw of the methods (through a private RNG stream).
    """
    dev = _dev(model)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):  # seeded, leaving the global RNG alone
        torch.manual_seed(seed)
        return _run_task(model, task, image_shape, truth=truth, observed=observed, missing=missing,
                         pixel_mean=pixel_mean, noise=noise, factor=factor, steps=steps, opt_steps=opt_steps,
                         samples=samples, seed=seed, batch_size=batch_size)


def _run_task(model, task, image_shape, *, truth, observed, missing, pixel_mean, noise, factor, steps, opt_steps,
              samples, seed, batch_size) -> Restoration:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if (truth is None) == (observed is None):
        raise ValueError("give exactly one of truth and observed")
    for name, v in (("steps", steps), ("opt_steps", opt_steps), ("samples", samples)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    model.eval()
    dev = _dev(model)
    truth = truth.to(dev) if truth is not None else None
    observed = observed.to(dev) if observed is not None else None
    settings = {"steps": steps, "opt_steps": opt_steps, "seed": seed}
    if task == "denoise":
        y = add_noise(truth, noise, seed) if truth is not None else observed
        outputs = {
            "noisy": y, "box3": box_filter(y, image_shape),
            "reconstruction": _batched(lambda a: posterior_reconstruction(model, a), batch_size, y),
            "optimize": _batched(lambda a: denoise_optimize(model, a, noise, steps=opt_steps), batch_size, y),
        }
        kinds = {"noisy": "baseline", "box3": "baseline", "reconstruction": "vae", "optimize": "vae"}
        settings.update(noise=noise)
        return Restoration(task, y, outputs, kinds, truth, settings=settings)
    if task == "inpaint":
        if missing is None or pixel_mean is None:
            raise ValueError("inpainting needs a mask and the training pixel means")
        missing = missing.to(dev)
        src = truth if truth is not None else observed
        if missing.shape != src.shape:
            raise ValueError(f"the mask has shape {tuple(missing.shape)}, the images {tuple(src.shape)}")
        fill = pixel_mean.to(dev).to(src.dtype)
        x_obs = torch.where(missing, fill.expand_as(src), src)  # the missing values never reach any method
        it, z_it = _batched(lambda a, m: inpaint_iterative(model, a, m, fill, steps), batch_size, x_obs, missing)
        op, z_op = _batched(lambda a, m: inpaint_optimize(model, a, m, fill, steps=opt_steps), batch_size, x_obs,
                            missing)
        if truth is not None:
            imp, ll_imp = _batched(lambda a, m, p, t: inpaint_importance(model, a, m, p, samples=samples, truth=t),
                                   batch_size, x_obs, missing, op, truth)
        else:
            imp, ll_imp = _batched(lambda a, m, p: inpaint_importance(model, a, m, p, samples=samples), batch_size,
                                   x_obs, missing, op)
        outputs = {"mean_fill": x_obs, "iterative": it, "optimize": op, "importance": imp}
        kinds = {"mean_fill": "baseline", "iterative": "vae", "optimize": "vae", "importance": "vae"}
        loglik = {}
        if truth is not None:
            miss = missing.to(truth.dtype)
            with torch.no_grad():
                for name, z in (("iterative", z_it), ("optimize", z_op)):
                    loglik[name] = _batched(lambda zz, t, m: (_pixel_log_prob(model, zz, t) * m).sum(-1), batch_size,
                                            z, truth, miss)
            loglik["importance"] = ll_imp
            if model.config.likelihood == "bernoulli":
                from .likelihoods import GreyLevelBernoulli

                p = fill.clamp(1e-6, 1 - 1e-6)
                loglik["mean_fill"] = (GreyLevelBernoulli(probs=p, validate_args=False).log_prob(truth) * miss).sum(-1)
        shown = torch.where(missing, torch.full_like(x_obs, 0.5), x_obs)
        settings.update(samples=samples, missing_fraction=float(missing.float().mean()))
        return Restoration(task, shown, outputs, kinds, truth, missing, loglik, settings)
    # superres
    _check_factor(image_shape, factor)
    h, w = image_shape
    if truth is not None:
        y = downsample(truth, image_shape, factor)
    else:
        y = observed
        if y.shape[1] != (h // factor) * (w // factor):
            raise ValueError(f"low-resolution inputs must have {h // factor}x{w // factor} pixels for factor "
                             f"{factor}, got {y.shape[1]} pixels")
    outputs = {
        "nearest": upsample(y, image_shape, factor, "nearest"),
        "bilinear": upsample(y, image_shape, factor, "bilinear"),
        "iterative": _batched(lambda a: superres_iterative(model, a, image_shape, factor, steps), batch_size, y),
        "optimize": _batched(lambda a: superres_optimize(model, a, image_shape, factor, steps=opt_steps), batch_size,
                             y),
    }
    kinds = {"nearest": "baseline", "bilinear": "baseline", "iterative": "vae", "optimize": "vae"}
    settings.update(factor=factor)
    return Restoration(task, outputs["nearest"], outputs, kinds, truth, settings=settings)


def summarize(r: Restoration) -> dict:
    """Metrics per method (mean PSNR in dB with its standard error, PSNR on the missing pixels and their
    log-likelihood for inpainting) and which method wins. Without the true images, only the method names."""
    methods: dict[str, dict] = {}
    for name, out in r.outputs.items():
        entry: dict = {"kind": r.kinds[name]}
        if r.truth is not None:
            p = psnr(out, r.truth)
            entry["psnr"] = float(p.mean())
            entry["psnr_stderr"] = float(p.std() / math.sqrt(p.numel())) if p.numel() > 1 else None
            if r.missing is not None:
                entry["psnr_missing"] = float(psnr(out, r.truth, r.missing).mean())
                ll = r.loglik_missing.get(name)
                entry["loglik_missing"] = float(ll.double().mean()) if ll is not None else None
        methods[name] = entry
    result = {"task": r.task, "n": int(r.observed.shape[0]), "settings": r.settings, "methods": methods}
    if r.truth is not None:
        key = "psnr_missing" if r.missing is not None else "psnr"
        vae = max((m for m in methods if methods[m]["kind"] == "vae"), key=lambda m: methods[m][key])
        base = max((m for m in methods if methods[m]["kind"] == "baseline"), key=lambda m: methods[m][key])
        result.update({"ranked_by": key, "best": vae, "best_baseline": base,
                       "gain_db": methods[vae][key] - methods[base][key],
                       "beats_baseline": methods[vae][key] > methods[base][key]})
    return result


def comparison_figure(r: Restoration, image_shape: tuple[int, int], n_show: int = 10):
    """Rows: the truth (when known), the observed input, then every method; columns: the first n_show images."""
    from matplotlib.figure import Figure

    from .plots import image_grid

    rows = ([("truth", r.truth)] if r.truth is not None else []) + [("observed", r.observed)]
    rows += [(name, out) for name, out in r.outputs.items() if not (r.task == "denoise" and name == "noisy")
             and not (r.task == "superres" and name == "nearest")]
    n = min(n_show, r.observed.shape[0])
    metrics = summarize(r)["methods"] if r.truth is not None else {}
    fig = Figure(figsize=(1.0 + 0.62 * n * image_shape[1] / image_shape[0], 0.62 * len(rows) + 0.4))
    for i, (name, imgs) in enumerate(rows):
        ax = fig.add_subplot(len(rows), 1, i + 1)
        ax.imshow(image_grid(imgs[:n].detach().cpu().numpy().reshape(n, *image_shape), ncol=n), cmap="gray",
                  vmin=0, vmax=1, interpolation="nearest")
        label = name
        if name in metrics:
            label += f"\n{metrics[name]['psnr']:.2f} dB"
        elif name == "observed" and r.task in ("denoise", "superres") and metrics:
            first = "noisy" if r.task == "denoise" else "nearest"
            label += f"\n{metrics[first]['psnr']:.2f} dB"
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
    fig.subplots_adjust(hspace=0.05, left=0.12, right=0.99, top=0.99, bottom=0.01)
    return fig


# --- reading images ------------------------------------------------------------------------------------------

def read_images(paths, shape: tuple[int, int]) -> torch.Tensor:
    """Grey levels in [0, 1] from PNG files (RGB(A) averaged over colour channels) or .npy arrays ((H, W),
    (N, H, W) or (N, H*W); uint8 is divided by 255), checked against `shape` = (H, W). Returns (N, H*W)."""
    arrays = []
    h, w = shape
    for path in map(Path, paths):
        try:
            if path.suffix.lower() == ".npy":
                a = np.load(path, allow_pickle=False)
            else:
                import matplotlib.image

                a = matplotlib.image.imread(str(path))
        except FileNotFoundError:
            raise ValueError(f"{path}: not found") from None
        except Exception as e:  # noqa: BLE001 - readers raise many types on malformed files
            raise ValueError(f"{path}: not a readable PNG or .npy image ({type(e).__name__})") from None
        if a.dtype == np.uint8:
            a = a.astype(np.float32) / 255
        if a.dtype.kind not in "fiu":
            raise ValueError(f"{path}: pixels of type {a.dtype} are not grey levels")
        a = a.astype(np.float32)
        if path.suffix.lower() != ".npy" and a.ndim == 3:  # PNG with colour channels
            a = a[..., :3].mean(-1) if a.shape[-1] >= 3 else a[..., 0]
        if a.ndim == 2 and a.shape == (h, w):
            a = a.reshape(1, h * w)
        elif a.ndim == 3 and a.shape[1:] == (h, w):
            a = a.reshape(a.shape[0], h * w)
        elif not (a.ndim == 2 and a.shape[1] == h * w and path.suffix.lower() == ".npy"):
            raise ValueError(f"{path}: images of shape {a.shape} do not match the expected {h}x{w} pixels")
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise ValueError(f"{path}: grey levels must lie in [0, 1] (or be uint8)")
        arrays.append(a)
    if not arrays:
        raise ValueError("no images given")
    return torch.from_numpy(np.concatenate(arrays))
