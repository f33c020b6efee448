"""Estimates of the marginal likelihood log p(x): importance sampling, the paper's HMC estimator (Appendix D),
annealed importance sampling and, for Dz <= 2, exact quadrature on a latent grid.
"""
from __future__ import annotations

import contextlib
import math
from functools import partial
from typing import Callable, NamedTuple

import torch
from torch.distributions import biject_to, constraints
from tqdm.auto import tqdm

MAX_FLOATS = 2**21  # per decoder call (8 MB of float32); 2**24 measured 2x slower, and 2**19 between 1.6x faster
# and 1.2x slower depending on the host's load (benchmarks/marginal_speed.py --compare)
DENSITIES = ("auto", "gaussian", "kde")
JITTER = 0.5  # HMC step sizes are drawn uniformly from eps * [1 - JITTER, 1 + JITTER]
PILOT_CHAINS = 4  # AIS chains per datapoint that tune the step size and carry no weight
KDE_FACTORS = torch.logspace(-1.3, 0.3, 17).tolist()  # candidate bandwidths, in units of each dimension's std


# --- shared helpers ------------------------------------------------------------------------------------------

def _summary(log_px: torch.Tensor, **extra) -> dict:
    """Per-datapoint `log_px` (N,) with its `mean` and `stderr` = std / sqrt(N) (nan when N = 1)."""
    n = log_px.numel()
    std = float(log_px.double().std()) if n > 1 else math.nan
    return {"log_px": log_px, "mean": float(log_px.double().mean()), "stderr": std / math.sqrt(n), **extra}


