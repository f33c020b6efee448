import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("AEVB_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real MNIST and Frey Face files (../shared/data, or $AEVB_TEST_DATA); skip when absent."""
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set AEVB_TEST_DATA)")
    return SHARED_DATA
