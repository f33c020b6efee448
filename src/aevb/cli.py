"""The `aevb` command: train, eval, sample, plot, report and restore. Parses flags, builds configs, calls the
library, prints."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from . import __version__, distributed, reproduce, runs
from .data import DATASETS, SPLITS, DataError, binarize_static, load
from .estimators import ESTIMATORS, GRADIENTS, evaluate, resolve_estimator
from .families import POSTERIORS, PRIORS
from .marginal import METHODS, log_likelihood
from .likelihoods import LIKELIHOODS
from .model import INITS, VAE, ModelConfig
from .nets import ACTIVATIONS
from .optim import OPTIMIZERS
from .diagnostics import diagnose
from .plots import display_scale, manifold_grid, png_bytes, run_figures, sample_grid, save_image, write_figures
from .report import write_report
from .restore import FACTORS, MASKS, TASKS, comparison_figure, make_mask, read_images, run_task, summarize
from .presets import DEFAULTS, PRESETS
from .reproduce import FIGURES
from .train import BINARIZE, EVAL_BINARIZATION_SEEDS, SCHEDULES, TrainConfig, check_data, fit

PAPER_LR_CANDIDATES = (0.01, 0.02, 0.1)
DATASET_LIKELIHOOD = {"frey": "gaussian-sigmoid"}


class UsageError(Exception):
    """Bad option values found after parsing; reported in one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `aevb: error: ...` and exit code 2 (no usage block)."""

    def error(self, message):
        hint = f" (see {self.prog} --help)"
        self.exit(2, f"aevb: error: {' '.join(message.split())}{hint}\n")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _count(text: str) -> int:
    """Parse a datapoint count such as 1e7 or 250000."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 1 or math.isinf(value) or value != int(value):
        raise argparse.ArgumentTypeError(f"expected a positive whole count, got {text!r}")
    return int(value)


def _ints(text: str) -> tuple[int, ...]:
    """Comma-separated integers, or () when the text is not one."""
    try:
        return tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        return ()


def _sizes(text: str) -> tuple[int, ...]:
    sizes = _ints(text)
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers such as 2,5,10, got {text!r}")
    return sizes


def _widths(text: str) -> tuple[int, ...]:
    widths = _ints(text)
    if not widths:
        raise argparse.ArgumentTypeError(f"expected comma-separated widths such as 500 or 512,512, got {text!r}")
    if min(widths) < 1:
        raise argparse.ArgumentTypeError(f"hidden widths must be positive, got {text!r}")
    return widths


