"""Short jobs as whole processes on one core: `aevb train --samples 1000`, and the pytorch/examples VAE job (784-400-
ReLU-20, Adam 1e-3, M = 128, 2 epochs) run by aevb against the same job run by a loop written the way
pytorch/examples/vae/main.py is (per-item PIL images, a shuffling DataLoader, BCE on probabilities, `.item()` per
step, a test pass after each epoch). Each command is a fresh process pinned to one core with one thread; the 2-epoch
jobs alternate, `--repeats` times; with `--bf16` (on a CPU with native bfloat16) aevb's job also runs with
`--precision bf16` in the same rotation; `--flags` adds flags to aevb's 2-epoch job (e.g. "--evals-per-decade 1":
three evaluations instead of five). Prints one JSON object: wall seconds (median and all), the test ELBO each job
reports, and the speed-ups.

    python benchmarks/short_jobs.py --data-dir ../shared/data [--bf16] [--flags "--evals-per-decade 1"]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLES_JOB = ["--hidden", "400", "--activation", "relu", "--latent-dim", "20", "--optimizer", "adam", "--lr", "1e-3",
                "--batch-size", "128", "--epochs", "2", "--schedule", "constant", "--ema", "0"]


def _pinned(cmd: list[str]) -> list[str]:
    return (["taskset", "-c", "0"] if shutil.which("taskset") else []) + cmd


def _run(cmd: list[str]) -> tuple[float, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    proc = subprocess.run(_pinned(cmd), capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def aevb_job(args: list[str], data_dir: str) -> tuple[float, float]:
    """Wall seconds of one `aevb train` process and the test ELBO it prints."""
    out = Path(tempfile.mkdtemp()) / "run"
    try:
        seconds, stdout = _run([sys.executable, "-m", "aevb", "train", *args, "--threads", "1", "--no-progress",
                                "--data-dir", data_dir, "--out", str(out)])
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    return seconds, json.loads(stdout.strip().splitlines()[-1])["test_elbo"]


def reference_job(data_dir: str) -> tuple[float, float]:
    seconds, stdout = _run([sys.executable, __file__, "--reference", "--data-dir", data_dir])
    return seconds, float(stdout.strip().splitlines()[-1])


def reference_main(data_dir: str) -> None:
    """The pytorch/examples VAE job: train 2 epochs, test after each, print the last test ELBO (-loss)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torch import nn
    from torch.utils.data import DataLoader, Dataset

    from aevb.data import read_idx

    torch.set_num_threads(1)
    torch.manual_seed(1)
    root = Path(data_dir) / "mnist"
    train_images = read_idx(root / "train-images-idx3-ubyte.gz")
    test_images = read_idx(root / "t10k-images-idx3-ubyte.gz")

    class PerItem(Dataset):  # torchvision's MNIST with ToTensor(): a PIL image per item, then floats in [0, 1]
        def __init__(self, images):
            self.images = images

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            img = Image.fromarray(self.images[i], mode="L")
            return torch.from_numpy(np.array(img, copy=True)).view(1, 28, 28).float().div(255.0), 0

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
            self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

        def forward(self, x):
            h = F.relu(self.fc1(x.view(-1, 784)))
            mu, logvar = self.fc21(h), self.fc22(h)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar

    def loss_function(recon, x, mu, logvar):
        bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
        return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())

    model = VAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    train = DataLoader(PerItem(train_images), batch_size=128, shuffle=True)
    test = DataLoader(PerItem(test_images), batch_size=128, shuffle=False)
    for _ in range(2):
        model.train()
        train_loss = 0.0
        for data, _ in train:
            opt.zero_grad()
            recon, mu, logvar = model(data)
            loss = loss_function(recon, data, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            opt.step()
        model.eval()
        test_loss = 0.0
        with torch.no_grad():
            for data, _ in test:
                recon, mu, logvar = model(data)
                test_loss += loss_function(recon, data, mu, logvar).item()
    print(-test_loss / len(test_images))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder with mnist/ (the IDX files)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="also aevb's job with --precision bf16")
    p.add_argument("--flags", default="", help="more `aevb train` flags for aevb's 2-epoch job (one string)")
    p.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.reference:
        return reference_main(args.data_dir)
    tiny = [aevb_job(["--samples", "1000"], args.data_dir) for _ in range(args.repeats)]
    job = [*EXAMPLES_JOB, *args.flags.split()]
    ours, ref, low = [], [], []
    for _ in range(args.repeats):  # alternating, so all see the same machine
        ours.append(aevb_job(job, args.data_dir))
        ref.append(reference_job(args.data_dir))
        if args.bf16:
            low.append(aevb_job([*job, "--precision", "bf16"], args.data_dir))
    med = lambda runs: statistics.median(s for s, _ in runs)  # noqa: E731
    bf16 = {"aevb_bf16_seconds_median": round(med(low), 2), "bf16_speedup": round(med(ref) / med(low), 2),
            "aevb_bf16_test_elbo": [round(e, 2) for _, e in low], "aevb_bf16_seconds": [round(s, 2) for s, _ in low]
            } if low else {}
    print(json.dumps({
        "aevb_train_samples_1000": {"seconds_median": round(med(tiny), 2), "seconds": [round(s, 2) for s, _ in tiny]},
        "examples_2_epochs": {
            "aevb_flags": " ".join(job),
            "aevb_seconds_median": round(med(ours), 2), "reference_seconds_median": round(med(ref), 2),
            "speedup": round(med(ref) / med(ours), 2),
            "aevb_test_elbo": [round(e, 2) for _, e in ours], "reference_test_elbo": [round(e, 2) for _, e in ref],
            "aevb_seconds": [round(s, 2) for s, _ in ours], "reference_seconds": [round(s, 2) for s, _ in ref],
            **bf16,
        },
    }, indent=1))


if __name__ == "__main__":
    main()
