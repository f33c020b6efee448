"""Algorithm 1 on real (small) data: the bound rises, runs round-trip, and a resumed run equals an uninterrupted one."""
import json
import math

import pytest
import torch

import aevb
from aevb import VAE, ModelConfig, TrainConfig, fit
from aevb import train as train_mod
from aevb.data import load
from aevb.estimators import evaluate
from aevb.train import eval_points


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def _cfg(**kw):
    base = dict(optimizer="adam", lr=3e-3, samples=6000, batch_size=50, schedule="cosine")
    return TrainConfig(**{**base, **kw})


def test_training_raises_the_bound(digits):
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=64, latent_dim=4, hidden=(32,)))
    before = evaluate(model, digits.test)["elbo"]
    history = fit(model, digits.train, digits.test, _cfg(), progress=False)
    assert [r["samples_seen"] for r in history] == eval_points(6000, 3)
    assert history[-1]["test_elbo"] > before + 10
    assert history[-1]["train_elbo"] > history[0]["train_elbo"]


def test_paper_adagrad_with_replacement_and_dynamic_binarization(digits):
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=64, latent_dim=3, hidden=(32,), init="paper"))
    cfg = _cfg(optimizer="adagrad", lr=0.02, warmup_steps=10, weight_decay="prior", replacement=True,
               schedule="constant", binarize="dynamic")
    history = fit(model, digits.train, digits.test, cfg, progress=False)
    assert history[-1]["test_elbo"] > history[0]["test_elbo"] + 5


def test_paper_step_size_rule_picks_a_candidate(digits, capsys):
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=64, latent_dim=3, hidden=(16,), init="paper"))
    cfg = _cfg(optimizer="adagrad", lr_candidates=(1e-4, 0.02), search_samples=1000, warmup_steps=5,
               schedule="constant", samples=3000)
    history = fit(model, digits.train, digits.test, cfg, progress=False)
    assert "lr=0.02" in capsys.readouterr().out
    assert history[-1]["lr"] == 0.02  # the tiny step size loses


def test_step_size_search_survives_a_diverging_candidate(digits, capsys):
    from aevb.train import NonFiniteError

    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=64, latent_dim=3, hidden=(16,), init="paper"))
    cfg = _cfg(optimizer="adagrad", lr_candidates=(1e30, 0.02), search_samples=3000, warmup_steps=5,
               schedule="constant", samples=4000)
    history = fit(model, digits.train, digits.test, cfg, progress=False)
    out = capsys.readouterr().out
    assert "lr=1e+30 diverged" in out and "lr=0.02 train ELBO" in out
    assert history[-1]["lr"] == 0.02 and math.isfinite(history[-1]["test_elbo"])
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=64, latent_dim=3, hidden=(16,), init="paper"))
    with pytest.raises(NonFiniteError):
        fit(model, digits.train, digits.test, _cfg(optimizer="adagrad", lr_candidates=(1e30, 1e31),
            search_samples=3000, warmup_steps=5, schedule="constant", samples=4000), progress=False)


def test_run_folder_round_trip(tmp_path, digits):
    from aevb.cli import main

    rc = main(["train", "--dataset", "digits", "--latent-dim", "2", "--hidden", "16", "--samples", "3000",
               "--batch-size", "50", "--out", str(tmp_path / "run"), "--no-progress"])
    assert rc == 0
    model, config = aevb.load_run(tmp_path / "run")
    assert config["model"]["latent_dim"] == 2 and config["data"]["dataset"] == "digits"
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    torch.manual_seed(0)
    again = evaluate(model, digits.test, num_samples=200)["elbo"]
    assert again == pytest.approx(last["test_elbo"], abs=1.0)  # L=1 logged value vs L=200 re-evaluation
    for name in ("samples.png", "manifold.png", "model.safetensors", "checkpoint.safetensors", "config.json"):
        assert (tmp_path / "run" / name).stat().st_size > 0


def test_fit_creates_its_run_folder(tmp_path, digits):
    """fit(run_dir=...) makes a missing folder (and its parents) and writes the history there, record for record."""
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=64, latent_dim=2, hidden=(16,), likelihood="gaussian"))
    run = tmp_path / "a" / "b"
    history = fit(model, digits.train, digits.test, TrainConfig(samples=2000, evals_per_decade=1), run,
                  progress=False)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines == history and [r["samples_seen"] for r in lines] == [100, 1000, 2000]