def _lr(text: str):
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'auto', got {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"the learning rate must be a positive number, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="aevb", description="Auto-Encoding Variational Bayes (Kingma & Welling, 2013).")
    p.add_argument("--version", action="version", version=f"aevb {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a VAE with AEVB (Algorithm 1) and write a run folder",
                       description="Train a VAE. Flags override the preset (or aevb's defaults when no preset).")
    t.add_argument("--preset", choices=sorted(PRESETS),
                   help="named settings: the paper's Figure 2 panels (paper-mnist-20, ...) "
                   "or iwae-mnist (Burda et al.'s architecture)")
    t.add_argument("--dataset", choices=sorted(DATASETS), help="data set (default mnist)")
    t.add_argument("--split", choices=SPLITS, help="standard (60k/10k for MNIST) or paper (50k train)")
    t.add_argument("--data-dir", help="folder holding the data files (else $AEVB_DATA, the cache, or a download)")
    t.add_argument("--latent-dim", type=int, help="Nz, the dimension of z (default 20)")
    t.add_argument("--hidden", type=_widths, help="comma-separated hidden widths of the encoder (decoder mirrors)")
    t.add_argument("--activation", choices=sorted(ACTIVATIONS))
    t.add_argument("--likelihood", choices=sorted(LIKELIHOODS),
                   help="p(x|z): bernoulli (MNIST grey levels), gaussian(-sigmoid) (Frey), categorical, "
                   "continuous-bernoulli")
    t.add_argument("--levels", type=int, help="K grey levels of the categorical likelihood (default 16)")
    t.add_argument("--posterior", choices=sorted(POSTERIORS), help="family of q(z|x) (default normal)")
    t.add_argument("--prior", choices=sorted(PRIORS), help="p(z), of matching support (default: the posterior's "
                   "standard member)")
    t.add_argument("--init", choices=INITS, help="paper: N(0, 0.01^2) weights; torch: PyTorch's default")
    t.add_argument("--estimator", choices=["auto", *sorted(ESTIMATORS)],
                   help="sgvb_b (analytic KL), sgvb_a, iwae, wake_sleep (the paper's baseline, logged with the ELBO), "
                   "or auto: sgvb_b where the KL is analytic, else sgvb_a")
    t.add_argument("--num-samples", type=int, help="L, samples of z per datapoint (K for iwae)")
    t.add_argument("--gradient", choices=GRADIENTS, help="standard, stl (sticking the landing) or dreg (iwae)")
    t.add_argument("--optimizer", choices=OPTIMIZERS)
    t.add_argument("--lr", type=_lr, help="step size, or 'auto' for the paper's rule: best of 0.01, 0.02, 0.1")
    t.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule")
    t.add_argument("--weight-decay", help="'prior' (N(0, I) on the weights, the paper's MAP) or a number")
    t.add_argument("--batch-size", type=int, help="M, datapoints per minibatch")
    length = t.add_mutually_exclusive_group()
    length.add_argument("--samples", type=_count, help="training length in datapoints evaluated, e.g. 1e7")
    length.add_argument("--epochs", type=float, help="training length in passes over the training set")
    t.add_argument("--binarize", choices=BINARIZE, help="none (grey levels), dynamic or static binarization")
    t.add_argument("--evals-per-decade", type=int, help="log-spaced evaluations per factor 10 of datapoints")
    t.add_argument("--ema", type=float, help="decay of a moving average of the weights (0 = off)")
    t.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the estimator (~1 min of compilation; 1.2-1.5x faster "
                   "for the paper model on 1 thread, no gain measured on 2 threads or for iwae-mnist)")
    t.add_argument("--seed", type=int, help="random seed (default 0)")
    t.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    t.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores; use 1 per job when "
                   "several jobs share the cores)")
    t.add_argument("--shards", type=_positive_int, help="split each minibatch into this many shards, each with its "
                   "own random streams (default: the number of processes); under torchrun each process computes "
                   "shards/processes of them, so a run gives the same result on any number of processes dividing it")
    t.add_argument("--out", help="run folder to write (default runs/<dataset>-nz<Nz>)")
    t.add_argument("--resume", metavar="RUN", help="continue the run in this folder from its last checkpoint "
                   "(bit-identical to an uninterrupted run); with it, only --data-dir, --device, --threads and "
                   "the options below may be given")
    t.add_argument("--checkpoint-every", type=_seconds, default=60.0, metavar="SECONDS",
                   help="seconds between checkpoints during training, besides one at each evaluation (default 60; "
                   "0: after every step)")
    t.add_argument("--max-nonfinite", type=_positive_int, default=20, metavar="N",
                   help="updates in a row with a NaN or infinite loss or gradient (each skipped) that stop the run "
                   "(default 20)")
    t.add_argument("--dist-timeout", type=_seconds, default=distributed.DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="under torchrun: how long a process waits for the others before failing (default 600)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--tensorboard", action="store_true", default=None,
                   help="also write TensorBoard event files into the run folder (needs: pip install tensorboard)")

    e = sub.add_parser("eval", help="ELBO, or log p(x) with --method, of a trained run (prints one JSON object)",
                       description="Without --method: the ELBO on both splits. With --method: log p(x) per "
                       "datapoint (nats, mean and standard error), the ELBO and bits/dim on one split.")
    e.add_argument("run", help="run folder")
    e.add_argument("--num-samples", type=int, default=1, help="L, samples per datapoint for the ELBO (default 1)")
    e.add_argument("--method", choices=sorted(METHODS), help="log p(x) estimator: is (importance sampling), hmc "
                   "(the paper's Appendix D), ais (annealed importance sampling), grid (exact, Nz <= 2)")
    e.add_argument("--k", type=_count, help="samples: importance samples (is, default 5000), posterior samples "
                   "(hmc, default 50), chains (ais, default 16); ignored by grid")
    e.add_argument("--compile", action="store_true",
                   help="with --method is: compute log p(x|z) through torch.compile (same estimate; 1.2-1.35x "
                   "faster measured on a 2-core CPU, after 10-30 s of compilation; needs a C++ compiler)")
    e.add_argument("--split", choices=("test", "train"), default="test", help="split for --method (default test)")
    e.add_argument("--limit", type=_count, help="first N datapoints only (--limit 1000: the paper's protocol)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--data-dir", help="override the data folder recorded in the run")
    e.add_argument("--device", default="cpu")
    e.add_argument("--diagnostics", action="store_true",
                   help="posterior diagnostics on --split instead: active units, KL per dimension, mutual "
                   "information I(x; z), amortization gap")
    e.add_argument("--gap-points", type=int, default=500,
                   help="datapoints for the amortization gap (default 500; 0 skips it)")
    e.add_argument("--gap-steps", type=int, default=300, help="Adam steps per datapoint's q (default 300)")
    e.add_argument("--gap-is", type=int, default=1000, help="importance samples for log p(x) beside the gap "
                   "(default 1000; 0 skips it)")

    s = sub.add_parser("sample", help="decode random z ~ p(z) into a PNG grid")
    s.add_argument("run", help="run folder")
    s.add_argument("--n", type=int, default=100, help="number of samples (default 100)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="PNG path (default RUN/samples.png)")

    r = sub.add_parser("reproduce", help="run one of the paper's experiments (Figures 2-5) into a folder",
                       description="Train the paper's models for one figure and write its CSV and PNG, with the "
                                   "paper's read-off values drawn over the measured curves.")
    r.add_argument("figure", choices=FIGURES, help="fig2: AEVB vs wake-sleep ELBO; fig3: AEVB, wake-sleep and "
                   "MCEM log p(x); fig4: 2-D manifolds; fig5: samples for Nz = 2, 5, 10, 20")
    r.add_argument("--dataset", choices=("mnist", "frey"), default="mnist", help="fig2's data set (default mnist)")
    r.add_argument("--latent-dims", type=_sizes, help="comma-separated Nz values (fig2, fig5)")
    r.add_argument("--samples", type=_count, help="training datapoints per model (overrides --budget)")
    r.add_argument("--budget", type=float, default=0.1,
                   help="fraction of the paper's training length: 1e8 for fig2, 6e7 for fig3, 1e7 for fig4-5 "
                        "(default 0.1)")
    r.add_argument("--baseline-samples", type=_count,
                   help="training datapoints of wake-sleep and MCEM (fig2, fig3; default: AEVB's)")
    r.add_argument("--init", choices=("paper", "torch"), default="paper",
                   help="paper: N(0, 0.01^2) weights (default); torch: PyTorch's default initialization")
    r.add_argument("--jobs", type=int, default=1,
                   help="models trained at once, each in its own process (default 1); on a CPU use one per core")
    r.add_argument("--n-train", type=_sizes, help="fig3's training-set sizes (default 1000,50000)")
    r.add_argument("--data-dir", help="folder holding the data files")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--seeds", type=int, default=1,
                   help="fig2: train every model with this many seeds (--seed, --seed + 1, ...) and report their mean "
                        "and range (default 1)")
    r.add_argument("--threads", type=int, help="CPU threads for PyTorch (per job when --jobs > 1, default 1 then)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--out", required=True, help="folder for the CSV and PNG files")

    pl = sub.add_parser("plot", help="learning curves, reconstructions, samples, manifold or traversals and "
                        "interpolations, latent space, KL per dimension (PNGs)",
                        description="Write the run's pictures as PNGs: curves, reconstructions, samples, manifold "
                        "(Nz = 2) or traversals and interpolations (Nz > 2), latent, kl.")
    pl.add_argument("run", help="run folder")
    pl.add_argument("--out", help="folder for the PNGs (default RUN/plots)")
    pl.add_argument("--data-dir", help="override the data folder recorded in the run")
    pl.add_argument("--seed", type=int, default=0)

    r = sub.add_parser("report", help="one self-contained HTML page: config, metrics, curves, pictures and a live "
                       "latent explorer", description="Write a self-contained HTML report of a run (images and "
                       "the decoder's weights embedded; no server needed).")
    r.add_argument("run", help="run folder")
    r.add_argument("--out", help="HTML path (default RUN/report.html)")
    r.add_argument("--dims", type=_dims, help="two latent dimensions for the explorer, e.g. 3,7 (default: the two "
                   "most active)")
    r.add_argument("--points", type=int, default=1000, help="training encodings drawn in the explorer (default 1000)")
    r.add_argument("--include", action="append", default=[], metavar="JSON",
                   help="a JSON file to show as a table (e.g. the output of eval --diagnostics or restore); repeatable")
    r.add_argument("--no-explorer", action="store_true", help="leave out the latent explorer")
    r.add_argument("--data-dir", help="override the data folder recorded in the run")
    r.add_argument("--seed", type=int, default=0)

    rs = sub.add_parser("restore", help="denoise, inpaint or super-resolve images with the model as prior; PSNR "
                        "against naive baselines", description="Restore the test set's images (or --images) after "
                        "a corruption, with each method and each naive baseline; write comparison.png and "
                        "metrics.json (and restored.npz with --save-outputs).")
    rs.add_argument("run", help="run folder")
    rs.add_argument("--task", required=True, choices=TASKS)
    rs.add_argument("--images", nargs="+", metavar="FILE", help="PNG or .npy images instead of the test set")
    rs.add_argument("--observed", action="store_true", help="--images are already corrupted (noisy, with "
                    "missing pixels, or low-resolution): restore them as they are; no PSNR without the truth")
    rs.add_argument("--limit", type=_count, help="first N test images only (default: the whole test set)")
    rs.add_argument("--noise", type=float, default=0.3, help="denoise: std of the Gaussian noise added (with "
                    "--observed: assumed by latent optimization) (default 0.3)")
    rs.add_argument("--mask", default="center", help="inpaint: center, half, random, or a PNG/.npy mask file "
                    "(nonzero = missing) (default center)")
    rs.add_argument("--missing", type=float, default=0.5, help="inpaint with --mask random: fraction missing "
                    "(default 0.5)")
    rs.add_argument("--factor", type=int, default=2, choices=FACTORS, help="superres: downsampling factor (default 2)")
    rs.add_argument("--steps", type=int, default=50, help="iterations of the iterative methods (default 50)")
    rs.add_argument("--opt-steps", type=int, default=300, help="Adam steps of latent optimization (default 300)")
    rs.add_argument("--samples", type=int, default=200, help="inpaint: importance samples per image (default 200)")
    rs.add_argument("--show", type=int, default=10, help="images in comparison.png (default 10)")
    rs.add_argument("--save-outputs", action="store_true", help="also write restored.npz: every method's output "
                    "for every image, float32 arrays (N, H, W) (160 MB for the MNIST test set)")
    rs.add_argument("--out", help="output folder (default RUN/restore-TASK)")
    rs.add_argument("--seed", type=int, default=0)
    rs.add_argument("--data-dir", help="override the data folder recorded in the run")
    rs.add_argument("--device", default="cpu")
    return p


