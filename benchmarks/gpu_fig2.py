"""Figure 2's nine AEVB panels at the paper's full length on one GPU: wall time of each panel and of all nine.

    python benchmarks/gpu_fig2.py --data-dir ../shared/data                 # needs a CUDA device
    python benchmarks/gpu_fig2.py --data-dir ../shared/data --device cpu --scale 1e-4 --jobs 2   # a dry run

The panels are the presets paper-mnist-{3,5,10,20,200} (2.6e8 training datapoints each, the end of the paper's
MNIST axis) and paper-frey-{2,5,10,20} (1e8), each an `aevb train --device DEVICE` process; --jobs of them run at
once (default: all nine, which share the GPU). --scale multiplies every length (1e-4 for a dry run that checks the
script). Prints one line per panel (wall seconds, datapoints/s, final test ELBO, the training path the run chose:
its `step` in config.json) and one JSON object with the total wall time against the goal of 600 s.
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

PANELS = {**{f"paper-mnist-{nz}": 2.6e8 for nz in (3, 5, 10, 20, 200)},
          **{f"paper-frey-{nz}": 1e8 for nz in (2, 5, 10, 20)}}
GOAL_SECONDS = 600


def _command(preset: str, samples: int, args, out: Path) -> list[str]:
    return [sys.executable, "-m", "aevb", "train", "--preset", preset, "--samples", str(samples), "--device",
            args.device, "--threads", "1", "--data-dir", args.data_dir, "--no-progress", "--out", str(out)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--device", default="cuda", help="torch device (default cuda)")
    p.add_argument("--jobs", type=int, default=len(PANELS), help="panels at once (default all nine)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every panel's length (default 1)")
    p.add_argument("--out", help="folder for the nine runs (default: a temporary folder, removed)")
    p.add_argument("--extra", default="", help="more `aevb train` flags for every panel, e.g. '--compile'")
    args = p.parse_args()
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            sys.exit("gpu_fig2: no CUDA device here; pass --device cpu with a small --scale for a dry run")
    if args.jobs < 1 or args.scale <= 0:
        sys.exit("gpu_fig2: --jobs must be >= 1 and --scale > 0")
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="aevb-gpu-fig2-"))
    pending = [(preset, max(100, int(round(n * args.scale)))) for preset, n in PANELS.items()]
    running: dict[str, tuple[subprocess.Popen, float, int]] = {}
    done: dict[str, dict] = {}
    start = time.perf_counter()
    while pending or running:
        while pending and len(running) < args.jobs:
            preset, samples = pending.pop(0)
            cmd = _command(preset, samples, args, root / preset) + args.extra.split()
            running[preset] = (subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
                               time.perf_counter(), samples)
        time.sleep(0.5)
        for preset, (proc, t0, samples) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[preset]
            if proc.returncode:
                for other, *_ in running.values():
                    other.kill()
                sys.exit(f"gpu_fig2: {preset} failed:\n{proc.stderr.read()[-2000:]}")
            wall = time.perf_counter() - t0
            run = root / preset
            last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
            config = json.loads((run / "config.json").read_text())
            done[preset] = {"samples": samples, "seconds": round(wall, 1), "per_second": round(samples / wall),
                            "test_elbo": round(last["test_elbo"], 2),
                            "step": config["train"].get("step")}
            print(f"{preset:16s} {samples:12,d} datapoints {wall:9.1f} s {samples / wall:12,.0f} /s "
                  f"test ELBO {last['test_elbo']:9.2f}", flush=True)
    total = time.perf_counter() - start
    print(json.dumps({"device": args.device, "jobs": args.jobs, "scale": args.scale, "total_seconds": round(total, 1),
                      "goal_seconds": GOAL_SECONDS * args.scale, "panels": done}))
    if not args.out:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
