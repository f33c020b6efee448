"""`aevb train`: a new run from a preset and flags, or `--resume` of a run folder."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .. import distributed, models, runs
from ..estimators import resolve_estimator
from ..inspect.plots import manifold_grid, sample_grid, save_image
from ..load import model_config, train_config
from ..train import TrainConfig, check_data, fit
from ..train.presets import merge
from ..version import __version__
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


def _train_new(args, device, world) -> int:
    settings = _settings(args, world)
    ds = load_data(settings["data"], args.data_dir)
    model_cfg = models.ModelConfig(x_dim=ds.x_dim, **settings["model"])
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
    ds = load_data(config["data"], args.data_dir or config["data"].get("data_dir"))
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
    except torch._dynamo.exc.TorchDynamoException as e:  # only --compile reaches torch.compile
        if not resume and world.main:
            runs.remove_unstarted(out)  # a run that never took a step cannot be resumed without --compile
        raise compile_failed(e) from None
    if not world.main:
        return 0
    shape = tuple(config["data"]["image_shape"])
    save_image(out / "samples.png", sample_grid(model, shape))
    if model.config.latent_dim == 2:
        save_image(out / "manifold.png", manifold_grid(model, shape))
    last = history[-1]
    print(json.dumps({k: last[k] for k in ("samples_seen", "epoch", "train_elbo", "test_elbo", "seconds")}))
    return 0
