"""KL schedules and objectives (--beta, --kl-warmup, --free-bits), with exact answers.

- The KL weight is beta * min(1, datapoints seen / warm-up): 0 at the start, beta/2 half-way, beta at the end and
  after it, whatever the step; a resumed warm-up continues where it stopped (bit-identical to an uninterrupted run).
- Free bits are sum_j max(lambda, mean_b KL_bj): KL = [0.1, 2.0] nats with lambda = 0.5 gives 0.5 + 2.0, and the
  clamped dimension gets no gradient.
- sgvb_b's and sgvb_a's weighted losses equal rec - w * KL computed by hand from the encoder's mu and log sigma^2;
  with beta = 1 and neither warm-up nor free bits the loss and gradients are bit-identical to the plain bound, and
  the returned ELBO is always the bound.
- A beta = 4 run logs the same ELBO as aevb.evaluate of its saved model, and kl_weight at each evaluation.
- Bad values and impossible combinations are refused in one line (exit 2 from the CLI), and old config.json train
  sections load as beta 1 without warm-up or free bits.
"""
import json
import math

import pytest
import torch

from aevb import VAE, ModelConfig, TrainConfig, evaluate, fit, load_run, runs
from aevb import train as train_mod
from aevb.cli import main
from aevb.data import load
from aevb.estimators import kl_loss, kl_splits, sgvb_a, sgvb_b
from aevb.train.schedule import kl_weight
from aevb.train.streams import Objective


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return VAE(ModelConfig(**{"x_dim": 64, "latent_dim": 3, "hidden": (16,), **kw}))


def _cfg(**kw):
    base = dict(optimizer="adam", lr=3e-3, samples=3000, batch_size=50, seed=3)
    return TrainConfig(**{**base, **kw})


# -- the schedule ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seen, expected", [(0, 0.0), (250, 1.0), (500, 2.0), (999, 4.0 * 999 / 1000),
                                            (1000, 4.0), (1050, 4.0), (10**9, 4.0)])
def test_kl_weight_rises_linearly_to_beta(seen, expected):
    assert kl_weight(4.0, 1000, seen) == expected


def test_kl_weight_without_warmup_is_beta_from_the_start():
    assert [kl_weight(b, 0, s) for b in (1.0, 0.25) for s in (0, 7, 10**7)] == [1.0] * 3 + [0.25] * 3


def test_the_objective_passes_the_weight_only_when_it_is_not_the_bound():
    obj = Objective(_model(), sgvb_b, None, 1, "standard", beta=2.0, kl_warmup=100, free_bits=0.5)
    assert obj.kl_options(0) == {"kl_weight": 0.0, "free_bits": 0.5}
    assert obj.kl_options(25) == {"kl_weight": 0.5, "free_bits": 0.5}
    assert obj.kl_options(50) == {"free_bits": 0.5}  # weight 1 is the estimator's default
    assert obj.kl_options(100) == obj.kl_options(400) == {"kl_weight": 2.0, "free_bits": 0.5}
    warm = Objective(_model(), sgvb_b, None, 1, "standard", kl_warmup=100)
    assert warm.kl_options(0) == {"kl_weight": 0.0} and warm.kl_options(100) == {}  # beta 1 reached: the bound
    assert Objective(_model(), sgvb_b, None, 1, "standard").kl_options(0) == {}


# -- free bits ------------------------------------------------------------------------------------------------
def test_free_bits_on_a_hand_made_kl():
    """Per-dimension KL averaged over two datapoints = [0.1, 2.0]; lambda = 0.5 gives 0.5 + 2.0."""
    dims = torch.tensor([[0.0, 1.5], [0.2, 2.5]], requires_grad=True)
    total = dims.detach().sum(1)
    loss = kl_loss(total, 1.0, 0.5, dims)
    assert loss.item() == 2.5
    loss.backward()
    assert torch.equal(dims.grad, torch.tensor([[0.0, 0.5], [0.0, 0.5]]))  # clamped dimension: no gradient
    assert kl_loss(total, 3.0, 0.5, dims).item() == 7.5  # the weight multiplies the clamped sum
    assert kl_loss(torch.tensor([1.5, 2.75]), 3.0).item() == 6.375  # without free bits: w * mean_b KL_b


