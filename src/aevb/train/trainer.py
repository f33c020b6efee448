"""Algorithm 1 (AEVB): the state of one training run and its loop.

The loop: estimator -> backward -> guard -> optimizer step. The data set stays resident as one tensor and
minibatches are indexed from it. An update whose loss or gradient is NaN or Inf is skipped and counted;
`max_nonfinite` in a row stop the run. Checkpoints (checkpoint.py), evaluation (evaluation.py) and the step-size
search (lr_search.py) are functions of the Trainer's state.
"""
from __future__ import annotations

import bisect
import math
import time
from pathlib import Path

import torch

from .. import distributed
from ..estimators import ESTIMATORS, resolve_estimator
from ..optim import make_optimizer
from . import checkpoint, evaluation, fused, lr_search
from .checks import NonFiniteError, check_data, check_minibatch
from .options import TrainConfig
from .progress import Progress, TensorBoard
from .schedule import eval_points, lr_factor
from .streams import Batches, Objective, Streams


def grad_norm(params, device) -> torch.Tensor:
    """The 2-norm of all the parameters' gradients (0 without any)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def clip_gradients(params, norm: torch.Tensor, max_norm: float) -> None:
    """Scale the gradients, whose 2-norm is `norm`, by min(1, max_norm / norm), in place."""
    grads = [p.grad for p in params if p.grad is not None]
    torch._foreach_mul_(grads, torch.clamp(max_norm / norm, max=1.0))


class Trainer:
    """Holds the state of one training run: model, optimizer, data order, counters; `run()` trains to the end.

    Args:
        checkpoint_every: seconds between checkpoints during training (besides one at each evaluation); 0 writes
            one after every step.
        max_nonfinite: updates in a row with a non-finite loss or gradient norm that stop the run.

    Construction seeds torch's global generator with this process's first shard stream (`cfg.seed` for shard 0).
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
        check_minibatch(cfg.batch_size, self.n_train, self.total)
        self.total_steps = math.ceil(self.total / cfg.batch_size)
        self.points = eval_points(self.total, cfg.evals_per_decade)
        self.point_index = 0
        self._build_objective()
        self.eval_train, self.eval_test = evaluation.eval_sets(self) if self.world.main else (None, None)
        self.optimizer = self.make_optimizer(cfg.lr)
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
        self.tb = TensorBoard(run_dir)

    def _build_objective(self) -> None:
        """The estimator (compiled if asked), this process's shards and their streams, and the module that DDP
        wraps under torchrun."""
        cfg, model, device = self.cfg, self.model, self.train_x.device
        estimator = ESTIMATORS[resolve_estimator(cfg.estimator, model)]
        if cfg.compile:
            estimator = torch.compile(estimator)
        self.eval_estimator = resolve_estimator("auto", model)  # logs report the ELBO whatever the objective
        self.batches = Batches(self.n_train, cfg.batch_size, cfg.replacement, cfg.seed + 1)
        self.local_shards = list(range(self.world.rank, self.shards, self.world.size))
        self.streams = Streams(self.local_shards, cfg.seed, device)
        self.objective = Objective(model, estimator, self.streams, cfg.num_samples, cfg.gradient, beta=cfg.beta,
                                   kl_warmup=cfg.kl_warmup, free_bits=cfg.free_bits)
        self.forward = self.objective
        self.step_path = fused.resolve_step(cfg, model, self.world.size)
        self.fused = fused.FusedStep(self.objective, cfg.precision) if self.step_path == "fused" else None
        if self.world.size > 1:
            from torch.nn.parallel import DistributedDataParallel

            dev = [device.index] if device.type == "cuda" else None
            self.forward = DistributedDataParallel(self.objective, device_ids=dev, static_graph=True)

    @property
    def estimator(self):
        """The training objective `(model, x, *, num_samples, gradient) -> dict`; assign to replace it (full VB
        does), which runs it through autograd."""
        return self.objective.estimator

    @estimator.setter
    def estimator(self, fn) -> None:
        self.objective.estimator = fn
        self.fused, self.step_path = None, "autograd"

    def make_optimizer(self, lr: float):
        c = self.cfg
        return make_optimizer(c.optimizer, self.model.parameters(), lr=lr, n_train=self.n_train,
                              weight_decay=c.weight_decay)

    def _minibatch(self) -> list[torch.Tensor]:
        """This process's shards of the next global minibatch (the same index order on every process)."""
        idx = self.batches.next().to(self.train_x.device, non_blocking=True)
        m = self.cfg.batch_size // self.shards
        xs = []
        for i, s in enumerate(self.local_shards):
            x = torch.index_select(self.train_x, 0, idx if self.shards == 1 else idx[s * m:(s + 1) * m])
            if self.cfg.binarize == "dynamic":
                x = torch.bernoulli(x, generator=self.streams.noise[i])
            xs.append(x)
        return xs

    def _grad_norm(self) -> torch.Tensor:
        return self.fused.grad_norm() if self.fused is not None else grad_norm(self.params, self.train_x.device)

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
            # the KL weight's warm-up counts datapoints; the fused step (fused.py) sets each .grad itself
            loss, elbo = (self.fused or self.forward)(xs, self.samples_seen)
            if self.fused is None:
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
                self._update(norm)
                running += elbo
            self.step += 1
            self.samples_seen += c.batch_size
            if bar is not None:
                bar.tick(c.batch_size, running, self.step)
            if self.streak >= self.max_nonfinite:
                raise NonFiniteError.after(self)
            if due and self.streak == 0:
                self.checkpoint()
        return running

    def _update(self, norm: torch.Tensor) -> None:
        """The optimizer step (after clipping, with cfg.grad_clip) and the weight average's, after a finite loss and
        gradient."""
        if self.cfg.grad_clip:
            clip_gradients(self.params, norm, self.cfg.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            # bias-corrected start: the average covers only the steps taken so far
            decay = min(self.cfg.ema, (1 + self.step) / (10 + self.step))
            torch._foreach_lerp_(self.ema, self.param_data, 1 - decay)
        self.streak = 0
        self.norm_sum += norm
        self.norm_steps += 1

    def averaged(self):
        """Temporarily put the averaged weights into the model (no-op without EMA)."""
        return evaluation.averaged(self)

    def log_eval(self) -> dict:
        return evaluation.log_eval(self)

    def checkpoint(self) -> None:
        checkpoint.save(self)

    def restore(self) -> bool:
        """Load the run folder's checkpoint (for --resume); False when it has none yet."""
        return checkpoint.restore(self)

    def search_lr(self) -> None:
        lr_search.search_lr(self)

    def run(self) -> list[dict]:
        """Train until `total` datapoints have been evaluated, evaluating at log-spaced points."""
        c = self.cfg
        t0 = time.perf_counter() - self.seconds
        if c.lr_candidates and self.step == 0:
            self.search_lr()
            self.point_index = sum(p <= self.samples_seen for p in self.points)  # the search's datapoints count
            self.checkpoint()
        with Progress(self.total, self.samples_seen, enabled=self.progress) as bar:
            while self.point_index < len(self.points):
                point = self.points[self.point_index]
                n_steps = max(0, math.ceil((point - self.samples_seen) / c.batch_size))
                self.train_steps(n_steps, bar)
                self.seconds = time.perf_counter() - t0
                if self.world.main:
                    rec = self.log_eval()
                    bar.note(rec)
                # past this point and any other the same steps passed (minibatches larger than their spacing)
                self.point_index = bisect.bisect_right(self.points, self.samples_seen)
                self.checkpoint()
        if self.ema is not None:  # leave the model holding the weights that were evaluated and saved
            with torch.no_grad():
                torch._foreach_copy_(self.param_data, self.ema)
        return self.history
