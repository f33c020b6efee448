"""`aevb train`: a new run from a preset and flags, or `--resume` of a run folder."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from .. import distributed, models, runs
from ..estimators import resolve_estimator
from ..inspect.plots import manifold_grid, sample_grid, save_image
from ..load import model_config, train_config
from ..train import DataOptions, TrainConfig, check_data, fit
from ..train.fit import run_config
from ..train.fused import resolve_step, uncovered
from ..train.presets import merge
from .common import UsageError, check_positive, check_tensorboard, compile_failed, device as get_device, load_data
from .parser import given_options, run_flags


def cmd_train(args) -> int:
    check_positive(threads=args.threads)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    world, device = distributed.setup(device, args.dist_timeout)
    try:
        if args.resume:
            return _resume(args, device, world)
        return _train_new(args, device, world)
    finally:
        distributed.shutdown()


def _settings(args, world) -> dict:
    """The run's settings (flags over the preset or aevb's defaults), checked before any data is read."""
    settings = merge(args.preset, given_options(args))
    if settings["train"].get("shards") is None:
        settings["train"]["shards"] = world.size
    TrainConfig(**settings["train"])  # fail on bad options before reading data
    if settings["train"].get("tensorboard"):
        check_tensorboard()
    return settings


def _data_settings(settings: dict, given: dict, args) -> None:
    """--data replaces --dataset (both given is an error); a table is modelled with a Gaussian by default."""
    data = settings["data"]
    if data.get("data"):
        if "dataset" in given.get("data", {}) or "split" in given.get("data", {}):
            raise UsageError("give either --dataset (a built-in data set) or --data PATH (your own), not both")
        data["data"] = str(Path(data["data"]).expanduser().resolve())
        if data.get("test_data"):
            data["test_data"] = str(Path(data["test_data"]).expanduser().resolve())
        data["dataset"] = None
    else:
        extra = [f"--{k.replace('_', '-')}" for k in ("test_data", "test_fraction", "image_size", "channels",
                                                     "skip_bad") if k in given.get("data", {})]
        if extra:
            raise UsageError(f"{', '.join(extra)} only apply to your own data: add --data PATH")


def _data_record(settings: dict, ds, args) -> dict:
    """The data section of config.json: the settings, where the files were found, and the facts of the data."""
    data = {**{f.name: f.default for f in dataclasses.fields(DataOptions)}, **settings["data"]}
    if not data.get("data"):  # a built-in data set: the --data options do not apply
        data = {k: data[k] for k in ("dataset", "split")}
    if ds.source is not None:
        data["source"] = ds.source
        if ds.decode is not None and not ds.decode["cached"]:
            d = ds.decode
            print(f"aevb: decoded {d['files']:,} images in {d['seconds']:.1f} s ({d['ignored']} other files "
                  f"ignored, {d['skipped']} bad images skipped); the pixels are cached for the next run")
    return {**data, "data_dir": str(Path(args.data_dir).resolve()) if args.data_dir else None, "x_dim": ds.x_dim,
            "image_shape": list(ds.image_shape) if ds.image_shape else None, "n_train": int(ds.train.shape[0]),
            "n_test": int(ds.test.shape[0])}


def _model_config(settings: dict, given: dict, ds, args):
    model = dict(settings["model"])
    if ds.source is not None and ds.source["kind"] == "table" and not args.preset \
            and "likelihood" not in given.get("model", {}):
        model["likelihood"] = "gaussian"  # standardized columns
    return models.ModelConfig(x_dim=ds.x_dim, image_shape=ds.image_shape, **model)


def _check_table_likelihood(ds, likelihood: str) -> None:
    """A table's columns are standardized, which only a likelihood on the whole real line can model: say so
    rather than report standardized values outside [0, 1] that the user never wrote."""
    if (ds.source or {}).get("kind") == "table" and likelihood != "gaussian":
        raise UsageError(f"--likelihood {likelihood} cannot model a table: aevb standardizes its columns (mean 0, "
                         "standard deviation 1), so the values span the real line; use --likelihood gaussian")


def _train_new(args, device, world) -> int:
    settings = _settings(args, world)
    given = given_options(args)
    _data_settings(settings, given, args)
    ds = load_data(settings["data"], args.data_dir, progress=not args.no_progress)
    model_cfg = _model_config(settings, given, ds, args)
    _check_table_likelihood(ds, model_cfg.likelihood)
    check_data(ds.train, ds.test, model_cfg.likelihood, model_cfg.x_dim)
    torch.manual_seed(settings["train"].get("seed", 0))
    model = models.build(model_cfg).to(device)
    asked = settings["train"]["estimator"]
    settings["train"]["estimator"] = resolve_estimator(asked, model)
    if asked == "auto" and world.main:
        print(f"aevb: estimator auto -> {settings['train']['estimator']} for posterior {model_cfg.posterior} "
              f"and prior {model_cfg.prior}")
    train_cfg = TrainConfig(**settings["train"])
    if train_cfg.shards % world.size:
        raise UsageError(f"--shards {train_cfg.shards} is not a multiple of the {world.size} processes")
    train_cfg = _resolve_step(train_cfg, model, world)
    out = Path(args.out or f"runs/{ds.name}-nz{model_cfg.latent_dim}")
    config = run_config(model_cfg, train_cfg, _data_record(settings, ds, args) if world.main else {},
                        device=device, world_size=world.size, preset=args.preset)

    def create():
        runs.prepare_run_dir(out)
        runs.write_json(out / runs.CONFIG, config)
        if ds.test_indices is not None:
            runs.write_tensors(out / runs.SPLIT, {"test_indices": torch.from_numpy(ds.test_indices)})

    distributed.run_on_main(create, world, (runs.RunError,))
    if world.main:
        procs = f" on {world.size} processes" if world.size > 1 else ""
        print(f"aevb: training {ds.name} ({ds.train.shape[0]} train / {ds.test.shape[0]} test), "
              f"Nz={model_cfg.latent_dim}, {train_cfg.total_samples(ds.train.shape[0]):,} datapoints{procs} -> {out}")
    return _fit_and_finish(model, ds, train_cfg, config, out, device, args, world, resume=False)


def _resolve_step(train_cfg, model, world):
    """The config with `step` resolved to the path the run takes (recorded in config.json), said once for auto;
    a ValueError for --step fused where it does not cover the model or options."""
    step = resolve_step(train_cfg, model, world.size)
    if train_cfg.step == "auto" and world.main:
        why = uncovered(model, train_cfg, world.size)
        print(f"aevb: step auto -> {step}" + (f" (the fused step does not cover {why})" if why else ""))
    return dataclasses.replace(train_cfg, step=step)


def _resume(args, device, world) -> int:
    given = [f"--{f.replace('_', '-')}" for f in run_flags() if getattr(args, f, None) not in (None, False)]
    if given:
        raise UsageError(f"--resume continues a run with its own settings; leave out {', '.join(given)}")
    run = Path(args.resume)
    data = distributed.share_from_main(lambda: runs.read_file(run / runs.CONFIG), world, (runs.RunError,))
    config = runs.parse_config(data, run)
    train_cfg = train_config(config, run)
    model_cfg = model_config(config, run)
    if train_cfg.shards % world.size:
        raise UsageError(f"{run} was trained with {train_cfg.shards} shards, which {world.size} processes cannot "
                         "share; use a number of processes that divides it")
    ds = load_data(config["data"], args.data_dir or config["data"].get("data_dir"), run, progress=not args.no_progress)
    check_data(ds.train, ds.test, model_cfg.likelihood, model_cfg.x_dim)
    if train_cfg.tensorboard:
        check_tensorboard()
    torch.manual_seed(train_cfg.seed)
    model = models.build(model_cfg).to(device)
    return _fit_and_finish(model, ds, train_cfg, config, run, device, args, world, resume=True)


def _fit_and_finish(model, ds, train_cfg, config, out, device, args, world, *, resume) -> int:
    try:
        history = fit(model, ds.train.to(device), ds.test.to(device), train_cfg, out, progress=not args.no_progress,
                      resume=resume, checkpoint_every=args.checkpoint_every, max_nonfinite=args.max_nonfinite)
    except BaseException as e:
        if not resume and world.main:
            runs.remove_unstarted(out)  # a run refused before its first checkpoint leaves no folder behind
        if isinstance(e, torch._dynamo.exc.TorchDynamoException):  # only --compile reaches torch.compile
            raise compile_failed(e) from None
        raise
    if not world.main:
        return 0
    if config["data"].get("image_shape"):
        shape = tuple(config["data"]["image_shape"])
        save_image(out / "samples.png", sample_grid(model, shape))
        if model.config.latent_dim == 2:
            save_image(out / "manifold.png", manifold_grid(model, shape))
    last = history[-1]
    print(json.dumps({k: last[k] for k in ("samples_seen", "epoch", "train_elbo", "test_elbo", "seconds")}))
    return 0
