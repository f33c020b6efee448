"""One self-contained HTML page for a trained run: config, metrics, learning curves, pictures and a live latent
explorer whose decoder runs in the page (weights embedded as base64 float32, no server, no external resources).

Grey and RGB images alike ([H, W] or [C, H, W], see plots.py); where the config has `data.class_names`, the
latent space's legends name the classes. A run on a table gets the table's pictures (tables.py) and no explorer.
"""
from __future__ import annotations

import base64
import html
import json
import math
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.distributions import MixtureSameFamily

from .. import runs
from ..likelihoods import BernoulliHead, CategoricalHead, GaussianHead
from ..load import load_run
from ..version import __version__
from .diagnostics import ACTIVE_THRESHOLD, active_units, kl_per_dim, posterior_means
from .layers import LAYER_SAMPLES, decoder_latent_dim, is_layered, layer_diagnostics
from .plots import LABEL_COLORS, check_image, class_names, label_name, png_bytes, top_dims
from .tables import run_pictures

# What the in-page decoder implements: nets.ACTIVATIONS's modules (and sigmoid) and every likelihood's mean.
JS_ACTIVATIONS = {nn.Tanh: "tanh", nn.ReLU: "relu", nn.ELU: "elu", nn.GELU: "gelu", nn.SiLU: "silu",
                  nn.Softplus: "softplus", nn.Sigmoid: "sigmoid"}
JS_HEADS = {"bernoulli": "sigmoid", "gaussian": "identity", "gaussian-sigmoid": "sigmoid",
            "continuous-bernoulli": "continuous-bernoulli", "categorical": "categorical"}
CB_LIMS = (0.499, 0.501)  # torch's ContinuousBernoulli unstable region, where its mean uses a Taylor expansion


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(np.ascontiguousarray(t.detach().cpu().numpy(), dtype="<f4").tobytes()).decode("ascii")


def _activation_spec(module: nn.Module) -> dict:
    name = JS_ACTIVATIONS.get(type(module))
    if name is None:
        raise ValueError(f"the explorer's decoder does not support the activation {type(module).__name__}; "
                         f"supported: {', '.join(sorted(set(JS_ACTIVATIONS.values())))}")
    spec = {"name": name}
    if name == "elu":
        spec["alpha"] = float(module.alpha)
    if name == "gelu":
        spec["approximate"] = module.approximate
    if name == "softplus":
        spec.update(beta=float(module.beta), threshold=float(module.threshold))
    return spec


def decoder_spec(model) -> dict:
    """The decoder as data for explorer.js: layers (weights (out, in) row-major, base64 float32), the activation,
    and the output head that gives p(x|z)'s mean.

    Raises:
        ValueError: an architecture (only the MLP), activation, likelihood or layer layout the in-page decoder does
            not implement.
    """
    cfg = model.config
    arch = getattr(cfg, "arch", "mlp")
    if arch != "mlp" or getattr(getattr(model, "dec_head", None), "out", None) is None:
        what = f"the {arch!r} architecture" if arch != "mlp" else "a decoder without an output layer"
        raise ValueError(f"the explorer's decoder runs MLP decoders only, not {what}; leave the explorer out with "
                         "--no-explorer")
    if cfg.likelihood not in JS_HEADS:
        raise ValueError(f"the explorer's decoder does not support the likelihood {cfg.likelihood!r}; "
                         f"supported: {', '.join(JS_HEADS)}")
    layers, acts = [], []
    for module in model.decoder:
        if isinstance(module, nn.Linear):
            layers.append({"W": _b64(module.weight), "b": _b64(module.bias), "n_in": module.in_features,
                           "n_out": module.out_features})
        else:
            acts.append(_activation_spec(module))
    if len(acts) != len(layers) or any(a != acts[0] for a in acts):
        raise ValueError("the explorer's decoder needs Linear layers each followed by the same activation")
    head = model.dec_head
    out = head.out
    x_dim = cfg.x_dim
    if isinstance(head, GaussianHead):
        w, b = out.weight[:x_dim], out.bias[:x_dim]  # the mean half of [mean, log-variance]
    elif isinstance(head, (BernoulliHead, CategoricalHead)):
        w, b = out.weight, out.bias
    else:
        raise ValueError(f"the explorer's decoder does not support the output head {type(head).__name__}")
    eps = float(torch.finfo(out.weight.dtype).eps)
    return {
        "latent_dim": decoder_latent_dim(model), "x_dim": x_dim, "layers": layers,
        "activation": acts[0] if acts else {"name": "tanh"},  # unused without hidden layers
        "head": {"kind": JS_HEADS[cfg.likelihood], "W": _b64(w), "b": _b64(b), "n_in": out.in_features,
                 "n_out": w.shape[0], "levels": cfg.levels, "eps": eps, "lims": list(CB_LIMS)},
    }


