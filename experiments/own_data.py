"""Your own data, measured: MNIST written out as a PNG folder with class sub-folders against the built-in loader, the
decode time and the cache, and a 5 GB uint8 array trained with bounded memory.

    python experiments/own_data.py folder --data-dir ../shared/data --work /tmp/own-data --samples 200000
    python experiments/own_data.py big --work /tmp/own-data --gigabytes 5 --samples 100000
    python experiments/own_data.py rgb --work /tmp/own-data --samples 300000
    python experiments/own_data.py mnist-arch --data-dir ../shared/data --samples 300000
    python experiments/own_data.py table --work /tmp/own-data --samples 300000 --threads 1

`folder` prints one JSON object: seconds to write the PNGs, to decode them (first run) and to open them again (the
cache), whether the pixels and labels equal the built-in loader's, and the test ELBO of the same training run
(same seed and budget) through `--dataset mnist` and through `--data`. `big` writes an N x 784 uint8 .npy of the
given size (MNIST's training images repeated), trains on it under /usr/bin/time -v and prints the peak RSS. `rgb`
cuts 32x32 patches from scikit-learn's two sample photographs into a PNG folder and trains `--arch conv --likelihood
discretized-logistic` on them (test bits/dim by the ELBO and by importance sampling). `mnist-arch` trains MNIST grey
levels with `--arch conv` and with the default MLP at the same budget. `table` writes scikit-learn's diabetes table
(442 patients, ten measurements and the disease progression, in their own units) as a CSV, trains on it, and draws
its pictures with `aevb plot` (the docs' columns and correlations figures).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _aevb(*argv, env=None) -> tuple[dict, float]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "aevb", *map(str, argv)], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"aevb {' '.join(map(str, argv))} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def write_png_folder(ds, root: Path) -> float:
    from PIL import Image

    start = time.perf_counter()
    for split, x, y in (("train", ds.train, ds.train_labels), ("test", ds.test, ds.test_labels)):
        pixels = (x * 255).round().byte().view(-1, *ds.image_shape).numpy()
        for i, (a, label) in enumerate(zip(pixels, y.tolist())):
            path = root / split / str(label) / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(path)
    return time.perf_counter() - start


def folder(args) -> dict:
    import torch

    from aevb.data import load, open_data

    work = Path(args.work)
    env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}
    os.environ.update(env)
    mnist = load("mnist", data_dir=args.data_dir, download=False)
    root = work / "mnist-png"
    written = write_png_folder(mnist, root) if not (root / "test").is_dir() else None
    start = time.perf_counter()
    ds = open_data(root / "train", test_data=root / "test", progress=False)
    first = time.perf_counter() - start
    start = time.perf_counter()
    again = open_data(root / "train", test_data=root / "test", progress=False)
    second = time.perf_counter() - start
    same = (torch.equal(ds.train, mnist.train) and torch.equal(ds.test, mnist.test)
            and torch.equal(ds.train_labels, mnist.train_labels) and torch.equal(ds.test_labels, mnist.test_labels))
    common = ["--samples", args.samples, "--seed", 0, "--threads", args.threads, "--no-progress"]
    builtin, t_builtin = _aevb("train", "--dataset", "mnist", "--data-dir", args.data_dir, "--out",
                               work / "run-builtin", *common, env=env)
    own, t_own = _aevb("train", "--data", root / "train", "--test-data", root / "test", "--out", work / "run-folder",
                       *common, env=env)
    return {"write_png_seconds": written, "decode_seconds_first": round(first, 2), "cached": again.decode["cached"],
            "open_seconds_cached": round(second, 2), "same_pixels_and_labels": same,
            "test_elbo_builtin": builtin["test_elbo"], "test_elbo_folder": own["test_elbo"],
            "train_seconds_builtin": round(t_builtin, 1), "train_seconds_folder": round(t_own, 1)}


def big(args) -> dict:
    from aevb.data import load

    work = Path(args.work)
    path = work / f"big-{args.gigabytes:g}gb.npy"
    rows = int(args.gigabytes * 1e9 // 784)
    if not path.exists():
        mnist = load("mnist", data_dir=args.data_dir, download=False)
        pixels = (mnist.train * 255).round().byte().numpy()
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, 784))
        for s in range(0, rows, pixels.shape[0]):
            out[s:s + pixels.shape[0]] = pixels[: rows - s]
        out.flush()
        del out
    shutil.rmtree(work / "run-big", ignore_errors=True)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "aevb", "train", "--data", str(path), "--test-fraction",
           str(args.test_fraction), "--samples", str(args.samples), "--threads", str(args.threads), "--no-progress",
           "--out", str(work / "run-big")]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "XDG_CACHE_HOME": str(work / "cache")})
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    last = json.loads(out.stdout.strip().splitlines()[-1])
    return {"array_bytes": path.stat().st_size, "rows": rows, "peak_rss_gib": round(rss_kb / 2**20, 3),
            "seconds": round(time.perf_counter() - start, 1), "test_elbo": last["test_elbo"]}


def rgb_patches(root: Path, size: int = 32, stride: int = 8) -> int:
    """32x32 RGB patches cut from scikit-learn's two sample photographs, as a PNG folder with one class per photo."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    n = 0
    for name, img in zip(("china", "flower"), photos.images):
        for top in range(0, img.shape[0] - size + 1, stride):
            for left in range(0, img.shape[1] - size + 1, stride):
                path = root / name / f"{top:03d}-{left:03d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img[top:top + size, left:left + size]).save(path)
                n += 1
    return n