def _hand_gaussian(model, x, eps):
    """rec, the analytic KL per dimension and the Monte Carlo KL per dimension of the Gaussian VAE, by hand."""
    raw = model.encoder_params(x)
    dz = model.config.latent_dim
    mu, logvar = raw[..., :dz], raw[..., dz:]
    z = mu + torch.exp(0.5 * logvar) * eps
    rec = model.decode(z).log_prob(x).mean(0)
    analytic = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())  # Appendix B, per dimension (B, Dz)
    log_q = -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) / logvar.exp())
    log_p = -0.5 * (math.log(2 * math.pi) + z.pow(2))
    return rec, analytic, (log_q - log_p).mean(0)


@pytest.mark.parametrize("w, lam", [(0.0, 0.0), (0.3, 0.0), (4.0, 0.0), (1.0, 0.4), (0.5, 0.4)])
@pytest.mark.parametrize("fn", [sgvb_b, sgvb_a], ids=["sgvb_b", "sgvb_a"])
def test_weighted_loss_equals_rec_minus_w_kl_by_hand(fn, w, lam):
    model, x = _model(1), torch.rand(6, 64)
    torch.manual_seed(5)
    out = fn(model, x, num_samples=2, kl_weight=w, free_bits=lam)
    torch.manual_seed(5)
    eps = torch.randn(2, 6, 3)  # the draws rsample makes
    rec, analytic, mc = _hand_gaussian(model, x, eps)
    kl = analytic if fn is sgvb_b else mc
    kl_term = kl.mean(0).clamp(min=lam).sum() if lam else kl.sum(1).mean()
    expected = -(rec.mean() - w * kl_term)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)
    assert torch.allclose(out["elbo"], (rec - kl.sum(1)).detach(), atol=1e-4)  # the bound, not the loss


