"""Kill a real `aevb train` run many times at random moments, resume it each time, and compare it with an
uninterrupted run of the same seed: every metric but the wall clock, the weights and the final checkpoint.

    python experiments/kill_resume.py --kills 50 --out /tmp/kills

Prints one line per launch and a JSON summary (`identical` is the verdict). Uses the 8x8 digits (no data files),
a small model and a checkpoint every 0.05 s, so that most kills land between checkpoints of a running process.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from killing import kill_and_resume, metrics, run_aevb  # noqa: E402

from aevb import runs  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=50)
    p.add_argument("--samples", default="1e6", help="training length of the run (default 1e6 datapoints)")
    p.add_argument("--window", type=float, default=1.5, help="kills land uniform(0, WINDOW) s into training")
    p.add_argument("--startup-every", type=int, default=5, help="every N-th kill lands during start-up instead")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/aevb-kill-resume")
    a = p.parse_args()
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    run_args = ["--dataset", "digits", "--latent-dim", "3", "--hidden", "32", "--samples", a.samples,
                "--batch-size", "50", "--binarize", "dynamic", "--ema", "0.99", "--seed", "7"]
    runtime = ["--threads", "1", "--no-progress", "--checkpoint-every", "0.05"]
    t0 = time.time()
    ref = run_aevb("train", *run_args, *runtime, "--out", out / "ref", timeout=3600)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    log = kill_and_resume(out / "run", run_args, runtime, kills=a.kills, rng=random.Random(a.seed),
                          window=a.window, startup_every=a.startup_every, timeout=3600)
    for i, e in enumerate(log):
        print(f"launch {i:3d}: {'killed' if e['killed'] else 'finished'} after {e['delay'] or 0:.2f} s, "
              f"resumed at step {e['resumed_at']}")
    same_metrics = metrics(out / "run") == metrics(out / "ref")
    wa, _ = runs.parse_tensors((out / "run" / runs.WEIGHTS).read_bytes(), "a")
    wb, _ = runs.parse_tensors((out / "ref" / runs.WEIGHTS).read_bytes(), "b")
    ca, _ = runs.parse_tensors((out / "run" / runs.CHECKPOINT).read_bytes(), "a")
    cb, _ = runs.parse_tensors((out / "ref" / runs.CHECKPOINT).read_bytes(), "b")
    same = lambda x, y: x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)  # noqa: E731
    leftovers = [q.name for q in (out / "run").iterdir() if q.name.startswith(".")]
    resumed = [e["resumed_at"] for e in log if e["resumed_at"] is not None]
    summary = {
        "kills": sum(e["killed"] for e in log), "launches": len(log),
        "kills_during_startup": sum(1 for i, e in enumerate(log) if e["killed"] and a.startup_every
                                    and (i + 1) % a.startup_every == 0),
        "resumes_from_a_checkpoint": len(resumed), "distinct_resume_steps": len(set(resumed)),
        "final_step": json.loads((out / "run" / runs.METRICS).read_text().splitlines()[-1])["step"],
        "metrics_identical": same_metrics, "weights_identical": same(wa, wb), "checkpoint_identical": same(ca, cb),
        "leftover_temporaries": leftovers, "wall_s": round(time.time() - t0, 1),
    }
    summary["identical"] = same_metrics and summary["weights_identical"] and summary["checkpoint_identical"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
