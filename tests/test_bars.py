"""Progress bars redraw in place on a terminal and write an update at most every 30 s into a log."""
import io
import sys

from aevb import bars
from aevb.train.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_in_a_log_updates_every_30_s_and_on_a_terminal_in_place(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not bars.interactive()
    b = bars.bar(total=10, file=sys.stderr)
    assert b.mininterval == bars.LOG_INTERVAL == 30.0
    b.close()
    assert Progress(100, 0, enabled=False).every == 30.0
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert bars.interactive()
    b = bars.bar(total=10, file=sys.stderr)
    assert b.mininterval == 0.1
    b.close()
    assert Progress(100, 0, enabled=False).every == 0.5
    assert bars.bar(total=1, mininterval=5, file=sys.stderr).mininterval == 5  # an explicit interval wins


def test_a_log_gets_the_first_and_last_update_only_within_30_s(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    b = bars.bar(total=1000, file=log)
    for _ in range(1000):
        b.update(1)
    b.close()
    frames = [f for f in log.getvalue().split("\r") if f.strip()]
    assert len(frames) == 2 and "0/1000" in frames[0] and "1000/1000" in frames[-1]