def _dims(text: str) -> tuple[int, int]:
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two latent dimensions such as 0,1, got {text!r}") from None
    if len(dims) != 2:
        raise argparse.ArgumentTypeError(f"expected two latent dimensions such as 0,1, got {text!r}")
    return dims


# -- train ----------------------------------------------------------------------------------------------------
def _train_settings(args) -> dict:
    """Merge, in order of precedence: explicit flags > preset > aevb's defaults. Returns plain dicts."""
    base = PRESETS[args.preset] if args.preset else DEFAULTS
    data, model, train = dict(base["data"]), dict(base["model"]), dict(base["train"])
    if args.dataset:
        data["dataset"] = args.dataset
    if args.split:
        data["split"] = args.split
    if not args.preset and data["dataset"] in DATASET_LIKELIHOOD:
        model["likelihood"] = DATASET_LIKELIHOOD[data["dataset"]]
    for flag in ("latent_dim", "hidden", "activation", "likelihood", "init", "posterior", "prior", "levels"):
        if getattr(args, flag) is not None:
            model[flag] = getattr(args, flag)
    if args.posterior is not None and args.prior is None:
        model["prior"] = None  # the new posterior's own default prior
    for flag in ("estimator", "num_samples", "gradient", "optimizer", "schedule", "batch_size", "binarize",
                 "evals_per_decade", "ema", "compile", "seed", "shards", "tensorboard"):
        if getattr(args, flag) is not None:
            train[flag] = getattr(args, flag)
    if args.samples is not None:
        train["samples"], train["epochs"] = args.samples, None
    if args.epochs is not None:
        train["samples"], train["epochs"] = None, args.epochs
    if args.lr == "auto":
        train["lr_candidates"] = PAPER_LR_CANDIDATES
    elif args.lr is not None:
        train["lr"] = args.lr
    if args.weight_decay is not None:
        train["weight_decay"] = "prior" if args.weight_decay == "prior" else _float(args.weight_decay, "--weight-decay")
    return {"data": data, "model": model, "train": train}


