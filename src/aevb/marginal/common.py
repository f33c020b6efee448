"""Shared pieces of the log p(x) estimators: summaries, chunk sizes, evaluation mode and seeds."""
from __future__ import annotations

import contextlib
import math

import torch


MAX_FLOATS = 2**21  # per decoder call (8 MB of float32), which bounds memory; benchmarks/marginal_speed.py --compare
# per decoder call of AIS and the HMC estimator, each followed by a backward pass: rows * D below it (about 670
# rows for MNIST). On a 2-core AMD EPYC 20 * 200 rows took 1.5-2x longer per row than 500-1000 (cache)
HMC_FLOATS = 2**19
DENSITIES = ("auto", "gaussian", "kde")
JITTER = 0.5  # HMC step sizes are drawn uniformly from eps * [1 - JITTER, 1 + JITTER]
PILOT_CHAINS = 4  # AIS chains per datapoint that tune the step size and carry no weight
KDE_FACTORS = torch.logspace(-1.3, 0.3, 17).tolist()  # candidate bandwidths, in units of each dimension's std


# --- shared helpers ------------------------------------------------------------------------------------------

def _summary(log_px: torch.Tensor, **extra) -> dict:
    """Per-datapoint `log_px` (N,) with its `mean` and `stderr` = std / sqrt(N) (nan when N = 1)."""
    n = log_px.numel()
    std = float(log_px.double().std()) if n > 1 else math.nan
    return {"log_px": log_px, "mean": float(log_px.double().mean()), "stderr": std / math.sqrt(n), **extra}


def _logmeanexp(a: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(a, dim) - math.log(a.shape[dim])


@contextlib.contextmanager
def _evaluating(model, seed: int | None, device: torch.device):
    """Eval mode (restored afterwards) and, with a seed, a private RNG stream that leaves the global one alone."""
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            yield
    finally:
        if was_training:
            model.train()


def _check_positive(**values) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _log_likelihood(model, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z): the model's own `log_likelihood(z, x)` where it has one (same value, faster), else the contract's
    decode(z).log_prob(x)."""
    fused = getattr(model, "log_likelihood", None)
    return fused(z, x) if fused is not None else model.decode(z).log_prob(x)


def _batches(t: torch.Tensor, max_size: int) -> tuple[torch.Tensor, ...]:
    """t split along its first dimension into the fewest pieces of at most max_size, of nearly equal sizes."""
    n = t.shape[0]
    pieces = max(1, math.ceil(n / max_size))
    return t.split(max(1, math.ceil(n / pieces)))


def _chunk_size(*dims: int) -> int:
    """Leading size k that keeps a (k, *dims) tensor under MAX_FLOATS numbers."""
    return max(1, MAX_FLOATS // max(1, math.prod(dims)))


def _hmc_chunk(*dims: int) -> int:
    """Leading size k that keeps a (k, *dims) tensor under HMC_FLOATS numbers."""
    return max(1, HMC_FLOATS // max(1, math.prod(dims)))
