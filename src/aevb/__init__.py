"""aevb: Auto-Encoding Variational Bayes (Kingma & Welling, 2013) in PyTorch.

The public API: the model (`VAE`, `ModelConfig`), the estimators (`sgvb_a`, `sgvb_b`, `iwae`, `evaluate`), training
(`TrainConfig`, `fit`), your own data (`open_data`) and `load_run`. docs/architecture.md maps the package's layers.
"""
from .version import __version__
from .data import open_data
from .estimators import ESTIMATORS, evaluate, iwae, sgvb_a, sgvb_b
from .models import VAE, ModelConfig
from .load import load_run
from .train import TrainConfig, fit
from .paper import wake_sleep as _wake_sleep  # noqa: F401  (registers the paper's baseline as an estimator)

__all__ = ["VAE", "ModelConfig", "TrainConfig", "fit", "load_run", "open_data", "sgvb_a", "sgvb_b", "iwae", "evaluate",
           "ESTIMATORS", "__version__"]
