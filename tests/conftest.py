import os
from pathlib import Path

import pytest

from aevb.cli import main

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
