"""`aevb sweep`'s grid: the points of --grid, each a set of `aevb train` arguments checked before anything runs.

Every point goes through train's own parser and settings checks (`train._settings`, `train._data_settings`), so an
unknown flag or a bad value in any point is a one-line error naming it.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from ..models import ModelConfig
from .common import Parser, UsageError
from .parser import given_options, run_flags, train_parser
from .train import _data_settings, _settings

# Flags the sweep sets for every run itself, or that do not define a run: not allowed in --grid.
OWN = {"out", "resume", "threads", "no_progress", "device", "checkpoint_every", "max_nonfinite", "dist_timeout",
       "help"}
SWITCH_VALUES = {"true": True, "false": False}


class _Strict(Parser):
    """train's parser with errors raised as UsageError, so that the sweep can name the grid point."""

    def error(self, message):
        raise UsageError(" ".join(message.split()))


@dataclass
class Point:
    name: str
    varied: dict  # flag (without dashes) -> the value as given
    argv: list  # aevb train's arguments for a new run
    path: Path
    status: str = "pending"  # pending, running, done, skipped, failed
    error: str = ""
    start_samples: int = 0
    record: dict = field(default_factory=dict)  # the last metrics.jsonl record


def undash_grid_flags(argv: list[str]) -> list[str]:
    """`aevb sweep --grid --latent-dim 2 5` read as `--grid latent-dim 2 5`: the flag after --grid may keep its
    dashes (argparse would take it for an option of its own and leave --grid empty)."""
    if not argv or argv[0] != "sweep":
        return argv
    return [a[2:] if i and argv[i - 1] == "--grid" and a.startswith("--") and len(a) > 2 else a
            for i, a in enumerate(argv)]


def _strict_train_parser() -> Parser:
    p = _Strict(prog="aevb")
    train_parser(p.add_subparsers(dest="command"))
    return p


def _train_actions(parser) -> dict:
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["train"]._option_string_actions


def _grid(args, actions) -> list[tuple[str, list[str]]]:
    """[(flag, values)] of --grid, each flag a train flag that defines a run, each given once."""
    grid = []
    for entry in args.grid:
        flag, values = entry[0].lstrip("-"), entry[1:]
        if "=" in flag:
            raise UsageError(f"--grid {entry[0]}: write the flag and its values as words, e.g. --grid latent-dim 2 5")
        action = actions.get(f"--{flag}")
        if action is None or action.dest in OWN:
            raise UsageError(f"--grid {flag}: not a flag of aevb train that defines a run")
        if not values:
            raise UsageError(f"--grid {flag}: give at least one value")
        if any(f == flag for f, _ in grid):
            raise UsageError(f"--grid {flag}: given twice; list all its values in one --grid")
        if action.nargs == 0 and not set(values) <= set(SWITCH_VALUES):
            raise UsageError(f"--grid {flag}: a switch takes the values true and false")
        if getattr(args, action.dest, None) not in (None, False):
            raise UsageError(f"--{flag} is given both as a fixed flag and in --grid")
        grid.append((flag, list(dict.fromkeys(values))))
    return grid


def _texts(value) -> list[str]:
    """Ways to write a parsed flag value back as a word (a tuple: 512,512 or 28x28)."""
    if isinstance(value, (tuple, list)):
        words = [_texts(v)[0] for v in value]
        return [",".join(words), "x".join(words)]
    return [repr(value) if isinstance(value, float) else str(value)]


def _fixed_argv(args, parser, actions) -> list[str]:
    """The run-defining flags given to the sweep, as arguments for aevb train, each checked to parse back the same."""
    by_dest = {a.dest: (opt, a) for opt, a in actions.items() if opt.startswith("--")}
    argv = []
    for dest in [*run_flags(), "data_dir"]:
        value = getattr(args, dest, None)
        if dest in OWN or value in (None, False):
            continue
        opt, action = by_dest[dest]
        if action.nargs == 0:
            argv.append(opt)
            continue
        for word in _texts(value):
            try:
                if getattr(parser.parse_args(["train", opt, word]), dest) == value:
                    argv += [opt, word]
                    break
            except UsageError:
                pass
        else:
            raise UsageError(f"{opt}: its value cannot be passed on to the runs as parsed; put it in --grid with "
                             "the one value")
    return argv


def _name(varied: dict) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9.,+=-]", "-", f"{flag}-{value}") for flag, value in varied.items())


def plan(args) -> list[Point]:
    """Every point of the grid with its run folder and train arguments; a UsageError for the first bad one."""
    parser = _strict_train_parser()
    actions = _train_actions(parser)
    grid = _grid(args, actions)
    fixed = _fixed_argv(args, parser, actions)
    out, points, names = Path(args.out), [], set()
    for combo in itertools.product(*(values for _, values in grid)):
        varied = dict(zip((flag for flag, _ in grid), combo))
        name = _name(varied)
        if name in names:
            raise UsageError(f"--grid: two points would share the run folder {name}")
        names.add(name)
        argv = list(fixed)
        for flag, value in varied.items():
            if actions[f"--{flag}"].nargs == 0:
                argv += [f"--{flag}"] if SWITCH_VALUES[value] else []
            else:
                argv += [f"--{flag}", value]
        _check_point(parser, argv, name)
        points.append(Point(name, varied, argv, out / name))
    return points


def _check_point(parser, argv, name) -> None:
    try:
        ns = parser.parse_args(["train", *argv])
        if ns.data_dir is not None and not Path(ns.data_dir).is_dir():
            raise UsageError(f"--data-dir {ns.data_dir}: no such folder")
        settings = _settings(ns, SimpleNamespace(size=1))
        _data_settings(settings, given_options(ns), ns)
        _check_model(settings["model"])
    except (UsageError, ValueError, TypeError) as e:
        raise UsageError(f"grid point {name}: {' '.join(str(e).split())}") from None


def _check_model(model: dict) -> None:
    """The model options' own checks, on a stand-in 28x28 image (the data's shape is known only once it is read,
    in the run; a check that depends on it is left to the run)."""
    try:
        ModelConfig(x_dim=784, image_shape=(28, 28), **model)
    except ValueError as e:
        if not any(word in str(e) for word in ("image_shape", "x_dim", "image shape")):
            raise
