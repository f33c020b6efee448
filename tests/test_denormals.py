"""Subnormal floats are flushed on every thread of torch's OpenMP pool during training, not only on the calling
thread (aevb/train/denormals.py): a tensor of subnormals times one comes out all zero on two threads."""
import importlib

import pytest
import torch

import aevb
from aevb.train import denormals

fit_module = importlib.import_module("aevb.train.fit")  # the module; aevb.train.fit is the function

SUBNORMAL = 1e-40  # below float32's smallest normal number, 1.2e-38


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.ones(1 << 20).mul(2)  # a parallel operation: the pool exists before anything is flushed
    yield
    denormals.flush_denormals(False)
    torch.set_num_threads(before)


def _surviving(x: torch.Tensor) -> float:
    return float(((x * 1.0) != 0).double().mean())


@pytest.mark.skipif(not denormals.workers_flushed(), reason="torch does not run on libgomp here")
def test_every_thread_flushes_and_unflushes(two_threads):
    x = torch.full((1 << 22,), SUBNORMAL)  # made before flushing: it holds subnormals
    assert _surviving(x) == 1.0
    torch.set_flush_denormal(True)  # the calling thread only: the worker's share of x * 1 keeps its subnormals
    assert 0.2 < _surviving(x) < 0.8
    assert denormals.flush_denormals(True)
    assert _surviving(x) == 0.0
    denormals.flush_denormals(False)
    assert _surviving(x) == 1.0


def test_training_flushes_through_the_helper_and_turns_it_off_afterwards(monkeypatch):
    calls = []
    real = denormals.flush_denormals
    monkeypatch.setattr(fit_module, "flush_denormals", lambda on: calls.append(on) or real(on))
    torch.manual_seed(0)
    model = aevb.VAE(aevb.ModelConfig(x_dim=12, latent_dim=2, hidden=(8,)))
    x = torch.bernoulli(torch.full((64, 12), 0.4), generator=torch.Generator().manual_seed(1))
    aevb.fit(model, x, x[:16], aevb.TrainConfig(samples=256, batch_size=32), progress=False)
    assert calls == [True, False]
