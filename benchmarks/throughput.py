"""Training throughput of aevb against a pytorch/examples-style loop and the machine's matmul roofline.

Measures in one process, for each thread count of --threads (default 1 and 2), interleaved so that machine noise
hits every contender alike:
  (a) samples/s of aevb's trainer for the paper's MNIST model (784-500-tanh-20, M=100, Adagrad) and for
      pytorch/examples' model (784-400-ReLU-20, Adam, M=128), on each training step: the fused step
      (aevb.train.fused, `--step fused`) and autograd (`--step autograd`), and where the CPU multiplies bfloat16
      natively, the fused step with `--precision bf16`;
  (b) the same two models trained by a reference loop written the way pytorch/examples/vae is (per-sample
      Dataset that, like torchvision's MNIST with ToTensor, makes a PIL image per item; shuffling DataLoader;
      sigmoid then BCE on probabilities; .item() every step);
  (a') aevb with --compile (torch.compile of the estimator, autograd step), after its compilation;
  (c) the ceiling: the samples/s of the step's matrix products alone at the model's real shapes (`gemm_only`),
      and the float32 matmul roofline of this machine turned into samples/s from each model's FLOPs per datapoint;
      for bf16, also its own ceiling: the same products with the operands that `--precision bf16` gives them;
and the cost of the trainer's minibatch (index, and dynamic binarization's torch.bernoulli), and peak resident
memory of a real `aevb train` run on MNIST (a subprocess). Prints a table and one JSON summary with the ratios.
Usage: python benchmarks/throughput.py --data-dir ../shared/data [--threads 1,2] [--no-compile]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from aevb import VAE, ModelConfig, TrainConfig
from aevb.data import load
from aevb.train import Trainer
from aevb.train.denormals import flush_denormals
from aevb.train.fused import bf16_supported

MODELS = {
    "paper": dict(hidden=500, activation="tanh", optimizer="adagrad", lr=0.02, batch=100),
    "pytorch_examples": dict(hidden=400, activation="relu", optimizer="adam", lr=1e-3, batch=128),
}


def flops_per_datapoint(d: int, h: int, nz: int) -> int:
    """Multiply-adds x 2 of forward (x2 for backward: weight and input gradients), less the input gradient of
    the first layer, which nobody needs."""
    layers = [(d, h), (h, 2 * nz), (nz, h), (h, d)]
    return sum(6 * i * o for i, o in layers) - 2 * d * h


def matmul_roofline(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def gemm_only(spec: dict, seconds: float = 2.0, precision: str = "float32") -> float:
    """Samples/s if a training step were nothing but its matrix products (forward, input and weight gradients) at
    the model's real shapes: the ceiling for this batch size, below the large-matmul roofline. With precision
    "bf16", the products the fused step takes in bfloat16 (the backward's and the logits') have bfloat16 operands."""
    m, h = spec["batch"], spec["hidden"]
    layers = [(784, h), (h, 40), (20, h), (h, 784)]
    low = torch.bfloat16 if precision == "bf16" else torch.float32
    xs = [torch.randn(m, i) for i, _ in layers]
    ws = [torch.randn(o, i) for i, o in layers]
    gs = [torch.randn(m, o, dtype=low) for _, o in layers]
    xs16, ws16 = [x.to(low) for x in xs], [w.to(low) for w in ws]

    def step():
        for k, (x, w, g) in enumerate(zip(xs, ws, gs)):
            (xs16[k] @ ws16[k].T) if k == len(layers) - 1 else (x @ w.T)
            g.T @ xs16[k]
            if k:  # no input gradient for the first layer
                g @ ws16[k]

    for _ in range(10):
        step()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        step()
        n += 1
    return n * m / (time.perf_counter() - t)


# -- aevb ---------------------------------------------------------------------------------------------------------
def aevb_trainer(x: torch.Tensor, spec: dict, compile: bool = False, step: str = "auto",
                 precision: str = "float32") -> Trainer:
    torch.manual_seed(0)
    init = "paper" if spec["optimizer"] == "adagrad" else "torch"
    model = VAE(ModelConfig(784, 20, (spec["hidden"],), spec["activation"], "bernoulli", init))
    cfg = TrainConfig(optimizer=spec["optimizer"], lr=spec["lr"], batch_size=spec["batch"], schedule="constant",
                      warmup_steps=100 if spec["optimizer"] == "adagrad" else 0,
                      weight_decay="prior" if spec["optimizer"] == "adagrad" else 0.0,
                      replacement=spec["optimizer"] == "adagrad", samples=10**9, compile=compile, step=step,
                      precision=precision)
    trainer = Trainer(model, x, x[:1000], cfg, run_dir=None, progress=False)
    assert step == "auto" or trainer.step_path == step
    return trainer


def time_aevb(trainer: Trainer, steps: int) -> float:
    flush_denormals(True)  # on every thread, as `aevb train` does
    t = time.perf_counter()
    float(trainer.train_steps(steps))  # one sync at the end, as in real training
    return steps * trainer.cfg.batch_size / (time.perf_counter() - t)


def step_parts(trainer: Trainer, reps: int = 30) -> dict:
    """Microseconds per step of the parts of a fused-step trainer's step, each timed alone in a loop (best of five
    loops): the fused forward and backward, the optimizer's update, the gradient norm of the non-finite guard and the
    minibatch gather; with the matrix products alone at the model's shapes for comparison."""
    xs = trainer._minibatch()

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            times.append((time.perf_counter() - t) / reps * 1e6)
        return round(min(times), 1)

    lr = trainer.optimizer.param_groups[0]["lr"]
    for group in trainer.optimizer.param_groups:
        group["lr"] = 0.0  # the update's cost without moving the model
    parts = {"fused_step_us": best(lambda: trainer.fused(xs, trainer.samples_seen)),
             "optimizer_us": best(trainer.optimizer.step), "grad_norm_us": best(trainer._grad_norm),
             "minibatch_us": best(trainer._minibatch)}
    for group in trainer.optimizer.param_groups:
        group["lr"] = lr
    return parts


