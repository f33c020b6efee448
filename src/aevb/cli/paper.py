"""`aevb reproduce`: one of the paper's experiments (Figures 2-5) into a folder."""
from __future__ import annotations

from pathlib import Path

import torch

from ..paper import reproduce
from .common import UsageError, check_positive


def cmd_reproduce(args) -> int:
    check_positive(threads=args.threads, jobs=args.jobs)
    if args.jobs == 1 and args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.baseline_samples is not None and args.figure not in ("fig2", "fig3"):
        raise UsageError("--baseline-samples applies to fig2 and fig3 (the figures with baselines)")
    if args.seeds != 1 and args.figure != "fig2":
        raise UsageError("--seeds applies to fig2")
    check_positive(seeds=args.seeds)
    samples = reproduce.training_length(args.figure, args.samples, args.budget)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    common = {"samples": samples, "data_dir": args.data_dir, "seed": args.seed, "init": args.init,
              "jobs": args.jobs, "threads": args.threads or 1}
    progress = not args.no_progress
    if args.figure == "fig2":
        reproduce.fig2(out, dataset=args.dataset, latent_dims=args.latent_dims, progress=progress,
                       baseline_samples=args.baseline_samples, seeds=args.seeds, **common)
    elif args.figure == "fig3":
        reproduce.fig3(out, n_trains=args.n_train or (1000, 50000), baseline_samples=args.baseline_samples,
                       **common)
    elif args.figure == "fig4":
        reproduce.fig4(out, progress=progress, **common)
    else:
        reproduce.fig5(out, latent_dims=args.latent_dims or (2, 5, 10, 20), progress=progress, **common)
    print(f"aevb reproduce: wrote {args.figure} into {out}")
    return 0
