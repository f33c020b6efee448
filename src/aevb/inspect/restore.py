"""Image restoration with a trained VAE as the prior over images: denoising, inpainting, super-resolution.

Images are grey ([H, W]) or have C channels ([C, H, W], C = 3 for RGB), each an (N, D) row of D = C*H*W values in
[0, 1], C-major. Every task compares the VAE's answers with naive baselines by PSNR (per image, 10 log10(1 / MSE)
over all its values, then averaged over images):

- denoise: Gaussian noise of std `noise`, clipped to [0, 1]. VAE: the posterior reconstruction, the decoder mean
  at the encoder's posterior mean of the noisy image (`reconstruction`), and latent optimization under the known
  noise model (`optimize`: z maximizing -|mean(z) - noisy|^2 / (2 noise^2) + log p(z) by Adam from the encoder's
  posterior mean; the output is the decoder mean there). Baselines: the noisy image itself (`noisy`) and a 3x3
  box filter of each channel (`box3`).
- inpaint: a mask of missing pixels (a missing pixel is missing in every channel). VAE: `iterative` (fill with the pixel means, then repeat `steps` times:
  encode, decode, keep the observed pixels, replace the missing ones by the decoder mean at the posterior mean),
  `optimize` (latent optimization: z maximizing log p(x_observed | z) + log p(z) by Adam, started at the
  encoder's posterior mean of the mean-filled image; the missing pixels are the decoder mean there) and
  `importance` (the model's conditional p(x_missing | x_observed) by self-normalized importance sampling with
  the encoder's q on the `optimize` completion as proposal: its predictive mean, and log p(x_missing | x_observed)).
  Baseline: the training set's per-pixel mean (`mean_fill`). Also reported: PSNR on the missing pixels alone and
  the log-likelihood of the missing pixels (nats per image) under each method's predictive distribution, where
  one is defined (the mean fill has one for the Bernoulli likelihood: independent Bernoulli pixels with the
  training means as probabilities).
- superres: the observation is the f x f block average of each channel (f = 2 or 4). VAE: `iterative` (start from the bilinear
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

from ..likelihoods import GreyLevelBernoulli
from .restore_methods import (FACTORS, MASKS, PSNR_CAP, _back_project, _dev,  # noqa: F401
                              _pixel_log_prob, add_noise, box_filter, channels_hw, denoise_optimize, downsample,
                              inpaint_importance, inpaint_iterative, inpaint_optimize, low_shape, make_mask,
                              posterior_reconstruction, psnr, spread_mask, superres_iterative, superres_optimize,
                              upsample)

TASKS = ("denoise", "inpaint", "superres")


@dataclass
class Restoration:
    """What a task produced: (N, D) tensors of values in [0, 1]; `truth` is None for observed-only inputs.

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


# --- tasks ---------------------------------------------------------------------------------------------------

def _batched(fn, batch_size: int, *tensors):
    """Apply fn to aligned row blocks of the tensors; concatenates each output (tensors or tuples of tensors)."""
    outs = [fn(*parts) for parts in zip(*(t.split(batch_size) for t in tensors))]
    if isinstance(outs[0], tuple):
        return tuple(None if o[0] is None else torch.cat(o) for o in zip(*outs))
    return torch.cat(outs)


