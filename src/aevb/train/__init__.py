"""Algorithm 1 (AEVB): minibatch SGVB training with evaluation, a JSONL history and resumable checkpoints.

`fit(model, train_x, test_x, TrainConfig(...), run_dir)` trains and returns the evaluation history. Training length
is counted in datapoints evaluated, the paper's x-axis. The modules: `options` (TrainConfig, each option declared
once), `presets`, `trainer` (the loop), `checkpoint` (exact resume), `evaluation`, `lr_search` (the paper's
step-size rule), `streams` (data order and random streams per shard), `schedule`, `checks`, `progress`,
`denormals` (subnormal floats flushed on every thread).
"""
from __future__ import annotations

from .checks import NonFiniteError, check_data
from .fit import fit
from .options import BINARIZE, EVAL_BINARIZATION_SEEDS, SCHEDULES, DataOptions, TrainConfig
from .presets import DEFAULTS, PRESETS, merge
from .schedule import eval_points, lr_factor
from .streams import Batches, Objective, Streams
from .trainer import Trainer

__all__ = ["BINARIZE", "Batches", "DEFAULTS", "DataOptions", "EVAL_BINARIZATION_SEEDS", "NonFiniteError",
           "Objective", "PRESETS", "SCHEDULES", "Streams", "TrainConfig", "Trainer", "check_data", "eval_points",
           "fit", "lr_factor", "merge"]