def minibatch_costs(x: torch.Tensor, spec: dict, reps: int = 200) -> dict:
    """Microseconds per minibatch of the trainer's gather from the resident data set, and of dynamic binarization's
    torch.bernoulli on top of it (part of the trainer's minibatch, not of the step)."""
    out = {}
    for binarize in ("none", "dynamic"):
        torch.manual_seed(0)
        model = VAE(ModelConfig(784, 20, (spec["hidden"],), spec["activation"], "bernoulli"))
        cfg = TrainConfig(batch_size=spec["batch"], samples=10**9, binarize=binarize,
                          replacement=spec["optimizer"] == "adagrad")
        trainer = Trainer(model, x, x[:100], cfg, run_dir=None, progress=False)
        for _ in range(10):
            trainer._minibatch()
        t = time.perf_counter()
        for _ in range(reps):
            trainer._minibatch()
        out[binarize] = (time.perf_counter() - t) / reps * 1e6
    return {"minibatch_us": round(out["none"], 1), "bernoulli_us": round(out["dynamic"] - out["none"], 1)}


# -- the reference loop, written the way pytorch/examples/vae/main.py is ---------------------------------------------
class PerSampleMNIST(Dataset):
    """What torchvision's MNIST with ToTensor() does per item: a PIL image, then a float tensor in [0, 1]."""

    def __init__(self, images_uint8: np.ndarray):
        self.images = images_uint8

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i], mode="L")
        x = torch.from_numpy(np.array(img, copy=True)).view(1, 28, 28)
        return x.float().div(255.0), 0


class ReferenceVAE(nn.Module):
    def __init__(self, hidden: int, activation: str):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, hidden), nn.Linear(hidden, 20), nn.Linear(hidden, 20)
        self.fc3, self.fc4 = nn.Linear(20, hidden), nn.Linear(hidden, 784)
        self.act = torch.tanh if activation == "tanh" else F.relu

    def forward(self, x):
        h = self.act(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(self.act(self.fc3(z)))), mu, logvar


