import os
from pathlib import Path

import pytest
import torch

import aevb
from aevb.cli import main
from aevb.marginal import grid

SHARED_DATA = Path(os.environ.get("AEVB_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real MNIST and Frey Face files (../shared/data, or $AEVB_TEST_DATA); skip when absent."""
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set AEVB_TEST_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def digits2_run(tmp_path_factory) -> Path:
    """A run folder of a Dz = 2 VAE trained for a moment on the digits set (no data files needed), for the CLI
    tests of the marginal-likelihood estimators."""
    out = tmp_path_factory.mktemp("runs") / "digits2"
    assert main(["train", "--dataset", "digits", "--latent-dim", "2", "--hidden", "16", "--samples", "1000",
                 "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def nonlinear():
    """A Dz = 2 VAE fitted for 200 Adam steps to binary data from a nonlinear 2-D model, 8 of its inputs, and their
    exact log p(x) by a fine grid. Its posteriors are non-Gaussian (posterior std about 0.3-0.7)."""
    g = torch.Generator().manual_seed(0)
    a, b = 2 * torch.randn(2, 16, generator=g), 1.5 * torch.randn(16, 12, generator=g)
    z = torch.randn(256, 2, generator=g)
    data = torch.bernoulli(torch.sigmoid(torch.tanh(z @ a) @ b), generator=g)
    torch.manual_seed(0)
    model = aevb.VAE(aevb.ModelConfig(x_dim=12, latent_dim=2, hidden=(8,)))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(200):
        loss = aevb.sgvb_b(model, data)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = data[:8]
    return model, x, grid(model, x)["log_px"]
