"""`aevb sweep`: one `aevb train` run per point of a grid of flags, several at once, and a summary table.

Every point is checked before anything is created: its flags go through train's own parser and settings checks
(`train._settings`, `train._data_settings`), so an unknown flag or a bad value in any point is a one-line error.
Each run is an `aevb train` process with one thread (`--threads 1`, OMP_NUM_THREADS=1) writing its own run
folder, so a failing or crashing run cannot stop the others and the folders are exactly those of `aevb train`. On a
CPU, single-threaded processes side by side beat one process with every core for these small matrices
(benchmarks/reproduce_jobs.py, benchmarks/sweep_speed.py).
"""
from __future__ import annotations

import csv
import io
import itertools
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from .. import runs
from ..models import ModelConfig
from ..train import TrainConfig
from .common import Parser, UsageError, check_positive
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


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cmd_sweep(args) -> int:
    check_positive(jobs=args.jobs)
    jobs = args.jobs or usable_cores()
    points = plan(args)
    out = Path(args.out)
    try:
        (out / "logs").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    progress = not args.no_progress
    print(f"aevb sweep: {len(points)} runs into {out}, {min(jobs, len(points))} at a time", file=sys.stderr)
    start = time.perf_counter()
    trained = run_points(points, out, jobs, progress, getattr(args, "data_dir", None))
    wall = time.perf_counter() - start
    rows = summary_rows(points)
    runs.write_text(out / "summary.csv", _csv(rows))
    print(_table(rows), end="")
    failed = [p for p in points if p.status == "failed"]
    print(f"aevb sweep: {len(points) - len(failed)} of {len(points)} runs finished, {trained:,} datapoints trained in "
          f"{wall:.1f} s ({trained / max(wall, 1e-9):,.0f} datapoints/s over all runs); summary in "
          f"{out / 'summary.csv'}", file=sys.stderr)
    return 1 if failed else 0


# -- the grid -------------------------------------------------------------------------------------------------

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


# -- running --------------------------------------------------------------------------------------------------

def _last_record(path: Path) -> dict:
    try:
        records = runs.read_metrics(path)
    except (runs.RunError, OSError):
        return {}
    return records[-1] if records else {}


def _finished(path: Path) -> bool:
    """Whether the run folder holds a run trained to its full length."""
    try:
        config = runs.parse_config(runs.read_file(path / runs.CONFIG), path)
        total = TrainConfig.from_dict(config["train"]).total_samples(config["data"]["n_train"])
    except (runs.RunError, OSError, KeyError, TypeError, ValueError):
        return False
    return _last_record(path).get("samples_seen", -1) >= total


def _command(point: Point, data_dir) -> list[str] | None:
    """aevb train's arguments for the point: None when its run is finished, --resume when one was started."""
    if (point.path / runs.CONFIG).exists():
        if _finished(point.path):
            return None
        if not runs.remove_unstarted(point.path):
            extra = ["--data-dir", str(data_dir)] if data_dir else []
            return ["--resume", str(point.path), *extra]
    return [*point.argv, "--out", str(point.path)]


def _error_line(log: Path, rc: int) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("aevb: error:")]
    if errors:
        return errors[-1][len("aevb: error:"):].strip()
    return f"exit status {rc}" + (f": {lines[-1]}" if lines else "")


def _run_one(point: Point, out: Path, data_dir) -> None:
    argv = _command(point, data_dir)
    if argv is None:
        point.status, point.record = "skipped", _last_record(point.path)
        return
    point.start_samples = _last_record(point.path).get("samples_seen", 0) if "--resume" in argv else 0
    point.status = "running"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = out / "logs" / f"{point.name}.log"
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, "-m", "aevb", "train", *argv, "--threads", "1", "--no-progress"],
                            stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    point.record = _last_record(point.path)
    if rc == 0:
        point.status = "done"
    else:
        point.status, point.error = "failed", _error_line(log, rc)


