"""The non-finite guard: a NaN or Inf loss or gradient skips the update (optimizer, weights and average untouched)
and is counted; too many in a row stop the run with the last checkpoint intact; the gradient norm is logged."""
import math

import pytest
import torch

from aevb import VAE, ModelConfig, TrainConfig, runs
from aevb.cli import main
from aevb.data import load
from aevb.train import NonFiniteError, Trainer


@pytest.fixture(scope="module")
def digits():
    return load("digits")


class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * math.inf


def _trainer(digits, run_dir=None, optimizer="adam", **kw):
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=64, latent_dim=3, hidden=(16,)))
    cfg = TrainConfig(optimizer=optimizer, lr=3e-3, samples=5000, batch_size=50, ema=0.99, seed=1)
    return Trainer(model, digits.train, digits.test, cfg, run_dir, progress=False, **kw)


def _poison(trainer, steps, kind="nan", on_first=None):
    """Make the estimator's loss NaN (or its gradient infinite) at the given trainer steps."""
    real = trainer.estimator

    def estimator(model, x, **kw):
        out = real(model, x, **kw)
        if trainer.step in steps:
            if on_first is not None:
                on_first()
            out = dict(out, loss=out["loss"] * math.nan if kind == "nan" else _InfGrad.apply(out["loss"]))
        return out

    trainer.estimator = estimator


def _state(trainer):
    opt = [t.clone() for st in trainer.optimizer.state.values() for t in st.values() if torch.is_tensor(t)]
    return [p.detach().clone() for p in trainer.params], [e.clone() for e in trainer.ema], opt


@pytest.mark.parametrize("optimizer", ["adam", "adagrad", "adamw"])
@pytest.mark.parametrize("kind", ["nan", "inf-gradient"])
def test_a_nonfinite_step_is_skipped_and_counted(digits, optimizer, kind):
    t = _trainer(digits, optimizer=optimizer)
    t.train_steps(3)
    before = _state(t)
    _poison(t, {3, 4}, kind)
    t.train_steps(2)
    after = _state(t)
    for a, b in zip(before, after):
        assert all(torch.equal(x, y) for x, y in zip(a, b))  # weights, average and optimizer state untouched
    assert (t.step, t.skipped, t.streak, t.norm_steps) == (5, 2, 2, 3)
    t.train_steps(1)  # a good step moves the weights again and ends the streak
    assert not torch.equal(t.params[0], before[0][0]) and (t.skipped, t.streak) == (2, 0)


def test_too_many_in_a_row_stop_the_run_with_the_last_checkpoint_intact(tmp_path, digits):
    t = _trainer(digits, tmp_path, checkpoint_every=1e9, max_nonfinite=5)
    saved = {}

    def remember():
        if not saved:
            saved["bytes"] = (tmp_path / runs.CHECKPOINT).read_bytes()

    _poison(t, set(range(25, 1000)), on_first=remember)  # from step 25 on; the last checkpoint is at step 20
    with pytest.raises(NonFiniteError) as e:
        t.run()
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("training stopped: 5 updates in a row had a NaN or infinite loss or gradient (at "
                              "step 30, 1,500 datapoints; 5 skipped in all); the last checkpoint (step 20) is intact")
    assert (tmp_path / runs.CHECKPOINT).read_bytes() == saved["bytes"]
    assert [r["samples_seen"] for r in runs.read_metrics(tmp_path)] == [100, 200, 500, 1000]


def test_isolated_nonfinite_steps_are_logged_and_the_run_goes_on(tmp_path, digits):
    t = _trainer(digits, tmp_path, max_nonfinite=3)
    _poison(t, {5, 30, 31, 60})
    history = t.run()
    assert [r["skipped_updates"] for r in history] == [0, 0, 1, 1, 3, 4]
    assert history[-1]["samples_seen"] == 5000 and math.isfinite(history[-1]["test_elbo"])


def test_grad_norm_is_the_mean_norm_since_the_last_evaluation(digits):
    t = _trainer(digits)
    norms = []
    real_step = t.optimizer.step

    def step(*a, **k):
        g = [p.grad for p in t.params]
        norms.append(float(torch.linalg.vector_norm(torch.stack([x.norm() for x in g]))))
        return real_step(*a, **k)

    t.optimizer.step = step
    t.train_steps(2)
    rec = t.log_eval()
    assert rec["grad_norm"] == pytest.approx(sum(norms) / 2, rel=1e-6)
    t.train_steps(3)
    rec = t.log_eval()
    assert rec["grad_norm"] == pytest.approx(sum(norms[2:]) / 3, rel=1e-6) and rec["skipped_updates"] == 0


@pytest.mark.parametrize("step", ["fused", "autograd"])
def test_grad_clip_rescales_the_gradients_the_optimizer_sees_to_the_bound(digits, step):
    seen, logged = [], []
    for clip in (0.0, 0.5):
        torch.manual_seed(0)
        model = VAE(ModelConfig(x_dim=64, latent_dim=3, hidden=(16,)))
        cfg = TrainConfig(optimizer="adam", lr=3e-3, samples=5000, batch_size=50, seed=1, grad_clip=clip, step=step)
        t = Trainer(model, digits.train, digits.test, cfg, None, progress=False)
        real_step, norms = t.optimizer.step, []

        def record(*a, t=t, real_step=real_step, norms=norms, **k):
            norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in t.params]))))
            return real_step(*a, **k)
        t.optimizer.step = record
        t.train_steps(3)
        seen.append(norms)
        logged.append(t.log_eval()["grad_norm"])
    assert min(seen[0]) > 1.0  # unclipped, the gradients are larger than the bound
    assert seen[1] == pytest.approx([0.5] * 3, rel=1e-5)  # clipped to it; the first steps agree (same state)
    assert logged[1] > 1.0  # the logged norm is the one before clipping
    with pytest.raises(ValueError, match="grad_clip"):
        TrainConfig(samples=1000, grad_clip=-1.0)


def test_cli_stops_a_diverging_run_with_exit_code_2(tmp_path, capsys):
    rc = main(["train", "--dataset", "digits", "--latent-dim", "2", "--hidden", "16", "--samples", "5000",
               "--batch-size", "10", "--lr", "1e30", "--max-nonfinite", "3", "--out", str(tmp_path / "run"),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("aevb: error: training stopped: 3 updates in a row had a NaN or infinite loss")