def test_train_elbo_is_logged_on_the_first_training_datapoints(digits):
    """eval_train_size=N: the logged train ELBO is the ELBO of the first N training datapoints, drawn with the
    evaluation's fixed seed; 0 means all of them; a config written before the option existed reads as 0."""
    for size, rows in ((300, 300), (0, digits.train.shape[0])):
        torch.manual_seed(0)
        model = VAE(ModelConfig(x_dim=64, latent_dim=2, hidden=(16,), likelihood="gaussian"))
        cfg = TrainConfig(samples=1000, eval_train_size=size, seed=5)
        history = fit(model, digits.train, digits.test, cfg, progress=False)
        torch.manual_seed(cfg.seed + 3)
        expected = evaluate(model, digits.train[:rows], estimator="sgvb_b")["elbo"]
        assert history[-1]["train_elbo"] == pytest.approx(expected, rel=1e-12)
    old = {k: v for k, v in TrainConfig(samples=10).to_dict().items() if k != "eval_train_size"}
    assert TrainConfig.from_dict(old).eval_train_size == 0


def test_resume_equals_uninterrupted(tmp_path, digits, monkeypatch):
    def run(path, interrupt_at=None):
        torch.manual_seed(0)
        model = VAE(ModelConfig(x_dim=64, latent_dim=3, hidden=(16,)))
        cfg = _cfg(binarize="dynamic", ema=0.99)
        path.mkdir()
        if interrupt_at is None:
            return fit(model, digits.train, digits.test, cfg, path, progress=False)
        calls = {"n": 0}
        real = train_mod.Trainer.log_eval

        def flaky(self):
            calls["n"] += 1
            if calls["n"] == interrupt_at:
                raise KeyboardInterrupt
            return real(self)

        monkeypatch.setattr(train_mod.Trainer, "log_eval", flaky)
        with pytest.raises(KeyboardInterrupt):
            fit(model, digits.train, digits.test, cfg, path, progress=False)
        monkeypatch.setattr(train_mod.Trainer, "log_eval", real)
        torch.manual_seed(123)  # a resumed process starts from another RNG state
        model = VAE(ModelConfig(x_dim=64, latent_dim=3, hidden=(16,)))
        return fit(model, digits.train, digits.test, cfg, path, progress=False, resume=True)

    full = run(tmp_path / "a")
    resumed = run(tmp_path / "b", interrupt_at=4)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(resumed) == strip(full)


def test_eval_points_are_log_spaced():
    assert eval_points(10_000_000, 3) == [10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
                                          2_000_000, 5_000_000, 10_000_000]
    assert eval_points(5000, 1) == [100, 1000, 5000]


def test_points_passed_by_one_step_are_evaluated_once(digits, tmp_path, capsys):
    # 2,000 datapoints in minibatches of 1,000: the points 100, 200, 500 and 1,000 are all passed by the first step
    assert eval_points(2000, 3) == [100, 200, 500, 1000, 2000]
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=64, latent_dim=2, hidden=(8,)))
    history = fit(model, digits.train, digits.test, TrainConfig(samples=2000, batch_size=1000), tmp_path / "run",
                  progress=False)
    assert [r["samples_seen"] for r in history] == [1000, 2000]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["samples_seen"] for line in lines] == [1000, 2000]
    assert capsys.readouterr().out.count("train ELBO") == 2


def test_a_second_fit_into_a_run_folder_is_refused_and_the_first_run_is_kept(digits, tmp_path):
    run = tmp_path / "run"
    torch.manual_seed(0)
    fit(VAE(ModelConfig(x_dim=64, latent_dim=2, hidden=(8,))), digits.train, digits.test,
        TrainConfig(samples=300), run, progress=False)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    other = VAE(ModelConfig(x_dim=64, latent_dim=3, hidden=(12,)))
    with pytest.raises(aevb.runs.RunError, match="already holds a run; continue it with resume=True"):
        fit(other, digits.train, digits.test, TrainConfig(samples=200), run, progress=False)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    model, _ = aevb.load_run(run)  # still the first run, whole
    assert model.config.latent_dim == 2
