"""The autoencoder family as reference rows for the VAE: deterministic (AE), denoising (DAE) and sparse (SAE).

The same MLPs as the VAE (nets.mlp, the decoder mirrors the encoder) around a deterministic code of Nz numbers,
trained on reconstruction alone (plus the DAE's corruption or the SAE's sparsity penalty): no prior on the code,
which is what the VAE's KL term adds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models import ModelConfig
from ..nets import mlp
from ..optim import make_optimizer
from ..train import Batches, TrainConfig, eval_points, lr_factor

KINDS = ("ae", "dae", "sae")
# bce: cross-entropy of x with sigmoid(logits), the VAE's Bernoulli reconstruction term on grey levels (nats);
# mse: squared error of a linear output, the classical setting in which a linear AE finds the PCA subspace.
LOSSES = ("bce", "mse")
# mask: each input pixel set to 0 with probability `noise` (Vincent et al. 2008); gaussian: x + noise * N(0, 1).
CORRUPTIONS = ("mask", "gaussian")


@dataclass(frozen=True)
class AEConfig:
    """What kind of autoencoder and its regularizer (the architecture comes from a ModelConfig).

    Attributes:
        kind: "ae" (plain), "dae" (denoising: corrupted input, clean target) or "sae" (sparse: sigmoid code with
            the penalty sparsity_weight * sum_j KL(rho || rho_hat_j), rho_hat_j the minibatch mean of unit j).
        loss: a key of LOSSES.
        corruption: a key of CORRUPTIONS (DAE).
        noise: the masking probability or the Gaussian noise's standard deviation (DAE).
        rho: target mean activation of each code unit (SAE).
        sparsity_weight: beta, the weight of the sparsity penalty (SAE).
    """

    kind: str = "ae"
    loss: str = "bce"
    corruption: str = "mask"
    noise: float = 0.25
    rho: float = 0.05
    sparsity_weight: float = 1.0

    def __post_init__(self):
        checks = [
            (self.kind in KINDS, f"unknown autoencoder kind {self.kind!r}; choose from {', '.join(KINDS)}"),
            (self.loss in LOSSES, f"unknown loss {self.loss!r}; choose from {', '.join(LOSSES)}"),
            (self.corruption in CORRUPTIONS,
             f"unknown corruption {self.corruption!r}; choose from {', '.join(CORRUPTIONS)}"),
            (self.noise >= 0 and (self.corruption != "mask" or self.noise < 1), f"bad noise level {self.noise}"),
            (0 < self.rho < 1, f"rho must be in (0, 1), got {self.rho}"),
            (self.sparsity_weight >= 0, f"sparsity_weight must be >= 0, got {self.sparsity_weight}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class Autoencoder(nn.Module):
    """x -> code (Nz numbers) -> reconstruction, with the VAE's encoder and decoder MLPs.

    The encoder head has Nz outputs (the VAE's has 2 Nz: mean and log-variance); the SAE passes them through a
    sigmoid. The decoder ends in one Linear layer of D outputs: logits for loss "bce", the reconstruction itself
    for "mse".
    """

    def __init__(self, config: ModelConfig, ae: AEConfig = AEConfig()):
        super().__init__()
        self.config, self.ae = config, ae
        c = config
        self.encoder = mlp(c.x_dim, c.hidden, c.activation)
        self.enc_head = nn.Linear(c.hidden[-1] if c.hidden else c.x_dim, c.latent_dim)
        dec_hidden = tuple(reversed(c.hidden))
        self.decoder = mlp(c.latent_dim, dec_hidden, c.activation)
        self.dec_out = nn.Linear(dec_hidden[-1] if dec_hidden else c.latent_dim, c.x_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code, (..., Nz): linear outputs, or sigmoid outputs in (0, 1) for the SAE."""
        code = self.enc_head(self.encoder(x))
        return torch.sigmoid(code) if self.ae.kind == "sae" else code

    def decoder_outputs(self, code: torch.Tensor) -> torch.Tensor:
        """The decoder's last pre-activations (..., D): logits (bce) or the reconstruction (mse)."""
        return self.dec_out(self.decoder(code))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """The reconstruction in data space: sigmoid of the logits (bce) or the linear output (mse)."""
        a = self.decoder_outputs(code)
        return torch.sigmoid(a) if self.ae.loss == "bce" else a


def corrupt(x: torch.Tensor, kind: str, noise: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The DAE's corruption: "mask" zeroes each entry with probability `noise`, "gaussian" adds noise * N(0, 1)."""
    if kind == "mask":
        keep = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) >= noise
        return x * keep
    if kind == "gaussian":
        return x + noise * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    raise ValueError(f"unknown corruption {kind!r}; choose from {', '.join(CORRUPTIONS)}")


def reconstruction_error(model: Autoencoder, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Per-datapoint error (B,) of decoder outputs a against x, summed over pixels.

    bce: -sum_d [x_d log sigmoid(a_d) + (1 - x_d) log sigmoid(-a_d)] (nats); mse: sum_d (a_d - x_d)^2.
    """
    if model.ae.loss == "bce":
        return F.binary_cross_entropy_with_logits(a, x, reduction="none").sum(-1)
    return (a - x).square().sum(-1)


def sparsity_penalty(code: torch.Tensor, rho: float) -> torch.Tensor:
    """sum_j KL(Bernoulli(rho) || Bernoulli(rho_hat_j)), rho_hat_j = mean of code unit j over the minibatch.

    KL(rho || r) = rho log(rho / r) + (1 - rho) log((1 - rho) / (1 - r)) (Ng, "Sparse autoencoder", 2011).
    """
    r = code.mean(0).clamp(1e-6, 1 - 1e-6)
    return (rho * torch.log(rho / r) + (1 - rho) * torch.log((1 - rho) / (1 - r))).sum()


def ae_loss(model: Autoencoder, x: torch.Tensor, *, generator: torch.Generator | None = None) -> dict:
    """The training objective of the configured kind on a minibatch.

    loss = mean_i error(x_i, decode(encode(x~_i))) [+ beta * sparsity penalty], with x~ = corrupt(x) for the
    DAE and x~ = x otherwise; the target is always the clean x.

    Returns:
        dict with `loss` (scalar, carries the graph), detached (B,) `rec` and scalar `penalty`.
    """
    c = model.ae
    x_in = corrupt(x, c.corruption, c.noise, generator) if c.kind == "dae" else x
    code = model.encode(x_in)
    rec = reconstruction_error(model, x, model.decoder_outputs(code))
    penalty = sparsity_penalty(code, c.rho) if c.kind == "sae" else torch.zeros((), device=x.device)
    loss = rec.mean() + c.sparsity_weight * penalty
    return {"loss": loss, "rec": rec.detach(), "penalty": penalty.detach()}


def fit_autoencoder(model: Autoencoder, train_x: torch.Tensor, cfg: TrainConfig) -> list[dict]:
    """Minibatch training of `ae_loss` with the VAE trainer's optimizer, schedule and data order.

    Uses cfg's samples/epochs, batch_size, replacement, optimizer, lr, schedule, min_lr_ratio, warmup_steps,
    weight_decay and seed; the VAE-only options must stay at their defaults.

    Returns:
        One dict per evaluation point (1, 2, 5 x 10^k datapoints): `samples_seen` and `train_loss`, the mean
        minibatch loss since the previous point.
    """
    if cfg.ema or cfg.binarize != "none" or cfg.lr_candidates or cfg.compile:
        raise ValueError("fit_autoencoder does not support ema, binarize, lr_candidates or compile")
    torch.manual_seed(cfg.seed)
    n = train_x.shape[0]
    total = cfg.total_samples(n)
    steps = math.ceil(total / cfg.batch_size)
    opt = make_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr, n_train=n, weight_decay=cfg.weight_decay)
    batches = Batches(n, cfg.batch_size, cfg.replacement, cfg.seed + 1)
    noise = torch.Generator(device=train_x.device).manual_seed(cfg.seed + 2)
    history, step, seen = [], 0, 0
    for point in eval_points(total, cfg.evals_per_decade):
        running, count = torch.zeros((), device=train_x.device), 0
        while seen < point and step < steps:
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(cfg, step, steps)
            out = ae_loss(model, train_x[batches.next().to(train_x.device)], generator=noise)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            running += out["loss"].detach()
            step, seen, count = step + 1, seen + cfg.batch_size, count + 1
        history.append({"samples_seen": seen, "train_loss": float(running) / max(1, count)})
    return history


@torch.no_grad()
def reconstruction_metrics(logits_fn, x: torch.Tensor, *, batch_size: int = 2000) -> dict:
    """Mean per-image reconstruction error of x from the logits a reconstruction gives, for any model.

    Args:
        logits_fn: x -> logits of the reconstruction, e.g. `lambda x: ae.decoder_outputs(ae.encode(x))` for a
            "bce" autoencoder, or the VAE's decoder logits at z = the mean of q(z|x).
        x: (N, D) grey levels in [0, 1].

    Returns:
        dict of floats: `bce` = -sum_d [x_d log p_d + (1 - x_d) log(1 - p_d)] in nats and `mse` = sum_d (p_d - x_d)^2,
        p = sigmoid(logits), both averaged over the N images.
    """
    sums = {"bce": 0.0, "mse": 0.0}
    for chunk in x.split(batch_size):
        a = logits_fn(chunk)
        sums["bce"] += float(F.binary_cross_entropy_with_logits(a, chunk, reduction="sum"))
        sums["mse"] += float((torch.sigmoid(a) - chunk).square().sum())
    return {k: v / x.shape[0] for k, v in sums.items()}
