"""Data-parallel training on this CPU: samples/s of 1 and 2 processes side by side, and their equivalence.

    python benchmarks/ddp.py --data-dir ../shared/data

Trains aevb's default MNIST model (784-512-512-20 ELU, Adam, M = 100, weight average) with the real trainer
(guard included) for --steps timed steps after --warmup steps, in these launches:
  1 process x 1 thread, 1 process x 2 threads, and torchrun --nproc_per_node=2 with 1 thread each (gloo);
each launch --repeats times, interleaved, keeping the best (the machine may be shared). Then it checks
equivalence: 2 processes against 1 process computing the same 2 shards in turn (`--shards 2`), same steps,
same seed; it prints the largest weight difference. Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def worker(a) -> None:
    sys.path.insert(0, str(SRC))
    import torch
    import torch.distributed as dist

    from aevb import VAE, ModelConfig, TrainConfig, distributed, runs
    from aevb.data import load
    from aevb.train import Trainer

    torch.set_num_threads(a.threads)
    world, _ = distributed.setup(torch.device("cpu"), 600)
    ds = load("mnist", data_dir=a.data_dir, download=False)
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=784, latent_dim=20, hidden=(512, 512), activation="elu"))
    cfg = TrainConfig(optimizer="adam", lr=1e-3, batch_size=100, samples=10**9, ema=0.999, shards=a.shards)
    torch.manual_seed(cfg.seed)
    torch.set_flush_denormal(True)
    trainer = Trainer(model, ds.train, ds.test[:100], cfg, None, progress=False)
    float(trainer.train_steps(a.warmup))
    if world.size > 1:
        dist.barrier()
    start = time.perf_counter()
    float(trainer.train_steps(a.steps))
    if world.size > 1:
        dist.barrier()
    seconds = time.perf_counter() - start
    if world.main:
        if a.save:
            runs.write_tensors(Path(a.save), model.state_dict())
        print(json.dumps({"processes": world.size, "threads": a.threads, "shards": trainer.shards,
                          "samples_per_s": a.steps * cfg.batch_size / seconds, "skipped": trainer.skipped}))
    distributed.shutdown()


def launch(a, procs: int, threads: int, shards: int | None = None, save: str | None = None, steps=None) -> dict:
    args = ["--worker", "--data-dir", a.data_dir, "--threads", str(threads), "--warmup", str(a.warmup),
            "--steps", str(steps or a.steps)]
    if shards:
        args += ["--shards", str(shards)]
    if save:
        args += ["--save", save]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(SRC)}
    if procs == 1:
        cmd = [sys.executable, __file__, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               __file__, *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout}{r.stderr}")
    return json.loads([line for line in r.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--shards", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)

    configs = [("1 process x 1 thread", 1, 1), ("1 process x 2 threads", 1, 2), ("2 processes x 1 thread", 2, 1)]
    best: dict[str, float] = {}
    load_before = os.getloadavg()
    for _ in range(a.repeats):
        for name, procs, threads in configs:
            r = launch(a, procs, threads)
            best[name] = max(best.get(name, 0.0), r["samples_per_s"])
    load_after = os.getloadavg()

    sys.path.insert(0, str(SRC))
    import torch

    from aevb import runs

    with tempfile.TemporaryDirectory() as tmp:
        launch(a, 2, 1, save=f"{tmp}/ddp.safetensors", steps=100)
        launch(a, 1, 1, shards=2, save=f"{tmp}/one.safetensors", steps=100)
        wa, wb = runs.read_tensors(Path(f"{tmp}/ddp.safetensors")), runs.read_tensors(Path(f"{tmp}/one.safetensors"))
        diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
        identical = all(torch.equal(wa[k], wb[k]) for k in wa)

    print(f"aevb default MNIST model, M = 100, {a.steps} timed steps, best of {a.repeats} (samples/s):")
    for name, _, _ in configs:
        print(f"  {name:<24} {best[name]:>9,.0f}")
    print(f"2 processes vs 1 process with --shards 2 after {a.warmup + 100} steps: largest weight difference "
          f"{diff:.3g} ({'bit-identical' if identical else 'not identical'})")
    print(json.dumps({"samples_per_s": best, "max_weight_diff": diff, "identical": identical,
                      "loadavg_before": load_before, "loadavg_after": load_after, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
