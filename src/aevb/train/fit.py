"""`fit`: train a model with Algorithm 1 from Python (the `aevb train` command calls it too)."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import runs
from .options import TrainConfig
from .trainer import Trainer


def fit(model, train_x: torch.Tensor, test_x: torch.Tensor, cfg: TrainConfig, run_dir=None, *,
        progress: bool = True, resume: bool = False, checkpoint_every: float = 60.0,
        max_nonfinite: int = 20) -> list[dict]:
    """Train `model` with Algorithm 1 and return the evaluation history (also appended to run_dir/metrics.jsonl).

    Under torchrun (an initialized torch.distributed process group) every process calls fit with the same
    arguments; rank 0 evaluates and writes, the others return [].

    Args:
        model: a VAE (anything with prior/encode/decode).
        train_x: (N, D) resident tensor of training data on the training device.
        test_x: (N, D) resident tensor of test data on the training device.
        cfg: a TrainConfig.
        run_dir: folder for metrics.jsonl and checkpoints (created with its parents if missing), or None to keep
            everything in memory.
        progress: show a progress bar (samples/s and the running ELBO).
        resume: continue from run_dir's checkpoint (from the beginning when it has none yet).
        checkpoint_every: seconds between checkpoints during training, besides those at evaluations.
        max_nonfinite: updates in a row with a NaN or Inf loss or gradient that stop the run (NonFiniteError).
    """
    torch.manual_seed(cfg.seed)
    # Tiny gradients squared by Adagrad and saturated sigmoids produce subnormal floats, which x86 CPUs process
    # many times slower; flushing them changes nothing above 1e-38.
    flush = torch.set_flush_denormal(True)
    trainer = None
    if run_dir is not None:
        try:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise runs.RunError(f"cannot write to the output folder {run_dir}: {e.strerror or e}") from None
    try:
        trainer = Trainer(model, train_x, test_x, cfg, Path(run_dir) if run_dir is not None else None,
                          progress=progress, checkpoint_every=checkpoint_every, max_nonfinite=max_nonfinite)
        if resume:
            restored = trainer.restore()
            if trainer.world.main:
                print(f"aevb: resuming {run_dir} at step {trainer.step} ({trainer.samples_seen:,} of "
                      f"{trainer.total:,} datapoints)" if restored else
                      f"aevb: {run_dir} has no checkpoint yet; starting it from the beginning")
        return trainer.run()
    finally:
        if trainer is not None:
            trainer.tb.close()
        if flush:
            torch.set_flush_denormal(False)
