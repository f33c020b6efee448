"""Flow posteriors: q(z|x) = a diagonal Gaussian q0(z0|x) followed by T invertible maps z_t = f_t(z_{t-1}) with
tractable log-determinants, log q(z_T|x) = log q0(z0|x) - sum_t log |det df_t/dz_{t-1}| (`--flow`).

- planar (Rezende & Mohamed 2015): f(z) = z + u^ tanh(w.z + b), log |det| = log(1 + tanh'(w.z + b) w.u^). The
  parameters (u, w, b) of every step are amortized: the encoder outputs T (2 Dz + 1) more numbers per datapoint.
  Invertibility (w.u^ >= -1) is enforced by u^ = u + (m(w.u) - w.u) w / |w|^2 with m(a) = -1 + softplus(a).
- iaf (Kingma et al. 2016): the encoder also outputs a context vector h (`--flow-hidden` numbers); each step is a
  MADE-style masked network (two masked hidden layers, h added to the first) giving m and s, where output i sees
  only the inputs before i in the step's order, and the gated update z = sigma * z + (1 - sigma) * m with
  sigma = sigmoid(s), log |det| = sum_i log sigma_i. The order reverses from one step to the next; the networks'
  weights are global (shared by all datapoints), h carries the datapoint.

An IAF has no cheap inverse, so `FlowPosterior` keeps the log-density of its most recent draw: `log_prob` of that
very tensor is exact and anything else is refused with a ValueError (no wrong number). STL and DReG, which need
log q at stopped parameters for a z drawn through the live ones, are therefore refused.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, constraints

FLOWS = ("planar", "iaf")
DEFAULT_STEPS = {"planar": 10, "iaf": 4}
DEFAULT_HIDDEN = 128  # iaf: width of each MADE's hidden layers and of the context h
GATE_BIAS = 2.0  # iaf: s starts near +2 (sigma ~ 0.88), so that each step starts close to the identity
FOREIGN = ("a flow posterior knows log q(z|x) only at the samples it drew itself (the flow has no cheap inverse); "
           "--gradient stl/dreg, wake-sleep and the mutual information need it elsewhere: use --gradient standard")


def planar_u_hat(u: torch.Tensor, w: torch.Tensor):
    """u^ = u + (m(w.u) - w.u) w / |w|^2 and softplus(w.u) = 1 + w.u^ (> 0: the map is invertible)."""
    wu = (w * u).sum(-1, keepdim=True)
    sp = F.softplus(wu)
    return u + (sp - 1 - wu) * w / w.square().sum(-1, keepdim=True).clamp_min(1e-12), sp


def planar_step(z: torch.Tensor, u: torch.Tensor, w: torch.Tensor, b: torch.Tensor):
    """One planar map with the invertibility reparameterization: z (..., Dz), u and w (..., Dz), b (..., 1), all
    broadcast. Returns f(z) and log |det df/dz| (...), where det = 1 + tanh'(a) w.u^ is computed as
    t^2 + (1 - t^2) softplus(w.u) (t = tanh(a)), a sum of two non-negative terms, without cancellation."""
    u_hat, sp = planar_u_hat(u, w)
    t = torch.tanh((w * z).sum(-1, keepdim=True) + b)
    t2 = t.square()
    log_det = torch.log(t2 + (1 - t2) * sp).squeeze(-1)
    return z + u_hat * t, log_det


class Planar(nn.Module):
    """T planar maps whose parameters come from the encoder: `params` (..., T (2 Dz + 1)) = [u_t, w_t, b_t]_t."""

    def __init__(self, latent_dim: int, steps: int):
        super().__init__()
        self.latent_dim, self.steps = latent_dim, steps
        self.n_raw = steps * (2 * latent_dim + 1)

    def split(self, params: torch.Tensor):
        """[(u_t, w_t, b_t)] for t = 1..T from the raw parameters."""
        d = self.latent_dim
        chunks = params.unflatten(-1, (self.steps, 2 * d + 1))
        return [(c[..., :d], c[..., d:2 * d], c[..., 2 * d:]) for c in chunks.unbind(-2)]

    def forward(self, z: torch.Tensor, params: torch.Tensor, *, every: bool = False):
        """z_T and sum_t log |det| (...); with every=True the list of (z_t, log |det_t|) instead."""
        out, total = [], 0.0
        for u, w, b in self.split(params):
            z, log_det = planar_step(z, u, w, b)
            out.append((z, log_det))
            total = total + log_det
        return out if every else (z, total)


def made_masks(latent_dim: int, hidden: int, reverse: bool) -> tuple[torch.Tensor, ...]:
    """Masks (out, in) of a MADE over Dz inputs in the order 1..Dz (reversed with `reverse`): inputs and outputs
    carry degrees 1..Dz, hidden units 0..Dz-1 in turn; a hidden unit of degree k sees inputs of degree <= k (degree
    0: the context only), an output of degree i sees hidden units of degree < i."""
    d_in = torch.arange(1, latent_dim + 1)
    if reverse:
        d_in = d_in.flip(0)
    d_hid = torch.arange(hidden) % latent_dim
    first = (d_hid[:, None] >= d_in[None, :]).float()
    middle = (d_hid[:, None] >= d_hid[None, :]).float()
    last = (d_in[:, None] > d_hid[None, :]).float()
    return first, middle, last


class MADE(nn.Module):
    """One IAF step's autoregressive network: (z (..., Dz), h (..., H)) -> m, s (..., Dz), output i depending on
    the inputs before i in the step's order and on h only."""

    def __init__(self, latent_dim: int, hidden: int, reverse: bool):
        super().__init__()
        first, middle, last = made_masks(latent_dim, hidden, reverse)
        self.register_buffer("mask_in", first)
        self.register_buffer("mask_mid", middle)
        self.register_buffer("mask_out", torch.cat([last, last]))
        self.inp = nn.Linear(latent_dim, hidden)
        self.context = nn.Linear(hidden, hidden, bias=False)
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 2 * latent_dim)
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()
            self.out.bias[latent_dim:] = GATE_BIAS

    def forward(self, z: torch.Tensor, h: torch.Tensor):
        a = F.elu(F.linear(z, self.inp.weight * self.mask_in, self.inp.bias) + self.context(h))
        a = F.elu(F.linear(a, self.mid.weight * self.mask_mid, self.mid.bias))
        return F.linear(a, self.out.weight * self.mask_out, self.out.bias).chunk(2, -1)


