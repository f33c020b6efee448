"""`aevb eval` (the ELBO, log p(x) by a chosen estimator, or posterior diagnostics) and `aevb sample`."""
from __future__ import annotations

import inspect
import json
import math
import time
from pathlib import Path

import torch

from .. import runs
from ..data import binarize_static
from ..estimators import evaluate, resolve_estimator
from ..inspect.diagnostics import diagnose
from ..inspect.plots import sample_grid, save_image
from ..inspect.tables import column_names, source_units
from ..load import load_run
from ..marginal import ais, log_likelihood
from ..marginal.hmc import check_precision
from ..train import EVAL_BINARIZATION_SEEDS
from .common import UsageError, check_positive, compile_failed, device as get_device, run_and_data


K_NAMES = {"is": "num_samples", "hmc": "num_samples", "ais": "num_chains"}
MAX_PICTURE_SAMPLES = 10_000  # `aevb sample`'s PNG grid: 100 x 100 images
AIS_DEFAULTS = {p.name: p.default for p in inspect.signature(ais).parameters.values()}


def _split(args, config, ds, device):
    """The datapoints --split and --limit choose, with the trainer's fixed binarization where the run binarized."""
    x = ds.test if args.split == "test" else ds.train
    if config["train"].get("binarize", "none") != "none":
        x = binarize_static(x, seed=EVAL_BINARIZATION_SEEDS[args.split])
    return x[: args.limit].to(device) if args.limit else x.to(device)


def _eval_marginal(args, model, config, ds, device) -> dict:
    """log p(x) on one split by the chosen estimator, with the ELBO and bits/dim of the same datapoints."""
    x = _split(args, config, ds, device)
    binarize = config["train"].get("binarize", "none")
    kw = _method_options(args)
    start = time.perf_counter()
    try:
        r = log_likelihood(model, x, args.method, **kw)
    except torch._dynamo.exc.TorchDynamoException as e:  # only --compile reaches torch.compile
        raise compile_failed(e) from None
    seconds = time.perf_counter() - start
    torch.manual_seed(args.seed)
    elbo = evaluate(model, x, estimator=resolve_estimator("auto", model), num_samples=args.num_samples)
    k = kw.get(K_NAMES.get(args.method, ""), None)
    ais_settings = {}
    if args.method == "ais":
        ais_settings = {"chains": k or AIS_DEFAULTS["num_chains"],
                        "ais_steps": kw.get("num_steps", AIS_DEFAULTS["num_steps"]),
                        "ais_start": kw.get("start", AIS_DEFAULTS["start"])}
    if "precision" in kw:
        ais_settings["precision"] = kw["precision"]
    return {"run": str(args.run), "method": args.method, "k": k, **ais_settings, "split": args.split,
            "n": int(x.shape[0]),
            "log_likelihood": r["mean"], "stderr": r["stderr"], "nll": -r["mean"], "elbo": elbo["elbo"],
            "bits_per_dim": -r["mean"] / (x.shape[1] * math.log(2)),
            "binarization": f"static, seed {EVAL_BINARIZATION_SEEDS[args.split]}" if binarize != "none" else "none",
            "seconds": round(seconds, 3),
            **{key: v for key, v in r.items() if key not in ("log_px", "mean", "stderr") and not torch.is_tensor(v)}}


def _method_options(args) -> dict:
    """The keyword arguments of the chosen log p(x) estimator from --k, --chains, --ais-steps, --ais-start,
    --compile, --precision, --seed and --no-progress."""
    if args.method == "grid":
        return {}
    kw = {"seed": args.seed, "progress": not args.no_progress}
    if args.k is not None and args.method in K_NAMES:
        kw[K_NAMES[args.method]] = args.k
    if args.method == "ais":
        kw.update({"num_chains": args.chains} if args.chains is not None else {},
                  **({"num_steps": args.ais_steps} if args.ais_steps is not None else {}),
                  **({"start": args.ais_start} if args.ais_start is not None else {}))
    if args.method == "is":
        kw["compile"] = args.compile
    if args.method in ("ais", "hmc"):
        kw["precision"] = args.precision
    return kw


