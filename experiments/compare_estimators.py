"""Figure 3's protocol: importance sampling, the paper's HMC estimator (Appendix D) and AIS side by side.

Loads a trained run (the paper's Figure 3 model: MNIST, Nz = 3, 100 hidden units), takes the first N points of
each split (the paper: 1000) and estimates log p(x) of every point with each method, several times with fresh
seeds. Prints one markdown table and writes a CSV of the per-point values. Spread is reported three ways:
  - stderr: the standard error of the mean over datapoints (what `aevb eval` prints);
  - seed sd: the standard deviation of that mean across seeds (the estimator's own noise on the figure);
  - point sd: a datapoint's standard deviation across seeds, averaged over datapoints;
  - |diff| to AIS: the mean absolute per-point difference to AIS, the most accurate of the three.
Usage:
    python experiments/compare_estimators.py RUN [--limit 1000] [--seeds 3] [--splits test,train] [--out DIR]
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import torch

import aevb
from aevb.data import binarize_static, load
from aevb.marginal import ais, hmc_estimator, importance_sampling
from aevb.train import EVAL_BINARIZATION_SEEDS


def methods(args) -> dict:
    return {
        f"IS (K={args.is_k})": lambda m, x, s: importance_sampling(m, x, num_samples=args.is_k, seed=s),
        f"HMC estimator (L={args.hmc_k})": lambda m, x, s: hmc_estimator(m, x, num_samples=args.hmc_k, seed=s),
        f"AIS (T={args.ais_steps}, {args.ais_chains} chains)":
            lambda m, x, s: ais(m, x, num_steps=args.ais_steps, num_chains=args.ais_chains, seed=s),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--limit", type=int, default=1000, help="first N datapoints of each split (the paper: 1000)")
    p.add_argument("--seeds", type=int, default=3, help="repeats of each estimator with fresh seeds")
    p.add_argument("--splits", default="test,train")
    p.add_argument("--is-k", type=int, default=5000)
    p.add_argument("--hmc-k", type=int, default=50)
    p.add_argument("--ais-steps", type=int, default=500)
    p.add_argument("--ais-chains", type=int, default=16)
    p.add_argument("--data-dir")
    p.add_argument("--out", default=".", help="folder for estimators.csv and estimators.json")
    args = p.parse_args()
    model, config = aevb.load_run(args.run)
    ds = load(config["data"]["dataset"], split=config["data"]["split"],
              data_dir=args.data_dir or config["data"]["data_dir"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, per_point = [], []
    for split in args.splits.split(","):
        x = ds.test if split == "test" else ds.train
        if config["train"].get("binarize", "none") != "none":
            x = binarize_static(x, seed=EVAL_BINARIZATION_SEEDS[split])
        x = x[: args.limit]
        values = {}
        for name, fn in methods(args).items():
            runs, seconds = [], []
            for seed in range(args.seeds):
                start = time.perf_counter()
                runs.append(fn(model, x, seed)["log_px"].double())
                seconds.append(time.perf_counter() - start)
                per_point += [{"split": split, "method": name, "seed": seed, "index": i, "log_px": float(v)}
                              for i, v in enumerate(runs[-1])]
            values[name] = torch.stack(runs)  # (S, N)
            means = values[name].mean(1)
            rows.append({"split": split, "method": name, "log_px": float(means.mean()),
                         "stderr": float(values[name][0].std() / math.sqrt(x.shape[0])),
                         "seed_sd": float(means.std()) if args.seeds > 1 else math.nan,
                         "point_sd": float(values[name].std(0).mean()) if args.seeds > 1 else math.nan,
                         "seconds": sum(seconds) / len(seconds)})
        ref = values[list(values)[-1]].mean(0)  # AIS, averaged over seeds
        for row in rows[-len(values):]:
            row["abs_diff_to_ais"] = float((values[row["method"]].mean(0) - ref).abs().mean())
    with open(out / "estimators.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(per_point[0]))
        w.writeheader()
        w.writerows(per_point)
    (out / "estimators.json").write_text(json.dumps({"run": args.run, "n": args.limit, "rows": rows}, indent=1))
    print("| split | method | log p(x) | stderr | seed sd | point sd | mean abs diff to AIS | seconds per run |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        diff = "-" if r["method"].startswith("AIS") else f"{r['abs_diff_to_ais']:.3f}"
        print(f"| {r['split']} | {r['method']} | {r['log_px']:.2f} | {r['stderr']:.2f} | {r['seed_sd']:.3f} | "
              f"{r['point_sd']:.3f} | {diff} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
