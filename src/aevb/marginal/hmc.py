"""Hamiltonian Monte Carlo on the posterior p(z|x), and the paper's HMC estimator of log p(x) (Appendix D)."""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, NamedTuple

import torch
from torch.distributions import biject_to

from ..bars import bar as progress_bar
from ..train import fused
from .common import (DENSITIES, JITTER, KDE_FACTORS, _batches, _check_positive, _chunk_size, _evaluating,
                     _hmc_chunk, _log_likelihood, _logmeanexp, _summary)


class _State(NamedTuple):
    """Where a chain is: the log prior (with log |dz/du|) and log p(x|z), and their gradients in u, kept apart so
    that the target log p(z) + beta log p(x|z) at any temperature beta costs no decoder pass."""

    log_prior: torch.Tensor  # (..., B)
    log_lik: torch.Tensor  # (..., B)
    grad_prior: torch.Tensor  # (..., B, Du)
    grad_lik: torch.Tensor  # (..., B, Du)

    def log_f(self, beta: float = 1.0) -> torch.Tensor:
        return self.log_prior + beta * self.log_lik

    def grad(self, beta: float = 1.0) -> torch.Tensor:
        return self.grad_prior + beta * self.grad_lik

    def where(self, keep: torch.Tensor, other: "_State") -> "_State":
        return _State(*(torch.where(keep if a.dim() == keep.dim() else keep.unsqueeze(-1), a, b)
                        for a, b in zip(self, other)))

    def take(self, idx: torch.Tensor) -> "_State":
        """The chains of datapoints idx (along the datapoint dimension B)."""
        return _State(self.log_prior[..., idx], self.log_lik[..., idx], self.grad_prior[..., idx, :],
                      self.grad_lik[..., idx, :])

    def expand(self, m: int) -> "_State":
        return _State(*(t.expand(m, *t.shape) for t in self))


def check_precision(precision: str, device: torch.device) -> None:
    """ValueError unless `precision` is float32, or bf16 on a device that multiplies bfloat16 natively."""
    if precision not in fused.PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(fused.PRECISIONS)}")
    if precision == "bf16":
        fused.require_bf16(device, "precision")