def test_every_clamped_dimension_leaves_only_the_reconstruction_gradient():
    """lambda above every dimension's KL: the loss is -rec + w * Dz * lambda and its gradient is rec's alone."""
    model, x = _model(2), torch.rand(8, 64)
    torch.manual_seed(1)
    out = sgvb_b(model, x, kl_weight=2.0, free_bits=50.0)
    torch.manual_seed(1)
    rec = -sgvb_b(model, x, kl_weight=0.0)["loss"]
    assert out["loss"].item() == pytest.approx((-rec + 2.0 * 3 * 50.0).item(), rel=1e-6)
    g1 = torch.autograd.grad(out["loss"], list(model.parameters()))
    g2 = torch.autograd.grad(-rec, list(model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


@pytest.mark.parametrize("fn, gradient", [(sgvb_b, "standard"), (sgvb_b, "stl"), (sgvb_a, "standard"),
                                          (sgvb_a, "stl")])
def test_beta_one_without_warmup_or_free_bits_is_bit_identical(fn, gradient):
    model, x = _model(3), torch.rand(5, 64)
    grads = []
    for kw in ({}, {"kl_weight": 1.0, "free_bits": 0.0}):
        torch.manual_seed(9)
        out = fn(model, x, num_samples=2, gradient=gradient, **kw)
        assert torch.equal(out["loss"], -out["elbo"].mean())  # today's loss: minus the mean bound
        grads.append(torch.autograd.grad(out["loss"], list(model.parameters())))
    assert all(torch.equal(a, b) for a, b in zip(*grads))


# -- training -------------------------------------------------------------------------------------------------
def test_a_beta_4_run_logs_the_true_elbo_and_its_kl_weight(tmp_path, digits):
    cfg = _cfg(beta=4.0, kl_warmup=1000, eval_train_size=0)
    history = fit(_model(), digits.train, digits.test, cfg, tmp_path / "b4", progress=False)
    assert [r["kl_weight"] for r in history] == [kl_weight(4.0, 1000, r["samples_seen"]) for r in history]
    assert [r["kl_weight"] for r in history][-1] == 4.0 and history[0]["kl_weight"] == 4.0 * 100 / 1000
    config = runs.read_config(tmp_path / "b4")["train"]
    assert (config["beta"], config["kl_warmup"], config["free_bits"]) == (4.0, 1000, 0.0)
    model, _ = load_run(tmp_path / "b4")
    with torch.random.fork_rng():  # the logged evaluation's noise: seed + 3, the train set first
        torch.manual_seed(cfg.seed + 3)
        tr, te = evaluate(model, digits.train), evaluate(model, digits.test)
    assert (history[-1]["train_elbo"], history[-1]["test_elbo"]) == (tr["elbo"], te["elbo"])
    plain = fit(_model(), digits.train, digits.test, _cfg(eval_train_size=0), progress=False)
    assert plain[-1]["kl_weight"] == 1.0
    assert history[-1]["test_kl"] < plain[-1]["test_kl"]  # beta = 4 pulls q toward the prior


def test_free_bits_train_and_keep_the_bound(digits):
    history = fit(_model(), digits.train, digits.test, _cfg(free_bits=0.5, samples=1000), progress=False)
    assert all(math.isfinite(r["test_elbo"]) for r in history)
    assert history[-1]["test_elbo"] == pytest.approx(history[-1]["test_rec"] - history[-1]["test_kl"], abs=1e-4)


def test_a_resumed_warmup_continues_where_it_stopped(tmp_path, digits, monkeypatch):
    cfg = _cfg(beta=2.0, kl_warmup=2000, free_bits=0.1, ema=0.99, binarize="dynamic")
    full = fit(_model(), digits.train, digits.test, cfg, tmp_path / "full", progress=False)
    real, calls = train_mod.Trainer.checkpoint, {"n": 0, "seen": None}

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 17:  # mid-warm-up (a checkpoint after every step)
            raise KeyboardInterrupt
        calls["seen"] = self.samples_seen
        return real(self)

    monkeypatch.setattr(train_mod.Trainer, "checkpoint", flaky)
    with pytest.raises(KeyboardInterrupt):
        fit(_model(), digits.train, digits.test, cfg, tmp_path / "run", progress=False, checkpoint_every=0)
    monkeypatch.setattr(train_mod.Trainer, "checkpoint", real)
    assert 0 < calls["seen"] < 2000  # the last checkpoint lies inside the warm-up
    resumed = fit(_model(7), digits.train, digits.test, cfg, tmp_path / "run", progress=False, resume=True)

    def strip(h):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(resumed) == strip(full)
    a, b = (runs.read_tensors(tmp_path / d / runs.WEIGHTS) for d in ("full", "run"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- refusals -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, message", [
    ({"beta": 0.0}, "beta must be a positive finite number"),
    ({"beta": -1.0}, "beta must be a positive finite number"),
    ({"beta": math.inf}, "beta must be a positive finite number"),
    ({"kl_warmup": -5}, "kl_warmup must be a whole number of datapoints >= 0"),
    ({"kl_warmup": 2.5}, "kl_warmup must be a whole number of datapoints >= 0"),
    ({"free_bits": -0.1}, "free_bits must be a finite number of nats >= 0"),
    ({"free_bits": math.nan}, "free_bits must be a finite number of nats >= 0"),
    ({"free_bits": 0.5, "estimator": "iwae"}, "estimator iwae has no KL term to weight"),
    ({"beta": 2.0, "estimator": "iwae"}, "estimator iwae has no KL term to weight"),
    ({"kl_warmup": 100, "estimator": "wake_sleep"}, "estimator wake_sleep has no KL term to weight"),
])
def test_bad_values_are_refused_in_one_line(kw, message):
    with pytest.raises(ValueError) as e:
        _cfg(**kw)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_warmup_given_as_a_float_count_and_old_configs():
    assert _cfg(kl_warmup=5e5).kl_warmup == 500_000
    old = {k: v for k, v in _cfg().to_dict().items() if k not in ("beta", "kl_warmup", "free_bits")}
    cfg = TrainConfig.from_dict(old)
    assert (cfg.beta, cfg.kl_warmup, cfg.free_bits) == (1.0, 0, 0.0)
    assert TrainConfig.from_dict(_cfg(beta=3.0, free_bits=0.2).to_dict()) == _cfg(beta=3.0, free_bits=0.2)


@pytest.mark.parametrize("kw, splits, pair", [
    ({"posterior": "normal"}, True, ""), ({"posterior": "laplace"}, True, ""),
    ({"posterior": "multivariate_normal"}, False, "q = multivariate_normal, p = multivariate_normal"),
    ({"posterior": "dirichlet"}, False, "q = dirichlet, p = dirichlet"),
    ({"prior": "mog"}, False, "q = normal, p = mog"), ({"prior": "vamp"}, False, "q = normal, p = vamp"),
    ({"flow": "planar"}, False, "q = normal + planar flow, p = normal"),
    ({"flow": "iaf"}, False, "q = normal + iaf flow, p = normal"),
])
def test_free_bits_need_a_kl_that_splits(kw, splits, pair):
    model = _model(**kw)
    assert kl_splits(model) is splits
    if splits:
        Objective(model, sgvb_a, None, 1, "standard", free_bits=0.5)
        return
    with pytest.raises(ValueError) as e:
        Objective(model, sgvb_a, None, 1, "standard", free_bits=0.5)
    assert str(e.value) == (f"free bits need a KL that splits over the latent dimensions, and {pair} does not "
                            "factorize; train without --free-bits")
    with pytest.raises(ValueError, match="does not"):  # the estimator itself refuses too
        sgvb_a(model, torch.rand(2, 64), num_samples=1, free_bits=0.5)


# -- the command line -----------------------------------------------------------------------------------------
def test_the_flags_reach_config_json(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--latent-dim", "2", "--hidden", "8", "--samples", "300",
                 "--batch-size", "10", "--beta", "4", "--kl-warmup", "1e2", "--free-bits", "0.25", "--out", str(out),
                 "--no-progress"]) == 0
    train = json.loads((out / runs.CONFIG).read_text())["train"]
    assert (train["beta"], train["kl_warmup"], train["free_bits"]) == (4.0, 100, 0.25)
    metrics = runs.read_metrics(out)
    assert [r["samples_seen"] for r in metrics] == [10, 20, 50, 100, 200, 300]
    assert [r["kl_weight"] for r in metrics] == [4.0 * 0.1, 4.0 * 0.2, 4.0 * 0.5, 4.0, 4.0, 4.0]
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--beta", "2"]) == 2
    assert "leave out --beta" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--beta", "0"], "argument --beta: expected a positive finite number, got '0'"),
    (["--beta", "inf"], "argument --beta: expected a positive finite number, got 'inf'"),
    (["--kl-warmup", "-1"], "argument --kl-warmup: expected a whole count of datapoints >= 0 such as 5e5"),
    (["--kl-warmup", "2.5"], "argument --kl-warmup: expected a whole count of datapoints >= 0 such as 5e5"),
    (["--free-bits", "x"], "argument --free-bits: not a number: 'x'"),
    (["--free-bits", "-0.5"], "argument --free-bits: expected a finite number of nats >= 0, got '-0.5'"),
    (["--estimator", "iwae", "--beta", "2"], "estimator iwae has no KL term to weight"),
    (["--posterior", "multivariate_normal", "--free-bits", "0.5"],
     "free bits need a KL that splits over the latent dimensions, and q = multivariate_normal, "
     "p = multivariate_normal does not factorize; train without --free-bits"),
])
def test_bad_flags_exit_2_with_one_line(flags, message, tmp_path, capsys):
    out = tmp_path / "x"
    argv = ["train", "--dataset", "digits", "--latent-dim", "2", "--hidden", "8", "--samples", "300", *flags,
            "--out", str(out), "--no-progress"]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1 and err.startswith("aevb")
    assert not out.exists()  # nothing left behind: the same --out works again
