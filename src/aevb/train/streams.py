"""The data order and random streams of a run: minibatch indices, each shard's noise, and the objective module.

The global minibatch of M datapoints is cut into `shards` equal shards, each with its own random streams, so a
run's result depends on the number of shards, not on the number of processes that compute them.
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn

from ..estimators import kl_splits
from .schedule import kl_weight


class Batches:
    """Minibatch indices from a resident data set: shuffled epochs, or draws with replacement (paper's code)."""

    def __init__(self, n: int, batch_size: int, replacement: bool, seed: int):
        self.n, self.batch_size, self.replacement = n, batch_size, replacement
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.empty(0, dtype=torch.long)
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.replacement:
            return torch.randint(self.n, (self.batch_size,), generator=self.generator)
        while self.pos + self.batch_size > self.perm.numel():
            # Start a new epoch; the tail that does not fill a minibatch opens the next one.
            self.perm = torch.cat([self.perm[self.pos:], torch.randperm(self.n, generator=self.generator)])
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state(self) -> tuple[dict, dict]:
        return {"data.rng": self.generator.get_state(), "data.perm": self.perm.clone()}, {"pos": self.pos}

    def load(self, tensors: dict, meta: dict) -> None:
        self.generator.set_state(tensors["data.rng"])
        self.perm, self.pos = tensors["data.perm"], meta["pos"]


def _stream_seed(seed: int, shard: int, stream: str) -> int:
    """Seed of one shard's random stream; shard 0 keeps a plain run's seeds (seed, and seed + 2 for binarization)."""
    if shard == 0:
        return seed if stream == "torch" else seed + 2
    digest = hashlib.sha256(f"aevb:{seed}:{shard}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Streams:
    """The random streams of the shards this process computes.

    Per shard: the torch generator state the estimator's noise comes from (rsample uses torch's global generator,
    and the device's on CUDA) and a generator for dynamic binarization. With one shard per process the global
    generator simply is that shard's stream; with several, `use(i)` swaps their states in and out.
    """

    def __init__(self, shards: list[int], seed: int, device: torch.device):
        self.shards, self.device = list(shards), device
        self.cuda = device.type == "cuda"
        self.noise = [torch.Generator(device=device).manual_seed(_stream_seed(seed, s, "noise")) for s in self.shards]
        self.states = []
        for s in self.shards:
            torch.manual_seed(_stream_seed(seed, s, "torch"))
            self.states.append(self._get())
        self.active = len(self.shards) - 1  # the state now in the global generator
        self.use(0)

    def _get(self) -> list[torch.Tensor]:
        states = [torch.get_rng_state()]
        if self.cuda:
            states.append(torch.cuda.get_rng_state(self.device))
        return states

    def _set(self, states: list[torch.Tensor]) -> None:
        torch.set_rng_state(states[0])
        if self.cuda:
            torch.cuda.set_rng_state(states[1], self.device)

    def use(self, i: int) -> None:
        """Make local shard i's stream the global generator's."""
        if i != self.active:
            self.states[self.active] = self._get()
            self._set(self.states[i])
            self.active = i

    def state(self) -> dict[str, torch.Tensor]:
        self.states[self.active] = self._get()
        out = {}
        for s, states, gen in zip(self.shards, self.states, self.noise):
            out[f"rng.torch.{s}"] = states[0]
            if self.cuda:
                out[f"rng.cuda.{s}"] = states[1]
            out[f"rng.noise.{s}"] = gen.get_state()
        return out

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        for i, s in enumerate(self.shards):
            self.states[i] = [tensors[f"rng.torch.{s}"]] + ([tensors[f"rng.cuda.{s}"]] if self.cuda else [])
            self.noise[i].set_state(tensors[f"rng.noise.{s}"])
        self._set(self.states[self.active])


class Objective(nn.Module):
    """The training loss of one process's shards, as a module so that DistributedDataParallel can wrap it.

    forward(xs, samples_seen) runs the estimator on each shard with that shard's random stream and returns the mean
    loss over the shards and the summed per-datapoint ELBO (detached). With `beta`, `kl_warmup` or `free_bits` the
    estimator also gets the KL weight at `samples_seen` (`schedule.kl_weight`) and the free bits, which change its
    loss and not its ELBO; free bits are taken per shard (the minibatch with one shard).

    Raises:
        ValueError: free bits for a model whose KL does not split over the latent dimensions.
    """

    def __init__(self, model, estimator, streams: Streams, num_samples: int, gradient: str, *, beta: float = 1.0,
                 kl_warmup: int = 0, free_bits: float = 0.0):
        super().__init__()
        if free_bits and kl_splits(model) is False:
            c = getattr(model, "config", None)
            pair = c.latent_pair() if hasattr(c, "latent_pair") else "this model's q and p"
            raise ValueError(f"free bits need a KL that splits over the latent dimensions, and {pair} does not "
                             "factorize; train without --free-bits")
        self.model, self.streams = model, streams
        self.estimator, self.num_samples, self.gradient = estimator, num_samples, gradient
        self.beta, self.kl_warmup, self.free_bits = beta, kl_warmup, free_bits

    def kl_options(self, samples_seen: int) -> dict:
        """The estimator's `kl_weight` and `free_bits` after `samples_seen` datapoints; {} for the plain bound."""
        w = kl_weight(self.beta, self.kl_warmup, samples_seen)
        return {**({"kl_weight": w} if w != 1 else {}), **({"free_bits": self.free_bits} if self.free_bits else {})}

    def forward(self, xs: list[torch.Tensor], samples_seen: int = 0):
        losses, elbo = [], None
        kl = self.kl_options(samples_seen)
        for i, x in enumerate(xs):
            self.streams.use(i)
            out = self.estimator(self.model, x, num_samples=self.num_samples, gradient=self.gradient, **kl)
            losses.append(out["loss"])
            elbo = out["elbo"].sum() if elbo is None else elbo + out["elbo"].sum()
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
        return loss, elbo