def _float(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{flag}: expected a number or 'prior', got {text!r}") from None


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise UsageError(f"--device {name}: not available here ({str(e).splitlines()[0]})") from None
    return device


def _load_data(data_cfg: dict, data_dir):
    return load(data_cfg["dataset"], split=data_cfg["split"], data_dir=data_dir)


# Flags that define a run; a resumed run keeps its own (config.json), so giving one with --resume is an error.
RUN_FLAGS = ("preset", "dataset", "split", "latent_dim", "hidden", "activation", "likelihood", "levels", "posterior",
             "prior", "init", "estimator", "num_samples", "gradient", "optimizer", "lr", "schedule", "weight_decay",
             "batch_size", "samples", "epochs", "binarize", "evals_per_decade", "ema", "compile", "seed", "shards",
             "tensorboard", "out")


def cmd_train(args) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    world, device = distributed.setup(device, args.dist_timeout)
    try:
        if args.resume:
            return _resume(args, device, world)
        return _train_new(args, device, world)
    finally:
        distributed.shutdown()


def _train_new(args, device, world) -> int:
    settings = _train_settings(args)
    if settings["train"].get("shards") is None:
        settings["train"]["shards"] = world.size
    TrainConfig(**settings["train"])  # fail on bad options before reading data
    if settings["train"].get("tensorboard"):
        _check_tensorboard()
    ds = _load_data(settings["data"], args.data_dir)
    model_cfg = ModelConfig(x_dim=ds.x_dim, **settings["model"])
    check_data(ds.train, ds.test, model_cfg.likelihood, model_cfg.x_dim)
    torch.manual_seed(settings["train"].get("seed", 0))
    model = VAE(model_cfg).to(device)
    asked = settings["train"]["estimator"]
    settings["train"]["estimator"] = resolve_estimator(asked, model, ds.x_dim)
    if asked == "auto" and world.main:
        print(f"aevb: estimator auto -> {settings['train']['estimator']} for posterior {model_cfg.posterior} "
              f"and prior {model_cfg.prior}")
    train_cfg = TrainConfig(**settings["train"])
    if train_cfg.shards % world.size:
        raise UsageError(f"--shards {train_cfg.shards} is not a multiple of the {world.size} processes")
    out = Path(args.out or f"runs/{ds.name}-nz{model_cfg.latent_dim}")
    config = {
        "format_version": runs.FORMAT_VERSION, "aevb_version": __version__, "preset": args.preset,
        "data": {**settings["data"], "data_dir": str(Path(args.data_dir).resolve()) if args.data_dir else None,
                 "x_dim": ds.x_dim, "image_shape": list(ds.image_shape), "n_train": int(ds.train.shape[0]),
                 "n_test": int(ds.test.shape[0])},
        "model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "device": str(device),
        "world_size": world.size, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }

    def create():
        runs.prepare_run_dir(out)
        runs.write_json(out / runs.CONFIG, config)

    distributed.run_on_main(create, world, (runs.RunError,))
    if world.main:
        procs = f" on {world.size} processes" if world.size > 1 else ""
        print(f"aevb: training {ds.name} ({ds.train.shape[0]} train / {ds.test.shape[0]} test), "
              f"Nz={model_cfg.latent_dim}, {train_cfg.total_samples(ds.train.shape[0]):,} datapoints{procs} -> {out}")
    return _fit_and_finish(model, ds, train_cfg, config, out, device, args, world, resume=False)


def _resume(args, device, world) -> int:
    given = [f"--{f.replace('_', '-')}" for f in RUN_FLAGS if getattr(args, f, None) not in (None, False)]
    if given:
        raise UsageError(f"--resume continues a run with its own settings; leave out {', '.join(given)}")
    run = Path(args.resume)
    data = distributed.share_from_main(lambda: runs.read_file(run / runs.CONFIG), world, (runs.RunError,))
    config = runs.parse_config(data, run)
    train_cfg = runs.train_config(config, run)
    model_cfg = runs.model_config(config, run)
    if train_cfg.shards % world.size:
        raise UsageError(f"{run} was trained with {train_cfg.shards} shards, which {world.size} processes cannot "
                         "share; use a number of processes that divides it")
    ds = _load_data(config["data"], args.data_dir or config["data"].get("data_dir"))
    check_data(ds.train, ds.test, model_cfg.likelihood, model_cfg.x_dim)
    if train_cfg.tensorboard:
        _check_tensorboard()
    torch.manual_seed(train_cfg.seed)
    model = VAE(model_cfg).to(device)
    return _fit_and_finish(model, ds, train_cfg, config, run, device, args, world, resume=True)


def _compile_failed(e: Exception) -> UsageError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return UsageError(f"--compile: torch.compile failed ({type(e).__name__}: {first}); run without --compile")


def _fit_and_finish(model, ds, train_cfg, config, out, device, args, world, *, resume) -> int:
    try:
        history = fit(model, ds.train.to(device), ds.test.to(device), train_cfg, out, progress=not args.no_progress,
                      resume=resume, checkpoint_every=args.checkpoint_every, max_nonfinite=args.max_nonfinite)
    except torch._dynamo.exc.TorchDynamoException as e:  # only --compile reaches torch.compile
        if not resume and world.main:
            runs.remove_unstarted(out)  # a run that never took a step cannot be resumed without --compile
        raise _compile_failed(e) from None
    if not world.main:
        return 0
    shape = tuple(config["data"]["image_shape"])
    save_image(out / "samples.png", sample_grid(model, shape))
    if model.config.latent_dim == 2:
        save_image(out / "manifold.png", manifold_grid(model, shape))
    last = history[-1]
    print(json.dumps({k: last[k] for k in ("samples_seen", "epoch", "train_elbo", "test_elbo", "seconds")}))
    return 0


# -- eval / sample --------------------------------------------------------------------------------------------
K_NAMES = {"is": "num_samples", "hmc": "num_samples", "ais": "num_chains"}


def _eval_marginal(args, model, config, ds, device) -> dict:
    """log p(x) on one split by the chosen estimator, with the ELBO and bits/dim of the same datapoints."""
    x = ds.test if args.split == "test" else ds.train
    binarize = config["train"].get("binarize", "none")
    if binarize != "none":
        x = binarize_static(x, seed=EVAL_BINARIZATION_SEEDS[args.split])
    x = x[: args.limit].to(device) if args.limit else x.to(device)
    kw = {"seed": args.seed} if args.method != "grid" else {}
    if args.k is not None and args.method in K_NAMES:
        kw[K_NAMES[args.method]] = args.k
    if args.method == "is":
        kw.update(progress=True, compile=args.compile)
    start = time.perf_counter()
    try:
        r = log_likelihood(model, x, args.method, **kw)
    except torch._dynamo.exc.TorchDynamoException as e:  # only --compile reaches torch.compile
        raise _compile_failed(e) from None
    seconds = time.perf_counter() - start
    torch.manual_seed(args.seed)
    elbo = evaluate(model, x, estimator=resolve_estimator("auto", model, x.shape[1]), num_samples=args.num_samples)
    k = kw.get(K_NAMES.get(args.method, ""), None)
    return {"run": str(args.run), "method": args.method, "k": k, "split": args.split, "n": int(x.shape[0]),
            "log_likelihood": r["mean"], "stderr": r["stderr"], "nll": -r["mean"], "elbo": elbo["elbo"],
            "bits_per_dim": -r["mean"] / (x.shape[1] * math.log(2)),
            "binarization": f"static, seed {EVAL_BINARIZATION_SEEDS[args.split]}" if binarize != "none" else "none",
            "seconds": round(seconds, 3),
            **{key: v for key, v in r.items() if key not in ("log_px", "mean", "stderr") and not torch.is_tensor(v)}}


def _check_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard "
                         "(or aevb[tensorboard])") from None


