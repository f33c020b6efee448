"""Figure 2's AEVB panels as one `aevb sweep`, packed onto the cores against one run at a time.

    python benchmarks/sweep_speed.py --data-dir ../shared/data [--samples 1e6] [--repeats 1] [--modes packed,serial]

The panels are the presets paper-mnist-{3,5,10,20,200} and paper-frey-{2,5,10,20}: nine, one per Nz of the
paper's Figure 2 (five MNIST, four Frey Face). Each mode trains all nine with
AEVB for --samples datapoints each through `aevb sweep --grid preset ...`, into a fresh folder:
  packed:  --jobs <cores> (default: the usable cores), one thread per run;
  serial:  --jobs 1, one thread, the runs one after another;
  threads: the runs one after another as `aevb train --threads <cores>` (one process using every core).
With --repeats > 1 the modes alternate (packed, serial, packed, serial, ...) and the best wall time of each is kept
(the machine may be shared). Prints the wall time, the throughput in runs x datapoints/s, the ratio to packed, and
one JSON line; checks that packed and serial logged the same final test ELBO per panel (one thread each, the same
seeds).
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

PANELS = [f"paper-mnist-{nz}" for nz in (3, 5, 10, 20, 200)] + [f"paper-frey-{nz}" for nz in (2, 5, 10, 20)]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run(mode: str, args, out: str) -> tuple[float, dict]:
    """Wall time of one mode and {panel: final test ELBO}."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if mode != "threads" else dict(os.environ)
    start = time.perf_counter()
    if mode == "threads":
        for preset in PANELS:
            subprocess.run([sys.executable, "-m", "aevb", "train", "--preset", preset, "--samples", args.samples,
                            "--threads", str(args.jobs), "--data-dir", args.data_dir, "--no-progress", "--out",
                            os.path.join(out, f"preset-{preset}")], check=True, stdout=subprocess.DEVNULL, env=env)
    else:
        jobs = args.jobs if mode == "packed" else 1
        subprocess.run([sys.executable, "-m", "aevb", "sweep", "--out", out, "--jobs", str(jobs), "--grid", "preset",
                        *PANELS, "--samples", args.samples, "--data-dir", args.data_dir, "--no-progress"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - start
    elbos = {}
    for preset in PANELS:
        with open(os.path.join(out, f"preset-{preset}", "metrics.jsonl")) as f:
            elbos[preset] = json.loads(f.read().splitlines()[-1])["test_elbo"]
    return wall, elbos


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--samples", default="1e6", help="training datapoints per panel (default 1e6)")
    p.add_argument("--jobs", type=int, default=_cores(), help="runs at once when packed (default: the usable cores)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--modes", default="packed,serial", help="comma-separated: packed, serial, threads")
    args = p.parse_args()
    modes = args.modes.split(",")
    samples = int(float(args.samples))
    best: dict[str, float] = {}
    elbos: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for mode in modes:
                wall, elbos[mode] = run(mode, args, os.path.join(tmp, f"{mode}-{r}"))
                print(f"repeat {r + 1} {mode:>7}: {wall:7.1f} s", flush=True)
                best[mode] = min(best.get(mode, float("inf")), wall)
    ref = best.get("packed", min(best.values()))
    print(f"\n{len(PANELS)} panels x {samples:,} datapoints, {args.jobs} jobs when packed, best of {args.repeats}")
    print(f"{'mode':>8} {'wall s':>8} {'runs x datapoints/s':>20} {'time / packed':>14}")
    for mode in modes:
        rate = len(PANELS) * samples / best[mode]
        print(f"{mode:>8} {best[mode]:8.1f} {rate:20,.0f} {best[mode] / ref:14.2f}")
    if "packed" in elbos and "serial" in elbos:
        diff = max(abs(elbos["packed"][k] - elbos["serial"][k]) for k in PANELS)
        print(f"largest final test ELBO difference packed vs serial: {diff:.2e} nats")
    writer = csv.writer(sys.stdout)
    writer.writerow(["panel", *modes])
    for k in PANELS:
        writer.writerow([k, *(f"{elbos[m][k]:.3f}" for m in modes)])
    print(json.dumps({"panels": len(PANELS), "samples": samples, "jobs": args.jobs, "repeats": args.repeats,
                      "wall_s": {m: round(best[m], 1) for m in modes},
                      "runs_x_samples_per_s": {m: round(len(PANELS) * samples / best[m]) for m in modes}}))


if __name__ == "__main__":
    main()