def explorer_data(model, x_train: torch.Tensor, labels: torch.Tensor | None, image_shape, dims=None,
                  names: list[str] | None = None) -> dict:
    """Everything the explorer needs: decoder_spec plus the image shape ([H, W] or [C, H, W]), the posterior means
    of `x_train` (drawn on the plane), their labels and the class names (`names`, or None), the plane's extent per
    dimension and the two dimensions shown first (`dims`, default the two whose posterior means vary most).
    For a hierarchical VAE the explorer's z is z_1, the decoder's input (`decoder_latent_dim`)."""
    spec = decoder_spec(model)
    dz = decoder_latent_dim(model)
    if dz < 2:
        raise ValueError("the latent explorer needs at least 2 latent dimensions")
    means = posterior_means(model, x_train).cpu()[:, :dz]
    var, _ = active_units(means) if means.shape[0] > 1 else (torch.ones(dz), None)
    if dims is None:
        dims = [0, 1] if dz == 2 else top_dims(var.numpy(), 2)
    dims = [int(d) for d in dims]
    if len(dims) != 2 or dims[0] == dims[1] or not all(0 <= d < dz for d in dims):
        raise ValueError(f"--dims needs two different latent dimensions in 0..{dz - 1}, got {dims}")
    q = torch.quantile(means.abs().double(), 0.995, dim=0) if means.shape[0] else torch.zeros(dz)
    extent = [max(3.0, math.ceil(float(v) * 2) / 2) for v in q]
    spec.update({
        "image_shape": list(check_image(image_shape)), "dims": dims, "extent": extent, "points": _b64(means),
        "labels": [int(v) for v in labels] if labels is not None else None, "colors": list(LABEL_COLORS),
        "class_names": list(names) if names else None,
    })
    return spec