def _eval_diagnostics(args, model, config, ds, device) -> dict:
    for flag, v in (("--gap-points", args.gap_points), ("--gap-is", args.gap_is)):
        if v < 0:
            raise UsageError(f"{flag} must be >= 0, got {v}")
    if args.gap_steps < 1:
        raise UsageError(f"--gap-steps must be >= 1, got {args.gap_steps}")
    x = ds.test if args.split == "test" else ds.train
    binarize = config["train"].get("binarize", "none")
    if binarize != "none":
        x = binarize_static(x, seed=EVAL_BINARIZATION_SEEDS[args.split])
    x = x[: args.limit].to(device) if args.limit else x.to(device)
    start = time.perf_counter()
    result = diagnose(model, x, gap_points=args.gap_points, gap_steps=args.gap_steps, gap_is_samples=args.gap_is,
                      seed=args.seed)
    return {"run": str(args.run), "split": args.split, **result, "seconds": round(time.perf_counter() - start, 3)}


def cmd_eval(args) -> int:
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.diagnostics and args.method:
        raise UsageError("--diagnostics and --method are separate evaluations; give one of them")
    if args.compile and args.method != "is":
        raise UsageError("--compile applies to --method is")
    device = _device(args.device)
    model, config = runs.load_run(args.run, device=device)
    ds = _load_data(config["data"], args.data_dir or config["data"]["data_dir"])
    if args.diagnostics:
        print(json.dumps(_eval_diagnostics(args, model, config, ds, device)))
        return 0
    if args.method:
        print(json.dumps(_eval_marginal(args, model, config, ds, device)))
        return 0
    binarize = config["train"].get("binarize", "none")
    start = time.perf_counter()
    estimator = resolve_estimator("auto", model, config["data"]["x_dim"])
    result = {"run": str(args.run), "num_samples": args.num_samples, "estimator": estimator}
    for split, x in (("train", ds.train), ("test", ds.test)):
        if binarize != "none":
            x = binarize_static(x, seed=EVAL_BINARIZATION_SEEDS[split])  # the same fixed draw the trainer logged
        torch.manual_seed(0)
        r = evaluate(model, x.to(device), estimator=estimator, num_samples=args.num_samples)
        result.update({f"{split}_elbo": r["elbo"], f"{split}_rec": r["rec"], f"{split}_kl": r["kl"],
                       f"n_{split}": r["n"]})
    result["binarize"] = binarize
    result["seconds"] = round(time.perf_counter() - start, 3)
    print(json.dumps(result))
    return 0


