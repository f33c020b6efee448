"""The paper's experiments end to end (section 5): Figures 2-5, each written as a CSV and/or PNG into one folder.

    fig2: AEVB against wake-sleep, train and test ELBO against datapoints evaluated, one panel per Nz;
    fig3: AEVB, wake-sleep and Monte Carlo EM, log p(x) by the paper's estimator (Appendix D) on the first 1000
          train and test points, against datapoints evaluated, for N_train = 1000 and 50000 (Nz = 3, 100 units);
    fig4: the learned 2-D manifolds of MNIST and Frey Face (a grid through the inverse Gaussian CDF);
    fig5: random samples of MNIST models with Nz = 2, 5, 10, 20.

Every model uses the paper's settings (presets.PRESETS), optionally with PyTorch's default initialization
(init="torch"); the training length is the paper's times `budget`, or `samples` when given, and the baselines'
length `baseline_samples`. The models of a figure are independent tasks that run_tasks trains one after another or
in several single-threaded processes at once (jobs). The paper's read-off values (PAPER_FIG2, PAPER_FIG3) are drawn
over the measured curves.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from ..data import load
from ..marginal import hmc_estimator
from .mcem import MCEM, MCEMConfig, PriorStart
from ..models import VAE, ModelConfig
from .. import runs
from ..inspect.plots import manifold_grid, sample_grid, save_image
from ..train.presets import PRESETS, merge
from ..train import Trainer, TrainConfig, eval_points, fit
from .figures import (METHOD_LABELS, PAPER_FIG2, PAPER_FIG3, fig2_summary,  # noqa: F401  (re-exported)
                      format_fig2_summary, plot_fig2, plot_fig3)

FIGURES = ("fig2", "fig3", "fig4", "fig5")
# The paper's lengths in datapoints evaluated: Figure 2 runs to 1e8 and beyond, Figure 3 to about 6e7; Figures 4
# and 5 state none, and 1e7 is where the pictures stop changing.
PAPER_SAMPLES = {"fig2": 100_000_000, "fig3": 60_000_000, "fig4": 10_000_000, "fig5": 10_000_000}
LATENT_DIMS = {"mnist": (3, 5, 10, 20, 200), "frey": (2, 5, 10, 20)}

def training_length(figure: str, samples: int | None, budget: float) -> int:
    """`samples` when given, else the paper's length for the figure times `budget` (at least 1e4)."""
    if samples is not None:
        if samples < 1:
            raise ValueError(f"--samples must be >= 1, got {samples}")
        return int(samples)
    if not budget > 0:
        raise ValueError(f"--budget must be positive, got {budget}")
    return max(10_000, int(round(PAPER_SAMPLES[figure] * budget)))


def paper_settings(dataset: str, latent_dim: int, init: str = "paper", **train) -> dict:
    """The paper's Figure 2 settings for any Nz (the preset of the same data set with Nz replaced).

    init="torch" swaps the paper's N(0, 0.01^2) initialization for PyTorch's default, the one change from the paper
    that `--init torch` offers (it escapes the paper init's early plateau).
    """
    name = f"paper-{dataset}-{latent_dim}"
    preset = name if name in PRESETS else f"paper-{dataset}-{LATENT_DIMS[dataset][-1]}"
    return merge(preset, {"model": {"latent_dim": latent_dim, "init": init}, "train": train})


def _model_and_config(x_dim: int, settings: dict) -> tuple[VAE, TrainConfig]:
    torch.manual_seed(settings["train"].get("seed", 0))
    return VAE(ModelConfig(x_dim=x_dim, **settings["model"])), TrainConfig(**settings["train"])


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    runs.write_text(path, buf.getvalue())


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"aevb reproduce: {message}", flush=True)


