"""The autoencoder family as reference rows: AE, denoising AE and sparse AE against the VAE, same MLPs and budget.

Trains the four on MNIST grey levels (60k/10k) with the same encoder and decoder MLPs, code dimension Nz,
optimizer and number of datapoints, then prints a markdown table of test reconstruction error (cross-entropy in
nats per image and squared error per image, from the code; for the VAE from z = the mean of q(z|x)), the statistics
of the test codes (the KL from a diagonal Gaussian fitted to them to N(0, I): how far the codes are from the
distribution samples are drawn from), and writes one picture of decoder means at the same draws z ~ N(0, I) for
each model (a row each).
Usage:
    python experiments/autoencoders.py --data-dir ../shared/data [--samples 1e6] [--image samples.png]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from aevb import VAE, ModelConfig, TrainConfig, fit
from aevb.paper.autoencoders import AEConfig, Autoencoder, fit_autoencoder, reconstruction_metrics
from aevb.data import load
from aevb.estimators import evaluate
from aevb.inspect.plots import image_grid

LABELS = {"ae": "AE", "dae": "DAE", "sae": "SAE", "vae": "VAE"}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--hidden", default="500", help="comma-separated widths; the decoder mirrors them")
    p.add_argument("--activation", default="tanh")
    p.add_argument("--samples", type=float, default=1e6, help="training length in datapoints, each model")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's step size (cosine decay to 0)")
    p.add_argument("--noise", type=float, default=0.25, help="DAE: masking probability")
    p.add_argument("--rho", type=float, default=0.05, help="SAE: target mean activation of each code unit")
    p.add_argument("--sparsity-weight", type=float, default=1.0, help="SAE: weight of the sparsity penalty")
    p.add_argument("--n-pictures", type=int, default=12, help="samples per model in the picture")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/autoencoders", help="folder for results.json and samples.png")
    p.add_argument("--image", help="also write the picture here (e.g. docs/images/autoencoder_samples.png)")
    return p.parse_args()


def code_stats(codes: torch.Tensor) -> dict:
    """Per-dimension mean and std of the codes, and KL(N(m, diag s^2) || N(0, I)) of the diagonal Gaussian fit."""
    m, s2 = codes.mean(0).double(), codes.var(0).double()
    kl = 0.5 * (s2 + m.square() - 1 - s2.log()).sum()
    return {"mean_abs_mean": float(m.abs().mean()), "min_std": float(s2.min().sqrt()),
            "max_std": float(s2.max().sqrt()), "kl_fit_to_prior": float(kl)}


@torch.no_grad()
def assess(name: str, model, ds, z: torch.Tensor) -> dict:
    if name == "vae":
        logits = lambda x: model.decode(model.encode(x).mean).base_dist.logits  # noqa: E731
        codes = model.encode(ds.test).mean
        pictures = model.decode(z).mean
        extra = {"test_elbo": evaluate(model, ds.test, estimator="sgvb_b", num_samples=10)["elbo"]}
    else:
        logits = lambda x: model.decoder_outputs(model.encode(x))  # noqa: E731
        codes = model.encode(ds.test)
        pictures = model.decode(z)
        extra = {}
    return {**reconstruction_metrics(logits, ds.test), **code_stats(codes), **extra,
            "pictures": pictures.clamp(0, 1).reshape(-1, *ds.image_shape).numpy()}


def train(name: str, ds, args) -> tuple[object, float]:
    torch.manual_seed(args.seed)
    arch = ModelConfig(x_dim=ds.x_dim, latent_dim=args.latent_dim, hidden=tuple(int(h) for h in args.hidden.split(",")),
                       activation=args.activation)
    cfg = TrainConfig(optimizer="adam", lr=args.lr, schedule="cosine", samples=int(args.samples), seed=args.seed)
    start = time.perf_counter()
    if name == "vae":
        model = VAE(arch)
        fit(model, ds.train, ds.test, cfg, progress=False)
    else:
        model = Autoencoder(arch, AEConfig(kind=name, noise=args.noise, rho=args.rho,
                                           sparsity_weight=args.sparsity_weight))
        fit_autoencoder(model, ds.train, cfg)
    return model.eval(), time.perf_counter() - start


def picture(results: dict, path: Path) -> None:
    """One row of decoder means per model, the model's name on the left."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(len(names), 1, figsize=(6.4, 0.62 * len(names)), dpi=100)
    for ax, name in zip(np.atleast_1d(axes), names):
        ax.imshow(image_grid(results[name]["pictures"], ncol=len(results[name]["pictures"])), cmap="gray",
                  vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(LABELS[name], rotation=0, ha="right", va="center", fontsize=9)
    fig.subplots_adjust(left=0.08, right=0.995, top=0.99, bottom=0.01, hspace=0.08)
    fig.savefig(path)
    plt.close(fig)


def table(results: dict) -> str:
    lines = ["| model | test cross-entropy (nats/image) | test squared error (per image) | code: mean abs mean | "
             "code: std min-max | KL(Gaussian fit of codes \\|\\| N(0, I)) |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {LABELS[name]} | {r['bce']:.2f} | {r['mse']:.2f} | {r['mean_abs_mean']:.2f} | "
                     f"{r['min_std']:.2f}-{r['max_std']:.2f} | {r['kl_fit_to_prior']:.1f} |")
    if "vae" in results:
        lines.append(f"\nVAE test ELBO: {results['vae']['test_elbo']:.2f}")
    lines.append("seconds: " + ", ".join(f"{LABELS[n]} {r['seconds']:.0f}" for n, r in results.items()))
    return "\n".join(lines)


def main() -> None:
    args = parse()
    ds = load("mnist", data_dir=args.data_dir)
    z = torch.randn(args.n_pictures, args.latent_dim, generator=torch.Generator().manual_seed(args.seed))
    results = {}
    for name in LABELS:
        model, seconds = train(name, ds, args)
        results[name] = {**assess(name, model, ds, z), "seconds": seconds}
        print(f"{name} done in {seconds:.0f} s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    picture(results, out / "samples.png")
    if args.image:
        picture(results, Path(args.image))
    numbers = {n: {k: v for k, v in r.items() if k != "pictures"} for n, r in results.items()}
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": numbers}, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
