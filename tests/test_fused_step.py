"""The fused training step (aevb.train.fused): the same loss, ELBO and gradients as autograd, the same training run,
and the choice between the two paths (`--step`)."""
import json

import pytest
import torch

from aevb import VAE, ModelConfig, TrainConfig, fit
from aevb.cli import main
from aevb.data import load
from aevb.estimators import ESTIMATORS
from aevb.train import Trainer
from aevb.train.fused import FusedStep, bf16_supported, resolve_step, uncovered
from aevb.train.streams import Objective, Streams


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def _model(activation="tanh", hidden=(32,), latent=5, x_dim=64, seed=1, **kw):
    torch.manual_seed(seed)
    return VAE(ModelConfig(x_dim=x_dim, latent_dim=latent, hidden=hidden, activation=activation, **kw))


def _both(model, x, num_samples, beta=1.0, kl_warmup=0, samples_seen=0):
    """(loss, elbo, grads) of autograd's Objective + backward and of the fused step, from the same noise."""
    streams = Streams([0], 7, x.device)
    objective = Objective(model, ESTIMATORS["sgvb_b"], streams, num_samples, "standard", beta=beta,
                          kl_warmup=kl_warmup)
    state = torch.get_rng_state()
    model.zero_grad(set_to_none=True)
    loss, elbo = objective([x], samples_seen)
    loss.backward()
    reference = (loss.detach(), elbo, [p.grad.clone() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    torch.set_rng_state(state)  # the fused step draws the same eps
    loss, elbo = FusedStep(objective)([x], samples_seen)
    return reference, (loss, elbo, [p.grad.clone() for p in model.parameters()])


def _close(a, b, rtol=1e-5):
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()) + 1e-12)


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
@pytest.mark.parametrize("hidden", [(32,), (32, 24)])
@pytest.mark.parametrize("num_samples", [1, 3])
def test_gradients_equal_autograd(activation, hidden, num_samples):
    model = _model(activation, hidden)
    x = torch.rand(16, 64)  # grey levels: the paper's cross-entropy
    (loss, elbo, grads), (f_loss, f_elbo, f_grads) = _both(model, x, num_samples)
    _close(f_loss, loss)
    _close(f_elbo, elbo)
    names = [n for n, _ in model.named_parameters()]
    assert len(f_grads) == len(grads) == len(names)
    for name, g, ref in zip(names, f_grads, grads):
        assert g.shape == ref.shape, name
        _close(g, ref)


def test_binary_data_no_hidden_layers_and_the_paper_init():
    model = _model("tanh", (), init="paper")
    x = torch.bernoulli(torch.rand(10, 64))
    (loss, elbo, grads), (f_loss, f_elbo, f_grads) = _both(model, x, 2)
    _close(f_loss, loss)
    _close(f_elbo, elbo)
    for g, ref in zip(f_grads, grads):
        _close(g, ref)


@pytest.mark.parametrize("beta, kl_warmup, seen", [(0.5, 0, 0), (1.0, 1000, 250), (2.0, 1000, 0)])
def test_kl_weight_changes_the_loss_not_the_elbo(beta, kl_warmup, seen):
    model = _model("relu", (32,))
    x = torch.rand(12, 64)
    (loss, elbo, grads), (f_loss, f_elbo, f_grads) = _both(model, x, 1, beta, kl_warmup, seen)
    _close(f_loss, loss)
    _close(f_elbo, elbo)
    for g, ref in zip(f_grads, grads):
        _close(g, ref)


def test_saturated_logits_give_a_finite_exact_bound():
    """softplus(a) is taken as max(a, 0) - log sigmoid(|a|): no overflow or log(0) for logits of +-100."""
    model = _model("tanh", (16,))
    with torch.no_grad():
        model.dec_head.out.bias.copy_(torch.linspace(-100, 100, 64))
    x = torch.rand(8, 64)
    (loss, elbo, _), (f_loss, f_elbo, f_grads) = _both(model, x, 1)
    assert torch.isfinite(f_loss) and all(torch.isfinite(g).all() for g in f_grads)
    _close(f_elbo, elbo)
    _close(f_loss, loss)


