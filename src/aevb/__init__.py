"""aevb: Auto-Encoding Variational Bayes (Kingma & Welling, 2013) in PyTorch."""
__version__ = "0.1.0"

from .estimators import ESTIMATORS, evaluate, iwae, sgvb_a, sgvb_b  # noqa: E402
from .model import VAE, ModelConfig  # noqa: E402
from .runs import load_run  # noqa: E402
from .train import TrainConfig, fit  # noqa: E402

__all__ = ["VAE", "ModelConfig", "TrainConfig", "fit", "load_run", "sgvb_a", "sgvb_b", "iwae", "evaluate",
           "ESTIMATORS", "__version__"]
