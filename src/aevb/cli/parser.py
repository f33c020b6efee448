"""The `aevb` command line: one parser per subcommand. `aevb train`'s run-defining flags are generated from the
option declarations (DataOptions, ModelConfig, TrainConfig), so each option is written once."""
from __future__ import annotations

import argparse

from .. import distributed
from .. import options as opt
from ..inspect.restore import FACTORS, TASKS
from ..marginal import METHODS
from ..marginal.ais import STARTS
from ..models import ModelConfig
from ..paper.reproduce import FIGURES
from ..train.options import DataOptions, TrainConfig
from ..train.presets import PRESETS
from ..version import __version__
from .common import Parser

# The sections of a run's settings and the dataclasses that declare their options, in the order of --help.
SECTIONS = (("data", DataOptions), ("model", ModelConfig), ("train", TrainConfig))
# --data-dir of the commands that read a run folder
RUN_DATA_DIR_HELP = ("override the data folder recorded in the run (a run on your own data: the folder that now holds "
                     "its file or folder)")


def run_flags() -> tuple[str, ...]:
    """The destinations of the flags that define a run: a resumed run keeps its own (config.json), so giving one
    of them with --resume is an error."""
    return ("preset", *(f.name for _, cls in SECTIONS for f, _ in opt.declared(cls)), "out")


def _plain_type(annotation: str):
    return {"int": int, "float": float}.get(annotation.split(" ")[0].split("[")[0], str)


def add_options(p: argparse.ArgumentParser, cls) -> None:
    """One flag per declared option of the dataclass `cls`, with default None (so that a flag not given leaves
    the preset's value) and the declaration's help, choices and parser."""
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f, meta in opt.declared(cls):
        kw = {"dest": f.name, "default": None, "help": meta["help"]}
        if f.type in (bool, "bool"):
            kw["action"] = "store_true"
        else:
            kw["type"] = meta["parse"] or _plain_type(str(f.type))
            choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
            if choices is not None:
                kw["choices"] = list(choices)
        if meta["metavar"]:
            kw["metavar"] = meta["metavar"]
        target = p
        if meta["group"]:
            target = groups.get(meta["group"]) or groups.setdefault(meta["group"], p.add_mutually_exclusive_group())
        target.add_argument(opt.flag_name(f, meta), **kw)


def given_options(args) -> dict[str, dict]:
    """The option values given on the command line, per section, as the field updates they make."""
    given: dict[str, dict] = {}
    for section, cls in SECTIONS:
        values = given.setdefault(section, {})
        for f, meta in opt.declared(cls):
            value = getattr(args, f.name, None)
            if value is not None:
                values.update(opt.updates(f, meta, value))
    return given


def add_run_options(p: argparse.ArgumentParser) -> None:
    """--preset, every declared option of a run and --data-dir: the flags `aevb train` and `aevb sweep` share."""
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="named settings: the paper's Figure 2 panels (paper-mnist-20, ...) "
                   "or iwae-mnist (Burda et al.'s architecture)")
    for section, cls in SECTIONS:
        add_options(p, cls)
        if section == "data":
            p.add_argument("--data-dir", help="folder holding the data files (else $AEVB_DATA, the cache, or a "
                           "download)")


def train_parser(sub) -> None:
    """Add `aevb train` to the subparsers `sub` (`aevb sweep` builds one to check and run its grid points)."""
    _train_parser(sub)


def _sweep_parser(sub) -> None:
    s = sub.add_parser("sweep", help="train a grid of runs (one aevb train run folder per point), several at once, "
                       "with a summary table", description="Train one run per point of the Cartesian product of the "
                       "--grid values, each into OUT/<flag-value_...>/ exactly as aevb train --out writes it, JOBS at "
                       "a time with one thread each; then write OUT/summary.csv. The other flags are aevb train's and "
                       "apply to every run. Re-running the same sweep skips finished runs and resumes interrupted "
                       "ones.")
    s.add_argument("--grid", action="append", nargs="+", required=True, metavar="FLAG VALUE",
                   help="a train flag and the values to try, e.g. --grid latent-dim 2 5 10 (the flag's dashes "
                   "may be left out; repeatable: the grid is the product; a switch takes true/false)")
    s.add_argument("--out", required=True, help="folder for the run folders, summary.csv and logs/")
    s.add_argument("--jobs", type=int, help="runs trained at once, one thread each (default: the usable cores)")
    s.add_argument("--no-progress", action="store_true", help="no progress line (failures are still reported)")
    add_run_options(s)


