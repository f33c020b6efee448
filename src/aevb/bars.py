"""Progress bars: tqdm, redrawn in place on a terminal; written to a file or a pipe (a job's log), at most one
update every LOG_INTERVAL seconds, so that a long run's log holds a few lines instead of thousands."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

LOG_INTERVAL = 30.0  # seconds between updates when stderr is not a terminal


def interactive() -> bool:
    """Whether stderr, where the bars go, is a terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def bar(**kw) -> tqdm:
    """A tqdm bar (the keyword arguments are tqdm's) that updates at most every LOG_INTERVAL seconds in a log."""
    kw.setdefault("mininterval", 0.1 if interactive() else LOG_INTERVAL)
    return tqdm(**kw)
