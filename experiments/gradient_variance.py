"""Variance of the encoder's gradient under SGVB estimators A and B, with and without sticking-the-landing (STL).

Loads a trained run (e.g. the paper preset on MNIST, Nz = 20), fixes one minibatch of M training points and draws the
gradient of the minibatch loss with respect to the encoder's parameters R times with fresh noise. Reports the
total variance (trace of the gradient's covariance), the squared norm of the mean gradient, and their ratio (a
signal-to-noise figure). Usage:
    python experiments/gradient_variance.py RUN [--repeats 300] [--batch-size 100]
"""
from __future__ import annotations

import argparse
import json

import torch

import aevb
from aevb.data import load
from aevb.estimators import sgvb_a, sgvb_b

VARIANTS = {"A": (sgvb_a, "standard"), "A + STL": (sgvb_a, "stl"), "B": (sgvb_b, "standard"),
            "B + STL": (sgvb_b, "stl")}


def encoder_gradients(model, x, estimator, gradient: str, repeats: int) -> torch.Tensor:
    params = list(model.encoder.parameters()) + list(model.enc_head.parameters())
    rows = []
    for _ in range(repeats):
        loss = estimator(model, x, num_samples=1, gradient=gradient)["loss"]
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]).double())
    return torch.stack(rows)  # (R, P)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--data-dir")
    args = p.parse_args()
    model, config = aevb.load_run(args.run)
    model.train()
    ds = load(config["data"]["dataset"], split=config["data"]["split"], data_dir=args.data_dir or config["data"]["data_dir"])
    x = ds.train[torch.randperm(ds.train.shape[0], generator=torch.Generator().manual_seed(0))[: args.batch_size]]
    rows = {}
    for name, (est, gradient) in VARIANTS.items():
        torch.manual_seed(1)
        g = encoder_gradients(model, x, est, gradient, args.repeats)
        var, mean_sq = g.var(0).sum().item(), g.mean(0).pow(2).sum().item()
        rows[name] = {"total_variance": var, "mean_grad_sq_norm": mean_sq, "snr": mean_sq / var}
    print("| estimator | total variance of the encoder gradient | squared norm of its mean | ratio |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['total_variance']:.4g} | {r['mean_grad_sq_norm']:.4g} | {r['snr']:.3g} |")
    print(json.dumps({"run": args.run, "repeats": args.repeats, "batch_size": args.batch_size, "results": rows}))


if __name__ == "__main__":
    main()
