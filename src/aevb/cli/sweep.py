"""`aevb sweep`: one `aevb train` run per point of a grid of flags, several at once, and a summary table.

Every point is checked before anything is created (grid.py). Each run is an `aevb train` process with one thread
(`--threads 1`, OMP_NUM_THREADS=1) writing its own run folder, so a failing or crashing run cannot stop the others
and the folders are exactly those of `aevb train`. On a CPU, single-threaded processes side by side beat one
process with every core for these small matrices (benchmarks/reproduce_jobs.py, benchmarks/sweep_speed.py).
Interrupted (Ctrl-C or SIGTERM), a sweep stops its runs at their last checkpoints; the same command again continues
them.
"""
from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from .. import runs
from ..train import TrainConfig
from .common import UsageError, check_positive
from .grid import Point, plan

__all__ = ["Point", "cmd_sweep", "plan", "run_points", "summary_rows", "usable_cores"]


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
    try:
        trained = run_points(points, out, jobs, progress, getattr(args, "data_dir", None))
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the command line turns it into this)
        print("aevb sweep: interrupted; the runs stopped at their last checkpoints. Run the same command again to "
              "continue them", file=sys.stderr)
        return 130
    wall = time.perf_counter() - start
    rows = summary_rows(points)
    runs.write_text(out / "summary.csv", _csv(rows))
    print(_table(rows), end="")
    failed = [p for p in points if p.status == "failed"]
    print(f"aevb sweep: {len(points) - len(failed)} of {len(points)} runs finished, {trained:,} datapoints trained in "
          f"{wall:.1f} s ({trained / max(wall, 1e-9):,.0f} datapoints/s over all runs); summary in "
          f"{out / 'summary.csv'}", file=sys.stderr)
    return 1 if failed else 0


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


class _Children:
    """The training processes a sweep has running: once it is interrupted, none starts and each gets SIGTERM, which
    ends an `aevb train` at its last checkpoint as Ctrl-C does (the sweep's next call resumes it). Not SIGINT: a
    process started in the background by a shell ignores it."""

    def __init__(self):
        self.lock, self.procs, self.stopping = threading.Lock(), set(), False

    def start(self, cmd: list[str], **kw) -> subprocess.Popen | None:
        with self.lock:
            if self.stopping:
                return None
            proc = subprocess.Popen(cmd, **kw)
            self.procs.add(proc)
            return proc

    def ended(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.procs.discard(proc)

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            for proc in self.procs:
                proc.send_signal(signal.SIGTERM)


def _run_one(point: Point, out: Path, data_dir, children: _Children) -> None:
    argv = _command(point, data_dir)
    if argv is None:
        point.status, point.record = "skipped", _last_record(point.path)
        return
    start_samples = _last_record(point.path).get("samples_seen", 0) if "--resume" in argv else 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = out / "logs" / f"{point.name}.log"
    with open(log, "w") as f:
        proc = children.start([sys.executable, "-m", "aevb", "train", *argv, "--threads", "1", "--no-progress"],
                              stdout=f, stderr=subprocess.STDOUT, env=env)
        if proc is None:  # the sweep was interrupted before this run began
            return
        point.start_samples, point.status = start_samples, "running"
        try:
            rc = proc.wait()
        finally:
            children.ended(proc)
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
    display, children = _Display(points, progress), _Children()
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = {pool.submit(_run_one, p, out, data_dir, children): p
                   for p in sorted(points, key=lambda p: -_cost(p))}
        display.start()
        for future in as_completed(futures):
            future.result()
            display.ended(futures[future])
    except BaseException:
        children.stop()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # waits for the runs that were stopped to end
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
