"""Kill a real `aevb train` process at random moments and resume it until it finishes.

Shared by tests/test_resume.py and experiments/kill_resume.py. Subprocesses run this checkout's aevb (its src/ goes
first on PYTHONPATH), one thread each.
"""
from __future__ import annotations

import json
import os
import queue
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), e.get("PYTHONPATH", "")) if p)
    e["OMP_NUM_THREADS"] = "1"
    return e


def aevb(*args) -> subprocess.Popen:
    """Start `python -m aevb ARGS` with stdout and stderr merged into one text pipe."""
    return subprocess.Popen([sys.executable, "-m", "aevb", *map(str, args)], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def run_aevb(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aevb", *map(str, args)], env=env(), capture_output=True,
                          text=True, timeout=timeout)


class _Lines:
    """The lines a process prints, read by a thread so that waiting for one can time out."""

    def __init__(self, proc: subprocess.Popen):
        self.queue: queue.Queue = queue.Queue()
        self.text: list[str] = []
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc):
        for line in proc.stdout:
            self.queue.put(line)
        self.queue.put(None)

    def wait_for(self, pattern: str, timeout: float) -> str | None:
        """The first line matching `pattern`, or None at the end of output or after `timeout` seconds."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            try:
                line = self.queue.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                self.queue.put(None)
                return None
            self.text.append(line)
            if re.search(pattern, line):
                return line
        return None

    def rest(self) -> str:
        while (line := self.queue.get()) is not None:
            self.text.append(line)
        return "".join(self.text)


STARTED = r"aevb: (training|resuming|.* has no checkpoint yet)"


def kill_and_resume(run: Path, run_args: list, runtime_args: list, *, kills: int, rng: random.Random,
                    window: float, startup_every: int = 0, timeout: float = 300) -> list[dict]:
    """Train into `run`, SIGKILL the process `kills` times, relaunching each time, and let the last launch finish.

    A launch is `aevb train RUN_ARGS RUNTIME_ARGS --out RUN`, or `aevb train --resume RUN RUNTIME_ARGS` once
    config.json exists. Kills land `uniform(0, window)` seconds after the process says it trains; every
    `startup_every`-th kill (0: none) lands instead at a random moment of its start (imports, data, config).

    Returns:
        one dict per launch: `killed`, `delay` (seconds after the reference moment), `resumed_at` (the step the
        launch resumed from, None for a fresh start), `output` (what it printed).
    """
    log = []
    for i in range(kills + 1):
        resume = (run / "config.json").exists()
        args = (["train", "--resume", run, *runtime_args] if resume
                else ["train", *run_args, *runtime_args, "--out", run])
        started = time.monotonic()
        proc = aevb(*args)
        lines = _Lines(proc)
        entry = {"killed": False, "delay": None, "resumed_at": None}
        if i < kills:
            if startup_every and (i + 1) % startup_every == 0:
                entry["delay"] = rng.uniform(0, 3.0)
                lines.wait_for(r"^\0", entry["delay"])  # just wait, collecting output
            else:
                if lines.wait_for(STARTED, timeout) is None:
                    raise AssertionError(f"launch {i} did not start training:\n{lines.rest()}")
                entry["delay"] = rng.uniform(0, window)
                lines.wait_for(r"^\0", entry["delay"])
            if proc.poll() is None:
                proc.kill()
                entry["killed"] = True
        try:
            rc = proc.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"launch {i} hung:\n{lines.rest()}") from None
        entry["output"] = lines.rest()
        m = re.search(r"resuming .* at step (\d+)", entry["output"])
        entry["resumed_at"] = int(m.group(1)) if m else None
        log.append(entry)
        if not entry["killed"]:
            if rc != 0:
                raise AssertionError(f"launch {i} failed with exit code {rc}:\n{entry['output']}")
            break
    return log


def metrics(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock field `seconds`, the one value a resumed run cannot repeat."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]