def _trainer_history(digits, step, **kw):
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=64, latent_dim=3, hidden=(24,), activation=kw.pop("activation", "tanh")))
    cfg = TrainConfig(**{**dict(optimizer="adam", lr=3e-3, samples=3000, batch_size=50, seed=5, step=step), **kw})
    trainer = Trainer(model, digits.train, digits.test, cfg, None, progress=False)
    assert trainer.step_path == step
    return trainer.run(), model


@pytest.mark.parametrize("kw", [
    dict(),
    dict(optimizer="adagrad", lr=0.02, warmup_steps=5, weight_decay="prior", replacement=True, schedule="constant",
         binarize="dynamic", activation="relu", num_samples=2),
    dict(ema=0.99, kl_warmup=1000, beta=0.8, activation="elu"),
])
def test_training_runs_agree(digits, kw):
    """The same run on both paths: every logged metric (not wall-clock time) within 1e-4 relative."""
    fused, m_fused = _trainer_history(digits, "fused", **dict(kw))
    auto, m_auto = _trainer_history(digits, "autograd", **dict(kw))
    assert len(fused) == len(auto)
    for a, b in zip(fused, auto):
        for key, value in b.items():
            if key != "seconds" and isinstance(value, float):
                assert a[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    for p, q in zip(m_fused.parameters(), m_auto.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("model_kw, cfg_kw, why", [
    (dict(prior="vamp"), dict(), "prior vamp"),
    (dict(), dict(estimator="iwae"), "estimator iwae"),
    (dict(), dict(gradient="stl"), "gradient stl"),
    (dict(), dict(free_bits=0.1), "free bits"),
    (dict(), dict(compile=True), "--compile"),
    (dict(), dict(shards=2), "shard"),
    (dict(activation="gelu"), dict(), "activation gelu"),
    (dict(likelihood="gaussian"), dict(), "likelihood gaussian"),
    (dict(posterior="laplace"), dict(), "posterior laplace"),
    (dict(flow="planar"), dict(), "flow"),
])
def test_auto_takes_autograd_where_fused_does_not_cover(model_kw, cfg_kw, why):
    model = _model(**model_kw)
    cfg = TrainConfig(samples=100, **cfg_kw)
    assert why in uncovered(model, cfg)
    assert resolve_step(cfg, model) == "autograd"
    assert resolve_step(TrainConfig(samples=100, step="autograd", **cfg_kw), model) == "autograd"
    with pytest.raises(ValueError, match="--step fused does not cover") as e:
        resolve_step(TrainConfig(samples=100, step="fused", **cfg_kw), model)
    assert "\n" not in str(e.value)


def test_covered_config_takes_fused_and_more_processes_do_not():
    model, cfg = _model(), TrainConfig(samples=100)
    assert uncovered(model, cfg) is None
    assert resolve_step(cfg, model) == "fused"
    assert resolve_step(cfg, model, world_size=2) == "autograd"
    assert resolve_step(TrainConfig(samples=100, step="autograd"), model) == "autograd"


def test_replacing_the_estimator_leaves_the_fused_step(digits):
    """Full VB (and anyone else) assigns trainer.estimator; the trainer then runs it through autograd."""
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=64, latent_dim=3, hidden=(16,)))
    trainer = Trainer(model, digits.train, digits.test, TrainConfig(samples=200, batch_size=50), None, progress=False)
    assert trainer.step_path == "fused"
    calls = []

    def estimator(model, x, **kw):
        calls.append(x.shape[0])
        return ESTIMATORS["sgvb_b"](model, x, **kw)

    trainer.estimator = estimator
    assert trainer.step_path == "autograd" and trainer.fused is None
    trainer.train_steps(2)
    assert calls == [50, 50]


