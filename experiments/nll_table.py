"""Test NLL on dynamically binarized MNIST of the models beyond the paper: the VampPrior, two-layer hierarchies with
the standard prior and the VampPrior, and an IAF on the hierarchy. Each row trains one run folder (skipped when the
folder already holds a finished run), then estimates log p(x) by importance sampling with K = 5,000 over all
10,000 test images, and prints a markdown table: training datapoints and seconds, the test ELBO, the NLL with its
standard error, and the published value for comparison.

    python experiments/nll_table.py --data-dir ../shared/data --out runs/table [--rows vamp,hvae,hvae-vamp]
        [--threads 1] [--k 5000] [--limit N] [--samples N] [--dataset fashion-mnist]

`--dataset fashion-mnist` trains and evaluates the same rows on dynamically binarized Fashion-MNIST (60k/10k), a
second data set these flags were not tuned on; the published column then stays empty.

Rows run one after the other; start several commands with different --rows to use more cores.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# --grad-clip: one gradient step of norm 3e5 (the mean is about 45) sent a top-down run without it to NaN at 5.1e6
HIERARCHY = ["--stochastic-layers", "2", "--latent-dims", "40,40", "--upper-hidden", "256,256", "--kl-warmup", "5e5",
             "--grad-clip", "200"]
ROWS = {  # name: (train flags, published NLL and source)
    "vamp": (["--prior", "vamp", "--samples", "5e6"], "85.57 (Tomczak & Welling 2018, VAE + VampPrior)"),
    "hvae": ([*HIERARCHY, "--inference", "top-down", "--samples", "2.2e7"],
             "85.33 (Burda et al. 2016, two-layer VAE)"),
    "hvae-vamp": ([*HIERARCHY, "--prior", "vamp", "--samples", "5e6"],
                  "83.19 (Tomczak & Welling 2018, HVAE + VampPrior)"),
    "hvae-vamp-iaf": ([*HIERARCHY, "--prior", "vamp", "--flow", "iaf", "--samples", "5e6"], ""),
}


def _aevb(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "aevb", *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"aevb {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def _finished(run: Path) -> dict | None:
    """The last metrics line of a run that reached its training length, else None."""
    try:
        config = json.loads((run / "config.json").read_text())
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    except (OSError, IndexError, ValueError):
        return None
    return last if last.get("samples_seen", 0) >= config["train"]["samples"] else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--k", default="5000")
    ap.add_argument("--limit", default=None, help="evaluate the first N test images only (not the protocol)")
    ap.add_argument("--samples", default=None, help="train every row for N datapoints instead of its own length")
    ap.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    args = ap.parse_args()
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    lines = ["| model | flags | datapoints | training s | test ELBO | test NLL (IS) | eval s | published |",
             "|---|---|---|---|---|---|---|---|"]
    for name in rows:
        flags, published = ROWS[name]
        if args.samples:
            flags = [*flags[:flags.index("--samples")], "--samples", args.samples]
        run = Path(args.out) / name
        if _finished(run) is None:
            _aevb("train", *flags, "--dataset", args.dataset, "--binarize", "dynamic", "--data-dir", args.data_dir,
                  "--threads", args.threads, "--out", str(run), "--no-progress")
        last = _finished(run)
        limit = ["--limit", args.limit] if args.limit else []
        result = json.loads(_aevb("eval", str(run), "--method", "is", "--k", args.k, "--threads", args.threads,
                                  "--data-dir", args.data_dir, "--no-progress", *limit).strip().splitlines()[-1])
        lines.append(f"| {name} | `{' '.join(flags)}` | {last['samples_seen']:,} | {last['seconds']:.0f} | "
                     f"{last['test_elbo']:.2f} | {result['nll']:.2f} ± {result['stderr']:.2f} (n = {result['n']}) | "
                     f"{result['seconds']:.0f} | {published if args.dataset == 'mnist' else ''} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
