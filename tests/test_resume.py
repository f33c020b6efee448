"""Exact resume: a run interrupted at any moment and resumed ends bit-identical to an uninterrupted one.

In-process tests interrupt at chosen places (mid-interval, between the metrics line and the checkpoint, inside an
atomic write, during the step-size search); the subprocess test SIGKILLs a real `aevb train` at random moments.
Every comparison is exact: all metrics but the wall-clock `seconds`, and every tensor of the weights.
"""
import json
import random

import pytest
import torch
from safetensors.torch import load_file

from aevb import VAE, ModelConfig, TrainConfig, fit, runs
from aevb import train as train_mod
from aevb.cli import main
from aevb.data import load
from killing import aevb, kill_and_resume, metrics


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def _cfg(**kw):
    base = dict(optimizer="adam", lr=3e-3, samples=3000, batch_size=50, schedule="cosine", binarize="dynamic",
                ema=0.99, seed=3)
    return TrainConfig(**{**base, **kw})


def _model(seed=0):
    torch.manual_seed(seed)
    return VAE(ModelConfig(x_dim=64, latent_dim=3, hidden=(16,)))


def _strip(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def _same_weights(a, b):
    wa, wb = load_file(a / runs.WEIGHTS), load_file(b / runs.WEIGHTS)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _interrupt(path, digits, cfg, monkeypatch, target, when, **fit_kw):
    """Run fit into `path` until `target` (a Trainer method name) is called for the `when`-th time, which raises
    KeyboardInterrupt instead."""
    calls = {"n": 0}
    real = getattr(train_mod.Trainer, target)

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == when:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    path.mkdir()
    monkeypatch.setattr(train_mod.Trainer, target, flaky)
    with pytest.raises(KeyboardInterrupt):
        fit(_model(), digits.train, digits.test, cfg, path, progress=False, **fit_kw)
    monkeypatch.setattr(train_mod.Trainer, target, real)


def _resume(path, digits, cfg, model_seed=123, **fit_kw):
    """Resume into a fresh model, by default initialized differently (the checkpoint's weights must win). The CLI
    initializes a resumed run's model as a new run's, which is what a run without a checkpoint yet starts from."""
    return fit(_model(model_seed), digits.train, digits.test, cfg, path, progress=False, resume=True, **fit_kw)


def _interrupted(path, digits, cfg, monkeypatch, target, when, model_seed=123, **fit_kw):
    _interrupt(path, digits, cfg, monkeypatch, target, when, **fit_kw)
    return _resume(path, digits, cfg, model_seed, **fit_kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits):
    """Uninterrupted runs, by config."""
    cache = {}

    def get(cfg):
        key = json.dumps(cfg.to_dict())
        if key not in cache:
            path = tmp_path_factory.mktemp("ref")
            cache[key] = (fit(_model(), digits.train, digits.test, cfg, path, progress=False), path)
        return cache[key]
    return get


@pytest.mark.parametrize("target, when, what", [
    ("train_steps", 3, "at the start of an interval between evaluations"),
    ("checkpoint", 7, "in the middle of an interval (time-based checkpoints after every step)"),
    ("checkpoint", 25, "later in the run"),
])
def test_resume_mid_interval_is_exact(tmp_path, digits, monkeypatch, reference, target, when, what):
    cfg = _cfg()
    full, ref_dir = reference(cfg)
    resumed = _interrupted(tmp_path / "run", digits, cfg, monkeypatch, target, when, checkpoint_every=0)
    assert _strip(resumed) == _strip(full), what
    assert _strip(runs.read_metrics(tmp_path / "run")) == _strip(full)
    assert _same_weights(tmp_path / "run", ref_dir)


def test_kill_between_metrics_line_and_checkpoint(tmp_path, digits, monkeypatch, reference):
    """The metrics line of an evaluation is written, its checkpoint is not: the resumed run repeats the
    evaluation and metrics.jsonl holds it once."""
    cfg = _cfg()
    full, _ = reference(cfg)
    real_eval = train_mod.Trainer.log_eval
    state = {"evals": 0}

    def count_eval(self):
        state["evals"] += 1
        return real_eval(self)

    monkeypatch.setattr(train_mod.Trainer, "log_eval", count_eval)
    real_ckpt = train_mod.Trainer.checkpoint

    def ckpt(self):
        if state["evals"] == 4:  # the 4th evaluation's line is on disk
            raise KeyboardInterrupt
        return real_ckpt(self)

    path = tmp_path / "run"
    path.mkdir()
    monkeypatch.setattr(train_mod.Trainer, "checkpoint", ckpt)
    with pytest.raises(KeyboardInterrupt):
        fit(_model(), digits.train, digits.test, cfg, path, progress=False, checkpoint_every=1e9)
    assert len(runs.read_metrics(path)) == 4
    monkeypatch.setattr(train_mod.Trainer, "checkpoint", real_ckpt)
    resumed = fit(_model(9), digits.train, digits.test, cfg, path, progress=False, resume=True)
    assert _strip(resumed) == _strip(full)
    assert _strip(runs.read_metrics(path)) == _strip(full)


def test_resume_with_two_shards_and_the_step_size_search(tmp_path, digits, monkeypatch, reference):
    cfg = _cfg(shards=2, lr_candidates=(1e-3, 5e-3), search_samples=500, samples=3000)
    full, _ = reference(cfg)
    resumed = _interrupted(tmp_path / "run", digits, cfg, monkeypatch, "checkpoint", 6, checkpoint_every=0)
    assert _strip(resumed) == _strip(full)
    # the search itself is not checkpointed: a kill inside it starts the run again from the beginning
    again = _interrupted(tmp_path / "run2", digits, cfg, monkeypatch, "train_steps", 2, model_seed=0,
                         checkpoint_every=0)
    assert _strip(again) == _strip(full)


def test_checkpoint_is_one_safetensors_file_with_the_state_in_its_header(tmp_path, digits):
    fit(_model(), digits.train, digits.test, _cfg(samples=500), tmp_path, progress=False)
    data = (tmp_path / runs.CHECKPOINT).read_bytes()
    tensors, metadata = runs.parse_tensors(data, "ckpt")
    state = json.loads(metadata[runs.STATE_KEY])
    assert state["step"] == 10 and state["samples_seen"] == 500 and state["evals"] == len(runs.read_metrics(tmp_path))
    assert {"rng.torch.0", "rng.noise.0", "data.rng", "data.perm", "guard.norm_sum", "ema.0"} <= set(tensors)
    assert not (tmp_path / runs.STATE).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors", "config.json", "metrics.jsonl",
                                                          "model.safetensors"]