def cmd_sample(args) -> int:
    if args.n < 1:
        raise UsageError(f"--n must be >= 1, got {args.n}")
    model, config = runs.load_run(args.run)
    out = Path(args.out or Path(args.run) / "samples.png")
    save_image(out, sample_grid(model, tuple(config["data"]["image_shape"]), n=args.n, seed=args.seed))
    print(out)
    return 0


def cmd_reproduce(args) -> int:
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    if args.jobs == 1 and args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.baseline_samples is not None and args.figure not in ("fig2", "fig3"):
        raise UsageError("--baseline-samples applies to fig2 and fig3 (the figures with baselines)")
    if args.seeds != 1 and args.figure != "fig2":
        raise UsageError("--seeds applies to fig2")
    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    samples = reproduce.training_length(args.figure, args.samples, args.budget)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    common = {"samples": samples, "data_dir": args.data_dir, "seed": args.seed, "init": args.init,
              "jobs": args.jobs, "threads": args.threads or 1}
    progress = not args.no_progress
    if args.figure == "fig2":
        reproduce.fig2(out, dataset=args.dataset, latent_dims=args.latent_dims, progress=progress,
                       baseline_samples=args.baseline_samples, seeds=args.seeds, **common)
    elif args.figure == "fig3":
        reproduce.fig3(out, n_trains=args.n_train or (1000, 50000), baseline_samples=args.baseline_samples,
                       **common)
    elif args.figure == "fig4":
        reproduce.fig4(out, progress=progress, **common)
    else:
        reproduce.fig5(out, latent_dims=args.latent_dims or (2, 5, 10, 20), progress=progress, **common)
    print(f"aevb reproduce: wrote {args.figure} into {out}")
    return 0