def run_task(model, task: str, image_shape, *, truth: torch.Tensor | None = None,
             observed: torch.Tensor | None = None, missing: torch.Tensor | None = None,
             pixel_mean: torch.Tensor | None = None, noise: float = 0.3, factor: int = 2, steps: int = 50,
             opt_steps: int = 300, samples: int = 200, seed: int = 0, batch_size: int = 500) -> Restoration:
    """Corrupt `truth` (N, D) for `task` (or take `observed` as given) and restore it with every method.

    Args:
        image_shape: [H, W] or [C, H, W] (C-major rows).
        truth: clean images; when given, they are corrupted here and every metric is defined.
        observed: already corrupted inputs instead: noisy images (denoise), images whose `missing` pixels are
            ignored (inpaint), or low-resolution images (N, C*(H/f)*(W/f)) (superres).
        missing: (N, D) bool, True where values are missing (inpaint; required; see `make_mask`).
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
        return _denoise(model, image_shape, truth, observed, noise, opt_steps, seed, batch_size, settings)
    if task == "inpaint":
        return _inpaint(model, truth, observed, missing, pixel_mean, steps, opt_steps, samples, batch_size, settings)
    return _superres(model, image_shape, truth, observed, factor, steps, opt_steps, batch_size, settings)


def _denoise(model, image_shape, truth, observed, noise, opt_steps, seed, batch_size, settings) -> Restoration:
    y = add_noise(truth, noise, seed) if truth is not None else observed
    outputs = {
        "noisy": y, "box3": box_filter(y, image_shape),
        "reconstruction": _batched(lambda a: posterior_reconstruction(model, a), batch_size, y),
        "optimize": _batched(lambda a: denoise_optimize(model, a, noise, steps=opt_steps), batch_size, y),
    }
    kinds = {"noisy": "baseline", "box3": "baseline", "reconstruction": "vae", "optimize": "vae"}
    settings.update(noise=noise)
    return Restoration("denoise", y, outputs, kinds, truth, settings=settings)


def _inpaint(model, truth, observed, missing, pixel_mean, steps, opt_steps, samples, batch_size,
             settings) -> Restoration:
    if missing is None or pixel_mean is None:
        raise ValueError("inpainting needs a mask and the training pixel means")
    missing = missing.to(_dev(model))
    src = truth if truth is not None else observed
    if missing.shape != src.shape:
        raise ValueError(f"the mask has shape {tuple(missing.shape)}, the images {tuple(src.shape)}")
    fill = pixel_mean.to(_dev(model)).to(src.dtype)
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
        loglik = _latent_loglik(model, truth, missing, {"iterative": z_it, "optimize": z_op}, batch_size)
        loglik["importance"] = ll_imp
        if model.config.likelihood == "bernoulli":
            loglik["mean_fill"] = _mean_fill_loglik(truth, missing, fill)
    shown = torch.where(missing, torch.full_like(x_obs, 0.5), x_obs)
    settings.update(samples=samples, missing_fraction=float(missing.float().mean()))
    return Restoration("inpaint", shown, outputs, kinds, truth, missing, loglik, settings)


def _latent_loglik(model, truth, missing, latents: dict, batch_size: int) -> dict:
    """log p(x_missing | z) per image at each method's latent."""
    loglik = {}
    miss = missing.to(truth.dtype)
    with torch.no_grad():
        for name, z in latents.items():
            loglik[name] = _batched(lambda zz, t, m: (_pixel_log_prob(model, zz, t) * m).sum(-1), batch_size,
                                    z, truth, miss)
    return loglik


def _mean_fill_loglik(truth, missing, fill) -> torch.Tensor:
    """log p(x_missing) per image under independent grey-level Bernoullis with the mean fill as probabilities."""
    p = fill.clamp(1e-6, 1 - 1e-6)
    miss = missing.to(truth.dtype)
    return (GreyLevelBernoulli(probs=p, validate_args=False).log_prob(truth) * miss).sum(-1)


def _superres(model, image_shape, truth, observed, factor, steps, opt_steps, batch_size, settings) -> Restoration:
    low = low_shape(image_shape, factor)
    if truth is not None:
        y = downsample(truth, image_shape, factor)
    else:
        y = observed
        if y.shape[1] != math.prod(low):
            raise ValueError(f"low-resolution inputs must have {'x'.join(map(str, low))} values for factor "
                             f"{factor}, got {y.shape[1]}")
    outputs = {
        "nearest": upsample(y, image_shape, factor, "nearest"),
        "bilinear": upsample(y, image_shape, factor, "bilinear"),
        "iterative": _batched(lambda a: superres_iterative(model, a, image_shape, factor, steps), batch_size, y),
        "optimize": _batched(lambda a: superres_optimize(model, a, image_shape, factor, steps=opt_steps), batch_size,
                             y),
    }
    kinds = {"nearest": "baseline", "bilinear": "baseline", "iterative": "vae", "optimize": "vae"}
    settings.update(factor=factor)
    return Restoration("superres", outputs["nearest"], outputs, kinds, truth, settings=settings)


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


