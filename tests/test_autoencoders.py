"""The autoencoder family: losses against hand computations, the DAE's corruption rate, and the classical exact
result that a linear autoencoder trained on squared error spans the principal subspace (Baldi & Hornik 1989)."""
import math

import pytest
import torch

from aevb import ModelConfig, TrainConfig
from aevb.paper.autoencoders import (AEConfig, Autoencoder, ae_loss, corrupt, fit_autoencoder,
                                     reconstruction_error, reconstruction_metrics, sparsity_penalty)
from aevb.data import load


def test_sparsity_penalty_by_hand():
    code = torch.tensor([[0.2, 0.5], [0.4, 0.1]])  # unit means 0.3 and 0.3
    kl = 0.1 * math.log(0.1 / 0.3) + 0.9 * math.log(0.9 / 0.7)  # KL(0.1 || 0.3) = 0.116317...
    assert sparsity_penalty(code, rho=0.1).item() == pytest.approx(2 * kl, rel=1e-6)
    assert sparsity_penalty(torch.full((5, 3), 0.05), rho=0.05).item() == pytest.approx(0.0, abs=1e-7)


def test_sparse_loss_adds_the_weighted_penalty():
    torch.manual_seed(0)
    model = Autoencoder(ModelConfig(x_dim=6, latent_dim=3, hidden=(4,)),
                        AEConfig(kind="sae", rho=0.2, sparsity_weight=2.5))
    x = torch.rand(8, 6)
    code = model.encode(x)
    assert ((code > 0) & (code < 1)).all()
    rec = reconstruction_error(model, x, model.decoder_outputs(code))
    out = ae_loss(model, x)
    assert out["loss"].item() == pytest.approx(rec.mean().item() + 2.5 * sparsity_penalty(code, 0.2).item(), rel=1e-6)


def test_bce_and_mse_by_hand():
    x = torch.tensor([[0.0, 1.0, 0.25]])
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    # -[x log s(a) + (1 - x) log s(-a)] with -log s(a) = log(1 + e^-a), per pixel
    expected_bce = math.log(2) + math.log1p(math.exp(-2)) + 0.25 * math.log1p(math.e) + 0.75 * math.log1p(math.exp(-1))
    sig = [0.5, 1 / (1 + math.exp(-2)), 1 / (1 + math.e)]
    expected_mse = (sig[0] - 0) ** 2 + (sig[1] - 1) ** 2 + (sig[2] - 0.25) ** 2
    got = reconstruction_metrics(lambda _: logits, x)
    assert got["bce"] == pytest.approx(expected_bce, rel=1e-6)
    assert got["mse"] == pytest.approx(expected_mse, rel=1e-6)
    model = Autoencoder(ModelConfig(x_dim=3, latent_dim=1, hidden=()))
    assert reconstruction_error(model, x, logits).item() == pytest.approx(expected_bce, rel=1e-6)


def test_masking_noise_zeroes_the_stated_fraction_and_keeps_the_rest():
    x = torch.rand(400, 500) + 0.5  # no zeros of its own
    gen = torch.Generator().manual_seed(0)
    x_tilde = corrupt(x, "mask", 0.25, gen)
    zeroed = (x_tilde == 0).double().mean().item()
    n = x.numel()
    assert abs(zeroed - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n)  # binomial, 5 sd
    kept = x_tilde != 0
    assert torch.equal(x_tilde[kept], x[kept])
    noisy = corrupt(x, "gaussian", 0.3, gen) - x
    assert noisy.std().item() == pytest.approx(0.3, rel=5 * math.sqrt(0.5 / n))
    assert abs(noisy.mean().item()) < 5 * 0.3 / math.sqrt(n)


def test_denoising_loss_reconstructs_the_clean_input():
    torch.manual_seed(0)
    model = Autoencoder(ModelConfig(x_dim=6, latent_dim=2, hidden=(5,)), AEConfig(kind="dae", noise=0.5))
    x = torch.rand(10, 6)
    out = ae_loss(model, x, generator=torch.Generator().manual_seed(3))
    x_tilde = corrupt(x, "mask", 0.5, torch.Generator().manual_seed(3))
    expected = reconstruction_error(model, x, model.decoder_outputs(model.encode(x_tilde))).mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    corrupted_target = reconstruction_error(model, x_tilde, model.decoder_outputs(model.encode(x_tilde))).mean()
    assert abs(out["loss"].item() - corrupted_target.item()) > 1e-2


def test_linear_autoencoder_finds_the_principal_subspace():
    """With squared error and no nonlinearity, the optimum reconstructs through the top-k principal subspace and
    its mean error is the sum of the discarded eigenvalues of the data's covariance."""
    g = torch.Generator().manual_seed(0)
    d, k, n = 6, 2, 2000
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) * torch.tensor([3.0, 2.0, 1.0, 0.6, 0.4, 0.2],
                                                                                dtype=torch.float64)) @ basis.T
    x = x - x.mean(0)
    eigvals, eigvecs = torch.linalg.eigh(x.T @ x / n)  # ascending
    torch.manual_seed(0)
    model = Autoencoder(ModelConfig(x_dim=d, latent_dim=k, hidden=()), AEConfig(loss="mse")).double()
    opt = torch.optim.LBFGS(model.parameters(), max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = ae_loss(model, x)["loss"]
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    error = ae_loss(model, x)["loss"].item()
    assert error == pytest.approx(eigvals[: d - k].sum().item(), rel=1e-6)
    decoder_span, _ = torch.linalg.qr(model.dec_out.weight.detach())  # (d, k), orthonormal columns
    cosines = torch.linalg.svdvals(decoder_span.T @ eigvecs[:, d - k:])  # cosines of the principal angles
    assert cosines.min().item() > 1 - 1e-6


def test_training_lowers_the_test_reconstruction_error_and_the_sparse_code_meets_rho():
    ds = load("digits")
    cfg = TrainConfig(optimizer="adam", lr=3e-3, samples=30_000, batch_size=50)
    for kind in ("ae", "dae", "sae"):
        torch.manual_seed(0)
        model = Autoencoder(ModelConfig(x_dim=64, latent_dim=8, hidden=(32,)),
                            AEConfig(kind=kind, rho=0.1, sparsity_weight=5.0))
        fn = lambda x: model.decoder_outputs(model.encode(x))  # noqa: E731
        before = reconstruction_metrics(fn, ds.test)["bce"]
        history = fit_autoencoder(model, ds.train, cfg)
        after = reconstruction_metrics(fn, ds.test)["bce"]
        assert after < before - 3, kind
        assert history[-1]["samples_seen"] == 30_000 and history[-1]["train_loss"] < history[0]["train_loss"]
        if kind == "sae":
            with torch.no_grad():
                assert torch.allclose(model.encode(ds.train).mean(0), torch.tensor(0.1), atol=0.03)


@pytest.mark.parametrize("kw, message", [
    (dict(kind="vae"), "unknown autoencoder kind"),
    (dict(loss="l1"), "unknown loss"),
    (dict(corruption="salt"), "unknown corruption"),
    (dict(noise=1.0), "bad noise level"),
    (dict(rho=0.0), "rho must be in"),
])
def test_bad_configs_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        AEConfig(**kw)
