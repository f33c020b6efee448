"""`aevb plot`, `aevb report` and `aevb restore`: pictures, the HTML report and restoration of a trained run
(grey or RGB images; a run on a table gets the table's pictures, and restoration, which needs images, refuses it)."""
from __future__ import annotations

import json
from pathlib import Path

from .. import runs
from ..inspect.plots import check_image, png_bytes, write_figures
from ..inspect.report import write_report
from ..inspect.tables import run_pictures
from ..inspect.restore import (MASKS, comparison_figure, low_shape, make_mask, read_images, run_task, spread_mask,
                               summarize)
from .common import UsageError, check_positive, device as get_device, run_and_data


def require_images(config: dict, run) -> tuple[int, ...]:
    """The run's image shape ([H, W] or [C, H, W]); a UsageError when its data have no images (tabular)."""
    try:
        return check_image(config.get("data", {}).get("image_shape"))
    except ValueError as e:
        raise UsageError(f"{run}: {e}") from None


def cmd_plot(args) -> int:
    model, config, ds = run_and_data(args.run, args.data_dir)
    if config.get("data", {}).get("image_shape") is not None:
        require_images(config, args.run)  # a shape aevb cannot draw, named with the run
    figures, scale = run_pictures(model, config, ds, runs.read_metrics(args.run), seed=args.seed)
    for path in write_figures(figures, Path(args.out or Path(args.run) / "plots"), scale):
        print(path)
    return 0


def cmd_report(args) -> int:
    check_positive(points=args.points)
    include = {Path(f).name: runs.read_json(f) for f in args.include}
    for name, data in include.items():
        if not isinstance(data, dict):
            raise UsageError(f"--include {name}: expected a JSON object")
    out = Path(args.out or Path(args.run) / "report.html")
    _, config, ds = run_and_data(args.run, args.data_dir)
    if config.get("data", {}).get("image_shape") is not None:
        require_images(config, args.run)  # a shape aevb cannot draw
    write_report(args.run, out, ds, dims=args.dims, points=args.points, include=include,
                 explorer=not args.no_explorer, seed=args.seed)
    print(out)
    return 0


def cmd_restore(args) -> int:
    check_positive(steps=args.steps, opt_steps=args.opt_steps, samples=args.samples, show=args.show)
    if args.observed and not args.images:
        raise UsageError("--observed needs --images")
    model, config, ds = run_and_data(args.run, args.data_dir, get_device(args.device))
    shape = require_images(config, args.run)
    x, source = _restore_inputs(args, shape, ds, config)
    missing = _inpaint_mask(args, x, shape) if args.task == "inpaint" else None
    kw = {"observed": x} if args.observed else {"truth": x}
    result = run_task(model, args.task, shape, missing=missing, pixel_mean=ds.train.mean(0), noise=args.noise,
                      factor=args.factor, steps=args.steps, opt_steps=args.opt_steps, samples=args.samples,
                      seed=args.seed, **kw)
    summary = {"run": str(args.run), "source": source, **summarize(result)}
    if args.task == "inpaint":
        summary["settings"]["mask"] = args.mask
    out = _write_restoration(args, result, summary, shape)
    print(json.dumps({k: summary[k] for k in ("task", "n", "best", "best_baseline", "gain_db", "beats_baseline")
                      if k in summary}))
    print(out)
    return 0


def _restore_inputs(args, shape, ds, config):
    """The images to restore (--images, or the test set) and a description of where they came from."""
    if not args.images:
        x = ds.test[: args.limit] if args.limit else ds.test
        return x, f"{config['data']['dataset']} test set" + (f", first {x.shape[0]}" if args.limit else "")
    in_shape = shape
    if args.observed and args.task == "superres":
        try:
            in_shape = low_shape(shape, args.factor)
        except ValueError as e:
            raise UsageError(str(e)) from None
    return read_images(args.images, in_shape), [str(p) for p in args.images]


def _inpaint_mask(args, x, shape):
    """The missing values (N, D) of --mask: a named pattern, or a PNG/.npy mask file of H x W pixels (a pixel
    it marks is missing in every channel)."""
    if args.mask in MASKS:
        return make_mask(args.mask, x.shape[0], shape, fraction=args.missing, seed=args.seed)
    m = spread_mask(read_images([args.mask], shape[-2:]) > 0, shape)
    if m.shape[0] not in (1, x.shape[0]):
        raise UsageError(f"--mask {args.mask}: {m.shape[0]} masks for {x.shape[0]} images")
    missing = m.expand(x.shape[0], -1).clone()
    if not missing.any(1).all():
        raise UsageError(f"--mask {args.mask}: a mask with no missing pixel")
    return missing


def _write_restoration(args, result, summary, shape) -> Path:
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
    return out
