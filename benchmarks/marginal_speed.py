"""Speed and memory of importance-sampling log p(x) with K = 5,000 over the MNIST test set.

The IWAE paper's one-layer architecture (784-200-200-50, tanh, Bernoulli), trained for a moment or loaded from a
run folder: time for all 10,000 test images (or --limit N, extrapolated) and the process's peak resident memory.
Prints one JSON object. Usage: python benchmarks/marginal_speed.py --data-dir ../shared/data [--run RUN] [--limit N]
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import torch

import aevb
from aevb.data import binarize_static, load
from aevb.marginal import importance_sampling


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--run", help="a trained run folder (default: the IWAE architecture, untrained)")
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--limit", type=int, help="evaluate the first N test images and extrapolate to 10,000")
    args = p.parse_args()
    if args.run:
        model, _ = aevb.load_run(args.run)
    else:
        torch.manual_seed(0)
        model = aevb.VAE(aevb.ModelConfig(784, 50, (200, 200), "tanh", "bernoulli")).eval()
    ds = load("mnist", data_dir=args.data_dir)
    x = binarize_static(ds.test, seed=54321)[: args.limit] if args.limit else binarize_static(ds.test, seed=54321)
    start = time.perf_counter()
    r = importance_sampling(model, x, num_samples=args.k, progress=True, seed=0)
    seconds = time.perf_counter() - start
    n = x.shape[0]
    print(json.dumps({
        "k": args.k, "n": n, "seconds": round(seconds, 1),
        "seconds_for_10000": round(seconds * 10_000 / n, 1), "target_seconds": 300,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3), "target_rss_gib": 2.0,
        "log_likelihood": r["mean"], "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
