"""`aevb train --tensorboard`: event files beside metrics.jsonl hold the same numbers; a resumed run replaces what its
interrupted predecessor logged after the checkpoint; without the package, a one-line error."""
import json
import sys

import pytest

from aevb import train as train_mod
from aevb.cli import main

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

ARGS = ["train", "--dataset", "digits", "--latent-dim", "2", "--hidden", "8", "--samples", "5000", "--no-progress",
        "--tensorboard"]


def _scalars(run, tag):
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_event_files_hold_the_metrics(tmp_path):
    run = tmp_path / "run"
    assert main([*ARGS, "--out", str(run)]) == 0
    assert list(run.glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for tag in ("train_elbo", "test_elbo", "test_kl", "lr"):
        got = _scalars(run, tag)
        assert [s for s, _ in got] == [r["samples_seen"] for r in records]
        assert [v for _, v in got] == pytest.approx([r[tag] for r in records], rel=1e-6)  # float32 in the file
    assert json.loads((run / "config.json").read_text())["train"]["tensorboard"] is True


def test_resumed_run_replaces_the_events_after_its_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = train_mod.Trainer.checkpoint
    calls = {"n": 0}

    def flaky(self):  # evaluation 3 is logged, then the process dies before its checkpoint
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(train_mod.Trainer, "checkpoint", flaky)
    assert main([*ARGS, "--out", str(run)]) == 130
    monkeypatch.setattr(train_mod.Trainer, "checkpoint", real)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    got = _scalars(run, "test_elbo")
    assert [s for s, _ in got] == [r["samples_seen"] for r in records]  # each step once
    assert [v for _, v in got] == pytest.approx([r["test_elbo"] for r in records], rel=1e-6)


def test_missing_tensorboard_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    assert main([*ARGS, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install tensorboard" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