def reference_loop(images_uint8: torch.Tensor, spec: dict):
    torch.manual_seed(0)
    model = ReferenceVAE(spec["hidden"], spec["activation"])
    opt_cls = torch.optim.Adagrad if spec["optimizer"] == "adagrad" else torch.optim.Adam
    opt = opt_cls(model.parameters(), lr=spec["lr"])
    loader = DataLoader(PerSampleMNIST(images_uint8), batch_size=spec["batch"], shuffle=True)
    batches = iter(loader)

    def run(steps: int) -> float:
        nonlocal batches
        t = time.perf_counter()
        train_loss = 0.0
        for _ in range(steps):
            try:
                data, _ = next(batches)
            except StopIteration:
                batches = iter(loader)
                data, _ = next(batches)
            opt.zero_grad()
            recon, mu, logvar = model(data)
            bce = F.binary_cross_entropy(recon, data.view(-1, 784), reduction="sum")
            kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = bce + kld
            loss.backward()
            train_loss += loss.item()
            opt.step()
        return steps * spec["batch"] / (time.perf_counter() - t)

    return run


# Runs aevb's CLI, then prints the process's VmHWM (peak resident set of its own address space, in KiB) as the last
# line of stderr. Not getrusage: a child's ru_maxrss starts at the parent's resident size, which it inherits at fork
# and keeps across exec (measured: a `python -c pass` started from a process holding 1.2 GiB reports 1.18 GiB), so
# this benchmark, holding MNIST and its models, saw 1.10-1.12 GiB for a training run that peaks at 0.76.
_TRAIN_AND_REPORT_HWM = """
import sys
from aevb.cli import main
rc = main(sys.argv[1:])
print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1], file=sys.stderr)
sys.exit(rc)
"""


