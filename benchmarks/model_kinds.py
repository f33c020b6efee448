"""Training speed of each model kind against the plain VAE: +mog, +vamp (learned priors), +planar, +iaf (flows),
and two-layer hierarchical VAEs (h2-bu: bottom-up inference, h2-td: top-down; 784-[500]-20-[100,100]-20), the
latter also with the VampPrior on z_2 (h2-td+vamp) and an IAF on q(z_2|x) (h2-td+vamp+iaf).

Every kind is the MLP VAE on MNIST shapes (784 grey levels, Bernoulli likelihood, --hidden 500, Nz = 20) trained by
aevb's Trainer with Adam at a constant step size, batch 100, one z per datapoint, estimator `auto` (sgvb_b for the
plain VAE, sgvb_a for the others, which have no closed-form KL). The kinds take turns, `--seconds` each per round,
for `--rounds` rounds (alternating evens out the machine's drift); the median training samples/s of each and its
ratio to the plain VAE's median are printed, then a JSON line.

Usage: python benchmarks/model_kinds.py --threads 1 --rounds 3 --seconds 4 [--data-dir ../shared/data]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from aevb import TrainConfig, data
from aevb.models import ModelConfig, build
from aevb.train import Trainer

KINDS = {
    "vae": {},
    "+mog": {"prior": "mog"},  # K = 10
    "+vamp": {"prior": "vamp"},  # K = 500 pseudo-inputs through the encoder at every step
    "+planar": {"flow": "planar"},  # T = 10, amortized
    "+iaf": {"flow": "iaf"},  # T = 4, hidden 128
    # two stochastic layers of 20 (z = 40 numbers), 100,100 between them
    "h2-bu": {"stochastic_layers": 2, "latent_dims": (20, 20), "inference": "bottom-up"},
    "h2-td": {"stochastic_layers": 2, "latent_dims": (20, 20), "inference": "top-down"},
    "h2-td+vamp": {"stochastic_layers": 2, "latent_dims": (20, 20), "prior": "vamp"},  # top-down, p(z_2) vamp
    "h2-td+vamp+iaf": {"stochastic_layers": 2, "latent_dims": (20, 20), "prior": "vamp", "flow": "iaf"},
}


def trainer(kind: str, x: torch.Tensor) -> Trainer:
    torch.manual_seed(0)
    model = build(ModelConfig(x_dim=784, latent_dim=20, hidden=(500,), image_shape=(28, 28), **KINDS[kind]))
    cfg = TrainConfig(optimizer="adam", lr=1e-3, batch_size=100, schedule="constant", samples=10**9, estimator="auto")
    return Trainer(model, x, x[:1000], cfg, run_dir=None, progress=False)


def rate(t: Trainer, seconds: float) -> float:
    """Training samples/s over about `seconds`, in chunks of 10 steps."""
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        float(t.train_steps(10))
        steps += 10
    return steps * t.cfg.batch_size / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    x = data.load("mnist", data_dir=args.data_dir, download=False).train[:10000]
    trainers = {k: trainer(k, x) for k in KINDS}
    for t in trainers.values():
        rate(t, 0.5)  # warm-up
    rates: dict[str, list[float]] = {k: [] for k in KINDS}
    for _ in range(args.rounds):
        for k, t in trainers.items():
            rates[k].append(rate(t, args.seconds))
    base = statistics.median(rates["vae"])
    print(f"{'kind':14s} {'estimator':9s} {'samples/s':>10s} {'vs vae':>7s}   (median of {args.rounds} rounds of "
          f"{args.seconds:g} s, {args.threads} thread(s))")
    out = {}
    for k, t in trainers.items():
        med = statistics.median(rates[k])
        est = t.eval_estimator
        out[k] = {"samples_per_s": round(med, 1), "ratio": round(med / base, 3), "estimator": est}
        print(f"{k:14s} {est:9s} {med:10.0f} {med / base:7.2f}")
    print(json.dumps({"threads": args.threads, "rounds": args.rounds, "seconds": args.seconds, "kinds": out}))


if __name__ == "__main__":
    main()
