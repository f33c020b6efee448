"""`fit`: train a model with Algorithm 1 from Python (the `aevb train` command calls it too)."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path

import torch

from .. import distributed, runs
from ..data import DataSet, open_data
from ..data.user import as_rows
from ..version import __version__
from .denormals import flush_denormals
from .fused import resolve_step
from .options import TrainConfig
from .trainer import Trainer


def run_config(model_cfg, train_cfg: TrainConfig, data: dict, *, device, world_size: int = 1,
               preset: str | None = None) -> dict:
    """The config.json of a run: format, versions, the data record and the model and training configs."""
    return {"format_version": runs.FORMAT_VERSION, "aevb_version": __version__, "preset": preset, "data": data,
            "model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "device": str(device),
            "world_size": world_size, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _data(train_x, test_x) -> tuple:
    """(train rows, test rows, the data record of config.json, held-out indices or None) of fit's arguments."""
    if isinstance(train_x, (str, os.PathLike)):
        ds = open_data(train_x, test_data=test_x)
        record = {"dataset": None, "data": str(Path(train_x).resolve()),
                  "test_data": str(Path(test_x).resolve()) if test_x is not None else None,
                  "test_fraction": 0.1, "image_size": None, "channels": None, "skip_bad": False, "source": ds.source}
    elif isinstance(train_x, DataSet):
        ds, record = train_x, {"dataset": None, "data": None, "source": train_x.source}
        if test_x is not None:
            raise ValueError("fit(model, dataset, ...) takes its test set from the DataSet: pass test_x=None")
    else:
        if test_x is None:
            raise ValueError("fit needs test data (test_x) unless train_x is a path or a DataSet")
        train, test = as_rows(train_x, "training data"), as_rows(test_x, "test data")
        return train, test, {"dataset": None, "data": None, "source": {"kind": "python"}}, None
    if isinstance(train_x, DataSet) and ds.source is None:  # a built-in set from aevb.data.load
        record = {"dataset": ds.name, "split": ds.split}
    record["image_shape"] = list(ds.image_shape) if ds.image_shape else None
    return ds.train, ds.test, record, ds.test_indices


def _prepare(run_dir, model, train, test, cfg, record, test_indices, resume: bool) -> None:
    """Create run_dir and, for a new run without one, write its config.json (and the held-out indices); refuse a
    new run in a folder that holds a started one."""
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise runs.RunError(f"cannot write to the output folder {run_dir}: {e.strerror or e}") from None
    if not resume and any((Path(run_dir) / f).exists() for f in (runs.METRICS, runs.CHECKPOINT, runs.WEIGHTS)):
        raise runs.RunError(f"{run_dir} already holds a run; continue it with resume=True or choose another run_dir")
    config = Path(run_dir) / runs.CONFIG
    if resume or config.exists() or not hasattr(getattr(model, "config", None), "to_dict"):
        return
    record = {**record, "x_dim": int(train.shape[1]), "n_train": int(train.shape[0]), "n_test": int(test.shape[0])}
    record.setdefault("image_shape", list(model.config.image_shape) if getattr(model.config, "image_shape", None)
                      else None)
    world = distributed.current()
    if world.main:
        runs.write_json(config, run_config(model.config, cfg, record, device=train.device, world_size=world.size))
        if test_indices is not None:
            runs.write_tensors(Path(run_dir) / runs.SPLIT, {"test_indices": torch.from_numpy(test_indices)})


def fit(model, train_x, test_x, cfg: TrainConfig, run_dir=None, *, progress: bool = True, resume: bool = False,
        checkpoint_every: float = 60.0, max_nonfinite: int = 20) -> list[dict]:
    """Train `model` with Algorithm 1 and return the evaluation history (also appended to run_dir/metrics.jsonl).

    With a run_dir, a new run gets the same folder as `aevb train` writes (config.json, metrics.jsonl, weights,
    checkpoint), so `aevb eval`, `sample`, `plot` and `report` work on it; for data given as arrays, the commands
    that need the data (eval, report) say that the run folder does not hold it.

    Under torchrun (an initialized torch.distributed process group) every process calls fit with the same
    arguments; rank 0 evaluates and writes, the others return [].

    Args:
        model: a VAE (anything with prior/encode/decode; a `config` with `to_dict` is stored in config.json).
        train_x: the training data: an (N, D) tensor on the training device, a NumPy array or tensor of any
            per-datapoint shape (uint8 levels are divided by 255), a `torch.utils.data.Dataset`, an
            `aevb.data.DataSet` (then test_x is None), or a path that `aevb.data.open_data` reads (a folder of
            images, an array file or a table; test_x None holds out 10% of it, or a second path).
        test_x: the test data, in the same forms.
        cfg: a TrainConfig.
        run_dir: folder for the run (created with its parents if missing), or None to keep everything in memory.
            A folder that holds a started run is refused (RunError) unless `resume`.
        progress: show a progress bar (samples/s and the running ELBO).
        resume: continue from run_dir's checkpoint (from the beginning when it has none yet).
        checkpoint_every: seconds between checkpoints during training, besides those at evaluations.
        max_nonfinite: updates in a row with a NaN or Inf loss or gradient that stop the run (NonFiniteError).
    """
    train, test, record, test_indices = _data(train_x, test_x)
    # the training path this run takes, so that config.json records it ("fused" or "autograd", not "auto")
    cfg = dataclasses.replace(cfg, step=resolve_step(cfg, model, distributed.current().size))
    torch.manual_seed(cfg.seed)
    lock = contextlib.ExitStack()
    if run_dir is not None:
        _prepare(run_dir, model, train, test, cfg, record, test_indices, resume)
        if distributed.current().main:  # the process that writes the folder holds it until fit returns
            lock.enter_context(runs.training_lock(Path(run_dir)))
    # Tiny gradients squared by Adagrad and saturated sigmoids produce subnormal floats, which x86 CPUs process
    # many times slower; flushing them changes nothing above 1e-38. On every thread of the pool: denormals.py.
    flush = flush_denormals(True)
    trainer = None
    try:
        try:
            trainer = Trainer(model, train, test, cfg, Path(run_dir) if run_dir is not None else None,
                              progress=progress, checkpoint_every=checkpoint_every, max_nonfinite=max_nonfinite)
        except ValueError:  # refused before a step (e.g. free bits for this model): no folder of a run never begun
            if run_dir is not None and not resume and distributed.current().main:
                runs.remove_unstarted(run_dir)
            raise
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
            flush_denormals(False)
        lock.close()
