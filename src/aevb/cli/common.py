"""What every subcommand shares: the one-line usage error, the device and data lookups."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .. import runs
from ..data import load, open_data
from ..load import load_run


class UsageError(Exception):
    """Bad option values found after parsing; reported in one line with exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `aevb: error: ...` and exit code 2 (no usage block)."""

    def error(self, message):
        hint = f" (see {self.prog} --help)"
        self.exit(2, f"aevb: error: {' '.join(message.split())}{hint}\n")


def device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as e:
        raise UsageError(f"--device {name}: not available here ({str(e).splitlines()[0]})") from None
    return dev


def load_data(data_cfg: dict, data_dir, run=None, *, progress: bool = True):
    """The data set a run's settings or config name (its `data` section): a built-in one from `data_dir` or aevb's
    search path, or a `--data` source. For an existing run folder `run`, a source must have the content the run
    recorded, and a held-out split is the one stored in the run folder."""
    if not data_cfg.get("data"):
        if not data_cfg.get("dataset"):
            raise UsageError(f"{run} was trained from Python on in-memory data, which its folder does not hold; "
                             "evaluate it from Python (aevb.evaluate), or train through a path or --data")
        return load(data_cfg["dataset"], split=data_cfg["split"], data_dir=data_dir)
    test_indices = None
    if run is not None and (Path(run) / runs.SPLIT).is_file():
        test_indices = runs.read_tensors(Path(run) / runs.SPLIT)["test_indices"].numpy()
    source, test_source = data_cfg["data"], data_cfg.get("test_data")
    if run is not None:  # a run's own data: where it was, or where --data-dir says it is now
        source, test_source = _moved(source, data_dir), _moved(test_source, data_dir)
    size = data_cfg.get("image_size")
    return open_data(source, test_data=test_source,
                     test_fraction=data_cfg.get("test_fraction", 0.1), image_size=tuple(size) if size else None,
                     channels=data_cfg.get("channels"), skip_bad=bool(data_cfg.get("skip_bad")),
                     test_indices=test_indices, expect=data_cfg.get("source") if run is not None else None,
                     progress=progress)


def _moved(path: str | None, data_dir) -> str | None:
    """A run's own data source (a file or folder it recorded): the same name in `data_dir` when that is given,
    else the recorded path, which must still exist (the content is checked against the run's record later)."""
    if path is None:
        return None
    name = Path(path).name
    if data_dir is not None:
        moved = Path(data_dir) / name
        if not moved.exists():
            raise UsageError(f"--data-dir {data_dir}: holds no {name} (the run was trained on {path})")
        return str(moved)
    if not Path(path).exists():
        raise UsageError(f"{path}: no such file or folder; if the run's data moved, pass --data-dir with the folder "
                         f"that now holds {name}")
    return path


def run_and_data(run, data_dir, device="cpu"):
    """(model, config, data set) of a run folder; `data_dir` overrides the data folder the run recorded."""
    model, config = load_run(run, device=device)
    return model, config, load_data(config["data"], data_dir or config["data"].get("data_dir"), run)


def check_positive(**flags) -> None:
    """A UsageError naming the first flag whose value is below 1."""
    for name, value in flags.items():
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def check_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard "
                         "(or aevb[tensorboard])") from None


def compile_failed(e: Exception) -> UsageError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return UsageError(f"--compile: torch.compile failed ({type(e).__name__}: {first}); run without --compile")