def rgb(args) -> dict:
    work = Path(args.work)
    root = work / "rgb-patches"
    patches = rgb_patches(root) if not root.is_dir() else None
    env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}
    out = work / "run-rgb"
    last, seconds = _aevb("train", "--data", root, "--arch", "conv", "--likelihood", "discretized-logistic",
                          "--samples", args.samples, "--threads", args.threads, "--no-progress", "--out", out, env=env)
    ev, _ = _aevb("eval", out, "--method", "is", "--k", "100", env=env)
    return {"patches": patches, "test_elbo": last["test_elbo"], "train_seconds": round(seconds, 1),
            "test_bpd_elbo": json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["test_bpd"],
            "test_bpd_is": ev["bits_per_dim"], "is": ev}


def mnist_arch(args) -> dict:
    """MNIST grey levels, --arch conv against the default MLP at the same budget."""
    env = {**os.environ}
    out = {}
    for arch in ("mlp", "conv"):
        run = Path(args.work) / f"run-mnist-{arch}"
        last, seconds = _aevb("train", "--dataset", "mnist", "--data-dir", args.data_dir, "--arch", arch,
                              "--samples", args.samples, "--threads", args.threads, "--no-progress", "--out", run,
                              env=env)
        bpd = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["test_bpd"]
        out[arch] = {"test_elbo": last["test_elbo"], "test_bpd": bpd, "seconds": round(seconds, 1)}
    return out


def table(args) -> dict:
    """The diabetes table as CSV, a small Gaussian VAE on it, its IS estimate and its pictures."""
    from sklearn.datasets import load_diabetes

    work = Path(args.work)
    d = load_diabetes(scaled=False)
    names = [*d.feature_names, "progression"]
    rows = np.column_stack([d.data, d.target])
    csv = work / "diabetes.csv"
    csv.write_text(",".join(names) + "\n" + "\n".join(",".join(f"{v:.10g}" for v in r) for r in rows) + "\n")
    out = work / "run-table"
    shutil.rmtree(out, ignore_errors=True)
    last, seconds = _aevb("train", "--data", csv, "--hidden", "64,64", "--latent-dim", "4", "--samples", args.samples,
                          "--threads", args.threads, "--no-progress", "--out", out)
    ev, _ = _aevb("eval", out, "--method", "is", "--k", "1000")
    subprocess.run([sys.executable, "-m", "aevb", "plot", str(out)], check=True, capture_output=True)
    return {"rows": len(rows), "columns": len(names), "test_elbo": last["test_elbo"], "is": ev["log_likelihood"],
            "is_stderr": ev["stderr"], "train_seconds": round(seconds, 1), "plots": str(out / "plots")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("folder", "big", "rgb", "mnist-arch", "table"))
    p.add_argument("--data-dir", default=os.environ.get("AEVB_TEST_DATA", "../shared/data"))
    p.add_argument("--work", default="/tmp/own-data")
    p.add_argument("--samples", default="200000")
    p.add_argument("--threads", default="2")
    p.add_argument("--gigabytes", type=float, default=5.0)
    p.add_argument("--test-fraction", type=float, default=0.002)
    args = p.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    run = {"folder": folder, "big": big, "rgb": rgb, "mnist-arch": mnist_arch, "table": table}[args.what]
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