def test_fit_with_a_run_folder_and_resume_on_the_fused_step(tmp_path, digits):
    torch.manual_seed(0)
    cfg = TrainConfig(samples=2000, batch_size=50, step="fused")
    history = fit(VAE(ModelConfig(x_dim=64, latent_dim=3, hidden=(16,))), digits.train, digits.test, cfg,
                  tmp_path / "run", progress=False)
    again = fit(VAE(ModelConfig(x_dim=64, latent_dim=3, hidden=(16,))), digits.train, digits.test, cfg,
                tmp_path / "run", progress=False, resume=True)
    assert history[-1]["test_elbo"] == again[-1]["test_elbo"]


def test_fit_records_the_path_auto_resolved_to(tmp_path, digits):
    model = VAE(ModelConfig(x_dim=64, latent_dim=3, hidden=(16,)))
    fit(model, digits.train, digits.test, TrainConfig(samples=200, batch_size=50), tmp_path / "plain", progress=False)
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["train"]["step"] == "fused"
    vamp = VAE(ModelConfig(x_dim=64, latent_dim=3, hidden=(16,), prior="vamp", prior_components=5))
    fit(vamp, digits.train, digits.test, TrainConfig(samples=200, batch_size=50, estimator="auto"), tmp_path / "vamp",
        progress=False)
    assert json.loads((tmp_path / "vamp" / "config.json").read_text())["train"]["step"] == "autograd"


def _train(tmp_path, name, *flags):
    return main(["train", "--dataset", "digits", "--latent-dim", "3", "--hidden", "16", "--samples", "500",
                 "--out", str(tmp_path / name), "--no-progress", *flags])


def test_cli_records_the_step_in_config_json(tmp_path, capsys):
    assert _train(tmp_path, "plain") == 0
    out = capsys.readouterr().out
    assert out.count("aevb: step auto -> fused") == 1
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["train"]["step"] == "fused"
    assert _train(tmp_path, "vamp", "--prior", "vamp") == 0
    out = capsys.readouterr().out
    assert "aevb: step auto -> autograd (the fused step does not cover prior vamp" in out
    assert json.loads((tmp_path / "vamp" / "config.json").read_text())["train"]["step"] == "autograd"
    assert _train(tmp_path, "asked", "--step", "autograd") == 0
    assert "step auto" not in capsys.readouterr().out
    assert json.loads((tmp_path / "asked" / "config.json").read_text())["train"]["step"] == "autograd"
    assert main(["train", "--resume", str(tmp_path / "plain"), "--no-progress"]) == 0


@pytest.mark.parametrize("flags, what", [
    (["--estimator", "iwae"], "estimator iwae"),
    (["--gradient", "stl"], "gradient stl"),
    (["--prior", "vamp"], "prior vamp"),
    (["--free-bits", "0.5"], "free bits"),
])
def test_cli_step_fused_on_an_uncovered_config_exits_2(tmp_path, capsys, flags, what):
    assert _train(tmp_path, "x", "--step", "fused", *flags) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("aevb: error: --step fused does not cover") and what in err
    assert not (tmp_path / "x").exists()


def test_a_run_from_before_the_option_resumes_on_autograd():
    """config.json without train.step: the run was trained through autograd and continues so, bit for bit."""
    d = TrainConfig(samples=100).to_dict()
    del d["step"]
    assert TrainConfig.from_dict(d).step == "autograd"
    assert TrainConfig.from_dict({**d, "step": "fused"}).step == "fused"


