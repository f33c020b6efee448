"""The pieces of restoration: corruptions and PSNR, and each method that restores with the model as a prior
(latent optimization, iterative projection, importance sampling); `restore` runs them as tasks."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import biject_to

from .diagnostics import posterior_means

MASKS = ("center", "half", "random")
FACTORS = (2, 4)
PSNR_CAP = 100.0  # dB, for an exact match (MSE floored at 1e-10)


# --- measures and corruptions --------------------------------------------------------------------------------

def psnr(estimate: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image PSNR in dB of (N, D) values in [0, 1] (grey levels, or every channel of every pixel):
    10 log10(1 / MSE), over the values where `mask` is True (all without a mask). MSE is floored at 1e-10
    (100 dB)."""
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


def channels_hw(image_shape) -> tuple[int, int, int]:
    """(C, H, W) of an image shape [H, W] (C = 1) or [C, H, W]."""
    shape = tuple(int(v) for v in image_shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"expected an image shape [H, W] or [C, H, W], got {list(shape)}")
    return (1, *shape) if len(shape) == 2 else shape


def spread_mask(pixels: torch.Tensor, image_shape) -> torch.Tensor:
    """A mask over pixel positions (n, H*W) as a mask over the values of a row (n, C*H*W): each pixel's mask in
    every channel (rows are C-major)."""
    c, h, w = channels_hw(image_shape)
    return pixels.reshape(-1, 1, h * w).expand(-1, c, -1).reshape(-1, c * h * w).clone()


