"""Training speed of aevb's `--arch conv` against a plain PyTorch loop of the same network and optimizer.

Both train a convolutional VAE with a discretized-logistic likelihood on synthetic 32x32x3 8-bit images (resident
in memory), estimator B (analytic KL, one z per datapoint), Adam at a constant step size:
  aevb:      ConvVAE + aevb's Trainer (`aevb.fit`'s training loop, its guard against non-finite steps included),
             timed through Trainer.train_steps with one synchronization at the end;
  reference: the same architecture written out as a plain nn.Module, the loss written out (PixelCNN++-style
             discretized logistic), a shuffled resident tensor sliced into minibatches, zero_grad/backward/step.
Before timing, the reference is given aevb's initial weights and both compute log p(x|z) at z = mu(x) for one
minibatch: equal values show that the two are the same network and the same likelihood. The contenders then
alternate, a few seconds each per round; the medians and their ratio are printed.

Usage: python benchmarks/conv_speed.py --threads 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from aevb import TrainConfig
from aevb.models import ConvVAE, ModelConfig
from aevb.train import Trainer

SHAPE = (3, 32, 32)
HALF_BIN = 0.5 / 255


# -- the reference: the network and the loss written out -------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, h):
        return h + self.conv2(F.elu(self.conv1(F.elu(h))))


class ReferenceVAE(nn.Module):
    """Encoder: stride-2 4x4 convs with residual blocks, a linear layer to [mu, log sigma^2]; decoder: a linear
    layer to a 32/2^L square map, blocks, stride-2 transposed convs with blocks, a 3x3 conv to [loc, log s]."""

    def __init__(self, widths: tuple[int, ...], blocks: int, nz: int):
        super().__init__()
        self.widths, self.side = widths, SHAPE[1] // 2 ** len(widths)
        enc, cin = [], SHAPE[0]
        for w in widths:
            enc += [nn.Conv2d(cin, w, 4, 2, 1), nn.ELU(), *(Block(w) for _ in range(blocks))]
            cin = w
        self.enc = nn.Sequential(*enc)
        flat = widths[-1] * self.side ** 2
        self.enc_out = nn.Linear(flat, 2 * nz)
        self.dec_in = nn.Linear(nz, flat)
        dec = [nn.ELU(), *(Block(widths[-1]) for _ in range(blocks))]
        for i in reversed(range(len(widths))):
            w_out = widths[max(i - 1, 0)]
            dec += [nn.ConvTranspose2d(widths[i], w_out, 4, 2, 1), nn.ELU(), *(Block(w_out) for _ in range(blocks))]
        dec.append(nn.Conv2d(widths[0], 2 * SHAPE[0], 3, padding=1))
        self.dec = nn.Sequential(*dec)

    def encode(self, x):
        return self.enc_out(self.enc(x.view(-1, *SHAPE)).flatten(1)).chunk(2, -1)

    def log_px(self, z, x):
        """log p(x|z) per image: discretized logistic on the 256 levels, tails at 0 and 255."""
        out = self.dec(self.dec_in(z).view(-1, self.widths[-1], self.side, self.side))
        loc, log_s = out[:, :SHAPE[0]], out[:, SHAPE[0]:].clamp(-10, 10)
        x = x.view(-1, *SHAPE)
        inv_s = torch.exp(-log_s)
        plus, minus = inv_s * (x - loc + HALF_BIN), inv_s * (x - loc - HALF_BIN)
        mid = torch.log((torch.sigmoid(plus) - torch.sigmoid(minus)).clamp(min=1e-12))
        mid_pdf = (inv_s * (x - loc)) - log_s - 2 * F.softplus(inv_s * (x - loc)) + torch.log(torch.tensor(1 / 255))
        mid = torch.where(torch.sigmoid(plus) - torch.sigmoid(minus) > 1e-5, mid, mid_pdf)
        ll = torch.where(x < HALF_BIN, F.logsigmoid(plus), torch.where(x > 1 - HALF_BIN, F.logsigmoid(-minus), mid))
        return ll.flatten(1).sum(1)

    def loss(self, x):
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return (kl - self.log_px(z, x)).mean()


def reference_loop(model: ReferenceVAE, x: torch.Tensor, batch: int, lr: float):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    state = {"order": torch.randperm(x.shape[0]), "at": 0}

    def run(steps: int) -> float:
        t = time.perf_counter()
        last = None
        for _ in range(steps):
            if state["at"] + batch > x.shape[0]:
                state["order"], state["at"] = torch.randperm(x.shape[0]), 0
            xb = x[state["order"][state["at"]:state["at"] + batch]]
            state["at"] += batch
            opt.zero_grad(set_to_none=True)
            last = model.loss(xb)
            last.backward()
            opt.step()
        float(last.detach())  # one sync at the end
        return steps * batch / (time.perf_counter() - t)
    return run


def time_aevb(trainer: Trainer, steps: int) -> float:
    t = time.perf_counter()
    float(trainer.train_steps(steps))
    return steps * trainer.cfg.batch_size / (time.perf_counter() - t)


def synthetic_images(n: int, seed: int = 0) -> torch.Tensor:
    """n smooth random 8-bit RGB images as flat rows in [0, 1]: low-resolution noise upsampled, then quantized."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, SHAPE[0], 8, 8, generator=g)
    return (F.interpolate(low, size=SHAPE[1:], mode="bilinear", align_corners=False) * 255).round().div(255).flatten(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--widths", default="32,64", help="--conv-widths (default 32,64)")
    p.add_argument("--blocks", type=int, default=1, help="--conv-blocks (default 1)")
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n", type=int, default=2048, help="synthetic training images (default 2048)")
    p.add_argument("--seconds", type=float, default=3.0, help="rough time per contender per round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    widths = tuple(int(w) for w in args.widths.split(","))

    x = synthetic_images(args.n)
    torch.manual_seed(0)
    cfg = ModelConfig(x_dim=x.shape[1], arch="conv", image_shape=SHAPE, latent_dim=args.latent_dim, activation="elu",
                      likelihood="discretized-logistic", conv_widths=widths, conv_blocks=args.blocks)
    model = ConvVAE(cfg)
    ref = ReferenceVAE(widths, args.blocks, args.latent_dim)
    pairs = list(zip(ref.parameters(), model.parameters(), strict=True))
    assert all(a.shape == b.shape for a, b in pairs), "the reference is not the same network"
    with torch.no_grad():
        for a, b in pairs:
            a.copy_(b)
        xb = x[:args.batch_size]
        mu = model.encoder_params(xb)[:, :args.latent_dim]
        same = torch.allclose(ref.log_px(mu, xb), model.log_likelihood(mu, xb), rtol=1e-4, atol=1e-2)
    assert same, "the reference computes another log p(x|z)"

    train_cfg = TrainConfig(estimator="sgvb_b", optimizer="adam", lr=args.lr, schedule="constant",
                            batch_size=args.batch_size, samples=10**9, ema=0.0)
    trainer = Trainer(model, x, x[:256], train_cfg, run_dir=None, progress=False)
    run_ref = reference_loop(ref, x, args.batch_size, args.lr)
    time_aevb(trainer, 5)  # warm-up
    run_ref(5)
    steps_a = max(5, int(args.seconds * time_aevb(trainer, 5) / args.batch_size))
    steps_r = max(5, int(args.seconds * run_ref(5) / args.batch_size))
    a, r = [], []
    for _ in range(args.rounds):
        a.append(time_aevb(trainer, steps_a))
        r.append(run_ref(steps_r))
    print(json.dumps({
        "threads": torch.get_num_threads(), "torch": torch.__version__, "image": list(SHAPE),
        "conv_widths": list(widths), "conv_blocks": args.blocks, "latent_dim": args.latent_dim,
        "batch_size": args.batch_size, "parameters": sum(p.numel() for p in model.parameters()),
        "same_log_px_at_start": bool(same),
        "aevb_samples_per_s": [round(v, 1) for v in a], "reference_samples_per_s": [round(v, 1) for v in r],
        "aevb_median": round(statistics.median(a), 1), "reference_median": round(statistics.median(r), 1),
        "ratio_aevb_to_reference": round(statistics.median(a) / statistics.median(r), 3),
    }, indent=2))


if __name__ == "__main__":
    main()