def _train_parser(sub) -> None:
    t = sub.add_parser("train", help="train a VAE with AEVB (Algorithm 1) and write a run folder",
                       description="Train a VAE. Flags override the preset (or aevb's defaults when no preset).")
    add_run_options(t)
    t.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    t.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores; use 1 per job when "
                   "several jobs share the cores)")
    t.add_argument("--out", help="run folder to write (default runs/<dataset>-nz<Nz>)")
    t.add_argument("--resume", metavar="RUN", help="continue the run in this folder from its last checkpoint "
                   "(bit-identical to an uninterrupted run); with it, only --data-dir (for a run on your own data: the "
                   "folder that now holds its file or folder), --device, --threads and the options below may be given")
    t.add_argument("--checkpoint-every", type=opt.seconds, default=60.0, metavar="SECONDS",
                   help="seconds between checkpoints during training, besides one at each evaluation (default 60; "
                   "0: after every step)")
    t.add_argument("--max-nonfinite", type=opt.positive_int, default=20, metavar="N",
                   help="updates in a row with a NaN or infinite loss or gradient (each skipped) that stop the run "
                   "(default 20)")
    t.add_argument("--dist-timeout", type=opt.seconds, default=distributed.DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="under torchrun: how long a process waits for the others before failing (default 600)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")


def _eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="ELBO, or log p(x) with --method, of a trained run (prints one JSON object)",
                       description="Without --method: the ELBO on both splits. With --method: log p(x) per "
                       "datapoint (nats, mean and standard error), the ELBO and bits/dim on one split.")
    e.add_argument("run", help="run folder")
    e.add_argument("--num-samples", type=int, default=1, help="L, samples per datapoint for the ELBO (default 1)")
    e.add_argument("--method", choices=sorted(METHODS), help="log p(x) estimator: is (importance sampling), hmc "
                   "(the paper's Appendix D), ais (annealed importance sampling), grid (exact, Nz <= 2)")
    e.add_argument("--k", type=opt.count, help="samples: importance samples (is, default 5000), posterior samples "
                   "(hmc, default 50), chains (ais, default 16; the same as --chains); ignored by grid")
    e.add_argument("--chains", type=int, metavar="C", help="with --method ais: weighted chains per datapoint "
                   "(default 16; --k sets the same, give one of them)")
    e.add_argument("--ais-steps", type=int, metavar="T", help="with --method ais: temperatures after beta = 0, "
                   "sigmoid-spaced (default 500; the cost is proportional to T)")
    e.add_argument("--ais-start", choices=tuple(STARTS), default=None,
                   help="with --method ais: where the annealing path starts: prior (z ~ p(z), any model) or encoder "
                   "(z ~ q(z|x), a far shorter path for a trained model, which reaches the same log p(x) in about a "
                   "tenth of the temperatures; not for a flow posterior) (default prior)")
    e.add_argument("--precision", choices=("float32", "bf16"), default="float32",
                   help="with --method ais or hmc: bf16 computes the gradients inside each leapfrog trajectory "
                   "under bfloat16 autocast (AIS 1.5-2x faster where the CPU or GPU multiplies bfloat16 "
                   "natively, refused elsewhere); the Metropolis tests and the weights stay float32, so the "
                   "chains stay exact (default float32)")
    e.add_argument("--compile", action="store_true",
                   help="with --method is: compute log p(x|z) through torch.compile (the same estimate; the first "
                   "compilation takes a few seconds; needs a C++ compiler; for the plain MLP VAE with a Bernoulli "
                   "decoder the default hand-written decoder is as fast)")
    e.add_argument("--split", choices=("test", "train"), default="test", help="split for --method (default test)")
    e.add_argument("--limit", type=opt.count, help="first N datapoints only (--limit 1000: the paper's protocol)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--data-dir", help=RUN_DATA_DIR_HELP)
    e.add_argument("--device", default="cpu")
    e.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar (is, ais, hmc; on stderr)")
    e.add_argument("--diagnostics", action="store_true",
                   help="posterior diagnostics on --split instead: active units, KL per dimension, mutual "
                   "information I(x; z), amortization gap")
    e.add_argument("--gap-points", type=int, default=500,
                   help="datapoints for the amortization gap (default 500; 0 skips it)")
    e.add_argument("--gap-steps", type=int, default=300, help="Adam steps per datapoint's q (default 300)")
    e.add_argument("--gap-is", type=int, default=1000, help="importance samples for log p(x) beside the gap "
                   "(default 1000; 0 skips it)")


