"""The hand-written forward-only log p(x|z) (aevb.marginal.mlp_likelihood) against a float64 reference computed
from the definitions, which models it covers, and the importance sampling and grid estimates it feeds."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import aevb
from aevb.marginal import grid, importance_sampling
from aevb.marginal.mlp_likelihood import mlp_log_likelihood
from aevb.models.mlp import VAE

TORCH_ACTS = {"tanh": torch.tanh, "relu": torch.relu, "elu": torch.nn.functional.elu}


def reference(model, z: torch.Tensor, x: torch.Tensor, activation: str) -> torch.Tensor:
    """sum_d x_d a_d - softplus(a_d) in float64 from the layers' weights: softplus(a) = max(a, 0) + log1p(exp(-|a|))
    (no threshold), each hidden layer act(W h + b)."""
    h = z.double()
    for lin in list(model.decoder)[0::2]:
        h = TORCH_ACTS[activation](h @ lin.weight.double().t() + lin.bias.double())
    out = model.dec_head.out
    a = h @ out.weight.double().t() + out.bias.double()
    x = x.double()
    return (x * a - a.clamp(min=0) - torch.log1p(torch.exp(-a.abs()))).sum(-1)


def model_of(activation: str, hidden: tuple[int, ...], x_dim: int = 784, latent: int = 6, scale: float = 3.0):
    torch.manual_seed(0)
    model = VAE(aevb.ModelConfig(x_dim, latent, hidden, activation, "bernoulli")).eval()
    with torch.no_grad():  # weights larger than at initialization: logits of tens, saturated units
        for p in model.parameters():
            p.mul_(scale)
    return model


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
@pytest.mark.parametrize("hidden", [(), (50,), (40, 30)])
def test_matches_the_float64_definition(activation, hidden):
    model = model_of(activation, hidden)
    f = mlp_log_likelihood(model)
    assert f is not None
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.rand(4, 784, generator=g), torch.bernoulli(torch.full((3, 784), 0.2), generator=g)])
    z = 2 * torch.randn(5, 7, 6, generator=g)
    exact = reference(model, z, x, activation)
    got = f(z, x)
    assert got.shape == (5, 7) and got.dtype == torch.float32
    # float32 rounding of sums of 784 terms of size up to tens: the model's own path is off by as much
    with torch.no_grad():
        own = model.log_likelihood(z, x).double()
    scale = float((own - exact).abs().max()) + 1e-4
    assert float((got.double() - exact).abs().max()) <= 2 * scale
    assert float((got.double() - exact).abs().max()) <= 1e-6 * float(exact.abs().max()) * 784
    # in float64 the same computation agrees with the definition to float64 rounding
    m64 = model.double()
    torch.testing.assert_close(mlp_log_likelihood(m64)(z.double(), x.double()), exact, rtol=1e-12, atol=1e-9)


def test_dimensions_without_a_product_group_and_broadcast_batches():
    # D = 13 has no divisor in [16, 112]: one log per logit; z (G, 1, Dz) against x (B, D) broadcasts to (G, B), the
    # grid's layout; a buffer made for one row count must be remade for another and back
    model = model_of("tanh", (20,), x_dim=13, latent=2).double()
    f = mlp_log_likelihood(model)
    assert f.group is None
    x = torch.bernoulli(torch.full((4, 13), 0.5, dtype=torch.float64))
    for rows in (9, 3, 9):
        z = torch.randn(rows, 1, 2, dtype=torch.float64)
        got = f(z, x)
        assert got.shape == (rows, 4)
        torch.testing.assert_close(got, reference(model, z, x, "tanh"), rtol=1e-12, atol=1e-10)
    assert f(torch.zeros(0, 4, 2, dtype=torch.float64), x).shape == (0, 4)  # no rows: an empty result


def test_covers_only_the_plain_mlp_decoder_with_a_bernoulli_head():
    base = dict(x_dim=20, latent_dim=2, hidden=(8,))
    assert mlp_log_likelihood(VAE(aevb.ModelConfig(**base, activation="tanh"))) is not None
    assert mlp_log_likelihood(VAE(aevb.ModelConfig(**base, activation="elu", prior="vamp"))) is not None  # prior
    assert mlp_log_likelihood(VAE(aevb.ModelConfig(**base, activation="gelu"))) is None
    assert mlp_log_likelihood(VAE(aevb.ModelConfig(**base, likelihood="gaussian"))) is None
    mixed = VAE(aevb.ModelConfig(**{**base, "hidden": (8, 8)}, activation="tanh"))
    mixed.decoder[1] = nn.ReLU()
    assert mlp_log_likelihood(mixed) is None

    class Deeper(VAE):
        def decoder_outputs(self, z):
            return super().decoder_outputs(z) * 2

    assert mlp_log_likelihood(Deeper(aevb.ModelConfig(**base))) is None
    contract = SimpleNamespace(prior=None, encode=None, decode=None)
    assert mlp_log_likelihood(contract) is None


def test_importance_sampling_and_grid_get_the_models_own_value():
    # the same seed draws the same z, so the estimates through the hand-written path equal those through the
    # model's log_likelihood (a SimpleNamespace is not a VAE, so it takes the generic path) to float32 rounding
    model = model_of("tanh", (32, 16), x_dim=784, latent=2, scale=1.0)
    x = torch.bernoulli(torch.full((5, 784), 0.3), generator=torch.Generator().manual_seed(2))
    own = SimpleNamespace(prior=model.prior, encode=model.encode, decode=model.decode,
                          log_likelihood=model.log_likelihood)
    kw = dict(num_samples=300, chunk_size=40, batch_size=3, seed=0)
    a, b = importance_sampling(model, x, **kw), importance_sampling(own, x, **kw)
    torch.testing.assert_close(a["log_px"], b["log_px"], rtol=1e-6, atol=0)
    torch.testing.assert_close(a["elbo"], b["elbo"], rtol=1e-6, atol=0)
    a, b = grid(model, x, points_per_dim=41), grid(own, x, points_per_dim=41)
    torch.testing.assert_close(a["log_px"], b["log_px"], rtol=1e-6, atol=0)
    assert math.isfinite(a["mean"])
