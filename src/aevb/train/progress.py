"""What a run shows and logs as it goes: the progress bar, and TensorBoard event files beside metrics.jsonl."""
from __future__ import annotations

import math
import time

import torch

from ..bars import LOG_INTERVAL, bar as progress_bar, interactive


class Progress:
    """A tqdm bar over datapoints that reads the running ELBO from the device only twice a second (every 30 s in a
    log: stderr not a terminal)."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = progress_bar(total=total, initial=initial, unit="x", unit_scale=True, disable=not enabled,
                                dynamic_ncols=True, desc="train")
        self.pending, self.last, self.prev_sum, self.prev_step = 0, time.perf_counter(), 0.0, 0
        self.enabled = enabled
        self.every = 0.5 if interactive() else LOG_INTERVAL  # seconds between reads of the running ELBO

    def tick(self, n: int, running: torch.Tensor, step: int) -> None:
        self.pending += n
        now = time.perf_counter()
        if not self.enabled or now - self.last < self.every:
            return
        total = float(running)  # one host sync per refresh, not per step
        seen = self.pending
        elbo = (total - self.prev_sum) / max(1, seen) if total != self.prev_sum else float("nan")
        if not math.isfinite(total):
            raise FloatingPointError(f"training diverged: non-finite ELBO at step {step}")
        self.bar.set_postfix_str(f"elbo {elbo:.2f}", refresh=False)
        self.bar.update(seen)
        self.pending, self.last, self.prev_sum = 0, now, total

    def note(self, rec: dict) -> None:
        self.bar.update(self.pending)
        self.pending, self.prev_sum = 0, 0.0
        self.bar.write(f"[{rec['samples_seen']:>11,d} x] train ELBO {rec['train_elbo']:9.3f}  "
                       f"test ELBO {rec['test_elbo']:9.3f}  ({rec['seconds']:.0f} s)")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()


class TensorBoard:
    """Every number of a metrics.jsonl record as a scalar at step samples_seen, in event files in the run folder.

    The writer opens at the first record; a resumed run purges the events its interrupted predecessor wrote after
    the checkpoint it continues from (`purge_step`).
    """

    def __init__(self, run_dir):
        self.run_dir, self.writer = run_dir, None

    def write(self, rec: dict, history: list[dict]) -> None:
        if self.writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("tensorboard=True needs the tensorboard package: pip install tensorboard") from None
            purge = history[-2]["samples_seen"] + 1 if len(history) > 1 else None
            self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge)
        for key, value in rec.items():
            if key != "samples_seen" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, global_step=rec["samples_seen"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