def _logmeanexp(a: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(a, dim) - math.log(a.shape[dim])


@contextlib.contextmanager
def _evaluating(model, seed: int | None, device: torch.device):
    """Eval mode (restored afterwards) and, with a seed, a private RNG stream that leaves the global one alone."""
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            yield
    finally:
        if was_training:
            model.train()


def _check_positive(**values) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _log_likelihood(model, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z): the model's own `log_likelihood(z, x)` where it has one (same value, faster), else the contract's
    decode(z).log_prob(x)."""
    fused = getattr(model, "log_likelihood", None)
    return fused(z, x) if fused is not None else model.decode(z).log_prob(x)


def _chunk_size(*dims: int) -> int:
    """Leading size k that keeps a (k, *dims) tensor under MAX_FLOATS numbers."""
    return max(1, MAX_FLOATS // max(1, math.prod(dims)))


# --- importance sampling -------------------------------------------------------------------------------------

@torch.no_grad()
def importance_sampling(model, x: torch.Tensor, *, num_samples: int = 5000, chunk_size: int | None = None,
                        batch_size: int = 100, progress: bool = False, seed: int | None = None,
                        compile: bool = False) -> dict:
    """log p(x) ~= log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x) (the encoder as proposal).

    The K samples are drawn `chunk_size` at a time and combined by a running logsumexp, so memory is bounded
    whatever K is. The estimate is a stochastic lower bound (its expectation rises to log p(x) with K).

    Args:
        model: follows the contract prior() / encode(x) / decode(z); a model that also has log_likelihood(z, x)
            (VAE does) is evaluated through it, same value in fewer passes.
        x: (N, D) data, processed `batch_size` datapoints at a time.
        num_samples: K importance samples per datapoint.
        chunk_size: samples per decoder call; None picks it so that chunk * batch * D < MAX_FLOATS.
        progress: show a tqdm bar over datapoints.
        seed: seed of a private RNG stream (None: the global one).
        compile: compute log p(x|z) through torch.compile, which fuses the decoder's elementwise work (tanh,
            softplus, the sum over pixels) into loops after its matrix products: the same estimate up to float32
            rounding; on the 2-core CPU for the IWAE architecture, K = 5000, 1.17x-1.35x faster than without
            (README, Speed), after a one-time compilation of 10-30 s. Needs a C++ compiler; the samples z are
            drawn outside the compiled code, so a seed gives the same z either way.

    Returns:
        dict with (N,) `log_px` and `elbo` (mean of the same log weights, estimator A's bound), floats
        `mean` and `stderr` of log_px across datapoints.
    """
    _check_positive(num_samples=num_samples, batch_size=batch_size)
    log_px, elbo = [], []
    log_lik = partial(_log_likelihood, model)
    if compile:  # dynamic: one compilation serves every chunk and batch size above 1
        log_lik = torch.compile(log_lik, dynamic=True)
    with _evaluating(model, seed, x.device), tqdm(total=x.shape[0], disable=not progress, desc="IS") as bar:
        for xb in x.split(batch_size):
            k = chunk_size or _chunk_size(*xb.shape)  # (k, B, D)
            lp, el = _is_batch(model, log_lik, xb, num_samples, k)
            log_px.append(lp)
            elbo.append(el)
            bar.update(xb.shape[0])
    return _summary(torch.cat(log_px), elbo=torch.cat(elbo))


def _is_batch(model, log_lik, x: torch.Tensor, num_samples: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, prior = model.encode(x), model.prior()
    lse = x.new_full(x.shape[:1], -math.inf)  # running logsumexp of the log weights, (B,)
    total = x.new_zeros(x.shape[:1])  # running sum of the log weights, (B,)
    for start in range(0, num_samples, chunk):
        z = q.sample((min(chunk, num_samples - start),))  # (k, B, Dz)
        log_w = log_lik(z, x) + prior.log_prob(z) - q.log_prob(z)  # (k, B)
        lse = torch.logaddexp(lse, torch.logsumexp(log_w, 0))
        total += log_w.sum(0)
    return lse - math.log(num_samples), total / num_samples


# --- Hamiltonian Monte Carlo on the posterior ----------------------------------------------------------------

class _State(NamedTuple):
    """Where a chain is: log target, its gradient, and log p(x|z) (for the AIS weights)."""

    log_f: torch.Tensor  # (..., B)
    grad: torch.Tensor  # (..., B, Du)
    log_lik: torch.Tensor  # (..., B)

    def where(self, keep: torch.Tensor, other: "_State") -> "_State":
        return _State(torch.where(keep, self.log_f, other.log_f),
                      torch.where(keep.unsqueeze(-1), self.grad, other.grad),
                      torch.where(keep, self.log_lik, other.log_lik))


class _Joint:
    """log p(z) + beta log p(x|z) in unconstrained coordinates u (z = T(u), T = biject_to(prior support)).

    The prior's density picks up log |dz/du|, so HMC can move freely; for a real-valued prior T is the identity.
    """

    def __init__(self, model, x: torch.Tensor):
        self.model, self.x = model, x
        self.prior = model.prior()
        self.transform = biject_to(self.prior.support)

    def to_u(self, z: torch.Tensor) -> torch.Tensor:
        return self.transform.inv(z)

    def __call__(self, u: torch.Tensor, beta: float = 1.0) -> _State:
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            z = self.transform(u)
            log_prior = self.prior.log_prob(z) + self.transform.log_abs_det_jacobian(u, z)
            log_lik = _log_likelihood(self.model, z, self.x)
            log_f = log_prior + beta * log_lik
            (grad,) = torch.autograd.grad(log_f.sum(), u)
        return _State(log_f.detach(), grad, log_lik.detach())


Target = Callable[[torch.Tensor], _State]


def _leapfrog(target: Target, u, p, state: _State, eps, steps: int):
    """`steps` leapfrog steps of size eps (broadcast over (..., B, 1)) for H(u, p) = -log f(u) + |p|^2 / 2."""
    p = p + 0.5 * eps * state.grad
    for i in range(steps):
        u = u + eps * p
        state = target(u)
        p = p + (eps if i < steps - 1 else 0.5 * eps) * state.grad
    return u, p, state


def _log_accept(state0: _State, p0, state1: _State, p1) -> torch.Tensor:
    log_a = state1.log_f - state0.log_f - 0.5 * (p1.square().sum(-1) - p0.square().sum(-1))
    return torch.nan_to_num(log_a, nan=-math.inf).clamp(max=0.0)  # a diverged trajectory is rejected


def _hmc_step(target: Target, u, state: _State, eps, steps: int):
    """One Metropolis-corrected HMC transition (Neal 2011). Returns the new (u, state) and acceptance probabilities.

    The step size is jittered by up to JITTER either way (independently of the state, so the chain stays
    reversible): a fixed trajectory length near half a period of a narrow direction would only bounce.
    """
    eps = eps * (1 + JITTER * (2 * torch.rand_like(eps) - 1))
    p = torch.randn_like(u)
    u1, p1, state1 = _leapfrog(target, u, p, state, eps, steps)
    log_a = _log_accept(state, p, state1, p1)
    accept = torch.rand_like(log_a).log() < log_a
    return torch.where(accept.unsqueeze(-1), u1, u), state1.where(accept, state), log_a.exp()


def _initial_step_size(target: Target, u, state: _State, steps: int, target_accept: float,
                       num_momenta: int = 16, max_iter: int = 40) -> torch.Tensor:
    """Per datapoint, multiply or divide eps by sqrt(2), starting from 1, until the mean acceptance probability of
    a full jittered trajectory (over `num_momenta` momenta) crosses `target_accept`, and keep the last eps on the
    high-acceptance side; after Hoffman & Gelman (2014, Alg. 4), who use a single leapfrog step and 1/2.
    u is (B, Du); returns eps (B, 1)."""
    eps = u.new_ones(u.shape[:-1]).unsqueeze(-1)
    u_rep = u.expand(num_momenta, *u.shape)  # (M, B, Du)
    state_rep = _State(*(t.expand(num_momenta, *t.shape) for t in state))

    def accept(eps):
        p = torch.randn_like(u_rep)
        jittered = eps * (1 + JITTER * (2 * torch.rand_like(u_rep[..., :1]) - 1))  # (M, B, 1)
        _, p1, state1 = _leapfrog(target, u_rep, p, state_rep, jittered, steps)
        return _log_accept(state_rep, p, state1, p1).exp().mean(0)  # (B,)

    a = accept(eps)
    up = a > target_accept  # grow while acceptance stays above the target, else shrink until it is above
    factor = torch.where(up, math.sqrt(2), math.sqrt(0.5)).to(eps.dtype).unsqueeze(-1)
    for _ in range(max_iter):
        moving = (a > target_accept) == up
        if not moving.any():
            break
        eps = torch.where(moving.unsqueeze(-1), eps * factor, eps)
        a = torch.where(moving, accept(eps), a)
    return torch.where(up.unsqueeze(-1), eps / factor, eps)  # the growing ones overshot by one step


# --- the paper's estimator (Appendix D) ----------------------------------------------------------------------

def hmc_estimator(model, x: torch.Tensor, *, num_samples: int = 50, leapfrog_steps: int = 4, burn_in: int = 5,
                  target_accept: float = 0.9, density: str = "auto", seed: int | None = None,
                  batch_size: int = 100) -> dict:
    """Appendix D: posterior samples by HMC, a density q(z) fitted to them, then
    p(x) ~= [ (1/L) sum_l q(z_l) / (p(z_l) p(x|z_l)) ]^-1 over fresh posterior samples z_l.

    Per datapoint one chain starts at an encoder sample, runs `burn_in` transitions while its step size adapts
    multiplicatively toward `target_accept` (then frozen), and collects `num_samples` states. q is fitted to the
    first half; the second half gives log p(x) = -logmeanexp_l [log q(z_l) - log p(x, z_l)]. By Jensen the
    estimate is biased upward; the paper calls it reliable only for low-dimensional z (< 5). All chains of a batch
    move together. For priors with constrained support everything happens in unconstrained coordinates.

    Args:
        model: follows the contract prior() / encode(x) / decode(z); a model that also has log_likelihood(z, x)
            (VAE does) is evaluated through it, same value in fewer passes.
        x: (N, D) data, processed `batch_size` datapoints at a time.
        num_samples: chain states collected per datapoint after burn-in (the paper: 50).
        leapfrog_steps: leapfrog steps per HMC transition (the paper: 4).
        burn_in: transitions before collecting; the step size adapts during them only.
        target_accept: acceptance probability the step size is tuned toward (the paper: 0.9).
        density: "gaussian" (diagonal), "kde" (Gaussian kernels, bandwidth chosen by held-out likelihood within
            the first half) or "auto" (kde when the first half holds at least 4 samples per latent dimension).
        seed: seed of a private RNG stream (None: the global one).

    Returns:
        dict with (N,) `log_px` and `step_size`, floats `mean`, `stderr` and `accept_rate` (mean acceptance
        probability of the collected transitions).
    """
    _check_positive(leapfrog_steps=leapfrog_steps, batch_size=batch_size)
    if num_samples < 4:
        raise ValueError(f"num_samples must be >= 4 (half fit q, half estimate), got {num_samples}")
    if density not in DENSITIES:
        raise ValueError(f"unknown density {density!r}; choose from {', '.join(DENSITIES)}")
    outs = []
    with _evaluating(model, seed, x.device):
        for xb in x.split(batch_size):
            outs.append(_hmc_batch(_Joint(model, xb), model.encode(xb).sample(), num_samples, leapfrog_steps,
                                   burn_in, target_accept, density))
    log_px, accept, eps = (torch.cat(t) for t in zip(*outs))
    return _summary(log_px, accept_rate=float(accept.double().mean()), step_size=eps)


def _hmc_batch(joint: _Joint, z0, num_samples, steps, burn_in, target_accept, density):
    u = joint.to_u(z0)  # (B, Du)
    state = joint(u)
    eps = _initial_step_size(joint, u, state, steps, target_accept)  # (B, 1)
    for _ in range(burn_in):
        u, state, a = _hmc_step(joint, u, state, eps, steps)
        eps = eps * torch.exp(a - target_accept).unsqueeze(-1)
    samples, log_joint, accepts = [], [], []
    for _ in range(num_samples):
        u, state, a = _hmc_step(joint, u, state, eps, steps)
        samples.append(u)
        log_joint.append(state.log_f)
        accepts.append(a)
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


# --- annealed importance sampling ----------------------------------------------------------------------------

def sigmoid_schedule(num_steps: int, sharpness: float = 4.0) -> torch.Tensor:
    """beta_0 = 0 < ... < beta_T = 1, sigmoid-spaced (Grosse et al. 2015): dense near both ends. (T + 1,) float64."""
    s = torch.sigmoid(torch.linspace(-sharpness, sharpness, num_steps + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


def ais(model, x: torch.Tensor, *, num_steps: int = 500, num_chains: int = 16, leapfrog_steps: int = 10,
        step_size: float = 0.1, adapt: bool = True, target_accept: float = 0.65, seed: int | None = None,
        batch_size: int = 100) -> dict:
    """Annealed importance sampling (Neal 2001) from p(z) to p(z|x) along f_t(z) = p(z) p(x|z)^beta_t.

    Each chain starts at z ~ p(z), adds (beta_t - beta_{t-1}) log p(x|z) to its log weight, then makes one HMC
    transition that leaves f_t invariant; log p(x) ~= logmeanexp over chains of the log weights, a stochastic
    lower bound. With `adapt` each datapoint's step size moves multiplicatively toward `target_accept` after
    every transition, driven by PILOT_CHAINS extra chains whose weights are discarded: a step size driven by the
    weighted chains themselves depends on their states and biases log p(x) upward (measured: +0.1 nats).

    Args:
        model: follows the contract prior() / encode(x) / decode(z); a model that also has log_likelihood(z, x)
            (VAE does) is evaluated through it, same value in fewer passes.
        x: (N, D) data, processed `batch_size` datapoints at a time.
        num_steps: T, the number of temperatures after beta_0 = 0 (sigmoid-spaced).
        num_chains: independent weighted chains per datapoint.
        leapfrog_steps: leapfrog steps per HMC transition.
        step_size: the initial (with `adapt`) or fixed leapfrog step size.
        seed: seed of a private RNG stream (None: the global one).

    Returns:
        dict with (N,) `log_px` and `step_size` (final), floats `mean`, `stderr` and `accept_rate`.
    """
    _check_positive(num_steps=num_steps, num_chains=num_chains, leapfrog_steps=leapfrog_steps,
                    batch_size=batch_size)
    betas = sigmoid_schedule(num_steps).tolist()
    pilots = PILOT_CHAINS if adapt else 0
    outs = []
    with _evaluating(model, seed, x.device):
        for xb in x.split(batch_size):
            joint = _Joint(model, xb)
            z0 = joint.prior.sample((num_chains + pilots, xb.shape[0]))  # (C + P, B, Dz)
            outs.append(_ais_batch(joint, z0, betas, leapfrog_steps, step_size, num_chains, target_accept))
    log_px, accept, eps = (torch.cat(t) for t in zip(*outs))
    return _summary(log_px, accept_rate=float(accept.double().mean()), step_size=eps)


def _ais_batch(joint: _Joint, z0, betas, steps, step_size, num_chains, target_accept):
    """Chains [:num_chains] carry the weights; any further (pilot) chains only tune the step size."""
    u = joint.to_u(z0)  # (C + P, B, Du)
    eps = u.new_full((1, u.shape[1], 1), step_size)  # per datapoint, shared by its chains
    log_w = u.new_zeros((num_chains, u.shape[1]))  # (C, B)
    log_lik = joint(u, 0.0).log_lik
    accept = u.new_zeros(u.shape[1])
    for beta_prev, beta in zip(betas[:-1], betas[1:]):
        log_w += (beta - beta_prev) * log_lik[:num_chains]
        target = partial(joint, beta=beta)
        u, state, a = _hmc_step(target, u, target(u), eps, steps)
        log_lik = state.log_lik
        accept += a[:num_chains].mean(0)
        if u.shape[0] > num_chains:
            eps = eps * torch.exp(a[num_chains:].mean(0) - target_accept).view(1, -1, 1)
    return _logmeanexp(log_w), accept / (len(betas) - 1), eps.view(-1)


# --- quadrature ----------------------------------------------------------------------------------------------

@torch.no_grad()
def grid(model, x: torch.Tensor, *, points_per_dim: int | None = None, limit: float = 6.0,
         batch_size: int = 100) -> dict:
    """log p(x) = log sum_z p(x|z) p(z) Delta over a regular grid on [-limit, limit]^Dz (Dz <= 2).

    Exact up to the grid's resolution: the spacing 2 limit / (points - 1) must be well below the posterior's
    standard deviation, and [-limit, limit] must hold the prior's mass (6 suits N(0, I); pass more for
    heavy-tailed priors). Defaults: 2001 points for Dz = 1, 301^2 for Dz = 2.

    Raises:
        ValueError: Dz > 2, or a prior whose support is not all of R^Dz.

    Returns:
        dict with (N,) `log_px` and floats `mean`, `stderr`.
    """
    prior = model.prior()
    dz = prior.event_shape[-1] if prior.event_shape else 1
    if dz > 2:
        raise ValueError(f"grid quadrature needs latent_dim <= 2, got {dz}; use is, hmc or ais")
    if not _is_real(prior.support):
        raise ValueError(f"grid quadrature needs a prior on all of R^Dz, got support {prior.support}")
    n = points_per_dim or (2001 if dz == 1 else 301)
    _check_positive(batch_size=batch_size)
    if n < 2:
        raise ValueError(f"points_per_dim must be >= 2, got {n}")
    axis = torch.linspace(-limit, limit, n, dtype=x.dtype, device=x.device)
    z = torch.cartesian_prod(*[axis] * dz).view(-1, dz)  # (G, Dz)
    log_cell = dz * math.log(2 * limit / (n - 1))
    with _evaluating(model, None, x.device):
        log_px = torch.cat([_grid_batch(model, xb, z, prior.log_prob(z)) for xb in x.split(batch_size)])
    return _summary(log_px + log_cell)


def _grid_batch(model, x: torch.Tensor, z: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    lse = x.new_full(x.shape[:1], -math.inf)
    chunk = _chunk_size(*x.shape)  # (chunk, B, D)
    for zc, lpc in zip(z.split(chunk), log_prior.split(chunk)):
        log_joint = _log_likelihood(model, zc.unsqueeze(1), x) + lpc.unsqueeze(1)  # (G_chunk, B)
        lse = torch.logaddexp(lse, torch.logsumexp(log_joint, 0))
    return lse


def _is_real(support) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


# --- dispatch ------------------------------------------------------------------------------------------------

METHODS = {"is": importance_sampling, "hmc": hmc_estimator, "ais": ais, "grid": grid}


def log_likelihood(model, x: torch.Tensor, method: str, **kw) -> dict:
    """log p(x) per datapoint by one of METHODS; keyword arguments go to that method.

    Raises:
        ValueError: unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return METHODS[method](model, x, **kw)
