"""Hierarchical VAEs: L stochastic layers z_1..z_L (z_1 nearest the data), `--stochastic-layers L` on `--arch mlp`.

The model keeps the one-vector contract of every other model: z = [z_1, ..., z_L] is ONE concatenated vector of
dimension sum_l d_l (`--latent-dims`), so every estimator, marginal-likelihood method, plot and the run folder
work on it unchanged.

- p(z) = p(z_L) prod_{l<L} p(z_l | z_{l+1}): p(z_L) = N(0, I), p(z_l | z_{l+1}) = N(mu_l, diag sigma_l^2) from an
  MLP of z_{l+1} (`--upper-hidden`, reversed); p(x|z) = p(x|z_1), the VAE's decoder on z_1 (`--hidden`, reversed).
- q(z|x), `--inference bottom-up` (Burda et al. 2016): q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1}), each a diagonal
  Gaussian from an MLP of the layer below (x: `--hidden`; z_l: `--upper-hidden`).
- q(z|x), `--inference top-down` (the ladder VAE's, Sønderby et al. 2016): a deterministic bottom-up pass
  h_1 = f_1(x), h_{l+1} = f_{l+1}(h_l) gives each layer a Gaussian N(m^_l, s^_l^2) of the data; then
  q(z_L|x) = N(m^_L, s^_L^2) and q(z_l | z_{l+1}, x) is the precision-weighted product of N(m^_l, s^_l^2) and the
  generative p(z_l | z_{l+1}) = N(m_l, s_l^2), normalized: 1/s_q^2 = 1/s^_l^2 + 1/s_l^2,
  m_q = s_q^2 (m^_l / s^_l^2 + m_l / s_l^2). The top-down networks are shared by q and p.

- Every Gaussian's log sigma^2 is clamped from below at `--min-log-var` (default -6, Tomczak & Welling's bound;
  `none` for none): unbounded, a top-down MNIST hierarchy had p(z_1|z_2) at variances near e^-21 (precisions
  near 1e9) before its loss turned NaN. The precision-weighted product may lie below the floor (by log 2 at most).
- p(z_L) may be learned instead (`--prior mog|vamp`, priors.py): a mixture of K Gaussians, or the VampPrior
  (1/K) sum_k q(z_L|u_k) over K pseudo-inputs. The VampPrior needs q(z_L|x) as a Gaussian of x alone, which only
  the top-down inference gives (bottom-up, q(z_L|x) integrates over the lower layers); Tomczak & Welling's
  HVAE + VampPrior has the same structure, q(z_2|x) then q(z_1|x, z_2).
- `--flow planar|iaf` transforms the layer q draws first (z_1 bottom-up, z_L top-down): its Gaussian is followed by
  the flow (flows.py), whose per-datapoint parameters come from that layer's features; the later layers are drawn
  given the flowed sample. A flow knows its log-density only at its own draws, and so does such a q.

Both q and p are `Chain`s: drawn ancestrally, with a log-density exact at any z (the product of the factors, each
given the layer sampled before it; with a flow, at the chain's own draws). Neither has a closed-form KL
(`has_analytic_kl` False: estimator auto -> sgvb_a) nor factorizes over dimensions (no free bits). q has no raw
parameters to stop (each factor depends on a sample), so STL and DReG are refused (`NO_RAW`).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal, constraints

from ..nets import mlp
from .base import LatentModel
from .config import ModelConfig
from .flows import FlowPosterior
from .registry import register_hierarchical

__all__ = ["Chain", "HierarchicalVAE", "NO_RAW", "floored", "gaussian", "precision_weighted"]

NO_RAW = ("a hierarchical VAE's q(z|x) has no raw parameters to stop (each layer's factor depends on a sample): "
          "--gradient stl/dreg and the diagnostics that rebuild q need them; use --gradient standard")


def floored(params: torch.Tensor, min_log_var: float | str) -> torch.Tensor:
    """[mu, log sigma^2] (..., 2d) with log sigma^2 clamped from below at min_log_var ("none": unchanged)."""
    if min_log_var == "none":
        return params
    mu, log_var = params.chunk(2, -1)
    return torch.cat([mu, log_var.clamp(min=min_log_var)], -1)


def gaussian(params: torch.Tensor) -> Distribution:
    """N(mu, diag exp(log_var)) of params (..., 2d) = [mu, log sigma^2]; event shape (d,)."""
    mu, log_var = params.chunk(2, -1)
    return Independent(Normal(mu, torch.exp(0.5 * log_var), validate_args=False), 1)


def precision_weighted(data: torch.Tensor, top: torch.Tensor) -> Distribution:
    """The normalized product N(m^, s^2) N(m, s^2) of two diagonal Gaussians given as [mean, log variance]
    (broadcast): variance 1 / (1/s^2 + 1/s'^2), mean the precision-weighted average, computed without overflow
    (weights sigmoid(log s'^2 - log s^2))."""
    mu_a, lv_a = data.chunk(2, -1)
    mu_b, lv_b = top.chunk(2, -1)
    log_var = -torch.logaddexp(-lv_a, -lv_b)
    mu = mu_a * torch.sigmoid(lv_b - lv_a) + mu_b * torch.sigmoid(lv_a - lv_b)
    return Independent(Normal(mu, torch.exp(0.5 * log_var), validate_args=False), 1)


class _Draw(NamedTuple):
    """A chain's most recent draw: the concatenation z, its layers as drawn and their factors (z_1 first), and
    whether the factors were built recording gradients."""
    z: torch.Tensor
    parts: list
    factors: list
    with_grad: bool


class Chain(Distribution):
    """A distribution over z = [z_1, ..., z_L] (z_1 first, sizes `dims`) built ancestrally in `order` (layer
    indices, the first sampled first): `first` is the first sampled layer's distribution (batch shape (...)) and
    `step(l, z_prev)` the distribution of layer l given the layer sampled just before it.

    `rsample(sample_shape)` is (*sample_shape, ..., sum dims); `log_prob(z)` = log first(z_order[0]) + sum over the
    later layers of log step(l, z_prev)(z_l), exact for any z (leading sample dimensions kept)."""

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 1)

    def __init__(self, dims, order, first: Distribution, step):
        self.dims, self.order, self.first, self.step = tuple(dims), tuple(order), first, step
        self.has_rsample = first.has_rsample  # a mixture p(z_L) has none (sample() still draws)
        self.own_samples_only = getattr(first, "own_samples_only", False)  # a flow layer: log_prob of own draws
        super().__init__(first.batch_shape, torch.Size([sum(self.dims)]), validate_args=False)

    def _walk(self, draw):
        """The layers in order: the first from draw(first), each next from draw(step(l, previous)). The
        concatenation is remembered with its layers as drawn and their factors, so that `split` and `factors` of
        it give them back instead of running the networks again."""
        factors, parts = {self.order[0]: self.first}, {self.order[0]: draw(self.first)}
        for prev, layer in zip(self.order, self.order[1:]):
            factors[layer] = self.step(layer, parts[prev])
            parts[layer] = draw(factors[layer])
        batch = torch.broadcast_shapes(*(p.shape[:-1] for p in parts.values()))
        z = torch.cat([parts[i].expand(*batch, d) for i, d in enumerate(self.dims)], -1)
        layers = range(len(self.dims))
        self._last = _Draw(z, [parts[i] for i in layers], [factors[i] for i in layers], torch.is_grad_enabled())
        return z

    def _own(self, value: torch.Tensor) -> _Draw | None:
        """This chain's record of its most recent draw if `value` is that very tensor, else None."""
        last = getattr(self, "_last", None)
        return last if last is not None and value is last[0] else None

    def split(self, value: torch.Tensor) -> list[torch.Tensor]:
        """value's layers, z_1 first: for this chain's most recent draw the very tensors drawn (a flow layer knows
        its log-density only at those), else views of value."""
        own = self._own(value)
        return list(own.parts) if own is not None else list(value.split(self.dims, -1))

    def _draw(self, method: str, sample_shape) -> torch.Tensor:
        """Every layer drawn by its factor's `method` ("rsample" or "sample"), the first with `sample_shape`."""
        shapes = iter([torch.Size(sample_shape)])
        return self._walk(lambda dist: getattr(dist, method)(next(shapes, torch.Size())))

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return self._draw("rsample", sample_shape)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self._draw("sample", sample_shape)

    def parent(self, layer: int) -> int | None:
        """The layer whose value layer `layer`'s factor is conditioned on: the one sampled just before it; None for
        the first sampled layer."""
        i = self.order.index(layer)
        return self.order[i - 1] if i else None

    def factors(self, value: torch.Tensor) -> list[Distribution]:
        """Each layer's factor at `value` (..., sum dims), indexed by layer (z_1 first): the first sampled layer's
        distribution, and for every other layer l its distribution given layer parent(l)'s part of `value`. Each
        is a diagonal Gaussian with event shape (d_l,); log_prob(value) is the sum of their log densities at the
        layers' parts. For the chain's own most recent draw they are the factors it was drawn from (those built
        without gradients are built again where gradients are now recorded)."""
        own = self._own(value)
        if own is not None and (own.with_grad or not torch.is_grad_enabled()):
            return list(own.factors)
        parts = self.split(value)
        out: list[Distribution | None] = [None] * len(self.dims)
        out[self.order[0]] = self.first
        for prev, layer in zip(self.order, self.order[1:]):
            out[layer] = self.step(layer, parts[prev])
        return out

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        parts = self.split(value)
        factors = self.factors(value)
        out = factors[self.order[0]].log_prob(parts[self.order[0]])
        for layer in self.order[1:]:
            out = out + factors[layer].log_prob(parts[layer])
        return out

    @property
    def location(self) -> torch.Tensor:
        """Each layer at its conditional mean given the previous layer at its own (batch..., Dz): one point of high
        density per datapoint (E[z] has no closed form past the first layer); plots and diagnostics use it."""
        return self._walk(lambda dist: dist.location if isinstance(dist, FlowPosterior) else dist.mean)


def _gaussian_net(in_dim: int, hidden: tuple[int, ...], out_dim: int, activation: str) -> nn.Sequential:
    """An MLP and a linear head to [mu, log sigma^2] (2 out_dim)."""
    return nn.Sequential(mlp(in_dim, hidden, activation), nn.Linear(hidden[-1] if hidden else in_dim, 2 * out_dim))


@register_hierarchical("mlp")
class HierarchicalVAE(LatentModel):
    """L > 1 stochastic layers behind the contract `prior()`, `encode(x)`, `decode(z)` on z = [z_1, ..., z_L]
    (see the module's docstring). Modules: `decoder` + `dec_head` (p(x|z_1)), `top_down[l]` (p(z_l|z_l+1)), and
    `up[l]` (bottom-up q) or `features[l]` + `heads[l]` (top-down q's deterministic pass and data Gaussians)."""

    kl_splits = False  # q(z|x) does not factorize over the latent dimensions: free bits are refused

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        self.has_analytic_kl = False
        self.dims = dims = tuple(c.latent_dims)
        self.prior_loc, self.prior_scale = torch.zeros(dims[-1]), torch.ones(dims[-1])  # p(z_L) = N(0, I)
        up, act, L = tuple(c.upper_hidden), c.activation, len(dims)
        dec_hidden = tuple(reversed(c.hidden))
        self.decoder = mlp(dims[0], dec_hidden, act)
        self.dec_head = self.likelihood_head(dec_hidden[-1] if dec_hidden else dims[0])
        self.top_down = nn.ModuleList(_gaussian_net(dims[i + 1], tuple(reversed(up)), dims[i], act)
                                      for i in range(L - 1))
        if c.inference == "bottom-up":
            self.up = nn.ModuleList([_gaussian_net(c.x_dim, c.hidden, dims[0], act)]
                                    + [_gaussian_net(dims[i], up, dims[i + 1], act) for i in range(L - 1)])
            flow_in = c.hidden[-1] if c.hidden else c.x_dim
        else:
            width = c.hidden[-1] if c.hidden else c.x_dim
            widths = [width] + [up[-1] if up else width] * (L - 1)  # of h_1, ..., h_L
            self.features = nn.ModuleList([mlp(c.x_dim, c.hidden, act)]
                                          + [mlp(widths[i], up, act) for i in range(L - 1)])
            self.heads = nn.ModuleList(nn.Linear(w, 2 * d) for w, d in zip(widths, dims))
            flow_in = widths[-1]
        if self.flow is not None:  # the flow's per-datapoint parameters, from the features of q's first layer
            self.flow_head = nn.Linear(flow_in, self.flow.n_raw)
        if c.init == "paper":
            self._paper_init()

    @torch.no_grad()
    def _paper_init(self) -> None:
        """N(0, 0.01^2) weights, zero log-variance outputs (every conditional starts at unit variance) and a zero
        output bias of the likelihood head, as the MLP VAE's."""
        for name, p in self.named_parameters():
            if not name.startswith(("flow.", "learned_prior.")):  # those keep their own initialization
                p.normal_(0.0, 0.01)
        heads = [net[-1] for net in self.top_down] + ([net[-1] for net in self.up] if hasattr(self, "up")
                                                       else list(self.heads))
        for head in heads:
            d = head.out_features // 2
            head.weight[d:].zero_()
            head.bias[d:].zero_()
        self.dec_head.out.bias.zero_()

    def prior(self) -> Distribution:
        """p(z) = p(z_L) prod p(z_l | z_l+1), drawn from the top down; batch shape (), event (sum d_l,). p(z_L) is
        N(0, I) or the learned prior (--prior mog|vamp)."""
        if self.learned_prior is not None:
            top = self.learned_prior(self)
        else:
            top = Independent(Normal(self.prior_loc, self.prior_scale, validate_args=False), 1)
        order = tuple(reversed(range(len(self.dims))))
        return Chain(self.dims, order, top, lambda i, z_above: gaussian(self._params(self.top_down[i], z_above)))

    def _params(self, net: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """A Gaussian's [mu, log sigma^2] from `net` at h, log sigma^2 floored at the config's min_log_var."""
        return floored(net(h), self.config.min_log_var)

    def _data_gaussians(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Top-down inference's deterministic pass: each layer's [m^_l, log s^_l^2] of x, z_1's first, and the
        top features h_L."""
        h, data = x, []
        for features, head in zip(self.features, self.heads):
            h = features(h)
            data.append(self._params(head, h))
        return data, h

    def _first(self, params: torch.Tensor, h: torch.Tensor) -> Distribution:
        """q's first-drawn layer: the Gaussian of params, through the flow (parameters from features h) if any."""
        base = gaussian(params)
        return base if self.flow is None else FlowPosterior(base, self.flow, self.flow_head(h))

    def encode(self, x: torch.Tensor) -> Distribution:
        """q(z|x) over the concatenation, batch shape (...) of x (..., D); bottom-up or top-down (the config's)."""
        order = tuple(range(len(self.dims)))
        if self.config.inference == "bottom-up":
            features, head = self.up[0]
            h = features(x)
            return Chain(self.dims, order, self._first(self._params(head, h), h),
                         lambda i, z_below: gaussian(self._params(self.up[i], z_below)))
        data, h = self._data_gaussians(x)
        return Chain(self.dims, order[::-1], self._first(data[-1], h),
                     lambda i, z_above: precision_weighted(data[i], self._params(self.top_down[i], z_above)))

    def top_posterior(self, x: torch.Tensor) -> Distribution:
        """q(z_L|x), top-down inference's Gaussian of the top layer (the VampPrior's components at pseudo-inputs);
        bottom-up inference has it only as an integral over the lower layers."""
        if self.config.inference == "bottom-up":
            raise ValueError("bottom-up inference has no q(z_L|x) of x alone: the VampPrior needs --inference "
                             "top-down")
        return gaussian(self._data_gaussians(x)[0][-1])

    def decoder_outputs(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's last hidden layer on z_1, the first d_1 coordinates of z (..., Dz)."""
        return self.decoder(z[..., :self.dims[0]])

    def raw_size(self) -> int:
        raise ValueError(NO_RAW)

    def encoder_params(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError(NO_RAW)

    def base_posterior(self, raw: torch.Tensor) -> Distribution:
        raise ValueError(NO_RAW)

    def posterior(self, raw: torch.Tensor) -> Distribution:
        raise ValueError(NO_RAW)