def test_resume_cleans_up_after_a_killed_writer(tmp_path, digits, monkeypatch, reference):
    """What a SIGKILL can leave: a temporary file of an atomic write, the write probe, a torn last metrics line."""
    cfg = _cfg()
    full, _ = reference(cfg)
    path = tmp_path / "run"
    _interrupt(path, digits, cfg, monkeypatch, "log_eval", 4)
    (path / ".checkpoint.safetensors.x1y2.tmp").write_bytes(b"\0" * 100)
    (path / ".write-test").write_bytes(b"")
    line = json.dumps(full[3])
    with open(path / runs.METRICS, "a") as f:
        f.write(line[: len(line) // 2])  # a line cut by the kill
    assert len(runs.read_metrics(path)) == 3  # the torn line is not a record
    resumed = _resume(path, digits, cfg)
    assert _strip(resumed) == _strip(full)
    assert not [p for p in path.iterdir() if p.name.startswith(".")]
    assert (path / runs.METRICS).read_text().count("\n") == len(full)


def test_corrupt_metrics_line_is_an_error(tmp_path):
    (tmp_path / runs.METRICS).write_text('{"samples_seen": 1}\nnot json\n{"samples_seen": 2}\n')
    with pytest.raises(runs.RunError, match="line 2 is not a JSON object"):
        runs.read_metrics(tmp_path)


def test_resume_before_the_first_checkpoint_starts_from_the_beginning(tmp_path, digits, monkeypatch, reference):
    cfg = _cfg()
    full, _ = reference(cfg)
    resumed = _interrupted(tmp_path / "run", digits, cfg, monkeypatch, "checkpoint", 1, model_seed=0,
                           checkpoint_every=0)
    assert _strip(resumed) == _strip(full)


def test_resume_refuses_options_that_define_the_run(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--samples", "1e6", "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("aevb: error: --resume continues a run with its own settings; leave out --lr, "
                           "--samples")


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    """A real training process is killed 4 times (one of them while starting) and resumed each time."""
    run_args = ["--dataset", "digits", "--latent-dim", "3", "--hidden", "16", "--samples", "200000",
                "--batch-size", "50", "--binarize", "dynamic", "--ema", "0.99", "--seed", "7"]
    runtime = ["--threads", "1", "--no-progress", "--checkpoint-every", "0.05"]
    ref = aevb("train", *run_args, *runtime, "--out", tmp_path / "ref")  # the uninterrupted run, alongside
    log = kill_and_resume(tmp_path / "run", run_args, runtime, kills=4, rng=random.Random(2024), window=0.8,
                          startup_every=4)
    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out
    assert sum(e["killed"] for e in log) >= 3, log
    assert any(e["resumed_at"] for e in log), "no launch resumed from a checkpoint written during training"
    assert metrics(tmp_path / "run") == metrics(tmp_path / "ref")
    assert _same_weights(tmp_path / "run", tmp_path / "ref")
    a, _ = runs.parse_tensors((tmp_path / "run" / runs.CHECKPOINT).read_bytes(), "a")
    b, _ = runs.parse_tensors((tmp_path / "ref" / runs.CHECKPOINT).read_bytes(), "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]


def test_a_run_that_is_training_is_not_resumed_a_second_time(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--samples", "400", "--hidden", "16", "--latent-dim", "2",
                 "--out", str(run), "--no-progress"]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    with runs.training_lock(run):  # as another process training into it holds it
        assert main(["train", "--resume", str(run), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"aevb: error: {run} is being trained by another process; wait for it to end or stop it, then "
                       f"continue with --resume {run}")
        with pytest.raises(runs.RunError, match="being trained by another process"):
            fit(_model(), load("digits").train, load("digits").test, _cfg(samples=100), run, progress=False,
                resume=True)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing written, nothing removed
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # the lock ends with its holder


def test_sigterm_ends_training_as_ctrl_c_does_and_the_run_resumes(tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    proc = aevb("train", "--dataset", "digits", "--samples", "5e7", "--hidden", "8", "--latent-dim", "2",
                "--out", run, "--no-progress")
    end = time.monotonic() + 120
    while not ((run / runs.METRICS).exists() and (run / runs.METRICS).read_text()):
        assert proc.poll() is None and time.monotonic() < end
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    assert proc.stdout.read().strip().endswith(
        "aevb: interrupted (the last checkpoint is intact; continue with --resume)")
    again = aevb("train", "--resume", run, "--no-progress")
    line = again.stdout.readline()
    again.send_signal(signal.SIGTERM)
    again.wait(timeout=60)
    assert line.startswith(f"aevb: resuming {run} at step") and " of 50,000,000 datapoints)" in line