# -- --precision bf16: the backward's products and the logits in bfloat16 ------------------------------------------
needs_bf16 = pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no native bfloat16 matrix products")


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@needs_bf16
@pytest.mark.parametrize("activation, hidden, num_samples", [("tanh", (32,), 1), ("relu", (32, 24), 3)])
def test_bf16_gradients_are_autograds_to_bfloat16_precision(activation, hidden, num_samples):
    """Each gradient within bfloat16's rounding (8 significant bits: 2^-8 = 0.4%) of float32 autograd's, and not
    equal to it (the products really ran in bfloat16); the encoder's forward products stay float32."""
    model = _model(activation, hidden, latent=8, x_dim=256, seed=3)
    x = torch.rand(64, 256)
    streams = Streams([0], 7, x.device)
    objective = Objective(model, ESTIMATORS["sgvb_b"], streams, num_samples, "standard")
    state = torch.get_rng_state()
    loss, elbo = objective([x], 0)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():
        raw = model.enc_head(model.encoder(x))
    torch.set_rng_state(state)
    step = FusedStep(objective, precision="bf16")
    f_loss, f_elbo = step([x], 0)
    torch.testing.assert_close(step.buffers.raw, raw, rtol=1e-5, atol=1e-6)  # float32 encoder
    # the loss from logits rounded to bfloat16: a relative error far below one rounding (4e-3) after the sum
    loss = loss.detach()
    assert abs(float(f_loss) - float(loss)) / abs(float(loss)) < 2e-3
    assert abs(float(f_elbo) - float(elbo)) / abs(float(elbo)) < 2e-3
    errors = [_rel(p.grad, g) for p, g in zip(model.parameters(), grads)]
    assert max(errors) < 1e-2, errors
    weights = [e for (name, _), e in zip(model.named_parameters(), errors) if name.endswith("weight")]
    assert min(weights) > 1e-4, weights  # float32 alone would agree to 1e-6


@needs_bf16
def test_bf16_mirrors_follow_the_weights():
    """The bfloat16 copies of the weights are refreshed at every step: after a change of the weights the step gives
    the gradients of the new weights."""
    model = _model("relu", (32,), x_dim=64)
    objective = Objective(model, ESTIMATORS["sgvb_b"], Streams([0], 7, torch.device("cpu")), 1, "standard")
    step = FusedStep(objective, precision="bf16")
    x = torch.rand(16, 64)
    step([x], 0)
    with torch.no_grad():
        model.dec_head.out.weight.mul_(3.0)
    torch.manual_seed(5)
    step([x], 0)
    fused_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    loss, _ = objective([x], 0)
    loss.backward()
    for p, g in zip(model.parameters(), fused_grads):
        assert _rel(g, p.grad) < 2e-2


def test_bf16_refusals(monkeypatch):
    vae = _model()
    with pytest.raises(ValueError, match="--precision bf16 needs the fused step, which does not cover --step autograd"):
        resolve_step(TrainConfig(samples=100, step="autograd", precision="bf16"), vae)
    with pytest.raises(ValueError, match="does not cover prior vamp"):
        resolve_step(TrainConfig(samples=100, precision="bf16"), _model(prior="vamp"))
    monkeypatch.setattr("aevb.train.fused.bf16_supported", lambda device: False)
    with pytest.raises(ValueError, match="native bf16 matrix products .* the cpu device here has none"):
        resolve_step(TrainConfig(samples=100, precision="bf16"), vae)
    assert resolve_step(TrainConfig(samples=100, precision="float32"), vae) == "fused"
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        TrainConfig(samples=100, precision="fp16")
    with pytest.raises(ValueError, match="unknown precision"):
        FusedStep(Objective(vae, ESTIMATORS["sgvb_b"], Streams([0], 1, torch.device("cpu")), 1, "standard"), "x")


def test_cli_precision_bf16_refused_where_it_does_not_apply_exits_2(tmp_path, capsys, monkeypatch):
    assert _train(tmp_path, "x", "--precision", "bf16", "--prior", "vamp") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--precision bf16 needs the fused step" in err
    assert not (tmp_path / "x").exists()
    monkeypatch.setattr("aevb.train.fused.bf16_supported", lambda device: False)
    assert _train(tmp_path, "y", "--precision", "bf16") == 2
    assert "native bf16" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


@needs_bf16
def test_cli_records_bf16_and_resumes_with_it(tmp_path):
    assert _train(tmp_path, "b", "--precision", "bf16") == 0
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["train"]["precision"] == "bf16" and config["train"]["step"] == "fused"
    assert main(["train", "--resume", str(tmp_path / "b"), "--no-progress"]) == 0


def test_a_run_from_before_precision_loads_as_float32():
    d = TrainConfig(samples=100).to_dict()
    del d["precision"]
    assert TrainConfig.from_dict(d).precision == "float32"
