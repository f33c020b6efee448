"""Algorithm 1 (AEVB): minibatch SGVB training with evaluation, a JSONL history and resumable checkpoints.

`fit` loops estimator -> backward -> guard -> optimizer step; the data set stays resident as one tensor and
minibatches are indexed from it. Training length is counted in datapoints evaluated, the paper's x-axis.

Reliability: the checkpoint (every `checkpoint_every` seconds and at each evaluation) holds everything the
continuation depends on (weights, optimizer, weight average, every random stream, data order, counters, the
evaluation schedule), so a run resumed after a kill at any moment ends bit-identical to an uninterrupted one.
An update whose loss or gradient is NaN or Inf is skipped and counted; `max_nonfinite` in a row stop the run.

Data parallelism: the global minibatch of M datapoints is cut into `shards` equal shards, each with its own
random streams. Under torchrun every process computes its shards and DistributedDataParallel averages the
gradients, so the result depends on the number of shards, not on the number of processes (up to the order of
float additions).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed, runs
from .data import binarize_static
from .estimators import ESTIMATORS, GRADIENTS, evaluate, resolve_estimator
from .optim import OPTIMIZERS, make_optimizer

SCHEDULES = ("constant", "cosine")
# The fixed binarization that logged ELBOs of binarized runs use (and `aevb eval` repeats).
EVAL_BINARIZATION_SEEDS = {"train": 12345, "test": 54321}
BINARIZE = ("none", "dynamic", "static")


@dataclass(frozen=True)
class TrainConfig:
    """How to train (Algorithm 1).

    Attributes:
        estimator: a key of estimators.ESTIMATORS ("sgvb_b" is the paper's choice for the Gaussian VAE), or
            "auto": sgvb_b where the posterior/prior pair has an analytic KL, sgvb_a otherwise.
        num_samples: L, samples of z per datapoint (K for "iwae").
        gradient: "standard", "stl" (sticking the landing; sgvb_a and sgvb_b) or "dreg" (doubly reparameterized,
            iwae only).
        optimizer: "adagrad" (the paper's, with warm-up), "adam" or "adamw".
        lr: global step size (peak learning rate for schedules).
        lr_candidates: the paper's rule when non-empty: train each step size for `search_samples` datapoints and
            keep the one with the best training ELBO, then continue from it.
        search_samples: datapoints per candidate in the step-size search.
        schedule: "constant", or "cosine" decay from lr to lr * min_lr_ratio over the run (after `warmup_steps`
            of linear warm-up).
        warmup_steps: for adagrad, minibatches that only accumulate squared gradients (paper: 100); for other
            optimizers, steps of linear learning-rate warm-up.
        weight_decay: "prior" (a N(0, I) prior on the weights, i.e. 1/N per datapoint, the paper's MAP) or a number.
        batch_size: M.
        replacement: draw minibatches with replacement (the paper's code) instead of shuffled epochs.
        samples: training length in datapoints evaluated; or `epochs` (exactly one of them).
        binarize: "none" (grey levels), "dynamic" (a fresh Bernoulli draw per minibatch), "static" (one seeded draw).
        eval_num_samples: L used for the logged train/test ELBO.
        evals_per_decade: log-spaced evaluation points per factor of 10 in samples_seen (1, 2, 5 x 10^k for 3).
        ema: decay per step of an exponential moving average of the weights (Polyak averaging); 0 turns it off.
            When on, logged ELBOs, pictures and saved weights use the average (`*_raw` fields: the last iterate).
        tensorboard: also write TensorBoard event files into the run folder, beside metrics.jsonl (the same
            numbers under the same names, step = samples_seen); needs the optional tensorboard package.
        compile: run the estimator through torch.compile (fuses elementwise work; needs a C++ compiler). Measured
            on the 2-core CPU for the paper model: 1.2-1.5x faster with 1 thread, no gain with 2; for the iwae-mnist
            preset no gain with 1 thread (README); the first compilation takes ~1 min.
        seed: seeds initialization, minibatch order and the noise.
        shards: the global minibatch is split into this many equal shards, each with its own random streams (the
            noise of shard 0 is that of a plain run). Under torchrun each of W processes computes shards/W of
            them; a single process computes them in turn. None: the number of processes at the start.
    """

    estimator: str = "sgvb_b"
    num_samples: int = 1
    gradient: str = "standard"
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_candidates: tuple[float, ...] = ()
    search_samples: int = 50_000
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    warmup_steps: int = 0
    weight_decay: float | str = 0.0
    batch_size: int = 100
    replacement: bool = False
    samples: int | None = None
    epochs: float | None = None
    binarize: str = "none"
    eval_num_samples: int = 1
    evals_per_decade: int = 3
    ema: float = 0.0
    compile: bool = False
    tensorboard: bool = False
    seed: int = 0
    shards: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "lr_candidates", tuple(float(v) for v in self.lr_candidates))
        checks = [
            (self.estimator in ESTIMATORS or self.estimator == "auto",
             f"unknown estimator {self.estimator!r}; choose from auto, {', '.join(ESTIMATORS)}"),
            (self.gradient in GRADIENTS, f"unknown gradient {self.gradient!r}; choose from {', '.join(GRADIENTS)}"),
            (self.gradient != "dreg" or self.estimator == "iwae", "gradient 'dreg' needs estimator 'iwae'"),
            (self.optimizer in OPTIMIZERS,
             f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}"),
            (self.binarize in BINARIZE, f"unknown binarization {self.binarize!r}; choose from {', '.join(BINARIZE)}"),
            (all(0 < v < math.inf for v in (self.lr, *self.lr_candidates)),
             "learning rates must be positive and finite"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.num_samples >= 1 and self.eval_num_samples >= 1, "numbers of samples must be >= 1"),
            ((self.samples is None) != (self.epochs is None), "give exactly one of samples and epochs"),
            ((self.samples or 1) > 0 and 0 < (self.epochs or 1) < math.inf,
             "the training length must be positive and finite"),
            (self.weight_decay == "prior" or float(self.weight_decay) >= 0, "weight_decay must be 'prior' or >= 0"),
            (0 <= self.ema < 1, f"ema must be in [0, 1), got {self.ema}"),
            (self.shards is None or self.shards >= 1, f"shards must be >= 1, got {self.shards}"),
            (self.shards is None or self.batch_size % self.shards == 0,
             f"the batch size {self.batch_size} must be a multiple of the number of shards {self.shards}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def total_samples(self, n_train: int) -> int:
        return int(self.samples) if self.samples is not None else int(round(self.epochs * n_train))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown training config keys: {', '.join(sorted(unknown))}")
        return cls(**{"shards": 1, **d})  # runs from before shards existed trained with one


def eval_points(total: int, per_decade: int) -> list[int]:
    """Log-spaced sample counts at which to evaluate (1, 2, 5 x 10^k for 3 per decade), always ending at `total`.

    The first point is 1e4, or a tenth of the order of magnitude of `total` for short runs.
    """
    start = min(10_000, 10 ** max(0, math.floor(math.log10(total)) - 1))
    mantissas = {1: (1,), 2: (1, 3), 3: (1, 2, 5)}.get(per_decade)
    if mantissas is None:
        mantissas = tuple(10 ** (i / per_decade) for i in range(per_decade))
    points, decade = [], 10 ** math.floor(math.log10(start))
    while decade <= total:
        points += [int(round(m * decade)) for m in mantissas if start <= m * decade < total]
        decade *= 10
    return sorted(set(points)) + [total]


def lr_factor(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Multiplier of cfg.lr at a step: warm-up, then constant or cosine decay.

    Adagrad's warm-up is the paper's: step size 0, so the minibatches only accumulate squared gradients. Other
    optimizers warm up linearly.
    """
    warm = cfg.warmup_steps
    if step < warm:
        return 0.0 if cfg.optimizer == "adagrad" else (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    t = min(1.0, (step - warm) / max(1, total_steps - warm))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


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

    forward(xs) runs the estimator on each shard with that shard's random stream and returns the mean loss over
    the shards and the summed per-datapoint ELBO (detached).
    """

    def __init__(self, model, estimator, streams: Streams, num_samples: int, gradient: str):
        super().__init__()
        self.model, self.streams = model, streams
        self.estimator, self.num_samples, self.gradient = estimator, num_samples, gradient

    def forward(self, xs: list[torch.Tensor]):
        losses, elbo = [], None
        for i, x in enumerate(xs):
            self.streams.use(i)
            out = self.estimator(self.model, x, num_samples=self.num_samples, gradient=self.gradient)
            losses.append(out["loss"])
            elbo = out["elbo"].sum() if elbo is None else elbo + out["elbo"].sum()
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
        return loss, elbo


UNIT_INTERVAL_LIKELIHOODS = ("bernoulli", "continuous-bernoulli", "categorical")


def check_data(train_x: torch.Tensor, test_x: torch.Tensor, likelihood: str | None = None,
               x_dim: int | None = None) -> None:
    """Refuse data the trainer cannot use, with a one-line message naming the problem.

    Raises:
        ValueError: a split is empty or not (N, D), the splits or the model disagree on D, a value is NaN or
            infinite, or a likelihood for grey levels (bernoulli, continuous-bernoulli, categorical) gets values
            outside [0, 1].
    """
    for name, x in (("training", train_x), ("test", test_x)):
        if x.ndim != 2:
            raise ValueError(f"the {name} data must be an (N, D) tensor, got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"the {name} set is empty")
        if not x.is_floating_point():
            raise ValueError(f"the {name} data must be floating point, got {x.dtype}")
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise ValueError(f"the {name} data has {bad} non-finite values (NaN or Inf)")
        if likelihood in UNIT_INTERVAL_LIKELIHOODS:
            lo, hi = float(x.min()), float(x.max())
            if lo < 0 or hi > 1:
                raise ValueError(f"the {name} data has values outside [0, 1] (min {lo:g}, max {hi:g}), which the "
                                 f"{likelihood} likelihood cannot model")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"training data has {train_x.shape[1]} values per datapoint, test data {test_x.shape[1]}")
    if x_dim is not None and train_x.shape[1] != x_dim:
        raise ValueError(f"the data has {train_x.shape[1]} values per datapoint, the model expects {x_dim}")


class NonFiniteError(FloatingPointError):
    """Too many updates in a row had a NaN or Inf loss or gradient; the last checkpoint is intact."""


class Trainer:
    """Holds the state of one training run: model, optimizer, data order, counters; `run()` trains to the end.

    Args:
        checkpoint_every: seconds between checkpoints during training (besides one at each evaluation); 0 writes
            one after every step.
        max_nonfinite: updates in a row with a non-finite loss or gradient norm that stop the run.

    Construction seeds torch's global generator with this process's first shard stream (`cfg.seed` for shard 0),
    as `fit` does before it.
    """

    def __init__(self, model, train_x, test_x, cfg: TrainConfig, run_dir: Path | None, *, progress: bool = True,
                 checkpoint_every: float = 60.0, max_nonfinite: int = 20):
        if checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 seconds, got {checkpoint_every}")
        if max_nonfinite < 1:
            raise ValueError(f"max_nonfinite must be >= 1, got {max_nonfinite}")
        model_cfg = getattr(model, "config", None)
        check_data(train_x, test_x, getattr(model_cfg, "likelihood", None), getattr(model_cfg, "x_dim", None))
        self.world = distributed.current()
        self.shards = cfg.shards or self.world.size
        if self.shards % self.world.size or cfg.batch_size % self.shards:
            raise ValueError(f"{self.world.size} processes cannot share {self.shards} shards of a minibatch of "
                             f"{cfg.batch_size}: the processes must divide the shards and the shards the batch size")
        self.model, self.cfg, self.run_dir = model, cfg, run_dir
        self.progress = progress and self.world.main
        self.checkpoint_every, self.max_nonfinite = checkpoint_every, max_nonfinite
        self.train_x, self.test_x = train_x, test_x
        self.n_train = train_x.shape[0]
        self.total = cfg.total_samples(self.n_train)
        self.total_steps = math.ceil(self.total / cfg.batch_size)
        self.points = eval_points(self.total, cfg.evals_per_decade)
        self.point_index = 0
        x_dim = train_x.shape[1]
        estimator = ESTIMATORS[resolve_estimator(cfg.estimator, model, x_dim)]
        if cfg.compile:
            estimator = torch.compile(estimator)
        self.eval_estimator = resolve_estimator("auto", model, x_dim)  # logs report the ELBO whatever the objective
        self.batches = Batches(self.n_train, cfg.batch_size, cfg.replacement, cfg.seed + 1)
        self.local_shards = list(range(self.world.rank, self.shards, self.world.size))
        self.streams = Streams(self.local_shards, cfg.seed, train_x.device)
        self.objective = Objective(model, estimator, self.streams, cfg.num_samples, cfg.gradient)
        self.forward = self.objective
        if self.world.size > 1:
            from torch.nn.parallel import DistributedDataParallel

            dev = [train_x.device.index] if train_x.device.type == "cuda" else None
            self.forward = DistributedDataParallel(self.objective, device_ids=dev,
                                                   static_graph=True)
        self.eval_train, self.eval_test = self._eval_sets() if self.world.main else (None, None)
        self.optimizer = self._optimizer(cfg.lr)
        self.params = list(model.parameters())
        self.param_data = [p.detach() for p in self.params]  # views sharing storage, made once for the EMA update
        self.ema = [p.detach().clone() for p in self.params] if cfg.ema else None
        self.step, self.samples_seen, self.seconds, self.lr = 0, 0, 0.0, cfg.lr
        # the guard: skipped updates (all, and in a row) and the gradient norm since the last evaluation
        self.skipped, self.streak = 0, 0
        self.norm_sum = torch.zeros((), dtype=torch.float64, device=train_x.device)
        self.norm_steps = 0
        self.history: list[dict] = []
        self.checkpointing = True  # off during the step-size search, whose state is not a run's
        self.last_checkpoint = time.monotonic()
        self.checkpoint_step: int | None = None
        self.tb = None  # TensorBoard writer, opened at the first evaluation

    @property
    def estimator(self):
        """The training objective `(model, x, *, num_samples, gradient) -> dict`; assign to replace it (full VB
        does)."""
        return self.objective.estimator

    @estimator.setter
    def estimator(self, fn) -> None:
        self.objective.estimator = fn

    # -- construction -------------------------------------------------------------------------------------
    def _eval_sets(self):
        """The data the logged ELBOs are computed on: binarized once with a fixed seed where training binarizes."""
        if self.cfg.binarize == "none":
            return self.train_x, self.test_x
        seeds = EVAL_BINARIZATION_SEEDS
        return binarize_static(self.train_x, seed=seeds["train"]), binarize_static(self.test_x, seed=seeds["test"])

    def _optimizer(self, lr: float):
        c = self.cfg
        return make_optimizer(c.optimizer, self.model.parameters(), lr=lr, n_train=self.n_train,
                              weight_decay=c.weight_decay)

    # -- the inner loop -----------------------------------------------------------------------------------
    def _minibatch(self) -> list[torch.Tensor]:
        """This process's shards of the next global minibatch (the same index order on every process)."""
        idx = self.batches.next().to(self.train_x.device, non_blocking=True)
        m = self.cfg.batch_size // self.shards
        xs = []
        for i, s in enumerate(self.local_shards):
            x = self.train_x[idx if self.shards == 1 else idx[s * m:(s + 1) * m]]
            if self.cfg.binarize == "dynamic":
                x = torch.bernoulli(x, generator=self.streams.noise[i])
            xs.append(x)
        return xs

    def _grad_norm(self) -> torch.Tensor:
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.train_x.device)
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))

    def train_steps(self, n_steps: int, bar=None) -> torch.Tensor:
        """Run n_steps of Algorithm 1; returns the summed ELBO of this process's datapoints as a device tensor.

        Each step: estimator, backward (gradients averaged over processes), then the guard: a step whose loss or
        gradient norm is not finite is skipped (no optimizer or average update) and counted, and `max_nonfinite`
        of them in a row raise NonFiniteError. The guard reads one flag from the device per step.
        """
        c, opt = self.cfg, self.optimizer
        running = torch.zeros((), device=self.train_x.device)
        for _ in range(n_steps):
            lr = self.lr * lr_factor(c, self.step, self.total_steps)
            for group in opt.param_groups:
                group["lr"] = lr
            xs = self._minibatch()
            opt.zero_grad(set_to_none=True)
            loss, elbo = self.forward(xs)
            loss.backward()
            norm = self._grad_norm()
            bad = not bool(torch.isfinite(norm) & torch.isfinite(loss))
            due = self.checkpointing and time.monotonic() - self.last_checkpoint >= self.checkpoint_every
            if self.world.size > 1:  # every process must take the same decisions
                bad, due = (v > 0 for v in distributed.agree_max([float(bad), float(due)], self.world))
            if bad:
                self.skipped += 1
                self.streak += 1
            else:
                opt.step()
                if self.ema is not None:
                    # bias-corrected start: the average covers only the steps taken so far
                    decay = min(c.ema, (1 + self.step) / (10 + self.step))
                    torch._foreach_lerp_(self.ema, self.param_data, 1 - decay)
                self.streak = 0
                self.norm_sum += norm
                self.norm_steps += 1
                running += elbo
            self.step += 1
            self.samples_seen += c.batch_size
            if bar is not None:
                bar.tick(c.batch_size, running, self.step)
            if self.streak >= self.max_nonfinite:
                where = (f"step {self.checkpoint_step}" if self.checkpoint_step is not None else "none written yet")
                raise NonFiniteError(
                    f"training stopped: {self.streak} updates in a row had a NaN or infinite loss or gradient (at "
                    f"step {self.step}, {self.samples_seen:,} datapoints; {self.skipped} skipped in all); the last "
                    f"checkpoint ({where}) is intact: lower --lr or raise --max-nonfinite, then --resume")
            if due and self.streak == 0:
                self.checkpoint()
        return running

    # -- the paper's step-size rule -----------------------------------------------------------------------
    def _snapshot(self):
        return (copy.deepcopy(self.model.state_dict()), self.batches.state(), self.streams.state(),
                [t.clone() for t in self.ema] if self.ema is not None else None)

    def _load_snapshot(self, snap) -> None:
        model_state, batch_state, stream_state, ema = snap
        self.model.load_state_dict(model_state)
        self.batches.load(*copy.deepcopy(batch_state))
        self.streams.load(stream_state)
        if ema is not None:
            self.ema = [t.clone() for t in ema]

    def search_lr(self) -> None:
        """Try each candidate step size for cfg.search_samples datapoints from the same start; keep the best.

        A candidate that diverges (NonFiniteError, or a non-finite ELBO) loses; if every candidate does, the last
        NonFiniteError propagates.
        """
        c = self.cfg
        steps = math.ceil(c.search_samples / c.batch_size)
        start = self._snapshot()
        probe = self.eval_train[: min(10_000, self.n_train)] if self.world.main else None
        best = None
        self.checkpointing = False
        for lr in c.lr_candidates:
            self._load_snapshot(start)
            self.lr, self.step, self.samples_seen = lr, 0, 0
            self.skipped = self.streak = self.norm_steps = 0
            self.norm_sum.zero_()
            self.optimizer = self._optimizer(lr)
            try:
                self.train_steps(steps)
            except NonFiniteError as e:
                diverged = e
                if self.world.main:
                    print(f"step-size search: lr={lr:g} diverged ({self.streak} non-finite updates in a row at "
                          f"{self.samples_seen} datapoints)")
                continue
            elbo = math.nan
            if self.world.main:
                with self._eval_rng():
                    elbo = evaluate(self.model, probe, estimator=self.eval_estimator, num_samples=1)["elbo"]
                print(f"step-size search: lr={lr:g} train ELBO {elbo:.2f} after {self.samples_seen} datapoints")
            (elbo,) = distributed.broadcast_floats([elbo], self.world)
            if not math.isfinite(elbo):
                diverged = NonFiniteError(f"step-size search: lr={lr:g} gave a non-finite train ELBO")
                continue
            if best is None or elbo > best[0]:
                best = (elbo, lr, self._snapshot(), copy.deepcopy(self.optimizer.state_dict()),
                        (self.skipped, self.norm_steps, self.norm_sum.clone()))
        if best is None:
            self.checkpointing = True
            raise diverged
        _, self.lr, snap, opt_state, (self.skipped, self.norm_steps, norm_sum) = best
        self._load_snapshot(snap)
        self.norm_sum.copy_(norm_sum)
        self.optimizer = self._optimizer(self.lr)
        self.optimizer.load_state_dict(opt_state)
        self.checkpointing = True

    # -- evaluation, history, checkpoints -----------------------------------------------------------------
    @contextlib.contextmanager
    def averaged(self):
        """Temporarily put the averaged weights into the model (no-op without EMA)."""
        if self.ema is None:
            yield
            return
        with torch.no_grad():
            backup = [p.clone() for p in self.param_data]
            torch._foreach_copy_(self.param_data, self.ema)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.param_data, backup)

    @contextlib.contextmanager
    def _eval_rng(self):
        """Evaluations draw their noise from a fixed seed and leave the training streams untouched."""
        cuda = [self.train_x.device] if self.train_x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(self.cfg.seed + 3)
            yield

    def log_eval(self) -> dict:
        c = self.cfg
        with self.averaged(), self._eval_rng():
            kw = dict(estimator=self.eval_estimator, num_samples=c.eval_num_samples)
            tr, te = evaluate(self.model, self.eval_train, **kw), evaluate(self.model, self.eval_test, **kw)
        rec = {
            "samples_seen": self.samples_seen, "epoch": self.samples_seen / self.n_train, "step": self.step,
            "train_elbo": tr["elbo"], "test_elbo": te["elbo"], "train_rec": tr["rec"], "train_kl": tr["kl"],
            "test_rec": te["rec"], "test_kl": te["kl"],
            "lr": self.lr * lr_factor(c, max(0, self.step - 1), self.total_steps), "seconds": round(self.seconds, 3),
        }
        if self.ema is not None:
            with self._eval_rng():
                rec["test_elbo_raw"] = evaluate(self.model, self.eval_test, **kw)["elbo"]
        rec["grad_norm"] = float(self.norm_sum) / self.norm_steps if self.norm_steps else None
        rec["skipped_updates"] = self.skipped
        for k in ("train_elbo", "test_elbo"):
            if not math.isfinite(rec[k]):
                raise FloatingPointError(f"training diverged: {k} is {rec[k]} at {self.samples_seen} datapoints; "
                                         "the last checkpoint is intact")
        self.norm_sum.zero_()
        self.norm_steps = 0
        self.history.append(rec)
        if self.run_dir is not None:
            runs.append_metrics(self.run_dir, rec)
            if c.tensorboard:
                self._tensorboard(rec)
        return rec

    def _gather_streams(self) -> dict[str, torch.Tensor]:
        """Every shard's random streams, on rank 0 (the other ranks get {})."""
        mine = self.streams.state()
        if self.world.size == 1:
            return mine
        kinds = [k.rsplit(".", 1)[0] for k in mine if k.endswith(f".{self.local_shards[0]}")]
        order = [(i, kind) for i in range(len(self.local_shards)) for kind in kinds]  # the same on every rank
        parts = [mine[f"{kind}.{self.local_shards[i]}"].contiguous().view(torch.uint8).flatten() for i, kind in order]
        gathered = distributed.gather_to_main(torch.cat(parts), self.world)
        out = {}
        for rank, blob in enumerate(gathered or []):
            offset = 0
            for (i, kind), part in zip(order, parts):
                out[f"{kind}.{rank + i * self.world.size}"] = blob[offset:offset + part.numel()].clone()
                offset += part.numel()
        return out

    def _tensorboard(self, rec: dict) -> None:
        """Every number of a metrics.jsonl record as a scalar at step samples_seen. A resumed run purges the
        events its interrupted predecessor wrote after the checkpoint it continues from."""
        if self.tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("tensorboard=True needs the tensorboard package: pip install tensorboard") from None
            purge = self.history[-2]["samples_seen"] + 1 if len(self.history) > 1 else None
            self.tb = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge)
        for key, value in rec.items():
            if key != "samples_seen" and isinstance(value, (int, float)):
                self.tb.add_scalar(key, value, global_step=rec["samples_seen"])
        self.tb.flush()

    def checkpoint(self) -> None:
        """Write the weights and the full training state atomically (safetensors with a JSON header, no pickle).

        The whole state is one file, so a kill at any moment leaves the previous checkpoint or this one. A state
        whose weights are not finite is never written. Under torchrun every rank takes part; rank 0 writes.
        """
        if self.run_dir is None:
            return
        streams = self._gather_streams()
        finite = all(bool(torch.isfinite(t).all()) for t in self.param_data + (self.ema or []))
        if not finite:
            raise FloatingPointError(f"training diverged: the weights are not finite at step {self.step}; the last "
                                     "checkpoint is intact")
        self.last_checkpoint = time.monotonic()
        self.checkpoint_step = self.step
        if not self.world.main:
            return
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt = self.optimizer.state_dict()
        opt_meta = {"param_groups": opt["param_groups"], "scalars": {}}
        for i, st in opt["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"optim.{i}.{k}"] = v
                else:
                    opt_meta["scalars"][f"{i}.{k}"] = v
        batch_tensors, batch_meta = self.batches.state()
        tensors.update(batch_tensors)
        tensors.update(streams)
        tensors["guard.norm_sum"] = self.norm_sum
        if self.ema is not None:
            tensors.update({f"ema.{i}": v for i, v in enumerate(self.ema)})
        meta = {"layout": 2, "step": self.step, "samples_seen": self.samples_seen, "seconds": self.seconds,
                "lr": self.lr, "optimizer": opt_meta, "batches": batch_meta, "shards": self.shards,
                "world_size": self.world.size, "evals": len(self.history), "next_point": self.point_index,
                "guard": {"skipped": self.skipped, "norm_steps": self.norm_steps}}
        with self.averaged():
            runs.write_tensors(self.run_dir / runs.WEIGHTS, self.model.state_dict())
        runs.write_tensors(self.run_dir / runs.CHECKPOINT, tensors, metadata={runs.STATE_KEY: json.dumps(meta)})
        (self.run_dir / runs.STATE).unlink(missing_ok=True)  # a format-1 state file would now be stale

    def _read_checkpoint(self):
        """(tensors, meta) of the run folder's checkpoint, read by rank 0 and shared; None when there is none."""
        path = self.run_dir / runs.CHECKPOINT

        def read():
            if not path.exists():
                return None
            runs.clean_temporaries(self.run_dir)
            return runs.read_file(path)

        data = distributed.share_from_main(read, self.world, (runs.RunError,))
        if data is None:
            return None
        tensors, metadata = runs.parse_tensors(data, path)
        if runs.STATE_KEY in metadata:
            try:
                meta = json.loads(metadata[runs.STATE_KEY])
            except ValueError:
                raise runs.RunError(f"{path}: unreadable training state in the header") from None
        else:  # format-1 layout: the state in checkpoint.json, one shard's streams without a shard number
            meta = json.loads(distributed.share_from_main(lambda: runs.read_file(self.run_dir / runs.STATE),
                                                          self.world, (runs.RunError,)))
            for k in ("rng.torch", "rng.noise"):
                if k in tensors:
                    tensors[f"{k}.0"] = tensors.pop(k)
        return tensors, meta

    def restore(self) -> bool:
        """Load the state written by `checkpoint` (for --resume); False when the run has no checkpoint yet (it then
        starts from the beginning, which is what an uninterrupted run did).

        Raises:
            RunError: the checkpoint is not safetensors, is incomplete, or does not match the run's config.
        """
        found = self._read_checkpoint()
        path = self.run_dir / runs.CHECKPOINT
        if found is None:
            if self.world.main:
                runs.truncate_metrics(self.run_dir, 0)
            return False
        tensors, meta = found
        try:
            self._restore(tensors, meta)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            detail = f"missing {e}" if isinstance(e, KeyError) else " ".join(str(e).split())[:200]
            raise runs.RunError(f"{path}: does not match this run ({detail})") from None
        if self.world.main:
            if "evals" in meta:
                self.history = runs.truncate_metrics(self.run_dir, meta["evals"])
            else:
                self.history = runs.truncate_metrics(self.run_dir, max_samples=self.samples_seen)
        return True

    def _check_state(self, tensors: dict, meta: dict) -> None:
        """Refuse a checkpoint whose counters or tensors could not have come from this run (tampered, foreign)."""
        def need(key, kind, ok=lambda v: True, where=meta):
            v = where[key]
            if not isinstance(v, kind) or isinstance(v, bool) or not ok(v):
                raise ValueError(f"{key} is {v!r}")

        number = (int, float)
        need("step", int, lambda v: v >= 0)
        need("samples_seen", int, lambda v: v >= 0)
        need("seconds", number, lambda v: math.isfinite(v) and v >= 0)
        need("lr", number, lambda v: math.isfinite(v) and v > 0)
        need("optimizer", dict)
        need("param_groups", list, where=meta["optimizer"])
        need("scalars", dict, where=meta["optimizer"])
        need("batches", dict)
        need("pos", int, lambda v: v >= 0, where=meta["batches"])
        for key in ("shards", "evals", "next_point"):
            if key in meta:
                need(key, int, lambda v: v >= 0)
        if meta.get("next_point", 0) > len(self.points):
            raise ValueError(f"next_point is {meta['next_point']}")
        for key in ("skipped", "norm_steps"):
            if key in meta.get("guard", {}):
                need(key, int, lambda v: v >= 0, where=meta["guard"])
        perm = tensors["data.perm"]
        if perm.dtype != torch.long or perm.ndim != 1 or meta["batches"]["pos"] > perm.numel() or (
                perm.numel() and not (0 <= int(perm.min()) and int(perm.max()) < self.n_train)):
            raise ValueError("data.perm is not an order of this training set")
        for i, p in enumerate(self.params):
            for key in (f"ema.{i}",) if self.ema is not None else ():
                if tensors[key].shape != p.shape:
                    raise ValueError(f"{key} has shape {tuple(tensors[key].shape)}, the weights {tuple(p.shape)}")
            for key, t in tensors.items():
                if key.startswith(f"optim.{i}.") and t.ndim and t.shape != p.shape:
                    raise ValueError(f"{key} has shape {tuple(t.shape)}, the weights {tuple(p.shape)}")

    def _restore(self, tensors: dict, meta: dict) -> None:
        self._check_state(tensors, meta)
        shards = meta.get("shards", 1)
        if shards != self.shards:
            raise ValueError(f"the checkpoint has {shards} shards, this run {self.shards}")
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict = {}
        for key, v in tensors.items():
            if key.startswith("optim."):
                _, i, k = key.split(".", 2)
                state.setdefault(int(i), {})[k] = v
        for key, v in meta["optimizer"]["scalars"].items():
            i, k = key.split(".", 1)
            state.setdefault(int(i), {})[k] = v
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
        self.batches.load(tensors, meta["batches"])
        self.streams.load(tensors)
        if self.ema is not None:
            self.ema = [tensors[f"ema.{i}"].to(self.train_x.device) for i in range(len(self.params))]
        self.step, self.samples_seen = meta["step"], meta["samples_seen"]
        self.seconds, self.lr = meta["seconds"], meta["lr"]
        guard = meta.get("guard", {})
        self.skipped, self.norm_steps = guard.get("skipped", 0), guard.get("norm_steps", 0)
        if "guard.norm_sum" in tensors:
            self.norm_sum.copy_(tensors["guard.norm_sum"])
        self.point_index = meta.get("next_point", sum(p <= self.samples_seen for p in self.points))
        self.checkpoint_step = self.step

    def run(self) -> list[dict]:
        """Train until `total` datapoints have been evaluated, evaluating at log-spaced points."""
        c = self.cfg
        t0 = time.perf_counter() - self.seconds
        if c.lr_candidates and self.step == 0:
            self.search_lr()
            self.point_index = sum(p <= self.samples_seen for p in self.points)  # the search's datapoints count
            self.checkpoint()
        with _Progress(self.total, self.samples_seen, enabled=self.progress) as bar:
            while self.point_index < len(self.points):
                point = self.points[self.point_index]
                n_steps = max(0, math.ceil((point - self.samples_seen) / c.batch_size))
                self.train_steps(n_steps, bar)
                self.seconds = time.perf_counter() - t0
                if self.world.main:
                    rec = self.log_eval()
                    bar.note(rec)
                self.point_index += 1
                self.checkpoint()
        if self.ema is not None:  # leave the model holding the weights that were evaluated and saved
            with torch.no_grad():
                torch._foreach_copy_(self.param_data, self.ema)
        return self.history


class _Progress:
    """A tqdm bar over datapoints that reads the running ELBO from the device only a few times per second."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = tqdm(total=total, initial=initial, unit="x", unit_scale=True, disable=not enabled,
                        dynamic_ncols=True, desc="train")
        self.pending, self.last, self.prev_sum, self.prev_step = 0, time.perf_counter(), 0.0, 0
        self.enabled = enabled

    def tick(self, n: int, running: torch.Tensor, step: int) -> None:
        self.pending += n
        now = time.perf_counter()
        if not self.enabled or now - self.last < 0.5:
            return
        total = float(running)  # one host sync per refresh, not per step
        seen = self.pending
        elbo = (total - self.prev_sum) / max(1, seen) if total != self.prev_sum else float("nan")
        if not math.isfinite(total):
            raise FloatingPointError(f"training diverged: non-finite ELBO at step {step}")
        self.bar.set_postfix_str(f"elbo {elbo:.2f}", refresh=False)
        self.bar.update(seen)
        self.pending, self.last, self.prev_sum = 0, now, total

    def note(self, rec: dict) -> None:
        self.bar.update(self.pending)
        self.pending, self.prev_sum = 0, 0.0
        self.bar.write(f"[{rec['samples_seen']:>11,d} x] train ELBO {rec['train_elbo']:9.3f}  "
                       f"test ELBO {rec['test_elbo']:9.3f}  ({rec['seconds']:.0f} s)")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()


def fit(model, train_x: torch.Tensor, test_x: torch.Tensor, cfg: TrainConfig, run_dir=None, *,
        progress: bool = True, resume: bool = False, checkpoint_every: float = 60.0,
        max_nonfinite: int = 20) -> list[dict]:
    """Train `model` with Algorithm 1 and return the evaluation history (also appended to run_dir/metrics.jsonl).

    Under torchrun (an initialized torch.distributed process group) every process calls fit with the same
    arguments; rank 0 evaluates and writes, the others return [].

    Args:
        model: a VAE (anything with prior/encode/decode).
        train_x, test_x: (N, D) resident tensors on the training device.
        cfg: a TrainConfig.
        run_dir: folder for metrics.jsonl and checkpoints, or None to keep everything in memory.
        progress: show a progress bar (samples/s and the running ELBO).
        resume: continue from run_dir's checkpoint (from the beginning when it has none yet).
        checkpoint_every: seconds between checkpoints during training, besides those at evaluations.
        max_nonfinite: updates in a row with a NaN or Inf loss or gradient that stop the run (NonFiniteError).
    """
    torch.manual_seed(cfg.seed)
    # Tiny gradients squared by Adagrad and saturated sigmoids produce subnormal floats, which x86 CPUs process
    # many times slower (7x measured on one state of the paper model); flushing them changes nothing above 1e-38.
    flush = torch.set_flush_denormal(True)
    trainer = None
    try:
        trainer = Trainer(model, train_x, test_x, cfg, Path(run_dir) if run_dir is not None else None,
                          progress=progress, checkpoint_every=checkpoint_every, max_nonfinite=max_nonfinite)
        if resume:
            restored = trainer.restore()
            if trainer.world.main:
                print(f"aevb: resuming {run_dir} at step {trainer.step} ({trainer.samples_seen:,} of "
                      f"{trainer.total:,} datapoints)" if restored else
                      f"aevb: {run_dir} has no checkpoint yet; starting it from the beginning")
        return trainer.run()
    finally:
        if trainer is not None and trainer.tb is not None:
            trainer.tb.close()
        if flush:
            torch.set_flush_denormal(False)