def _check_method_flags(args) -> None:
    check_positive(chains=args.chains, ais_steps=args.ais_steps, threads=args.threads)
    for flag, value in (("--chains", args.chains), ("--ais-steps", args.ais_steps), ("--ais-start", args.ais_start)):
        if value is not None and args.method != "ais":
            raise UsageError(f"{flag} applies to --method ais")
    if args.chains is not None and args.k is not None:
        raise UsageError("--k and --chains both set the chains of --method ais; give one of them")
    if args.compile and args.method != "is":
        raise UsageError("--compile applies to --method is")
    if args.precision != "float32" and args.method not in ("ais", "hmc"):
        raise UsageError(f"--precision {args.precision} applies to --method ais and hmc (the gradients of their "
                         "HMC trajectories)")


def _eval_diagnostics(args, model, config, ds, device) -> dict:
    for flag, v in (("--gap-points", args.gap_points), ("--gap-is", args.gap_is)):
        if v < 0:
            raise UsageError(f"{flag} must be >= 0, got {v}")
    check_positive(gap_steps=args.gap_steps)
    x = _split(args, config, ds, device)
    start = time.perf_counter()
    result = diagnose(model, x, gap_points=args.gap_points, gap_steps=args.gap_steps, gap_is_samples=args.gap_is,
                      seed=args.seed)
    return {"run": str(args.run), "split": args.split, **result, "seconds": round(time.perf_counter() - start, 3)}


def cmd_eval(args) -> int:
    check_positive(num_samples=args.num_samples)
    if args.diagnostics and args.method:
        raise UsageError("--diagnostics and --method are separate evaluations; give one of them")
    _check_method_flags(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    check_precision(args.precision, device)
    model, config, ds = run_and_data(args.run, args.data_dir, device)
    if args.diagnostics:
        print(json.dumps(_eval_diagnostics(args, model, config, ds, device)))
        return 0
    if args.method:
        print(json.dumps(_eval_marginal(args, model, config, ds, device)))
        return 0
    binarize = config["train"].get("binarize", "none")
    start = time.perf_counter()
    estimator = resolve_estimator("auto", model)
    result = {"run": str(args.run), "num_samples": args.num_samples, "estimator": estimator}
    for split, x in (("train", ds.train), ("test", ds.test)):
        if binarize != "none":
            x = binarize_static(x, seed=EVAL_BINARIZATION_SEEDS[split])  # the same fixed draw the trainer logged
        torch.manual_seed(0)
        r = evaluate(model, x.to(device), estimator=estimator, num_samples=args.num_samples)
        result.update({f"{split}_elbo": r["elbo"], f"{split}_rec": r["rec"], f"{split}_kl": r["kl"],
                       f"{split}_bpd": -r["elbo"] / (x.shape[1] * math.log(2)), f"n_{split}": r["n"]})
    result["binarize"] = binarize
    result["seconds"] = round(time.perf_counter() - start, 3)
    print(json.dumps(result))
    return 0


def cmd_sample(args) -> int:
    from .inspecting import require_images

    check_positive(n=args.n)
    model, config = load_run(args.run)
    scaler = (config["data"].get("source") or {}).get("scaler")
    if scaler is not None:  # a table: draws x ~ p(x|z) in the original units, as CSV
        out = Path(args.out or Path(args.run) / "samples.csv")
        _write_table(out, model, config, args.n, args.seed)
        print(out)
        return 0
    shape = require_images(config, args.run)  # grey or RGB; a run on tabular data has none
    if args.n > MAX_PICTURE_SAMPLES:
        raise UsageError(f"--n {args.n}: a picture holds at most {MAX_PICTURE_SAMPLES:,} samples (for more, draw "
                         "them in Python: aevb.load_run(RUN)[0].sample(n))")
    out = Path(args.out or Path(args.run) / "samples.png")
    save_image(out, sample_grid(model, shape, n=args.n, seed=args.seed))
    print(out)
    return 0


def _write_table(out: Path, model, config: dict, n: int, seed: int, chunk: int = 10_000) -> None:
    """n draws x ~ p(x|z), z ~ p(z) of a run on a table, in the columns' own units (`tables.source_units`), as CSV
    with the column names; drawn and written `chunk` rows at a time, so memory stays bounded for any n."""
    def lines():
        yield ",".join(column_names(config, config["data"]["x_dim"]))
        torch.manual_seed(seed)
        for start in range(0, n, chunk):
            with torch.no_grad():
                x = source_units(model.sample(min(chunk, n - start), mean=False), config)
            yield from (",".join(f"{v:.9g}" for v in row) for row in x.tolist())

    runs.write_lines(out, lines())