def _sample_parser(sub) -> None:
    s = sub.add_parser("sample", help="decode random z ~ p(z) into a PNG grid (a run on a table: draws x ~ p(x|z) "
                       "in the columns' own units, as CSV)")
    s.add_argument("run", help="run folder")
    s.add_argument("--n", type=int, default=100, help="number of samples (default 100; at most 10000 in a picture)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="output path (default RUN/samples.png, or RUN/samples.csv for a table)")


def _reproduce_parser(sub) -> None:
    r = sub.add_parser("reproduce", help="run one of the paper's experiments (Figures 2-5) into a folder",
                       description="Train the paper's models for one figure and write its CSV and PNG, with the "
                                   "paper's read-off values drawn over the measured curves.")
    r.add_argument("figure", choices=FIGURES, help="fig2: AEVB vs wake-sleep ELBO; fig3: AEVB, wake-sleep and "
                   "MCEM log p(x); fig4: 2-D manifolds; fig5: samples for Nz = 2, 5, 10, 20")
    r.add_argument("--dataset", choices=("mnist", "frey"), default="mnist", help="fig2's data set (default mnist)")
    r.add_argument("--latent-dims", type=opt.sizes, help="comma-separated Nz values (fig2, fig5)")
    r.add_argument("--samples", type=opt.count, help="training datapoints per model (overrides --budget)")
    r.add_argument("--budget", type=float, default=0.1,
                   help="fraction of the paper's training length: 1e8 for fig2, 6e7 for fig3, 1e7 for fig4-5 "
                        "(default 0.1)")
    r.add_argument("--baseline-samples", type=opt.count,
                   help="training datapoints of wake-sleep and MCEM (fig2, fig3; default: AEVB's)")
    r.add_argument("--init", choices=("paper", "torch"), default="paper",
                   help="paper: N(0, 0.01^2) weights (default); torch: PyTorch's default initialization")
    r.add_argument("--jobs", type=int, default=1,
                   help="models trained at once, each in its own process (default 1); on a CPU use one per core")
    r.add_argument("--n-train", type=opt.sizes, help="fig3's training-set sizes (default 1000,50000)")
    r.add_argument("--data-dir", help="folder holding the data files")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--seeds", type=int, default=1,
                   help="fig2: train every model with this many seeds (--seed, --seed + 1, ...) and report their mean "
                        "and range (default 1)")
    r.add_argument("--threads", type=int, help="CPU threads for PyTorch (per job when --jobs > 1, default 1 then)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--out", required=True, help="folder for the CSV and PNG files")


def _plot_parser(sub) -> None:
    pl = sub.add_parser("plot", help="learning curves, reconstructions, samples, manifold or traversals and "
                        "interpolations, latent space, KL per dimension (PNGs)",
                        description="Write the run's pictures as PNGs: curves, reconstructions, samples, manifold "
                        "(Nz = 2) or traversals and interpolations (Nz > 2), latent, kl. A run on a table: curves, "
                        "columns (each column's histogram, data against model draws, in the columns' own units), "
                        "correlations, latent, kl.")
    pl.add_argument("run", help="run folder")
    pl.add_argument("--out", help="folder for the PNGs (default RUN/plots)")
    pl.add_argument("--data-dir", help=RUN_DATA_DIR_HELP)
    pl.add_argument("--seed", type=int, default=0)


def _report_parser(sub) -> None:
    r = sub.add_parser("report", help="one self-contained HTML page: config, metrics, curves, pictures and a live "
                       "latent explorer", description="Write a self-contained HTML report of a run (images and "
                       "the decoder's weights embedded; no server needed). A run on a table gets its pictures and no "
                       "explorer.")
    r.add_argument("run", help="run folder")
    r.add_argument("--out", help="HTML path (default RUN/report.html)")
    r.add_argument("--dims", type=_dims, help="two latent dimensions for the explorer, e.g. 3,7 (default: the two "
                   "most active)")
    r.add_argument("--points", type=int, default=1000, help="training encodings drawn in the explorer (default 1000)")
    r.add_argument("--include", action="append", default=[], metavar="JSON",
                   help="a JSON file to show as a table (e.g. the output of eval --diagnostics or restore); repeatable")
    r.add_argument("--no-explorer", action="store_true", help="leave out the latent explorer")
    r.add_argument("--data-dir", help=RUN_DATA_DIR_HELP)
    r.add_argument("--seed", type=int, default=0)


def _restore_parser(sub) -> None:
    rs = sub.add_parser("restore", help="denoise, inpaint or super-resolve images with the model as prior; PSNR "
                        "against naive baselines", description="Restore the test set's images (or --images) after "
                        "a corruption, with each method and each naive baseline; write comparison.png and "
                        "metrics.json (and restored.npz with --save-outputs).")
    rs.add_argument("run", help="run folder")
    rs.add_argument("--task", required=True, choices=TASKS)
    rs.add_argument("--images", nargs="+", metavar="FILE", help="PNG or .npy images instead of the test set")
    rs.add_argument("--observed", action="store_true", help="--images are already corrupted (noisy, with "
                    "missing pixels, or low-resolution): restore them as they are; no PSNR without the truth")
    rs.add_argument("--limit", type=opt.count, help="first N test images only (default: the whole test set)")
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
    rs.add_argument("--data-dir", help=RUN_DATA_DIR_HELP)
    rs.add_argument("--device", default="cpu")


def _dims(text: str) -> tuple[int, int]:
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two latent dimensions such as 0,1, got {text!r}") from None
    if len(dims) != 2:
        raise argparse.ArgumentTypeError(f"expected two latent dimensions such as 0,1, got {text!r}")
    return dims


def build_parser() -> argparse.ArgumentParser:
    """The `aevb` parser with its subcommands."""
    p = Parser(prog="aevb", description="Auto-Encoding Variational Bayes (Kingma & Welling, 2013).")
    p.add_argument("--version", action="version", version=f"aevb {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_train_parser, _sweep_parser, _eval_parser, _sample_parser, _reproduce_parser, _plot_parser,
                _report_parser, _restore_parser):
        add(sub)
    return p
