"""Training throughput of aevb against a pytorch/examples-style loop and the machine's matmul roofline.

Measures in one process, interleaved so that machine noise hits every contender alike:
  (a) samples/s of aevb's trainer for the paper's MNIST model (784-500-tanh-20, M=100, Adagrad) and for
      pytorch/examples' model (784-400-ReLU-20, Adam, M=128);
  (b) the same two models trained by a reference loop written the way pytorch/examples/vae is (per-sample
      Dataset that, like torchvision's MNIST with ToTensor, makes a PIL image per item; shuffling DataLoader;
      sigmoid then BCE on probabilities; .item() every step);
  (a') aevb with --compile (torch.compile of the estimator), after its compilation;
  (c) the float32 matmul roofline of this machine turned into samples/s from each model's FLOPs per datapoint;
and, to explain any gap to the roofline, the samples/s of the step's matrix products alone at the model's real
shapes; and peak resident memory of a real `aevb train` run on MNIST (a subprocess).
Prints one JSON summary with the ratios. Usage: python benchmarks/throughput.py --data-dir ../shared/data
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


def gemm_only(spec: dict, seconds: float = 2.0) -> float:
    """Samples/s if a training step were nothing but its matrix products (forward, input and weight gradients) at
    the model's real shapes: the ceiling for this batch size, below the large-matmul roofline."""
    m, h = spec["batch"], spec["hidden"]
    layers = [(784, h), (h, 40), (20, h), (h, 784)]
    xs = [torch.randn(m, i) for i, _ in layers]
    ws = [torch.randn(o, i) for i, o in layers]
    gs = [torch.randn(m, o) for _, o in layers]

    def step():
        for k, (x, w, g) in enumerate(zip(xs, ws, gs)):
            x @ w.T
            g.T @ x
            if k:  # no input gradient for the first layer
                g @ w

    for _ in range(10):
        step()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        step()
        n += 1
    return n * m / (time.perf_counter() - t)


# -- aevb -----------------------------------------------------------------------------------------------------
def aevb_trainer(x: torch.Tensor, spec: dict, compile: bool = False) -> Trainer:
    torch.manual_seed(0)
    init = "paper" if spec["optimizer"] == "adagrad" else "torch"
    model = VAE(ModelConfig(784, 20, (spec["hidden"],), spec["activation"], "bernoulli", init))
    cfg = TrainConfig(optimizer=spec["optimizer"], lr=spec["lr"], batch_size=spec["batch"], schedule="constant",
                      warmup_steps=100 if spec["optimizer"] == "adagrad" else 0,
                      weight_decay="prior" if spec["optimizer"] == "adagrad" else 0.0,
                      replacement=spec["optimizer"] == "adagrad", samples=10**9, compile=compile)
    return Trainer(model, x, x[:1000], cfg, run_dir=None, progress=False)


def time_aevb(trainer: Trainer, steps: int) -> float:
    torch.set_flush_denormal(True)
    t = time.perf_counter()
    float(trainer.train_steps(steps))  # one sync at the end, as in real training
    return steps * trainer.cfg.batch_size / (time.perf_counter() - t)


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seconds", type=float, default=4.0, help="rough time per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile contender")
    args = p.parse_args()

    ds = load("mnist", split="standard", data_dir=args.data_dir)
    images_uint8 = (ds.train * 255).round().to(torch.uint8).reshape(-1, 28, 28).numpy()
    peak = matmul_roofline()
    results = {}
    for name, spec in MODELS.items():
        trainer, ref = aevb_trainer(ds.train, spec), reference_loop(images_uint8, spec)
        compiled = aevb_trainer(ds.train, spec, compile=True) if args.compile else None
        time_aevb(trainer, 150)  # warm-up (includes the paper's 100 accumulate-only minibatches)
        if compiled is not None:
            t = time.perf_counter()
            time_aevb(compiled, 150)
            compile_seconds = time.perf_counter() - t
        ref(20)
        steps_a = max(50, int(args.seconds * time_aevb(trainer, 100) / spec["batch"]))
        steps_r = max(20, int(args.seconds * ref(30) / spec["batch"]))
        a, c, r, roof, gemm = [], [], [], [], []
        for _ in range(args.rounds):
            a.append(time_aevb(trainer, steps_a))
            if compiled is not None:
                c.append(time_aevb(compiled, steps_a))
            r.append(ref(steps_r))
            roof.append(matmul_roofline(reps=5))
            gemm.append(gemm_only(spec))
        flops = flops_per_datapoint(784, spec["hidden"], 20)
        roofline = statistics.median(roof) / flops
        results[name] = {
            "aevb_samples_per_s": round(statistics.median(a)),
            "reference_samples_per_s": round(statistics.median(r)),
            "roofline_samples_per_s": round(roofline),
            "flops_per_datapoint": flops,
            "speedup_vs_reference": round(statistics.median(a) / statistics.median(r), 2),
            "fraction_of_roofline": round(statistics.median(a) / roofline, 3),
            "gemm_only_samples_per_s": round(statistics.median(gemm)),
            "fraction_of_gemm_only": round(statistics.median(a) / statistics.median(gemm), 3),
        }
        if c:
            best = statistics.median(c)
            results[name].update({
                "aevb_compiled_samples_per_s": round(best), "compile_seconds": round(compile_seconds, 1),
                "compiled_speedup_vs_reference": round(best / statistics.median(r), 2),
                "compiled_fraction_of_roofline": round(best / roofline, 3),
            })
    summary = {
        "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
        "matmul_gflops": round(peak / 1e9, 1), "models": results,
        "peak_rss_gib_aevb_train_mnist": round(peak_rss_of_train(args.data_dir or ""), 3) if args.data_dir else None,
        "targets": {"speedup_vs_reference": 3.0, "fraction_of_roofline": 0.7, "peak_rss_gib": 1.0},
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
