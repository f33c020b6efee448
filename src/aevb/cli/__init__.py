"""The `aevb` command: train, sweep, eval, sample, plot, report, restore and reproduce. It parses flags, builds
configs, calls the library and prints; nothing in the library imports it.

`parser.py` builds the parser (train's run-defining flags from the option declarations); one module per group of
subcommands holds their `cmd_*` functions.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from .. import distributed, runs
from ..data import DataError
from .common import UsageError
from .evaluate import cmd_eval, cmd_sample
from .grid import undash_grid_flags
from .inspecting import cmd_plot, cmd_report, cmd_restore
from .paper import cmd_reproduce
from .parser import build_parser
from .sweep import cmd_sweep
from .train import cmd_train

COMMANDS = {"train": cmd_train, "eval": cmd_eval, "sample": cmd_sample, "plot": cmd_plot, "report": cmd_report,
            "restore": cmd_restore, "reproduce": cmd_reproduce, "sweep": cmd_sweep}

__all__ = ["COMMANDS", "UsageError", "build_parser", "main"]


def main(argv=None) -> int:
    """The `aevb` command: run it with `argv` (sys.argv[1:] when None) and return its exit status (2 for bad
    input). A process of a torchrun job ends inside with that status (distributed.end_process)."""
    return distributed.end_process(_run(argv))


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _run(argv) -> int:
    args = build_parser().parse_args(undash_grid_flags(sys.argv[1:] if argv is None else list(argv)))
    # SIGTERM (a job scheduler, `kill`) ends a command as Ctrl-C does: a run at its last checkpoint, a sweep or a
    # reproduction with the processes it started
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        return _command(args)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _command(args) -> int:
    try:
        data_dir = getattr(args, "data_dir", None)
        if data_dir is not None and not Path(data_dir).is_dir():
            # Checked here, not in load(): a folder recorded in a run's config.json may be gone on another
            # machine, and there the search of $AEVB_DATA and the cache should go on.
            raise UsageError(f"--data-dir {data_dir}: no such folder")
        return COMMANDS[args.command](args)
    except (DataError, runs.RunError, UsageError, ValueError, FloatingPointError) as e:
        print(f"{_who()}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        first = (str(e).strip().splitlines() or ["MemoryError"])[0]
        print(f"{_who()}: error: out of memory ({first[:200]}); ask for less: a smaller --n, --k, --chains, "
              "--limit or --batch-size", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        what = " (the last checkpoint is intact; continue with --resume)" if args.command == "train" else ""
        print(f"{_who()}: interrupted{what}", file=sys.stderr)
        return 130


def _out_of_memory(e: BaseException) -> bool:
    """Whether an exception is an allocation that failed (CPU or GPU), not another runtime error."""
    import torch

    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(e, RuntimeError) and ("can't allocate memory" in str(e) or "out of memory" in str(e).lower()))


def _who() -> str:
    """'aevb', or 'aevb[rank R]' for the processes of a torchrun job other than rank 0."""
    rank = int(os.environ.get("RANK", "0") or 0) if distributed.launched() else 0
    return f"aevb[rank {rank}]" if rank else "aevb"
