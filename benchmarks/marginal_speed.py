"""Speed and memory of importance-sampling log p(x) with K = 5,000 over the MNIST test set.

The IWAE paper's one-layer architecture (784-200-200-50, tanh, Bernoulli), trained for a moment or loaded from a
run folder: time for all 10,000 test images (or --limit N, extrapolated), the process's peak resident memory, and
the fraction of the float32 roofline: the decoder's matrix-product FLOPs (2 x multiply-adds per importance sample,
2.1e13 for K = 5,000 over the test set) over the seconds, against the machine's float32 matrix-product peak
measured in the same process (a 2048 x 2048 product, best of 10). Prints one JSON object.

    python benchmarks/marginal_speed.py --data-dir ../shared/data [--run RUN] [--limit N]

With --compile the measured time includes torch.compile's one-time compilation.

With --compare N it instead times, side by side on the first N test images (best of --repeats, alternating), the
estimator through the model contract's decode(z).log_prob(x), through the model's own log_likelihood(z, x), the
library's default (for this model the hand-written forward of aevb.marginal.mlp_likelihood) and the model's
log_likelihood through torch.compile (compiled beforehand on two images, since a size of 1 gets a graph of its own;
the compilation's seconds are printed apart), all with MAX_FLOATS floats per decoder call, and prints the seconds
extrapolated to 10,000 images, the ratios and each variant's fraction of the roofline.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from types import SimpleNamespace

import torch

import aevb
from aevb.data import binarize_static, load
from aevb.marginal.common import MAX_FLOATS
from aevb.marginal import importance_sampling
from throughput import matmul_roofline  # benchmarks/ is on the path when this file runs as a script


def decoder_flops(model) -> int:
    """2 x the multiply-adds of one decoder pass (the Linear layers of an MLP model's decoder and likelihood head),
    per importance sample."""
    layers = [m for part in (model.decoder, model.dec_head) for m in part.modules() if isinstance(m, torch.nn.Linear)]
    return 2 * sum(m.in_features * m.out_features for m in layers)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--run", help="a trained run folder (default: the IWAE architecture, untrained)")
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--limit", type=int, help="evaluate the first N test images and extrapolate to 10,000")
    p.add_argument("--compare", type=int, metavar="N", help="compare the likelihood paths on N images")
    p.add_argument("--repeats", type=int, default=3, help="rounds of --compare (best of)")
    p.add_argument("--compile", action="store_true", help="evaluate through torch.compile (importance_sampling's "
                   "compile=True)")
    args = p.parse_args()
    if args.run:
        model, _ = aevb.load_run(args.run)
    else:
        torch.manual_seed(0)
        model = aevb.VAE(aevb.ModelConfig(784, 50, (200, 200), "tanh", "bernoulli")).eval()
    ds = load("mnist", data_dir=args.data_dir)
    x = binarize_static(ds.test, seed=54321)[: args.limit] if args.limit else binarize_static(ds.test, seed=54321)
    if args.compare:
        compare(model, x[: args.compare], args.k, args.repeats)
        return
    peak = matmul_roofline()
    start = time.perf_counter()
    r = importance_sampling(model, x, num_samples=args.k, progress=True, seed=0, compile=args.compile)
    seconds = time.perf_counter() - start
    n = x.shape[0]
    flops = decoder_flops(model) * args.k * n
    print(json.dumps({
        "k": args.k, "n": n, "compile": args.compile, "seconds": round(seconds, 1),
        "seconds_for_10000": round(seconds * 10_000 / n, 1), "target_seconds": 300,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3), "target_rss_gib": 2.0,
        "log_likelihood": r["mean"], "threads": torch.get_num_threads(),
        "decoder_flops": flops, "matmul_peak_gflops": round(peak / 1e9, 1),
        "roofline_seconds": round(flops / peak, 1), "fraction_of_roofline": round(flops / peak / seconds, 3),
    }))


def compare(model, x, k: int, repeats: int) -> None:
    contract = SimpleNamespace(prior=model.prior, encode=model.encode, decode=model.decode)  # no log_likelihood
    own = SimpleNamespace(**vars(contract), log_likelihood=model.log_likelihood)  # not a VAE: no hand-written path
    batch = 100
    variants = {  # name: (model, compile)
        "contract": (contract, False),
        "log_likelihood": (own, False),
        "default": (model, False),
        "compiled": (model, True),
    }
    start = time.perf_counter()
    importance_sampling(model, x[:2], num_samples=k, batch_size=batch, seed=0, compile=True)
    compile_seconds = time.perf_counter() - start
    best = {name: float("inf") for name in variants}
    for _ in range(repeats):
        for name, (m, compiled) in variants.items():
            start = time.perf_counter()
            importance_sampling(m, x, num_samples=k, batch_size=batch, seed=0, compile=compiled)
            best[name] = min(best[name], time.perf_counter() - start)
    seconds = {name: round(t * 10_000 / x.shape[0], 1) for name, t in best.items()}
    first = next(iter(best))
    roofline = decoder_flops(model) * k * x.shape[0] / matmul_roofline()
    print(json.dumps({
        "k": k, "n": x.shape[0], "repeats": repeats, "threads": torch.get_num_threads(),
        "floats_per_decoder_call": MAX_FLOATS, "first_compile_seconds": round(compile_seconds, 1),
        "seconds_for_10000": seconds,
        "speedup_over_" + first: {name: round(best[first] / t, 2) for name, t in best.items()},
        "fraction_of_roofline": {name: round(roofline / t, 3) for name, t in best.items()},
    }))


if __name__ == "__main__":
    main()
