"""Algorithm 1 (AEVB): minibatch SGVB training with evaluation, a JSONL history and resumable checkpoints.

`fit` loops estimator -> backward -> optimizer step; the data set stays resident as one tensor and minibatches
are indexed from it. Training length is counted in datapoints evaluated, the paper's x-axis.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import runs
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
            on the 2-core CPU: 1.2-1.5x faster with 1 thread, no gain with 2; the first compilation takes ~1 min.
        seed: seeds initialization, minibatch order and the noise.
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

    def __post_init__(self):
        object.__setattr__(self, "lr_candidates", tuple(float(v) for v in self.lr_candidates))
        checks = [
            (self.estimator in ESTIMATORS or self.estimator == "auto",
             f"unknown estimator {self.estimator!r}; choose from auto, {', '.join(ESTIMATORS)}"),
            (self.gradient in GRADIENTS, f"unknown gradient {self.gradient!r}; choose from {', '.join(GRADIENTS)}"),
            (self.gradient != "dreg" or self.estimator == "iwae", "gradient 'dreg' needs estimator 'iwae'"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}"),
            (self.binarize in BINARIZE, f"unknown binarization {self.binarize!r}; choose from {', '.join(BINARIZE)}"),
            (self.lr > 0 and all(v > 0 for v in self.lr_candidates), "learning rates must be positive"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.num_samples >= 1 and self.eval_num_samples >= 1, "numbers of samples must be >= 1"),
            ((self.samples is None) != (self.epochs is None), "give exactly one of samples and epochs"),
            ((self.samples or 1) > 0 and (self.epochs or 1) > 0, "the training length must be positive"),
            (self.weight_decay == "prior" or float(self.weight_decay) >= 0, "weight_decay must be 'prior' or >= 0"),
            (0 <= self.ema < 1, f"ema must be in [0, 1), got {self.ema}"),
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
        return cls(**d)


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
        if self.pos + self.batch_size > self.perm.numel():
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


class Trainer:
    """Holds the state of one training run: model, optimizer, data order, counters; `run()` trains to the end."""

    def __init__(self, model, train_x, test_x, cfg: TrainConfig, run_dir: Path | None, *, progress: bool = True):
        self.model, self.cfg, self.run_dir, self.progress = model, cfg, run_dir, progress
        self.train_x, self.test_x = train_x, test_x
        self.n_train = train_x.shape[0]
        self.total = cfg.total_samples(self.n_train)
        self.total_steps = math.ceil(self.total / cfg.batch_size)
        x_dim = train_x.shape[1]
        self.estimator = ESTIMATORS[resolve_estimator(cfg.estimator, model, x_dim)]
        if cfg.compile:
            self.estimator = torch.compile(self.estimator)
        self.eval_estimator = resolve_estimator("auto", model, x_dim)  # logs report the ELBO whatever the objective
        self.batches = Batches(self.n_train, cfg.batch_size, cfg.replacement, cfg.seed + 1)
        self.noise = torch.Generator(device=train_x.device).manual_seed(cfg.seed + 2)
        self.eval_train, self.eval_test = self._eval_sets()
        self.optimizer = self._optimizer(cfg.lr)
        self.params = list(model.parameters())
        self.param_data = [p.detach() for p in self.params]  # views sharing storage, made once for the EMA update
        self.ema = [p.detach().clone() for p in self.params] if cfg.ema else None
        self.step, self.samples_seen, self.seconds, self.lr = 0, 0, 0.0, cfg.lr
        self.history: list[dict] = []
        self.tb = None  # TensorBoard writer, opened at the first evaluation

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
    def _minibatch(self) -> torch.Tensor:
        idx = self.batches.next().to(self.train_x.device, non_blocking=True)
        x = self.train_x[idx]
        if self.cfg.binarize == "dynamic":
            x = torch.bernoulli(x, generator=self.noise)
        return x

    def train_steps(self, n_steps: int, bar=None) -> torch.Tensor:
        """Run n_steps of Algorithm 1; returns the summed minibatch ELBO as a device tensor (no host sync)."""
        c, model, opt = self.cfg, self.model, self.optimizer
        running = torch.zeros((), device=self.train_x.device)
        for _ in range(n_steps):
            lr = self.lr * lr_factor(c, self.step, self.total_steps)
            for group in opt.param_groups:
                group["lr"] = lr
            x = self._minibatch()
            out = self.estimator(model, x, num_samples=c.num_samples, gradient=c.gradient)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            if self.ema is not None:
                # bias-corrected start: the average covers only the steps taken so far
                decay = min(c.ema, (1 + self.step) / (10 + self.step))
                torch._foreach_lerp_(self.ema, self.param_data, 1 - decay)
            running += out["elbo"].sum()
            self.step += 1
            self.samples_seen += x.shape[0]
            if bar is not None:
                bar.tick(x.shape[0], running, self.step)
        return running

    # -- the paper's step-size rule -----------------------------------------------------------------------
    def search_lr(self) -> None:
        """Try each candidate step size for cfg.search_samples datapoints from the same start; keep the best."""
        c = self.cfg
        steps = math.ceil(c.search_samples / c.batch_size)
        start_model = copy.deepcopy(self.model.state_dict())
        start_batches = self.batches.state()
        start_rng = torch.get_rng_state()
        probe = self.eval_train[: min(10_000, self.n_train)]
        best = None
        for lr in c.lr_candidates:
            self.model.load_state_dict(start_model)
            self.batches.load(*start_batches)
            torch.set_rng_state(start_rng)
            self.lr, self.step, self.samples_seen = lr, 0, 0
            self.optimizer = self._optimizer(lr)
            self.train_steps(steps)
            elbo = evaluate(self.model, probe, estimator=self.eval_estimator, num_samples=1)["elbo"]
            print(f"step-size search: lr={lr:g} train ELBO {elbo:.2f} after {self.samples_seen} datapoints")
            if best is None or elbo > best[0]:
                best = (elbo, lr, copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict()),
                        self.batches.state(), torch.get_rng_state())
        _, self.lr, model_state, opt_state, batch_state, rng = best
        self.model.load_state_dict(model_state)
        self.optimizer = self._optimizer(self.lr)
        self.optimizer.load_state_dict(opt_state)
        self.batches.load(*batch_state)
        torch.set_rng_state(rng)

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

    def log_eval(self) -> dict:
        c = self.cfg
        with self.averaged():
            kw = dict(estimator=self.eval_estimator, num_samples=c.eval_num_samples)
            tr, te = evaluate(self.model, self.eval_train, **kw), evaluate(self.model, self.eval_test, **kw)
        rec = {
            "samples_seen": self.samples_seen, "epoch": self.samples_seen / self.n_train, "step": self.step,
            "train_elbo": tr["elbo"], "test_elbo": te["elbo"], "train_rec": tr["rec"], "train_kl": tr["kl"],
            "test_rec": te["rec"], "test_kl": te["kl"],
            "lr": self.lr * lr_factor(c, max(0, self.step - 1), self.total_steps), "seconds": round(self.seconds, 3),
        }
        if self.ema is not None:
            rec["test_elbo_raw"] = evaluate(self.model, self.eval_test, **kw)["elbo"]
        for k in ("train_elbo", "test_elbo"):
            if not math.isfinite(rec[k]):
                raise FloatingPointError(f"training diverged: {k} is {rec[k]} at {self.samples_seen} datapoints")
        self.history.append(rec)
        if self.run_dir is not None:
            runs.append_metrics(self.run_dir, rec)
            if c.tensorboard:
                self._tensorboard(rec)
        return rec

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
        """Write weights and the full training state atomically (safetensors + JSON, no pickle)."""
        if self.run_dir is None:
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
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.noise"] = self.noise.get_state()
        if self.ema is not None:
            tensors.update({f"ema.{i}": v for i, v in enumerate(self.ema)})
        meta = {"step": self.step, "samples_seen": self.samples_seen, "seconds": self.seconds, "lr": self.lr,
                "optimizer": opt_meta, "batches": batch_meta}
        runs.write_tensors(self.run_dir / runs.CHECKPOINT, tensors)
        runs.write_json(self.run_dir / runs.STATE, meta)
        with self.averaged():
            runs.write_tensors(self.run_dir / runs.WEIGHTS, self.model.state_dict())

    def restore(self) -> None:
        """Load the state written by `checkpoint` (for --resume)."""
        tensors = runs.read_tensors(self.run_dir / runs.CHECKPOINT)
        meta = runs.read_json(self.run_dir / runs.STATE)
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
        torch.set_rng_state(tensors["rng.torch"])
        self.noise.set_state(tensors["rng.noise"])
        if self.ema is not None:
            self.ema = [tensors[f"ema.{i}"] for i in range(len(self.params))]
        self.step, self.samples_seen, self.seconds, self.lr = meta["step"], meta["samples_seen"], meta["seconds"], meta["lr"]
        runs.truncate_metrics(self.run_dir, self.samples_seen)
        self.history = runs.read_metrics(self.run_dir)

    def run(self) -> list[dict]:
        """Train until `total` datapoints have been evaluated, evaluating at log-spaced points."""
        c = self.cfg
        t0 = time.perf_counter() - self.seconds
        if c.lr_candidates and self.step == 0:
            self.search_lr()
        points = [p for p in eval_points(self.total, c.evals_per_decade) if p > self.samples_seen]
        with _Progress(self.total, self.samples_seen, enabled=self.progress) as bar:
            for point in points:
                n_steps = math.ceil((point - self.samples_seen) / c.batch_size)
                self.train_steps(n_steps, bar)
                self.seconds = time.perf_counter() - t0
                rec = self.log_eval()
                bar.note(rec)
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
        progress: bool = True, resume: bool = False) -> list[dict]:
    """Train `model` with Algorithm 1 and return the evaluation history (also appended to run_dir/metrics.jsonl).

    Args:
        model: a VAE (anything with prior/encode/decode).
        train_x, test_x: (N, D) resident tensors on the training device.
        cfg: a TrainConfig.
        run_dir: folder for metrics.jsonl and checkpoints, or None to keep everything in memory.
        progress: show a progress bar (samples/s and the running ELBO).
        resume: continue from run_dir's checkpoint.
    """
    torch.manual_seed(cfg.seed)
    # Tiny gradients squared by Adagrad and saturated sigmoids produce subnormal floats, which x86 CPUs process
    # many times slower (7x measured on one state of the paper model); flushing them changes nothing above 1e-38.
    flush = torch.set_flush_denormal(True)
    trainer = Trainer(model, train_x, test_x, cfg, Path(run_dir) if run_dir is not None else None, progress=progress)
    try:
        if resume:
            trainer.restore()
        return trainer.run()
    finally:
        if trainer.tb is not None:
            trainer.tb.close()
        if flush:
            torch.set_flush_denormal(False)
