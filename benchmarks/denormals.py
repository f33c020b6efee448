"""Training speed on several threads with subnormal floats flushed on the main thread only (what
`torch.set_flush_denormal` alone does) against flushed on every thread of torch's OpenMP pool
(`aevb.train.denormals.flush_denormals`, what `aevb train` does), alternated in one process.

The pool is created before anything is flushed, as in a real run (loading the data set is a parallel operation).
For each model of benchmarks/throughput.py: samples/s of aevb's trainer (fused step) in each mode, --rounds times,
and a probe: the fraction of a tensor of subnormals that survives `x * 1` in each mode (0 when every thread
flushes, about 1 - 1/threads when only the main thread does). Prints one JSON object.

    python benchmarks/denormals.py --data-dir ../shared/data [--threads 2] [--rounds 3] [--steps 300]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from aevb.data import load
from aevb.train.denormals import flush_denormals, workers_flushed
from throughput import MODELS, aevb_trainer  # benchmarks/ is on the path when this file runs as a script


def main_thread_only() -> None:
    flush_denormals(False)
    torch.set_flush_denormal(True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    flush_denormals(False)
    subnormals = torch.full((1 << 22,), 1e-40)  # made before any flushing, so it holds subnormals
    x = load("mnist", data_dir=args.data_dir).train  # a parallel operation: the pool exists from here on
    modes = {"main_thread_only": main_thread_only, "every_thread": lambda: flush_denormals(True)}
    out = {"threads": args.threads, "torch": torch.__version__, "workers_reachable": workers_flushed(),
           "probe_surviving_fraction": {}, "models": {}}
    for name, set_mode in modes.items():
        set_mode()
        out["probe_surviving_fraction"][name] = round(float(((subnormals * 1.0) != 0).double().mean()), 3)
    for model, spec in MODELS.items():
        trainer = aevb_trainer(x, spec)
        set_mode = modes["every_thread"]
        set_mode()
        float(trainer.train_steps(150))  # warm-up, including the paper's accumulate-only minibatches
        rates = {name: [] for name in modes}
        for _ in range(args.rounds):
            for name, set_mode in modes.items():
                set_mode()
                start = time.perf_counter()
                float(trainer.train_steps(args.steps))
                rates[name].append(args.steps * spec["batch"] / (time.perf_counter() - start))
        med = {name: statistics.median(v) for name, v in rates.items()}
        out["models"][model] = {**{f"{name}_samples_per_s": round(v) for name, v in med.items()},
                                "speedup": round(med["every_thread"] / med["main_thread_only"], 2),
                                "rounds": {name: [round(r) for r in v] for name, v in rates.items()}}
    flush_denormals(False)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
