"""Seconds and estimates of AIS and the paper's HMC estimator (Appendix D): the former, one-datapoint-at-a-time
implementation (copied below, as it was) against the library's, on the same model and datapoints, alternated in
one process.

Usage: python benchmarks/ais_speed.py RUN --data-dir ../shared/data [--limit 200] [--methods ais,hmc]
       [--ais-steps 500] [--also-ais-steps 50,100] [--also-encoder-steps 20,50] [--bf16] [--grid] [--skip-old]
       [--repeats 1] [--threads 1]

Prints one JSON line per timing and a summary per method: seconds (best of --repeats), mean log p(x) with its
standard error over datapoints, the mean and standard error of the per-datapoint difference new - old (the same
points, so most of the spread between datapoints cancels) and the speed-up. --also-ais-steps times the new AIS
at fewer temperatures as well, against the old one at --ais-steps; --also-encoder-steps the same with the path
started at the encoder's q(z|x) (`start="encoder"`). --bf16 adds each new version again with
`precision="bf16"` (the gradients inside the leapfrog trajectories under bfloat16 autocast), where the CPU
multiplies bfloat16 natively. --grid (a model with Dz <= 2) adds each version's mean difference to the exact
log p(x) by quadrature on a latent grid, with its standard error over datapoints. --skip-old leaves the former
implementation out (no speed-ups then; the differences are taken against the first new version).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from functools import partial
from typing import NamedTuple

import torch
from torch.distributions import biject_to

import aevb
from aevb.data import binarize_static, load
from aevb.marginal import ais, grid, hmc_estimator, sigmoid_schedule
from aevb.marginal.common import JITTER, PILOT_CHAINS, _evaluating, _log_likelihood, _logmeanexp, _summary
from aevb.marginal.hmc import _fit_density
from aevb.train import EVAL_BINARIZATION_SEEDS


# --- the former implementation (the fitted density is unchanged and imported) -----------------------------------

class _OldState(NamedTuple):
    log_f: torch.Tensor
    grad: torch.Tensor
    log_lik: torch.Tensor

    def where(self, keep, other):
        return _OldState(torch.where(keep, self.log_f, other.log_f),
                         torch.where(keep.unsqueeze(-1), self.grad, other.grad),
                         torch.where(keep, self.log_lik, other.log_lik))


class _OldJoint:
    def __init__(self, model, x):
        self.model, self.x = model, x
        self.prior = model.prior()
        self.transform = biject_to(self.prior.support)

    def __call__(self, u, beta=1.0):
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            z = self.transform(u)
            log_prior = self.prior.log_prob(z) + self.transform.log_abs_det_jacobian(u, z)
            log_lik = _log_likelihood(self.model, z, self.x)
            log_f = log_prior + beta * log_lik
            (grad,) = torch.autograd.grad(log_f.sum(), u)
        return _OldState(log_f.detach(), grad, log_lik.detach())


def _old_leapfrog(target, u, p, state, eps, steps):
    p = p + 0.5 * eps * state.grad
    for i in range(steps):
        u = u + eps * p
        state = target(u)
        p = p + (eps if i < steps - 1 else 0.5 * eps) * state.grad
    return u, p, state


def _old_log_accept(state0, p0, state1, p1):
    log_a = state1.log_f - state0.log_f - 0.5 * (p1.square().sum(-1) - p0.square().sum(-1))
    return torch.nan_to_num(log_a, nan=-math.inf).clamp(max=0.0)


def _old_hmc_step(target, u, state, eps, steps):
    eps = eps * (1 + JITTER * (2 * torch.rand_like(eps) - 1))
    p = torch.randn_like(u)
    u1, p1, state1 = _old_leapfrog(target, u, p, state, eps, steps)
    log_a = _old_log_accept(state, p, state1, p1)
    accept = torch.rand_like(log_a).log() < log_a
    return torch.where(accept.unsqueeze(-1), u1, u), state1.where(accept, state), log_a.exp()


def _old_initial_step_size(target, u, state, steps, target_accept, num_momenta=16, max_iter=40):
    eps = u.new_ones(u.shape[:-1]).unsqueeze(-1)
    u_rep = u.expand(num_momenta, *u.shape)
    state_rep = _OldState(*(t.expand(num_momenta, *t.shape) for t in state))

    def accept(eps):
        p = torch.randn_like(u_rep)
        jittered = eps * (1 + JITTER * (2 * torch.rand_like(u_rep[..., :1]) - 1))
        _, p1, state1 = _old_leapfrog(target, u_rep, p, state_rep, jittered, steps)
        return _old_log_accept(state_rep, p, state1, p1).exp().mean(0)

    a = accept(eps)
    up = a > target_accept
    factor = torch.where(up, math.sqrt(2), math.sqrt(0.5)).to(eps.dtype).unsqueeze(-1)
    for _ in range(max_iter):
        moving = (a > target_accept) == up
        if not moving.any():
            break
        eps = torch.where(moving.unsqueeze(-1), eps * factor, eps)
        a = torch.where(moving, accept(eps), a)
    return torch.where(up.unsqueeze(-1), eps / factor, eps)


def old_hmc_estimator(model, x, *, num_samples=50, leapfrog_steps=4, burn_in=5, target_accept=0.9,
                      density="auto", seed=None, batch_size=100):
    outs = []
    with _evaluating(model, seed, x.device):
        for xb in x.split(batch_size):
            joint = _OldJoint(model, xb)
            u = joint.transform.inv(model.encode(xb).sample())
            state = joint(u)
            eps = _old_initial_step_size(joint, u, state, leapfrog_steps, target_accept)
            for _ in range(burn_in):
                u, state, a = _old_hmc_step(joint, u, state, eps, leapfrog_steps)
                eps = eps * torch.exp(a - target_accept).unsqueeze(-1)
            samples, log_joint = [], []
            for _ in range(num_samples):
                u, state, a = _old_hmc_step(joint, u, state, eps, leapfrog_steps)
                samples.append(u)
                log_joint.append(state.log_f)
            samples, log_joint = torch.stack(samples), torch.stack(log_joint)
            half = num_samples // 2
            log_q = _fit_density(samples[:half], density)(samples[half:])
            outs.append(-_logmeanexp(log_q - log_joint[half:]))
    return _summary(torch.cat(outs).detach())


def old_ais(model, x, *, num_steps=500, num_chains=16, leapfrog_steps=10, step_size=0.1, target_accept=0.65,
            seed=None, batch_size=100):
    betas = sigmoid_schedule(num_steps).tolist()
    outs = []
    with _evaluating(model, seed, x.device):
        for xb in x.split(batch_size):
            joint = _OldJoint(model, xb)
            u = joint.transform.inv(joint.prior.sample((num_chains + PILOT_CHAINS, xb.shape[0])))
            eps = u.new_full((1, u.shape[1], 1), step_size)
            log_w = u.new_zeros((num_chains, u.shape[1]))
            log_lik = joint(u, 0.0).log_lik
            for beta_prev, beta in zip(betas[:-1], betas[1:]):
                log_w += (beta - beta_prev) * log_lik[:num_chains]
                target = partial(joint, beta=beta)
                u, state, a = _old_hmc_step(target, u, target(u), eps, leapfrog_steps)
                log_lik = state.log_lik
                eps = eps * torch.exp(a[num_chains:].mean(0) - target_accept).view(1, -1, 1)
            outs.append(_logmeanexp(log_w))
    return _summary(torch.cat(outs).detach())


# --- the measurement ---------------------------------------------------------------------------------------------

def _timed(label, fn, model, x, **kw):
    start = time.perf_counter()
    r = fn(model, x, seed=0, **kw)
    seconds = time.perf_counter() - start
    print(json.dumps({"run": label, "seconds": round(seconds, 2), "mean": r["mean"], "stderr": r["stderr"]}),
          flush=True)
    return seconds, r["log_px"].double()


def _pm(d: torch.Tensor) -> str:
    return f"{d.mean():.3f} +- {d.std() / math.sqrt(d.numel()):.3f}"


def _summary_line(method, old, new):
    diff = new[1] - old[1]
    n = diff.numel()
    return {"method": method, "n": n, "old_seconds": round(old[0], 2), "new_seconds": round(new[0], 2),
            "speedup": round(old[0] / new[0], 2),
            "old": _pm(old[1]), "new": _pm(new[1]), "new_minus_old": _pm(diff)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a trained run folder")
    p.add_argument("--data-dir")
    p.add_argument("--limit", type=int, default=200, help="first N test images (default 200)")
    p.add_argument("--methods", default="ais,hmc")
    p.add_argument("--ais-steps", type=int, default=500, help="temperatures of both AIS versions (default 500)")
    p.add_argument("--also-ais-steps", default="", help="comma-separated temperatures of extra new-AIS runs")
    p.add_argument("--also-encoder-steps", default="",
                   help="comma-separated temperatures of extra new-AIS runs started at the encoder")
    p.add_argument("--bf16", action="store_true", help="also each new version with precision bf16")
    p.add_argument("--grid", action="store_true", help="each version against the exact log p(x) (Dz <= 2)")
    p.add_argument("--skip-old", action="store_true", help="leave the former implementation out")
    p.add_argument("--repeats", type=int, default=1, help="alternating rounds; the best seconds count")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, config = aevb.load_run(args.run)
    ds = load(config["data"]["dataset"], data_dir=args.data_dir or config["data"]["data_dir"])
    x = ds.test[: args.limit]
    if config["train"].get("binarize", "none") != "none":
        x = binarize_static(ds.test, seed=EVAL_BINARIZATION_SEEDS["test"])[: args.limit]
    versions = {"hmc": {"old": (old_hmc_estimator, {}), "new": (hmc_estimator, {})},
                "ais": {"old": (old_ais, {"num_steps": args.ais_steps}), "new": (ais, {"num_steps": args.ais_steps})}}
    for t in filter(None, args.also_ais_steps.split(",")):
        versions["ais"][f"new T={int(t)}"] = (ais, {"num_steps": int(t)})
    for t in filter(None, args.also_encoder_steps.split(",")):
        versions["ais"][f"new encoder T={int(t)}"] = (ais, {"num_steps": int(t), "start": "encoder"})
    for method, table in versions.items():
        if args.bf16:
            table.update({f"{label} bf16": (fn, {**kw, "precision": "bf16"})
                          for label, (fn, kw) in list(table.items()) if label != "old"})
        if args.skip_old:
            del table["old"]
    print(json.dumps({"cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "n": x.shape[0]}))
    exact = grid(model, x)["log_px"].double() if args.grid else None
    for method in args.methods.split(","):
        results = {}
        for _ in range(args.repeats):
            for label, (fn, kw) in versions[method].items():
                seconds, log_px = _timed(f"{method} {label}", fn, model, x, **kw)
                best = results.get(label, (math.inf, None))[0]
                results[label] = (min(best, seconds), log_px)
        base = "old" if "old" in results else next(iter(results))
        for label in results:
            if exact is not None:
                print(json.dumps({"method": method, "version": label, "minus_exact": _pm(results[label][1] - exact)}))
            if label != base:
                print(json.dumps({**_summary_line(method, results[base], results[label]), "version": label,
                                  "against": base}))


if __name__ == "__main__":
    main()