def _cost(point: Point) -> float:
    """A rough relative cost for the order of the runs, the costliest first so that the last ones end together:
    the product of the numbers given to --samples, --epochs, --latent-dim and --hidden (1 when none)."""
    cost = 1.0
    for flag, value in zip(point.argv, point.argv[1:]):
        if flag in ("--samples", "--epochs", "--latent-dim", "--hidden"):
            for word in value.split(","):
                try:
                    cost *= max(1.0, float(word))
                except ValueError:
                    pass
    return cost


def run_points(points: list[Point], out: Path, jobs: int, progress: bool, data_dir=None) -> int:
    """Run the points `jobs` at a time; report each end on stderr. Returns the datapoints trained here."""
    display = _Display(points, progress)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(_run_one, p, out, data_dir): p for p in sorted(points, key=lambda p: -_cost(p))}
        display.start()
        try:
            for future in as_completed(futures):
                future.result()
                display.ended(futures[future])
        finally:
            display.stop()
    return sum(max(0, p.record.get("samples_seen", 0) - p.start_samples) for p in points
               if p.status in ("done", "failed"))


class _Display:
    """One progress line on stderr (runs done / total, running, datapoints and their rate over all runs), redrawn
    in place on a terminal and every 30 s otherwise, and one line per run that ends."""

    def __init__(self, points: list[Point], enabled: bool):
        self.points, self.enabled, self.t0 = points, enabled, time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.stop_event, self.thread, self.lock = threading.Event(), None, threading.Lock()

    def start(self) -> None:
        if self.enabled:
            self.thread = threading.Thread(target=self._loop, daemon=True)
            self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join()
            self._draw(final=True)

    def _loop(self) -> None:
        while not self.stop_event.wait(1.0 if self.tty else 30.0):
            self._draw()

    def _line(self) -> str:
        p = self.points
        ended = sum(x.status in ("done", "skipped", "failed") for x in p)
        failed = sum(x.status == "failed" for x in p)
        running = [x for x in p if x.status == "running"]
        seen = sum(max(0, (_last_record(x.path) if x.status == "running" else x.record).get("samples_seen", 0)
                       - x.start_samples) for x in p if x.status in ("running", "done", "failed"))
        rate = seen / max(time.perf_counter() - self.t0, 1e-9)
        fail = f" ({failed} failed)" if failed else ""
        return (f"sweep: {ended}/{len(p)} runs ended{fail}, {len(running)} running, {seen:,} datapoints, "
                f"{rate:,.0f} x/s over all runs")

    def _draw(self, final: bool = False) -> None:
        with self.lock:
            line = self._line()
            if self.tty:
                print(f"\r{line}\033[K", end="\n" if final else "", file=sys.stderr, flush=True)
            elif not final:
                print(line, file=sys.stderr, flush=True)

    def ended(self, point: Point) -> None:
        if point.status == "failed":
            message = f"aevb sweep: failed {point.name}: {point.error}"
        elif not self.enabled:
            return
        else:
            elbo = point.record.get("test_elbo")
            what = "skipped (finished before)" if point.status == "skipped" else "done"
            message = f"aevb sweep: {what} {point.name}" + (f", test ELBO {elbo:.2f}" if elbo is not None else "")
        with self.lock:
            print(("\r\033[K" if self.tty and self.enabled else "") + message, file=sys.stderr, flush=True)


# -- the summary ----------------------------------------------------------------------------------------------

def summary_rows(points: list[Point]) -> list[dict]:
    rows = []
    for p in points:
        r = p.record
        rows.append({"run": p.name, **p.varied, "status": p.status, "test_elbo": r.get("test_elbo"),
                     "train_elbo": r.get("train_elbo"), "samples_seen": r.get("samples_seen"),
                     "seconds": r.get("seconds"), "error": p.error})
    return rows


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return buf.getvalue()


def _table(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k not in ("run", "train_elbo", "samples_seen", "error")]

    def cell(v):
        return "" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)

    table = [keys] + [[cell(row[k]) for k in keys] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(keys))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in table]
    return "\n".join(lines) + "\n"