def make_mask(kind: str, n: int, image_shape, *, fraction: float = 0.5, seed: int = 0, device=None) -> torch.Tensor:
    """(n, D) bool mask, True where values are missing; it covers pixel positions, so for C channels a pixel is
    missing in all of them (`image_shape` [H, W] or [C, H, W]).

    center: the centred block of H/2 x W/2 pixels (rounded down, centred); half: the bottom half of the rows;
    random: each pixel independently with probability `fraction` (a private seeded generator; the same pixels
    for any number of channels).
    """
    _, h, w = channels_hw(image_shape)
    if kind in ("center", "half"):
        m = torch.zeros(h, w, dtype=torch.bool)
        if kind == "center":
            bh, bw = h // 2, w // 2
            top, left = (h - bh) // 2, (w - bw) // 2
            m[top:top + bh, left:left + bw] = True
        else:
            m[h // 2:] = True
        return spread_mask(m.reshape(1, -1).expand(n, -1), image_shape).to(device)
    if kind == "random":
        if not 0 < fraction < 1:
            raise ValueError(f"the missing fraction must be in (0, 1), got {fraction}")
        gen = torch.Generator().manual_seed(seed)
        return spread_mask(torch.rand(n, h * w, generator=gen) < fraction, image_shape).to(device)
    raise ValueError(f"unknown mask {kind!r}; choose from {', '.join(MASKS)} or give a mask file")


def _check_factor(image_shape, factor: int) -> None:
    if factor not in FACTORS:
        raise ValueError(f"the super-resolution factor must be one of {', '.join(map(str, FACTORS))}, got {factor}")
    _, h, w = channels_hw(image_shape)
    if h % factor or w % factor:
        raise ValueError(f"images of {h}x{w} pixels do not divide into {factor}x{factor} blocks")


def low_shape(image_shape, factor: int) -> tuple[int, ...]:
    """The image shape after f x f block averaging: [H/f, W/f] or [C, H/f, W/f]."""
    _check_factor(image_shape, factor)
    shape = tuple(int(v) for v in image_shape)
    return (*shape[:-2], shape[-2] // factor, shape[-1] // factor)


def downsample(x: torch.Tensor, image_shape, factor: int) -> torch.Tensor:
    """f x f block averages of each channel: (N, C*H*W) -> (N, C*(H/f)*(W/f)), rows C-major."""
    _check_factor(image_shape, factor)
    return F.avg_pool2d(x.reshape(-1, *channels_hw(image_shape)), factor).flatten(1)


def upsample(y: torch.Tensor, image_shape, factor: int, mode: str) -> torch.Tensor:
    """(N, C*(H/f)*(W/f)) -> (N, C*H*W), each channel by `nearest` (repetition) or `bilinear` (half-pixel centres,
    edges clamped); `image_shape` is the full-resolution [H, W] or [C, H, W]."""
    _check_factor(image_shape, factor)
    c, h, w = channels_hw(image_shape)
    small = y.reshape(-1, c, h // factor, w // factor)
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(small, size=(h, w), mode=mode, **kw).flatten(1).clamp(0, 1)


def box_filter(x: torch.Tensor, image_shape) -> torch.Tensor:
    """3x3 mean filter of each channel (at the borders, the mean of the pixels inside the image)."""
    out = F.avg_pool2d(x.reshape(-1, *channels_hw(image_shape)), 3, stride=1, padding=1, count_include_pad=False)
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


def _values(p):
    """The per-value distribution of p(x|z) (values independent given z), or a one-line ValueError."""
    if not hasattr(p, "base_dist"):
        raise ValueError("restoration needs a likelihood whose values are independent given z; the logistic mixture "
                         "(--mixtures > 1) couples each pixel's channels")
    return p.base_dist


def _pixel_log_prob(model, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x_d | z) per pixel: (..., D)."""
    return _values(model.decode(z)).log_prob(x)


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
        per_pixel = _values(p).log_prob(x_obs)  # observed pixels are exact in x_obs; missing ones are ignored
        lw = (per_pixel * observed).sum(-1) + prior.log_prob(z) - q.log_prob(z)  # (k, B)
        new_top = torch.maximum(top, lw.max(0).values)
        rescale = torch.exp(top - new_top)
        w = torch.exp(lw - new_top)
        acc = acc * rescale.unsqueeze(-1) + (w.unsqueeze(-1) * p.mean.clamp(0, 1)).sum(0)
        norm = norm * rescale + w.sum(0)
        top = new_top
        log_w.append(lw)
        if truth is not None:
            lik_miss.append((_values(p).log_prob(truth) * (1 - observed)).sum(-1))
    completion = torch.where(missing, acc / norm.unsqueeze(-1), x_obs)
    loglik = None
    if truth is not None:
        log_w = torch.cat(log_w)  # (K, B)
        loglik = torch.logsumexp(log_w + torch.cat(lik_miss), 0) - torch.logsumexp(log_w, 0)
    return completion, loglik


# --- super-resolution ----------------------------------------------------------------------------------------

def _back_project(x: torch.Tensor, y: torch.Tensor, image_shape, factor: int, iterations: int = 50) -> torch.Tensor:
    """The nearest image in [0, 1] whose f x f block averages are y (x in [0, 1], y in [0, 1]): per block of each
    channel, clip(x + s, 0, 1) with the shift s that makes its average y, found by bisection on [-1, 1] (the
    Euclidean projection onto the intersection of the box and the block's average constraint)."""
    c, h, w = channels_hw(image_shape)
    n, f = x.shape[0], factor
    blocks = x.reshape(n, c, h // f, f, w // f, f).permute(0, 1, 2, 4, 3, 5).reshape(n, -1, f * f)
    lo = torch.full(y.shape, -1.0, dtype=x.dtype, device=x.device)
    hi = torch.full(y.shape, 1.0, dtype=x.dtype, device=x.device)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        low = (blocks + mid.unsqueeze(-1)).clamp(0, 1).mean(-1) < y
        lo, hi = torch.where(low, mid, lo), torch.where(low, hi, mid)
    out = (blocks + ((lo + hi) / 2).unsqueeze(-1)).clamp(0, 1)
    return out.reshape(n, c, h // f, w // f, f, f).permute(0, 1, 2, 4, 3, 5).reshape(n, c * h * w)


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