@functools.lru_cache(maxsize=4)
def _data(dataset: str, data_dir):
    return load(dataset, split="paper", data_dir=data_dir)


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (the workers' evaluation lines would interleave unlabelled)


def run_tasks(tasks: list[tuple[str, float, object, dict]], *, jobs: int = 1, threads: int = 1,
              quiet: bool = False) -> list:
    """Run independent (label, cost, function, kwargs) tasks; return their results in the order given.

    jobs = 1 runs them here, one after another. jobs > 1 runs them in that many worker processes (spawned, each
    with `threads` PyTorch threads), the costliest first so the workers finish together. On a CPU, separate
    single-threaded processes beat one process using every core for these small matrices
    (benchmarks/reproduce_jobs.py measures it).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    start = time.perf_counter()
    results = [None] * len(tasks)
    if jobs == 1:
        for i, (label, _, fn, kwargs) in enumerate(tasks):
            _log(f"training {label}", quiet)
            results[i] = fn(**kwargs)
            _log(f"done {label} ({i + 1}/{len(tasks)}, {time.perf_counter() - start:.0f} s)", quiet)
        return results
    order = sorted(range(len(tasks)), key=lambda i: -tasks[i][1])
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads,))
    try:
        futures = {pool.submit(tasks[i][2], **tasks[i][3]): i for i in order}
        for done, future in enumerate(as_completed(futures), 1):
            i = futures[future]
            results[i] = future.result()
            _log(f"done {tasks[i][0]} ({done}/{len(tasks)}, {time.perf_counter() - start:.0f} s)", quiet)
    except BaseException:  # interrupted, or a task failed: the workers' trainings (in memory only) end with it
        for proc in list(pool._processes.values()):  # no public way to stop a ProcessPoolExecutor's workers
            proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def _write_settings(path: Path, settings: dict, seconds: float) -> None:
    runs.write_text(path, json.dumps({**settings, "seconds": round(seconds, 1)}, indent=2) + "\n")


# -- Figure 2 -------------------------------------------------------------------------------------------------

def _fig2_task(dataset: str, nz: int, method: str, samples: int, init: str, seed: int, data_dir,
               progress: bool) -> list[dict]:
    ds = _data(dataset, data_dir)
    settings = paper_settings(dataset, nz, init, estimator="sgvb_b" if method == "aevb" else "wake_sleep",
                              samples=samples, seed=seed)
    model, cfg = _model_and_config(ds.x_dim, settings)
    history = fit(model, ds.train, ds.test, cfg, None, progress=progress)
    return [{"dataset": dataset, "latent_dim": nz, "method": method, "seed": seed, "split": split,
             "samples_seen": rec["samples_seen"], "elbo": rec[f"{split}_elbo"], "seconds": rec["seconds"]}
            for rec in history for split in ("train", "test")]


def fig2(out: Path, *, dataset: str = "mnist", latent_dims=None, samples: int, baseline_samples: int | None = None,
         init: str = "paper", data_dir=None, seed: int = 0, seeds: int = 1, jobs: int = 1, threads: int = 1,
         progress: bool = True, quiet: bool = False) -> list[dict]:
    """Train AEVB and wake-sleep for every Nz; write fig2.csv, fig2_<dataset>.png, fig2_summary.md (printed too)
    and fig2_settings.json.

    AEVB trains for `samples` datapoints, wake-sleep for `baseline_samples` (default the same). Each model trains
    `seeds` times, with seeds seed, seed + 1, ...; the plot and the summary show the mean over seeds and their range.
    With jobs > 1 the models train in that many processes at once (run_tasks). Returns the CSV rows.
    """
    if dataset not in LATENT_DIMS:
        raise ValueError(f"fig2 runs on {' or '.join(LATENT_DIMS)}, not {dataset!r}")
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    latent_dims = tuple(latent_dims or LATENT_DIMS[dataset])
    baseline_samples = baseline_samples or samples
    _data(dataset, data_dir)  # a missing or bad data set fails here, before any training
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = []
    for nz in latent_dims:
        for method, n, slower in (("aevb", samples, 1.0), ("wake_sleep", baseline_samples, 1.45)):
            cost = n * slower * (1 + 3 * nz / 1568)  # relative time: wake-sleep's extra pass, Nz's share of FLOPs
            for s in range(seed, seed + seeds):
                kwargs = dict(dataset=dataset, nz=nz, method=method, samples=n, init=init, seed=s,
                              data_dir=data_dir, progress=progress and jobs == 1)
                tag = f" seed {s}" if seeds > 1 else ""
                tasks.append((f"{dataset} Nz={nz} {METHOD_LABELS[method]}{tag} ({n:,} datapoints)", cost,
                              _fig2_task, kwargs))
    _log(f"fig2 {dataset}: {len(tasks)} models, {jobs} at a time", quiet)
    start = time.perf_counter()
    rows = [row for result in run_tasks(tasks, jobs=jobs, threads=threads, quiet=quiet) for row in result]
    _write_csv(out / "fig2.csv", rows)
    plot_fig2(rows, out / f"fig2_{dataset}.png")
    table = format_fig2_summary(fig2_summary(rows))
    runs.write_text(out / "fig2_summary.md", table)
    if not quiet:
        print(table, end="", flush=True)
    _write_settings(out / "fig2_settings.json", {"dataset": dataset, "latent_dims": list(latent_dims),
                    "samples": samples, "baseline_samples": baseline_samples, "init": init, "seed": seed,
                    "seeds": seeds, "jobs": jobs, "threads_per_job": threads}, time.perf_counter() - start)
    return rows


def _fig3_model(x_dim: int, seed: int, init: str = "paper") -> VAE:
    torch.manual_seed(seed)
    return VAE(ModelConfig(x_dim=x_dim, latent_dim=3, hidden=(100,), activation="tanh", likelihood="bernoulli",
                           init=init))


def _fig3_task(n_train: int, method: str, samples: int, evals_per_decade: int, eval_points_n: int, init: str,
               data_dir, seed: int, mcem_burn_in: int) -> list[dict]:
    ds = _data("mnist", data_dir)
    train_x = ds.train[:n_train]
    probe = {"train": ds.train[:eval_points_n], "test": ds.test[:eval_points_n]}
    model = _fig3_model(ds.x_dim, seed, init)
    if method == "mcem":
        em = MCEM(model, train_x, MCEMConfig(seed=seed))
        advance = lambda n: em.run(math.ceil(n / em.cfg.batch_size))  # noqa: E731
        seen = lambda: em.samples_seen  # noqa: E731
        target, burn_in = PriorStart(model), mcem_burn_in
    else:
        s = paper_settings("mnist", 3, init, estimator="sgvb_b" if method == "aevb" else "wake_sleep",
                           samples=samples, seed=seed)
        trainer = Trainer(model, train_x, probe["test"], TrainConfig(**s["train"]), None, progress=False)
        advance = lambda n: trainer.train_steps(math.ceil(n / trainer.cfg.batch_size))  # noqa: E731
        seen = lambda: trainer.samples_seen  # noqa: E731
        target, burn_in = model, 5
    rows, start = [], time.perf_counter()
    for point in eval_points(samples, evals_per_decade):
        advance(point - seen())
        for split, x in probe.items():
            r = hmc_estimator(target, x, num_samples=50, burn_in=burn_in, seed=seed)
            rows.append({"n_train": n_train, "method": method, "split": split, "samples_seen": seen(),
                         "log_px": r["mean"], "stderr": r["stderr"], "seconds": round(time.perf_counter() - start, 1)})
    return rows


def fig3(out: Path, *, n_trains=(1000, 50000), samples: int, baseline_samples: int | None = None,
         evals_per_decade: int = 2, eval_points_n: int = 1000, init: str = "paper", data_dir=None, seed: int = 0,
         jobs: int = 1, threads: int = 1, quiet: bool = False, mcem_burn_in: int = 50) -> list[dict]:
    """AEVB, wake-sleep and MCEM on the first N_train training images; log p(x) by the paper's estimator on the
    first `eval_points_n` train and test points at log-spaced sample counts. Writes fig3.csv, fig3.png and
    fig3_settings.json.

    AEVB trains for `samples` datapoints, wake-sleep and MCEM for `baseline_samples` (default the same). AEVB and
    wake-sleep use the Figure 2 settings (Adagrad 0.02, weight decay = prior, M = 100); the estimator's chains start
    at encoder samples with 5 burn-in transitions (the paper's). MCEM has no encoder: its chains start at prior
    samples with `mcem_burn_in` transitions.
    """
    ds = _data("mnist", data_dir)
    for n in n_trains:
        if not 1 <= n <= ds.train.shape[0]:
            raise ValueError(f"N_train must be in 1..{ds.train.shape[0]}, got {n}")
    baseline_samples = baseline_samples or samples
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = []
    for n_train in n_trains:
        for method, n, slower in (("aevb", samples, 1.0), ("wake_sleep", baseline_samples, 1.45),
                                  ("mcem", baseline_samples, 6.0)):
            kwargs = dict(n_train=n_train, method=method, samples=n, evals_per_decade=evals_per_decade,
                          eval_points_n=eval_points_n, init=init, data_dir=data_dir, seed=seed,
                          mcem_burn_in=mcem_burn_in)
            label = f"fig3 N_train={n_train} {METHOD_LABELS[method]} ({n:,} datapoints)"
            tasks.append((label, n * slower + 2e6, _fig3_task, kwargs))
    _log(f"fig3: {len(tasks)} models, {jobs} at a time", quiet)
    start = time.perf_counter()
    rows = [row for result in run_tasks(tasks, jobs=jobs, threads=threads, quiet=quiet) for row in result]
    _write_csv(out / "fig3.csv", rows)
    plot_fig3(rows, out / "fig3.png")
    _write_settings(out / "fig3_settings.json", {"n_trains": list(n_trains), "samples": samples,
                    "baseline_samples": baseline_samples, "eval_points": eval_points_n, "init": init, "seed": seed,
                    "jobs": jobs, "threads_per_job": threads}, time.perf_counter() - start)
    return rows


def _picture_task(kind: str, dataset: str, nz: int, samples: int, init: str, data_dir, seed: int, out: Path,
                  progress: bool) -> tuple[Path, float]:
    """Train one paper model and write its picture: the manifold (fig4) or 100 samples (fig5)."""
    ds = _data(dataset, data_dir)
    model, cfg = _model_and_config(ds.x_dim, paper_settings(dataset, nz, init, samples=samples, seed=seed))
    history = fit(model, ds.train, ds.test, cfg, None, progress=progress)
    if kind == "fig4":
        image = manifold_grid(model, ds.image_shape, n=20 if dataset == "mnist" else 10)
        path = out / f"fig4_{dataset}.png"
    else:
        image = sample_grid(model, ds.image_shape, n=100, seed=seed)
        path = out / f"fig5_nz{nz}.png"
    return save_image(path, image), history[-1]["test_elbo"]


def _pictures(kind: str, out: Path, panels, samples: int, init: str, data_dir, seed: int, jobs: int, threads: int,
              progress: bool, quiet: bool) -> list[Path]:
    for dataset in {d for d, _ in panels}:
        _data(dataset, data_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(f"{kind} {dataset} Nz={nz} ({samples:,} datapoints)", samples * (1 + nz / 500), _picture_task,
              dict(kind=kind, dataset=dataset, nz=nz, samples=samples, init=init, data_dir=data_dir, seed=seed,
                   out=out, progress=progress and jobs == 1)) for dataset, nz in panels]
    results = run_tasks(tasks, jobs=jobs, threads=threads, quiet=quiet)
    for (label, *_), (_, elbo) in zip(tasks, results):
        _log(f"{label}: test ELBO {elbo:.2f}", quiet)
    return [path for path, _ in results]


def fig4(out: Path, *, datasets=("mnist", "frey"), samples: int, init: str = "paper", data_dir=None, seed: int = 0,
         jobs: int = 1, threads: int = 1, progress: bool = True, quiet: bool = False) -> list[Path]:
    """Nz = 2 models of each data set; their manifolds as fig4_<dataset>.png."""
    return _pictures("fig4", out, [(d, 2) for d in datasets], samples, init, data_dir, seed, jobs, threads,
                     progress, quiet)


def fig5(out: Path, *, latent_dims=(2, 5, 10, 20), samples: int, init: str = "paper", data_dir=None, seed: int = 0,
         jobs: int = 1, threads: int = 1, progress: bool = True, quiet: bool = False) -> list[Path]:
    """MNIST models for each Nz; 100 random samples of each as fig5_nz<Nz>.png."""
    return _pictures("fig5", out, [("mnist", nz) for nz in latent_dims], samples, init, data_dir, seed, jobs,
                     threads, progress, quiet)
