"""Several small models batched into one set of matrix products: does it raise training throughput on this CPU?

    python benchmarks/stacked_replicas.py [--replicas 3] [--latent-dims 20,200] [--threads 1,2]

`aevb reproduce fig2 --seeds N` trains N replicas of each of the paper's MNIST models (784-500 tanh, Bernoulli
decoder, estimator B, Adagrad with the prior's weight decay, M = 100). Replicas share every shape, so their weights
can be stacked and each layer run as one batched product (torch.baddbmm) over all of them. This script measures that
design, which aevb does not ship, against the replicas' separate steps, side by side in one process:
  separate: N VAEs, one step each per round (what --jobs 1 does, model after model);
  stacked:  one VAE whose nn.Linear layers are replaced by StackedLinear, one step for all N replicas.
Each round draws its own minibatch per replica and applies Adagrad, so both do the same work per replica-step. The
two interleave for --repeats rounds of --steps steps, and the best time of each is kept. Before timing, it checks
that one stacked step gives each replica the same loss and gradients as its separate step.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from torch import nn

from aevb.estimators import sgvb_b
from aevb.models import VAE, ModelConfig


class StackedLinear(nn.Module):
    """N nn.Linear layers of one shape as one: weight (N, in, out), bias (N, 1, out); input (..., N, B, in)."""

    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([layer.weight.detach().t() for layer in layers]))
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]).unsqueeze(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, (n, b, d) = x.shape[:-3], x.shape[-3:]
        flat = x.movedim(-3, 0).reshape(n, -1, d) if lead else x
        y = torch.baddbmm(self.bias, flat, self.weight)
        return y.reshape(n, *lead, b, -1).movedim(0, -3) if lead else y


def stack(models: list[VAE]) -> VAE:
    """A VAE computing all `models` at once: x (N, B, D) -> q(z|x) with batch shape (N, B), and so on."""
    stacked = copy.deepcopy(models[0])
    for name, module in list(stacked.named_modules()):
        if isinstance(module, nn.Linear):
            parent, _, leaf = name.rpartition(".")
            owner = stacked.get_submodule(parent) if parent else stacked
            setattr(owner, leaf, StackedLinear([m.get_submodule(name) for m in models]))
    return stacked


def adagrad(params) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(params, lr=0.02, eps=1e-8, weight_decay=1 / 50_000, fused=True)


def check_gradients(models: list[VAE], x: torch.Tensor) -> float:
    """Largest relative difference between a stacked step's gradients and the separate steps', same z noise."""
    stacked = stack(models)
    batch = x[: len(models) * 20].reshape(len(models), 20, -1)
    torch.manual_seed(1)  # one noise tensor for all replicas, then the same slices for each separate step
    (sgvb_b(stacked, batch)["loss"] * len(models)).backward()
    worst = 0.0
    for i, m in enumerate(models):
        m.zero_grad()
        q = m.encode(batch[i])
        torch.manual_seed(1)
        eps = torch.randn(1, len(models), 20, m.config.latent_dim)[:, i]
        z = q.base_dist.loc + q.base_dist.scale * eps
        loss = -(m.decode(z).log_prob(batch[i]).mean(0) - torch.distributions.kl_divergence(q, m.prior())).mean()
        loss.backward()
        for name, module in m.named_modules():
            if isinstance(module, nn.Linear):
                s = stacked.get_submodule(name)
                for ours, theirs in ((s.weight.grad[i].t(), module.weight.grad), (s.bias.grad[i, 0], module.bias.grad)):
                    worst = max(worst, float((ours - theirs).abs().max() / theirs.abs().max()))
    return worst


def measure(replicas: int, nz: int, threads: int, steps: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = ModelConfig(x_dim=784, latent_dim=nz, hidden=(500,), activation="tanh", likelihood="bernoulli",
                      init="torch")
    models = [VAE(cfg) for _ in range(replicas)]
    x = torch.rand(50_000, 784)
    error = check_gradients(models, x)
    stacked, opts = stack(models), [adagrad(m.parameters()) for m in models]
    opt = adagrad(stacked.parameters())

    def separate():
        for m, o in zip(models, opts):
            o.zero_grad(set_to_none=True)
            sgvb_b(m, x[torch.randint(50_000, (100,))])["loss"].backward()
            o.step()

    def together():
        opt.zero_grad(set_to_none=True)
        (sgvb_b(stacked, x[torch.randint(50_000, (replicas, 100))])["loss"] * replicas).backward()
        opt.step()

    best = {"separate": float("inf"), "stacked": float("inf")}
    for _ in range(repeats):
        for name, fn in (("separate", separate), ("stacked", together)):
            for _ in range(5):
                fn()
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / steps)
    return {"replicas": replicas, "latent_dim": nz, "threads": threads, "separate_ms": 1e3 * best["separate"],
            "stacked_ms": 1e3 * best["stacked"], "speedup": best["separate"] / best["stacked"],
            "max_rel_grad_error": error}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--latent-dims", default="20,200")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_flush_denormal(True)  # as the trainer does
    print("| replicas | Nz | threads | separate (ms per round) | stacked (ms per round) | speed-up "
          "| max rel. grad error |")
    print("|---|---|---|---|---|---|---|")
    results = []
    for threads in map(int, args.threads.split(",")):
        for nz in map(int, args.latent_dims.split(",")):
            r = measure(args.replicas, nz, threads, args.steps, args.repeats)
            results.append(r)
            print(f"| {r['replicas']} | {nz} | {threads} | {r['separate_ms']:.2f} | {r['stacked_ms']:.2f} "
                  f"| {r['speedup']:.2f}x | {r['max_rel_grad_error']:.1e} |", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
