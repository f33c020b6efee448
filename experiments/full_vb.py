"""Full VB (Appendix F) against MAP and maximum-likelihood AEVB on a small training set, where overfitting shows.

Trains three models with the same architecture, optimizer and budget on the first N MNIST training images (grey
levels): the VAE by maximum likelihood (no prior on the weights), the VAE by MAP (a N(0, I) prior on all weights,
i.e. weight decay 1/N per datapoint, the paper's setting), and full VB (q(theta) over the decoder's parameters,
prior N(0, I), the encoder a point estimate). Prints a markdown table of the train and test ELBO and of log p(x)
by importance sampling (the first --limit points of each split; for full VB with theta drawn, the joint
(theta, z) proposal estimates the approximate posterior predictive log E_q(theta) p(x|theta)), and writes JSON.
Usage:
    python experiments/full_vb.py --data-dir ../shared/data [--n-train 1000] [--samples 3e6] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from aevb import VAE, ModelConfig, TrainConfig, fit
from aevb.data import load
from aevb.estimators import evaluate
from aevb.paper.fullvb import THETA_NOISE, FullVB, evaluate_full_vb
from aevb.paper.fullvb import fit as fit_full_vb
from aevb.marginal import importance_sampling

METHODS = ("ml", "map", "fullvb")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--n-train", type=int, default=1000, help="the first N training images (Figure 3: 1000)")
    p.add_argument("--latent-dim", type=int, default=3)
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--activation", default="tanh")
    p.add_argument("--samples", type=float, default=3e6, help="training length in datapoints, each method")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's step size (cosine decay to 0)")
    p.add_argument("--init-log-var", type=float, default=-6.0, help="full VB: log scale^2 of q(theta) at start")
    p.add_argument("--prior-std", type=float, default=1.0, help="standard deviation of p(theta)")
    p.add_argument("--theta-noise", choices=THETA_NOISE, default="local")
    p.add_argument("--eval-samples", type=int, default=10, help="L for the reported ELBOs")
    p.add_argument("--is-k", type=int, default=1000, help="importance samples for log p(x)")
    p.add_argument("--limit", type=int, default=1000, help="points of each split for log p(x) (Figure 3: 1000)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/full_vb")
    return p.parse_args()


def log_px(model, x, args) -> float:
    return importance_sampling(model, x[: args.limit], num_samples=args.is_k, seed=args.seed)["mean"]


def run(method: str, ds, train_x, args) -> dict:
    torch.manual_seed(args.seed)
    vae = VAE(ModelConfig(x_dim=ds.x_dim, latent_dim=args.latent_dim, hidden=(args.hidden,),
                          activation=args.activation))
    cfg = TrainConfig(optimizer="adam", lr=args.lr, schedule="cosine", samples=int(args.samples),
                      weight_decay="prior" if method == "map" else 0.0, seed=args.seed)
    start = time.perf_counter()
    if method == "fullvb":
        model = FullVB(vae, n_train=train_x.shape[0], prior_std=args.prior_std, init_log_var=args.init_log_var,
                       theta_noise=args.theta_noise)
        fit_full_vb(model, train_x, ds.test, cfg, progress=False)
        seconds = time.perf_counter() - start
        tr = evaluate_full_vb(model, train_x, num_samples=args.eval_samples)
        te = evaluate_full_vb(model, ds.test, num_samples=args.eval_samples)
        with model.at_mean():
            mean_px = {"train_log_px": log_px(model, train_x, args), "test_log_px": log_px(model, ds.test, args)}
        scales = torch.cat([(0.5 * v.detach()).exp().flatten() for v in model.log_var])
        return {
            "fullvb": {"train_elbo": tr["elbo"], "test_elbo": te["elbo"], "train_log_px": log_px(model, train_x, args),
                       "test_log_px": log_px(model, ds.test, args)},
            "fullvb_mean": {"train_elbo": tr["elbo_at_mean"], "test_elbo": te["elbo_at_mean"], **mean_px},
            "bound": tr["bound"], "kl_theta": tr["kl_theta"], "seconds": seconds,
            "scale_quantiles": [float(q) for q in scales.quantile(torch.tensor([0.1, 0.5, 0.9]))],
        }
    fit(vae, train_x, ds.test, cfg, progress=False)
    seconds = time.perf_counter() - start
    kw = dict(estimator="sgvb_b", num_samples=args.eval_samples)
    return {method: {"train_elbo": evaluate(vae, train_x, **kw)["elbo"],
                     "test_elbo": evaluate(vae, ds.test, **kw)["elbo"],
                     "train_log_px": log_px(vae, train_x, args), "test_log_px": log_px(vae, ds.test, args)},
            "seconds": seconds}


LABELS = {
    "ml": "maximum likelihood (no prior on the weights)",
    "map": "MAP: N(0, I) prior on all weights (weight decay 1/N)",
    "fullvb": "full VB, theta ~ q(theta)",
    "fullvb_mean": "full VB, theta = mean of q(theta)",
}


def table(results: dict) -> str:
    lines = ["| model | train ELBO | test ELBO | train log p(x) | test log p(x) |", "|---|---|---|---|---|"]
    for method in METHODS:
        r = results.get(method)
        if r is None:
            continue
        for key in [k for k in LABELS if k in r]:
            v = r[key]
            lines.append(f"| {LABELS[key]} | {v['train_elbo']:.2f} | {v['test_elbo']:.2f} | "
                         f"{v['train_log_px']:.2f} | {v['test_log_px']:.2f} |")
    if "fullvb" in results:
        r = results["fullvb"]
        lines.append("")
        lines.append(f"full VB: bound on log p(X) / N = {r['bound']:.2f} (train ELBO with theta drawn minus "
                     f"KL(q(theta) || p(theta)) / N = {r['kl_theta']:.2f}); scale of q(theta): 10/50/90% quantiles "
                     + ", ".join(f"{q:.3g}" for q in r["scale_quantiles"]))
    lines.append("")
    lines.append("seconds: " + ", ".join(f"{m} {results[m]['seconds']:.0f}" for m in METHODS if m in results))
    return "\n".join(lines)


def main() -> None:
    args = parse()
    ds = load("mnist", data_dir=args.data_dir)
    train_x = ds.train[: args.n_train].contiguous()
    methods = args.methods.split(",")
    for method in methods:
        if method not in METHODS:
            raise SystemExit(f"full_vb.py: error: unknown method {method!r}; choose from {', '.join(METHODS)}")
    results = {}
    for method in methods:
        results[method] = run(method, ds, train_x, args)
        print(f"{method} done in {results[method]['seconds']:.0f} s", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
