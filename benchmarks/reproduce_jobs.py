"""Training a figure's panels concurrently: `aevb reproduce fig2 --jobs 2` against one process, side by side.

    python benchmarks/reproduce_jobs.py --data-dir ../shared/data

Runs the same small Figure 2 (MNIST, the paper's 784-500 tanh models, AEVB and wake-sleep for each Nz in
--latent-dims, --samples datapoints each) in these settings, --repeats times each, interleaved, keeping the best
wall time (the machine may be shared):
  one process with all cores' threads, the panels one after another (--jobs 1 --threads <cores>);
  one process per core with one thread each (--jobs <cores>).
Prints a table, the speed-up and one JSON line, and checks that both settings logged the same curves.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time


def run(data_dir: str, out: str, latent_dims: str, samples: str, jobs: int, threads: int) -> float:
    cmd = [sys.executable, "-m", "aevb", "reproduce", "fig2", "--latent-dims", latent_dims, "--samples", samples,
           "--jobs", str(jobs), "--threads", str(threads), "--data-dir", data_dir, "--no-progress", "--out", out]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def curves(path: str) -> dict:
    with open(path) as f:
        return {(r["latent_dim"], r["method"], r["split"], r["samples_seen"]): float(r["elbo"])
                for r in csv.DictReader(f)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--latent-dims", default="3,5,10,20")
    p.add_argument("--samples", default="2e5")
    p.add_argument("--cores", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    settings = {"sequential": (1, a.cores), "concurrent": (a.cores, 1)}
    best = {name: float("inf") for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for name, (jobs, threads) in settings.items():
                seconds = run(a.data_dir, os.path.join(tmp, name), a.latent_dims, a.samples, jobs, threads)
                best[name] = min(best[name], seconds)
                print(f"repeat {r + 1}: {name:10s} --jobs {jobs} --threads {threads}: {seconds:.1f} s", flush=True)
        one, many = (curves(os.path.join(tmp, n, "fig2.csv")) for n in settings)
        assert one.keys() == many.keys()
        largest = max(abs(one[k] - many[k]) for k in one)
    speedup = best["sequential"] / best["concurrent"]
    print(f"\n| setting | wall (s), best of {a.repeats} |\n|---|---|")
    for name, (jobs, threads) in settings.items():
        print(f"| {name}: --jobs {jobs} --threads {threads} | {best[name]:.1f} |")
    print(f"\nspeed-up of --jobs {a.cores}: {speedup:.2f}x; largest ELBO difference between the two: {largest:.2e}")
    print(json.dumps({"latent_dims": a.latent_dims, "samples": a.samples, "cores": a.cores,
                      "sequential_s": round(best["sequential"], 1), "concurrent_s": round(best["concurrent"], 1),
                      "speedup": round(speedup, 3), "max_elbo_difference": largest}))


if __name__ == "__main__":
    main()