def _run_data(run, data_dir):
    model, config = runs.load_run(run)
    return model, config, _load_data(config["data"], data_dir or config["data"]["data_dir"])


def cmd_plot(args) -> int:
    model, config, ds = _run_data(args.run, args.data_dir)
    figures = run_figures(model, config, ds, runs.read_metrics(args.run), seed=args.seed)
    scale = display_scale(config["data"]["image_shape"])
    for path in write_figures(figures, Path(args.out or Path(args.run) / "plots"), scale):
        print(path)
    return 0


def cmd_report(args) -> int:
    if args.points < 1:
        raise UsageError(f"--points must be >= 1, got {args.points}")
    include = {Path(f).name: runs.read_json(f) for f in args.include}
    for name, data in include.items():
        if not isinstance(data, dict):
            raise UsageError(f"--include {name}: expected a JSON object")
    out = Path(args.out or Path(args.run) / "report.html")
    _, _, ds = _run_data(args.run, args.data_dir)
    write_report(args.run, out, ds, dims=args.dims, points=args.points, include=include,
                 explorer=not args.no_explorer, seed=args.seed)
    print(out)
    return 0


def cmd_restore(args) -> int:
    for flag, v in (("--steps", args.steps), ("--opt-steps", args.opt_steps), ("--samples", args.samples),
                    ("--show", args.show)):
        if v < 1:
            raise UsageError(f"{flag} must be >= 1, got {v}")
    if args.observed and not args.images:
        raise UsageError("--observed needs --images")
    device = _device(args.device)
    model, config = runs.load_run(args.run, device=device)
    shape = tuple(config["data"]["image_shape"])
    ds = _load_data(config["data"], args.data_dir or config["data"]["data_dir"])
    if args.images:
        in_shape = shape
        if args.observed and args.task == "superres":
            if shape[0] % args.factor or shape[1] % args.factor:
                raise UsageError(f"images of {shape[0]}x{shape[1]} pixels do not divide into {args.factor}x"
                                 f"{args.factor} blocks")
            in_shape = (shape[0] // args.factor, shape[1] // args.factor)
        x = read_images(args.images, in_shape)
        source = [str(p) for p in args.images]
    else:
        x = ds.test[: args.limit] if args.limit else ds.test
        source = f"{config['data']['dataset']} test set" + (f", first {x.shape[0]}" if args.limit else "")
    missing = None
    if args.task == "inpaint":
        if args.mask in MASKS:
            missing = make_mask(args.mask, x.shape[0], shape, fraction=args.missing, seed=args.seed)
        else:
            m = read_images([args.mask], shape) > 0
            if m.shape[0] not in (1, x.shape[0]):
                raise UsageError(f"--mask {args.mask}: {m.shape[0]} masks for {x.shape[0]} images")
            missing = m.expand(x.shape[0], -1).clone()
            if not missing.any(1).all():
                raise UsageError(f"--mask {args.mask}: a mask with no missing pixel")
    kw = {"observed": x} if args.observed else {"truth": x}
    result = run_task(model, args.task, shape, missing=missing, pixel_mean=ds.train.mean(0), noise=args.noise,
                      factor=args.factor, steps=args.steps, opt_steps=args.opt_steps, samples=args.samples,
                      seed=args.seed, **kw)
    summary = {"run": str(args.run), "source": source, **summarize(result)}
    if args.task == "inpaint":
        summary["settings"]["mask"] = args.mask
    figure = png_bytes(comparison_figure(result, shape, args.show))
    out = Path(args.out or Path(args.run) / f"restore-{args.task}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise runs.RunError(f"cannot write to the output folder {out}: {e.strerror or e}") from None
    if args.save_outputs:
        arrays = {name: t.detach().cpu().numpy().reshape(-1, *shape) for name, t in result.outputs.items()}
        arrays["observed"] = result.observed.detach().cpu().numpy().reshape(-1, *shape)
        runs.write_npz(out / "restored.npz", arrays)
    runs.write_bytes(out / "comparison.png", figure)
    runs.write_json(out / "metrics.json", summary)
    print(json.dumps({k: summary[k] for k in ("task", "n", "best", "best_baseline", "gain_db", "beats_baseline")
                      if k in summary}))
    print(out)
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "sample": cmd_sample, "plot": cmd_plot, "report": cmd_report,
            "restore": cmd_restore, "reproduce": cmd_reproduce}


def main(argv=None) -> int:
    """The `aevb` command: run it with `argv` (sys.argv[1:] when None) and return its exit status (2 for bad
    input). A process of a torchrun job ends inside with that status (distributed.end_process)."""
    return distributed.end_process(_run(argv))


def _run(argv) -> int:
    args = _parser().parse_args(argv)
    try:
        data_dir = getattr(args, "data_dir", None)
        if data_dir is not None and not Path(data_dir).is_dir():
            # Checked here, not in load(): a folder recorded in a run's config.json may be gone on another
            # machine, and there the search of $AEVB_DATA and the cache should go on.
            raise UsageError(f"--data-dir {data_dir}: no such folder")
        return COMMANDS[args.command](args)
    except (DataError, runs.RunError, UsageError, ValueError, FloatingPointError) as e:
        print(f"{_who()}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{_who()}: interrupted (the last checkpoint is intact; continue with --resume)", file=sys.stderr)
        return 130


def _who() -> str:
    """'aevb', or 'aevb[rank R]' for the processes of a torchrun job other than rank 0."""
    rank = int(os.environ.get("RANK", "0") or 0) if distributed.launched() else 0
    return f"aevb[rank {rank}]" if rank else "aevb"


if __name__ == "__main__":
    sys.exit(main())