def peak_rss_of_train(data_dir: str) -> float:
    """Peak resident memory (GiB) of a real `aevb train` on MNIST (paper preset, 2e5 datapoints)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-c", _TRAIN_AND_REPORT_HWM, "train", "--preset", "paper-mnist-20", "--samples", "2e5",
               "--data-dir", data_dir, "--out", f"{tmp}/run", "--no-progress"]
        proc = subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return int(proc.stderr.strip().splitlines()[-1]) / 2**20  # KiB


def measure(ds, images_uint8, spec: dict, args, compiled) -> dict:
    """The contenders for one model at the current thread count, interleaved over args.rounds rounds."""
    fused, autograd = aevb_trainer(ds.train, spec, step="fused"), aevb_trainer(ds.train, spec, step="autograd")
    bf16 = aevb_trainer(ds.train, spec, step="fused", precision="bf16") if bf16_supported("cpu") else None
    ref = reference_loop(images_uint8, spec)
    for trainer in (fused, autograd, bf16):
        if trainer is not None:
            time_aevb(trainer, 150)  # warm-up (includes the paper's 100 accumulate-only minibatches)
    if compiled is not None:
        time_aevb(compiled, 20)
    ref(20)
    steps_f = max(50, int(args.seconds * time_aevb(fused, 100) / spec["batch"]))
    steps_a = max(50, int(args.seconds * time_aevb(autograd, 100) / spec["batch"]))
    steps_r = max(20, int(args.seconds * ref(30) / spec["batch"]))
    f, a, c, r, roof, gemm, b, gemm_b = [], [], [], [], [], [], [], []
    for _ in range(args.rounds):
        f.append(time_aevb(fused, steps_f))
        if bf16 is not None:
            b.append(time_aevb(bf16, steps_f))
            gemm_b.append(gemm_only(spec, precision="bf16"))
        a.append(time_aevb(autograd, steps_a))
        if compiled is not None:
            c.append(time_aevb(compiled, steps_a))
        r.append(ref(steps_r))
        roof.append(matmul_roofline(reps=5))
        gemm.append(gemm_only(spec))
    parts = step_parts(fused)
    gemm_us = spec["batch"] / max(gemm) * 1e6  # the best round
    parts["gemm_only_us"] = round(gemm_us, 1)
    med = statistics.median
    flops = flops_per_datapoint(784, spec["hidden"], 20)
    roofline = med(roof) / flops
    out = {
        "fused_samples_per_s": round(med(f)),
        "autograd_samples_per_s": round(med(a)),
        "reference_samples_per_s": round(med(r)),
        "gemm_only_samples_per_s": round(med(gemm)),
        "fused_fraction_of_gemm_only": round(med(f) / med(gemm), 3),
        "autograd_fraction_of_gemm_only": round(med(a) / med(gemm), 3),
        # the best round of each: closest to an unloaded machine when other jobs share the cores
        "fused_fraction_of_gemm_only_best": round(max(f) / max(gemm), 3),
        "autograd_fraction_of_gemm_only_best": round(max(a) / max(gemm), 3),
        "fused_speedup_vs_reference": round(med(f) / med(r), 2),
        "autograd_speedup_vs_reference": round(med(a) / med(r), 2),
        "fused_speedup_vs_autograd": round(med(f) / med(a), 2),
        "roofline_samples_per_s": round(roofline),
        "fused_fraction_of_roofline": round(med(f) / roofline, 3),
        "flops_per_datapoint": flops,
        "fused_step_parts": parts,
        "rounds": {"fused": [round(v) for v in f], "autograd": [round(v) for v in a],
                   "gemm_only": [round(v) for v in gemm], "reference": [round(v) for v in r]},
    }
    if b:
        out.update({"bf16_samples_per_s": round(med(b)), "bf16_gemm_only_samples_per_s": round(med(gemm_b)),
                    "bf16_fraction_of_gemm_only": round(med(b) / med(gemm), 3),
                    "bf16_fraction_of_bf16_gemm_only": round(med(b) / med(gemm_b), 3),
                    "bf16_speedup_vs_reference": round(med(b) / med(r), 2),
                    "bf16_speedup_vs_fused": round(med(b) / med(f), 2)})
        out["rounds"].update({"bf16": [round(v) for v in b], "bf16_gemm_only": [round(v) for v in gemm_b]})
    if c:
        out.update({"compiled_samples_per_s": round(med(c)),
                    "compiled_speedup_vs_reference": round(med(c) / med(r), 2),
                    "compiled_fraction_of_gemm_only": round(med(c) / med(gemm), 3)})
    return out


def table(results: dict) -> str:
    head = ("threads", "model", "fused", "autograd", "reference", "matmuls only", "fused/ceiling",
            "autograd/ceiling", "fused vs reference", "fused vs autograd")
    rows = [head]
    for threads, models in results.items():
        for name, m in models.items():
            rows.append((str(threads), name, f"{m['fused_samples_per_s']:,}", f"{m['autograd_samples_per_s']:,}",
                         f"{m['reference_samples_per_s']:,}", f"{m['gemm_only_samples_per_s']:,}",
                         f"{m['fused_fraction_of_gemm_only']:.3f}", f"{m['autograd_fraction_of_gemm_only']:.3f}",
                         f"{m['fused_speedup_vs_reference']:.2f}x", f"{m['fused_speedup_vs_autograd']:.2f}x"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seconds", type=float, default=4.0, help="rough time per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts, each measured in turn")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated models to measure")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile contender")
    p.add_argument("--no-rss", dest="rss", action="store_false", help="skip the peak-memory run")
    args = p.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    models = {name: MODELS[name] for name in args.models.split(",")}

    ds = load("mnist", split="standard", data_dir=args.data_dir)
    images_uint8 = (ds.train * 255).round().to(torch.uint8).reshape(-1, 28, 28).numpy()
    compiled, compile_seconds = {}, {}
    if args.compile:  # compiled once per model; its kernels run with the thread count of each measurement
        for name, spec in models.items():
            compiled[name] = aevb_trainer(ds.train, spec, compile=True)
            t = time.perf_counter()
            time_aevb(compiled[name], 150)
            compile_seconds[name] = round(time.perf_counter() - t, 1)
    results, peaks, batches = {}, {}, {}
    for n in threads:
        torch.set_num_threads(n)
        peaks[n] = round(matmul_roofline() / 1e9, 1)
        results[n] = {name: measure(ds, images_uint8, spec, args, compiled.get(name)) for name, spec in models.items()}
        batches[n] = {name: minibatch_costs(ds.train, spec) for name, spec in models.items()}
    summary = {
        "device": "cpu", "torch": torch.__version__, "threads": threads,
        "matmul_gflops": peaks, "models": results, "minibatch": batches, "compile_seconds": compile_seconds or None,
        "peak_rss_gib_aevb_train_mnist": round(peak_rss_of_train(args.data_dir or ""), 3)
        if args.data_dir and args.rss else None,
        "targets": {"fused_fraction_of_gemm_only": 0.85, "speedup_vs_reference": 3.0, "peak_rss_gib": 1.0},
    }
    print(table(results))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