class IAF(nn.Module):
    """T inverse autoregressive steps over global MADEs; `params` is the encoder's context h (..., H)."""

    def __init__(self, latent_dim: int, steps: int, hidden: int):
        super().__init__()
        self.made = nn.ModuleList(MADE(latent_dim, hidden, reverse=t % 2 == 1) for t in range(steps))
        self.n_raw = hidden

    def forward(self, z: torch.Tensor, params: torch.Tensor, *, every: bool = False):
        """z_T and sum_t log |det| (...); with every=True the list of (z_t, log |det_t|) instead."""
        out, total = [], 0.0
        for made in self.made:
            m, s = made(z, params)
            z = torch.sigmoid(s) * z + torch.sigmoid(-s) * m  # 1 - sigmoid(s) = sigmoid(-s), exact in floats
            log_det = F.logsigmoid(s).sum(-1)
            out.append((z, log_det))
            total = total + log_det
        return out if every else (z, total)


def build_flow(config) -> nn.Module | None:
    """The flow of a ModelConfig (its `flow`, `flow_steps`, `flow_hidden`) on `flow_latent_dim` latents (z, or the
    layer a hierarchy's q draws first), or None without one."""
    if config.flow == "planar":
        return Planar(config.flow_latent_dim, config.flow_steps)
    if config.flow == "iaf":
        return IAF(config.flow_latent_dim, config.flow_steps, config.flow_hidden)
    return None


class FlowPosterior(Distribution):
    """q(z|x) of a base diagonal Gaussian `base` (batch (B,), event (Dz,)) pushed through `flow` with the
    per-datapoint parameters `params` (B, n_raw). `rsample((S,))` is (S, B, Dz); `log_prob` is exact for the most
    recent draw of this object (`rsample` or `sample`) and refuses any other value (ValueError)."""

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 1)
    has_rsample = True
    own_samples_only = True  # log_prob only at its own draws (diagnostics read this)

    def __init__(self, base: Distribution, flow: nn.Module, params: torch.Tensor):
        self.base, self.flow, self.params = base, flow, params
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        z0 = self.base.rsample(sample_shape)
        z, log_det = self.flow(z0, self.params)
        self._last = (z, self.base.log_prob(z0) - log_det)
        return z

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._last is None or value is not self._last[0]:
            raise ValueError(FOREIGN)
        return self._last[1]

    @property
    def location(self) -> torch.Tensor:
        """The flow applied to the base Gaussian's mean (B, Dz): a point of high density, not E_q[z] (which has no
        closed form); plots and diagnostics use it where they need one point per datapoint."""
        return self.flow(self.base.mean, self.params)[0]