def _flatten(obj, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(obj, dict):
        rows = []
        for k, v in obj.items():
            rows += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return rows
    return [(prefix, obj)]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    if isinstance(v, (list, tuple)):
        items = [_fmt(x) for x in v[:24]]
        return ", ".join(items) + (f", ... ({len(v)} values)" if len(v) > 24 else "")
    if v is None:
        return "-"
    return str(v)


def _table(rows, headers=("key", "value")) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(data: bytes, alt: str, cls: str = "") -> str:
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<img src="{src}" alt="{html.escape(alt)}" class="{cls}">'


CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1em 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
figure { margin: 1em 0; } figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; } img.grid { image-rendering: pixelated; }
.cols { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
#explorer-plane { border: 1px solid #999; cursor: crosshair; touch-action: none; }
#explorer-image { border: 1px solid #999; image-rendering: pixelated; }
.legend { list-style: none; padding: 0; margin: 0.3em 0; font-size: 0.85em; display: flex; flex-wrap: wrap;
  gap: 0.2em 1em; max-width: 360px; }
.legend span { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.3em; }
.small { font-size: 0.85em; color: #555; }
"""


def _preset_name(preset) -> str:
    """'preset NAME', or what a run without one was trained with."""
    return f"preset {preset}" if preset else "aevb's defaults and flags (no preset)"


def _data_name(data: dict) -> str:
    """The built-in data set's name, or the path of your own data (`--data`)."""
    return str(data.get("dataset") or data.get("data") or "?")


def build_report(run_dir, ds, *, dims=None, points: int = 1000, include: dict[str, dict] | None = None,
                 explorer: bool = True, seed: int = 0) -> str:
    """The report's HTML for the run in `run_dir` with its data set `ds` (see module docstring).

    A run on data without images (`data.image_shape` null: a table) gets the pictures of `tables.table_figures`
    and no explorer. A decoder the explorer cannot run (a conv decoder, a likelihood without an in-page head) leaves
    the explorer out with a note saying why.

    Raises:
        ValueError: an `image_shape` that is not a picture aevb can draw.
    """
    model, config = load_run(run_dir)
    metrics = runs.read_metrics(run_dir)
    figures, scale = run_pictures(model, config, ds, metrics, seed=seed)
    shape = config["data"].get("image_shape")
    x_test = ds.test
    summary, layer_table = _latent_summary(model, x_test, seed, "test images" if shape else "test rows")
    parts = [f"<h1>aevb run: {html.escape(str(run_dir))}</h1>",
             f"<p class='small'>{html.escape(_data_name(config.get('data', {})))}, "
             f"{html.escape(_preset_name(config.get('preset')))}, created {html.escape(str(config.get('created')))}; "
             f"report by aevb {__version__} at {time.strftime('%Y-%m-%d %H:%M:%S')}.</p>"]
    parts.append("<h2>Metrics</h2>")
    if metrics:
        last = metrics[-1]
        keys = [k for k in ("samples_seen", "epoch", "step", "train_elbo", "test_elbo", "train_rec", "train_kl",
                            "test_rec", "test_kl", "test_elbo_raw", "train_bpd", "test_bpd", "lr", "seconds")
                if k in last]
        parts.append("<p>Last evaluation (nats per datapoint):</p>" + _table([(k, last[k]) for k in keys]))
        hist_keys = ["samples_seen", "train_elbo", "test_elbo"]
        parts.append("<details><summary>Every evaluation</summary>" +
                     _table([[r[k] for k in hist_keys] for r in metrics], headers=hist_keys) + "</details>")
    parts.append(_table(summary))
    if layer_table:
        parts.append("<h3>Stochastic layers</h3>" + layer_table)
    for name, data in (include or {}).items():
        parts.append(f"<h3>{html.escape(name)}</h3>" + _table(_flatten(data)))
    parts.append("<h2>Pictures</h2>")
    for name, (caption, pic) in figures.items():
        cls = "grid" if isinstance(pic, np.ndarray) else ""
        parts.append(f"<figure id='fig-{name}'>{_img(png_bytes(pic, scale), name, cls)}"
                     f"<figcaption><b>{html.escape(name)}</b>: {html.escape(caption)}</figcaption></figure>")
    if explorer and shape is None:
        parts.append("<h2>Latent explorer</h2><p class='small'>Not available for this run: it draws the decoder's "
                     "images, and these data are not images.</p>")
    elif explorer:
        try:
            decoder_spec(model)
        except ValueError as e:  # a decoder the page cannot run (conv, new likelihoods): the rest of the report
            parts.append(f"<h2>Latent explorer</h2><p class='small'>Not available for this run: "
                         f"{html.escape(str(e))}.</p>")
        else:
            parts.append(_explorer_html(model, ds, shape, dims, points, class_names(config, ds)))
    parts.append("<h2>Config</h2>" + _table(_flatten(config)))
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><link rel='icon' href='data:,'>"
            f"<title>aevb report: {html.escape(str(run_dir))}</title><style>{CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


LAYER_HEADERS = ("layer", "q", "p", "latent dimensions", "active units", "KL (nats)", "KL of the active units",
                 "KL per dimension (nats)")


def _latent_summary(model, x_test: torch.Tensor, seed: int = 0,
                    noun: str = "test images") -> tuple[list[tuple[str, object]], str]:
    """The report's rows on the latent space (the number of test datapoints, named `noun`, latent dimensions,
    active units, KL) and, for a hierarchical VAE, the HTML table of its stochastic layers
    (`layers.layer_diagnostics`); else ''."""
    summary: list[tuple[str, object]] = [(noun, x_test.shape[0])]
    active_label = "active units (Cov_x E[z_j|x] > %g)" % ACTIVE_THRESHOLD
    prior = model.prior()
    if is_layered(prior):
        rows = layer_diagnostics(model, x_test, seed=seed)
        summary += [("latent dimensions", f"{sum(r['latent_dim'] for r in rows)} in {len(rows)} stochastic layers"),
                    (active_label + ", all layers", sum(r["active_units"] for r in rows)),
                    ("KL(q(z|x) || p(z)), test mean (nats), the layers' sum", sum(r["kl"] for r in rows))]
        table = [(r["layer"], r["q"], r["p"], r["latent_dim"], r["active_units"], r["kl"], r["kl_active"],
                  r["kl_per_dim"] if r["kl_per_dim"] is not None else "not defined: " + r["kl_per_dim_unavailable"])
                 for r in rows]
        note = (f"<p class='small'>Per layer, on the test set: E_q[z_l|x] from {LAYER_SAMPLES} ancestral draws "
                "of q per image; KL = E_x E_q[log q(z_l|...) - log p(z_l|z_(l+1))] by Monte Carlo on the same "
                "draws (the layers' KLs add up to the total).</p>")
        return summary, _table(table, headers=LAYER_HEADERS) + note
    var, active = active_units(posterior_means(model, x_test))
    summary += [("latent dimensions", model.config.latent_dim), (active_label, int(active.sum()))]
    try:
        kl = kl_per_dim(model, x_test)
    except ValueError:  # a flow posterior: no per-dimension KL
        return summary, ""
    if isinstance(prior, MixtureSameFamily):
        summary.append(("sum over j of KL(q(z_j|x) || p(z_j)) against the prior's marginals, test mean (nats; not "
                        "the ELBO's KL, the prior does not factorize)", float(kl.sum())))
    else:
        summary.append(("KL(q(z|x) || p(z)), test mean (nats)", float(kl.sum())))
    return summary, ""


def _legend_html(labels, names) -> str:
    """The explorer's colour key: one swatch per label present, named by its class name where known."""
    if labels is None:
        return ""
    items = "".join(f"<li><span style='background:{LABEL_COLORS[k % len(LABEL_COLORS)]}'></span>"
                    f"{html.escape(label_name(k, names))}</li>" for k in sorted({int(v) for v in labels}))
    return f"<ul id='explorer-legend' class='legend'>{items}</ul>"


def _explorer_html(model, ds, shape, dims, points: int, names: list[str] | None = None) -> str:
    n = min(points, ds.train.shape[0])
    labels = ds.train_labels[:n] if ds.train_labels is not None else None
    data = explorer_data(model, ds.train[:n], labels, shape, dims, names)
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    script = resources.files("aevb.inspect").joinpath("explorer.js").read_text(encoding="utf-8")
    h, w = data["image_shape"][-2:]
    scale = max(1, 224 // max(h, w))
    if decoder_latent_dim(model) != model.config.latent_dim:  # a hierarchy: the decoder reads z_1 only
        what = ("two dimensions of z_1, the decoder's input (chosen below; the other dimensions of z_1 are held at "
                "0)" if data["latent_dim"] > 2 else "the plane of z_1, the decoder's input")
    else:
        what = ("the latent plane" if model.config.latent_dim == 2 else
                "two latent dimensions (chosen below; the others are held at 0, the prior mean)")
    by = "coloured by class" if names and labels is not None else "coloured by label"
    return f"""<h2>Latent explorer</h2>
<p>Move the pointer over {what}: the page runs the decoder's forward pass itself (its weights travel inside this
file) and shows the decoder's mean for that z. Dots: posterior means of {n} training images, {by}.</p>
<div class="cols"><div><canvas id="explorer-plane" width="360" height="360"></canvas><br>
<label>horizontal <select id="explorer-dim-x"></select></label>
<label>vertical <select id="explorer-dim-y"></select></label>{_legend_html(labels, names)}</div>
<div><canvas id="explorer-image" width="{w * scale}" height="{h * scale}"></canvas>
<canvas id="explorer-image-1x" hidden></canvas><p id="explorer-z" class="small"></p></div></div>
<script type="application/json" id="aevb-explorer-data">{payload}</script>
<script>{script}</script>"""


def write_report(run_dir, out, ds, **kw) -> Path:
    """Build the report and write it to `out` atomically."""
    out = Path(out)
    if not out.parent.is_dir():
        raise runs.RunError(f"cannot write {out}: the folder {out.parent} does not exist")
    runs.write_text(out, build_report(run_dir, ds, **kw))
    return out