class Joint:
    """log p(z) + beta log p(x|z) in unconstrained coordinates u (z = T(u), T = biject_to(prior support)).

    The prior's density picks up log |dz/du|, so HMC can move freely; for a real-valued prior T is the identity.
    Calling it at u (..., B, Du) returns the _State there: one decoder pass and one backward pass for the whole
    batch. With several chains per datapoint log p(x|z) goes through the model's fused `log_likelihood` (its
    data term costs one product per datapoint, shared by the chains); with one chain per datapoint through the
    contract's decode(z).log_prob(x), which is then cheaper.

    `inner(u)` is the state a leapfrog trajectory uses at its interior points, where only the gradient counts.
    With precision "bf16" it is the gradient of log p(x|z) computed under bfloat16 autocast (its values are not
    float32 and nothing reads them); with "float32" it is the same as calling the target.
    """

    def __init__(self, model, x: torch.Tensor, precision: str = "float32"):
        check_precision(precision, x.device)
        self.model, self.x, self.precision = model, x, precision
        self.prior = model.prior()
        self.transform = biject_to(self.prior.support)

    def to_u(self, z: torch.Tensor) -> torch.Tensor:
        return self.transform.inv(z)

    def take(self, idx: torch.Tensor) -> "Joint":
        """The same target for the datapoints idx only."""
        sub = Joint.__new__(Joint)
        sub.model, sub.x, sub.prior, sub.transform = self.model, self.x[idx], self.prior, self.transform
        sub.precision = self.precision
        return sub

    def __call__(self, u: torch.Tensor, low: bool = False) -> _State:
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            z = self.transform(u)
            log_jacobian = self.transform.log_abs_det_jacobian(u, z)
            with torch.autocast(u.device.type, dtype=torch.bfloat16, enabled=low):
                if u.shape[:-2].numel() > 1:
                    log_lik = _log_likelihood(self.model, z, self.x)
                else:
                    log_lik = self.model.decode(z).log_prob(self.x)
            log_prior, log_lik = self._base_and_annealed(z, log_lik.to(z.dtype))  # float32 under bf16
            log_prior = log_prior + log_jacobian
            (grad_prior,) = torch.autograd.grad(log_prior.sum(), u, retain_graph=True)
            (grad_lik,) = torch.autograd.grad(log_lik.sum(), u)
        return _State(log_prior.detach(), log_lik.detach(), grad_prior, grad_lik)

    def sample_start(self, n: int) -> torch.Tensor:
        """n draws per datapoint from the density at beta = 0, here z ~ p(z): (n, B, Dz)."""
        return self.prior.sample((n, self.x.shape[0]))

    def _base_and_annealed(self, z: torch.Tensor, log_lik: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The log density at beta = 0 (without log |dz/du|) and the term that beta multiplies, at z."""
        return self.prior.log_prob(z), log_lik

    def inner(self, u: torch.Tensor) -> _State:
        return self(u, low=self.precision == "bf16")


class EncoderJoint(Joint):
    """f_beta(z) = q(z|x)^(1 - beta) p(x, z)^beta: a path from the encoder's posterior to p(z|x), which starts
    far closer to its end than the prior does. Its _State keeps log q(z|x) (with log |dz/du|) where Joint keeps
    the log prior, and log p(z) + log p(x|z) - log q(z|x) where Joint keeps log p(x|z), so the same HMC
    transitions and AIS weights apply. q(z|x) is the model's encode(x) and must have a density at any z (not a
    flow's posterior, whose density is known at its own draws only)."""

    def __init__(self, model, x: torch.Tensor, precision: str = "float32"):
        super().__init__(model, x, precision)
        self.posterior = model.encode(x)  # batch shape (B,), event (Dz,)
        if getattr(self.posterior, "own_samples_only", False):
            raise ValueError("AIS from the encoder needs q(z|x)'s density at any z; this model's q(z|x) has a flow, "
                             "whose density is known at its own draws only: start AIS from the prior")

    def take(self, idx: torch.Tensor) -> "EncoderJoint":
        return EncoderJoint(self.model, self.x[idx], self.precision)

    def sample_start(self, n: int) -> torch.Tensor:
        """n draws z ~ q(z|x) per datapoint, (n, B, Dz)."""
        return self.posterior.sample((n,))

    def _base_and_annealed(self, z: torch.Tensor, log_lik: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_q = self.posterior.log_prob(z)
        return log_q, self.prior.log_prob(z) + log_lik - log_q


Target = Callable[[torch.Tensor], _State]

# The step-size search of the HMC estimator starts at STEP_PER_SCALE times the smallest spread of SCALE_DRAWS
# encoder draws (in u): for the 784-512-512-2 MNIST VAE of docs/measurements.md the tuned step is 0.44-1.35 times
# the encoder's smallest posterior std (5th-95th percentile over 200 test points, median 0.80), so the search
# ends within a round or two of its start where a start at 1 took about nine.
SCALE_DRAWS = 16
STEP_PER_SCALE = 0.8


def _leapfrog(target: Target, u, p, state: _State, eps, steps: int, beta: float = 1.0):
    """`steps` leapfrog steps of size eps (broadcast over (..., B, 1)) for H(u, p) = -log f_beta(u) + |p|^2 / 2,
    f_beta = p(z) p(x|z)^beta.

    The interior points take their gradient from `target.inner` where the target has one (a Joint with precision
    "bf16"), the end point from the target itself. Any gradient that is a fixed function of u leaves the map
    volume-preserving and reversible, and the gradients along the path are symmetric (the end points alike, the
    interior alike), so the Metropolis test on float32 values keeps the chain exact whatever `inner` computes.
    """
    inner = getattr(target, "inner", target)
    p = p + 0.5 * eps * state.grad(beta)
    for i in range(steps):
        u = u + eps * p
        last = i == steps - 1
        state = target(u) if last else inner(u)
        p = p + (0.5 * eps if last else eps) * state.grad(beta)
    return u, p, state


def _log_accept(state0: _State, p0, state1: _State, p1, beta: float = 1.0) -> torch.Tensor:
    log_a = state1.log_f(beta) - state0.log_f(beta) - 0.5 * (p1.square().sum(-1) - p0.square().sum(-1))
    return torch.nan_to_num(log_a, nan=-math.inf).clamp(max=0.0)  # a diverged trajectory is rejected


def hmc_step(target: Target, u, state: _State, eps, steps: int, beta: float = 1.0):
    """One Metropolis-corrected HMC transition (Neal 2011) leaving f_beta = p(z) p(x|z)^beta invariant. Returns
    the new (u, state) and acceptance probabilities.

    The step size is jittered by up to JITTER either way (independently of the state, so the chain stays
    reversible): a fixed trajectory length near half a period of a narrow direction would only bounce.
    """
    eps = eps * (1 + JITTER * (2 * torch.rand_like(eps) - 1))
    p = torch.randn_like(u)
    u1, p1, state1 = _leapfrog(target, u, p, state, eps, steps, beta)
    log_a = _log_accept(state, p, state1, p1, beta)
    accept = torch.rand_like(log_a).log() < log_a
    return torch.where(accept.unsqueeze(-1), u1, u), state1.where(accept, state), log_a.exp()


def _initial_step_size(target: Joint, u, state: _State, steps: int, target_accept: float, eps0: torch.Tensor,
                       num_momenta: int = 16, max_iter: int = 40) -> torch.Tensor:
    """Per datapoint, multiply or divide eps by sqrt(2), starting from eps0 (B, 1), until the mean acceptance
    probability of a full jittered trajectory (over `num_momenta` momenta) crosses `target_accept`, and keep the
    last eps on the high-acceptance side; after Hoffman & Gelman (2014, Alg. 4), who use a single leapfrog step,
    start at 1 and aim at 1/2. Each round simulates only the datapoints whose eps still moves, but draws the
    momenta and jitters of all, so that a datapoint's eps does not depend on the others in its batch. u is (B, Du);
    returns eps (B, 1)."""
    eps = eps0.clone()

    def accept(idx):
        u_rep, state_rep = u[idx].expand(num_momenta, -1, -1), state.take(idx).expand(num_momenta)  # (M, b, Du)
        p = torch.randn((num_momenta, *u.shape), dtype=u.dtype, device=u.device)[:, idx]
        jitter = torch.rand((num_momenta, u.shape[0], 1), dtype=u.dtype, device=u.device)[:, idx]
        jittered = eps[idx] * (1 + JITTER * (2 * jitter - 1))  # (M, b, 1)
        _, p1, state1 = _leapfrog(target.take(idx), u_rep, p, state_rep, jittered, steps)
        return _log_accept(state_rep, p, state1, p1).exp().mean(0)  # (b,)

    a = accept(torch.arange(u.shape[0], device=u.device))
    up = a > target_accept  # grow while acceptance stays above the target, else shrink until it is above
    factor = torch.where(up, math.sqrt(2), math.sqrt(0.5)).to(eps.dtype).unsqueeze(-1)
    for _ in range(max_iter):
        moving = ((a > target_accept) == up).nonzero().squeeze(-1)
        if moving.numel() == 0:
            break
        eps[moving] = eps[moving] * factor[moving]
        a[moving] = accept(moving)
    return torch.where(up.unsqueeze(-1), eps / factor, eps)  # the growing ones overshot by one step


# --- the paper's estimator (Appendix D) ----------------------------------------------------------------------

@torch.no_grad()
def hmc_estimator(model, x: torch.Tensor, *, num_samples: int = 50, leapfrog_steps: int = 4, burn_in: int = 5,
                  target_accept: float = 0.9, density: str = "auto", seed: int | None = None,
                  batch_size: int | None = None, progress: bool = False, precision: str = "float32") -> dict:
    """Appendix D: posterior samples by HMC, a density q(z) fitted to them, then
    p(x) ~= [ (1/L) sum_l q(z_l) / (p(z_l) p(x|z_l)) ]^-1 over fresh posterior samples z_l.

    Per datapoint one chain starts at an encoder sample. Its step size is first searched (in factors of sqrt(2),
    from 0.8 times the smallest spread of 16 encoder draws) for a trajectory accepted with about `target_accept`;
    the chain then runs `burn_in` transitions while the step size adapts multiplicatively toward `target_accept`
    (then frozen), and collects `num_samples` states. q is fitted to the first half; the second half gives
    log p(x) = -logmeanexp_l [log q(z_l) - log p(x, z_l)]. By Jensen the estimate is biased upward; the paper calls
    it reliable only for low-dimensional z (< 5). All chains of a batch move together. For priors with constrained
    support everything happens in unconstrained coordinates.

    Args:
        model: follows the contract prior() / encode(x) / decode(z); a model that also has log_likelihood(z, x)
            (VAE does) is evaluated through it where that is faster, same value.
        x: (N, D) data, processed `batch_size` datapoints at a time.
        num_samples: chain states collected per datapoint after burn-in (the paper: 50).
        leapfrog_steps: leapfrog steps per HMC transition (the paper: 4).
        burn_in: transitions before collecting; the step size adapts during them only.
        target_accept: acceptance probability the step size is tuned toward (the paper: 0.9).
        density: "gaussian" (diagonal), "kde" (Gaussian kernels, bandwidth chosen by held-out likelihood within
            the first half) or "auto" (kde when the first half holds at least 4 samples per latent dimension).
        seed: seed of a private RNG stream (None: the global one).
        batch_size: datapoints whose chains move together; None: as many as keep batch * D under HMC_FLOATS
            (the initial step-size search, 16 trajectories per datapoint, goes in smaller groups).
        progress: show a tqdm bar (on stderr) over datapoint-transitions, the step-size search counted as one.
        precision: "float32", or "bf16": the gradients inside each leapfrog trajectory in bfloat16 (see `ais`).

    Returns:
        dict with (N,) `log_px` and `step_size`, floats `mean`, `stderr` and `accept_rate` (mean acceptance
        probability of the collected transitions).
    """
    _check_positive(leapfrog_steps=leapfrog_steps, batch_size=batch_size or 1)
    check_precision(precision, x.device)
    if num_samples < 4:
        raise ValueError(f"num_samples must be >= 4 (half fit q, half estimate), got {num_samples}")
    if density not in DENSITIES:
        raise ValueError(f"unknown density {density!r}; choose from {', '.join(DENSITIES)}")
    outs = []
    total = x.shape[0] * (1 + burn_in + num_samples)
    with _evaluating(model, seed, x.device), progress_bar(total=total, disable=not progress, desc="HMC", unit="step",
                                                          unit_scale=True) as bar:
        for xb in _batches(x, batch_size or _hmc_chunk(x.shape[-1])):
            outs.append(_hmc_batch(Joint(model, xb, precision), model.encode(xb).sample((SCALE_DRAWS,)),
                                   num_samples, leapfrog_steps, burn_in, target_accept, density, bar.update))
    log_px, accept, eps = (torch.cat(t) for t in zip(*outs))
    return _summary(log_px, accept_rate=float(accept.double().mean()), step_size=eps)


def _step_size_guess(u_draws: torch.Tensor) -> torch.Tensor:
    """Where the step-size search starts, per datapoint: STEP_PER_SCALE times the smallest per-dimension spread of
    encoder draws u_draws (n, B, Du), or 1 where that spread is zero or not finite. (B, 1)."""
    scale = u_draws.std(0).amin(-1, keepdim=True)
    return torch.where(torch.isfinite(scale) & (scale > 0), STEP_PER_SCALE * scale, torch.ones_like(scale))


def _hmc_batch(joint: Joint, z_draws, num_samples, steps, burn_in, target_accept, density, update):
    """The chains of one batch; z_draws (n, B, Dz) are encoder draws: the first starts the chains, the spread of
    all sets where the step-size search starts."""
    u_draws = joint.to_u(z_draws)
    u = u_draws[0]  # (B, Du)
    state = joint(u)
    eps0 = _step_size_guess(u_draws)
    search = _hmc_chunk(16, joint.x.shape[-1])  # datapoints per group of the step-size search
    eps = torch.cat([_initial_step_size(joint.take(idx), u[idx], state.take(idx), steps, target_accept, eps0[idx])
                     for idx in _batches(torch.arange(u.shape[0], device=u.device), search)])  # (B, 1)
    update(u.shape[0])
    for _ in range(burn_in):
        u, state, a = hmc_step(joint, u, state, eps, steps)
        eps = eps * torch.exp(a - target_accept).unsqueeze(-1)
        update(u.shape[0])
    samples, log_joint, accepts = [], [], []
    for _ in range(num_samples):
        u, state, a = hmc_step(joint, u, state, eps, steps)
        samples.append(u)
        log_joint.append(state.log_f())
        accepts.append(a)
        update(u.shape[0])
    samples, log_joint = torch.stack(samples), torch.stack(log_joint)  # (S, B, Du), (S, B)
    half = num_samples // 2
    log_q = _fit_density(samples[:half], density)(samples[half:])  # (S - half, B)
    log_px = -_logmeanexp(log_q - log_joint[half:])
    return log_px, torch.stack(accepts).mean(0), eps.squeeze(-1)

def _fit_density(fit: torch.Tensor, density: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A density fitted per datapoint to samples fit (n, B, Du); returns log q for points (L, B, Du) -> (L, B)."""
    n, du = fit.shape[0], fit.shape[-1]
    if density == "kde" or (density == "auto" and n >= 4 * du):
        return _fit_kde(fit)
    loc, scale = fit.mean(0), _spread(fit)
    return lambda y: torch.distributions.Normal(loc, scale).log_prob(y).sum(-1)


def _spread(fit: torch.Tensor) -> torch.Tensor:
    """Per-dimension std (B, Du), floored so that a chain that never moved still gives a finite density."""
    return fit.std(0).clamp_min(torch.finfo(fit.dtype).eps ** 0.5)


def _kde_log_prob(centers: torch.Tensor, bandwidth: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log (1/n) sum_i N(y; c_i, diag h^2): centers (n, B, Du), bandwidth h (B, Du), y (L, B, Du) -> (L, B)."""
    chunk = _chunk_size(*centers.shape)  # (chunk, n, B, Du)
    log_norm = bandwidth.log().sum(-1) + 0.5 * y.shape[-1] * math.log(2 * math.pi)  # (B,)
    out = []
    for yc in y.split(chunk):
        diff = (yc.unsqueeze(1) - centers) / bandwidth  # (l, n, B, Du)
        out.append(_logmeanexp(-0.5 * diff.square().sum(-1), 1) - log_norm)
    return torch.cat(out)


def _fit_kde(fit: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Gaussian KDE with bandwidth factor * std per dimension; the factor maximizes, per datapoint, the likelihood
    of the second half of `fit` under a KDE on its first half (a contiguous split: the samples are a chain)."""
    n, du = fit.shape[0], fit.shape[-1]
    train, held = fit[: n // 2], fit[n // 2:]
    scale = _spread(fit)  # (B, Du)
    factors = fit.new_tensor(KDE_FACTORS)
    scores = torch.stack([_kde_log_prob(train, f * scale, held).mean(0) for f in factors])  # (F, B)
    best = factors[scores.argmax(0)]  # (B,)
    best = best * (train.shape[0] / n) ** (1 / (du + 4))  # Silverman's n^(-1/(d+4)) rate, refit on all n
    return partial(_kde_log_prob, fit, best.unsqueeze(-1) * scale)