def comparison_figure(r: Restoration, image_shape, n_show: int = 10):
    """Rows: the truth (when known), the observed input, then every method; columns: the first n_show images
    (grey or RGB)."""
    from matplotlib.figure import Figure

    from .plots import as_images, image_grid

    rows = ([("truth", r.truth)] if r.truth is not None else []) + [("observed", r.observed)]
    rows += [(name, out) for name, out in r.outputs.items() if not (r.task == "denoise" and name == "noisy")
             and not (r.task == "superres" and name == "nearest")]
    n = min(n_show, r.observed.shape[0])
    metrics = summarize(r)["methods"] if r.truth is not None else {}
    _, h, w = channels_hw(image_shape)
    fig = Figure(figsize=(1.0 + 0.62 * n * w / h, 0.62 * len(rows) + 0.4))
    for i, (name, imgs) in enumerate(rows):
        ax = fig.add_subplot(len(rows), 1, i + 1)
        ax.imshow(image_grid(as_images(imgs[:n], image_shape), ncol=n), cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
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

def _read_array(path: Path) -> np.ndarray:
    """The pixels of a PNG or .npy file as float32 (uint8 divided by 255)."""
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
        raise ValueError(f"{path}: pixels of type {a.dtype} are not grey levels or colours")
    return a.astype(np.float32)


def _png_channels(a: np.ndarray, channels: int) -> np.ndarray:
    """A PNG's (H, W) or (H, W, K) pixels as (C, H, W): one channel averages R, G, B; three keep them (a grey PNG
    repeated in each). Alpha is dropped."""
    if a.ndim == 3:
        a = a[..., :3] if a.shape[-1] >= 3 else a[..., :1]
        a = a.transpose(2, 0, 1)
    else:
        a = a[None]
    if channels == 1:
        return a.mean(0, keepdims=True) if a.shape[0] == 3 else a
    return np.repeat(a, channels, 0) if a.shape[0] == 1 else a


def read_images(paths, shape) -> torch.Tensor:
    """Values in [0, 1] from PNG files or .npy arrays, checked against `shape`: [H, W] for grey levels or
    [C, H, W]. Returns (N, D), D = C*H*W, C-major.

    PNG: for one channel RGB(A) is averaged over the colours; for three, alpha is dropped and a grey PNG gives
    three equal channels. .npy: one image in the data's own layout ((H, W) or (C, H, W), channels first), a stack
    of them (N, ...), or flat rows (N, D); uint8 is divided by 255.
    """
    arrays = []
    c, h, w = channels_hw(shape)
    shape, d = tuple(int(v) for v in shape), c * h * w
    expected = f"{h}x{w} pixels" if c == 1 else f"{c} channels of {h}x{w} pixels"
    for path in map(Path, paths):
        a = _read_array(path)
        npy = path.suffix.lower() == ".npy"
        if not npy:
            a = _png_channels(a, c)
            a = a[0] if len(shape) == 2 else a
        if a.shape == shape:
            a = a.reshape(1, d)
        elif a.ndim == len(shape) + 1 and a.shape[1:] == shape:
            a = a.reshape(a.shape[0], d)
        elif not (a.ndim == 2 and a.shape[1] == d and npy):
            raise ValueError(f"{path}: images of shape {a.shape} do not match the expected {expected}")
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise ValueError(f"{path}: values must lie in [0, 1] (or be uint8)")
        arrays.append(a)
    if not arrays:
        raise ValueError("no images given")
    return torch.from_numpy(np.concatenate(arrays))
