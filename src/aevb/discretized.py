"""Probability masses over 8-bit values: the discretized logistic and a mixture of them over a pixel's channels.

A value x in [0, 1] stands for level k = round(255 x), i.e. x = k / 255. The discretized logistic with location mu
and scale s gives level k the logistic's mass on the bin [x - h, x + h], h = 1 / 510 (half a level), and the edge
levels the tails: level 0 gets (-inf, h], level 255 gets [1 - h, inf), so the 256 masses sum to 1 (Kingma et al.
2016, IAF; Salimans et al. 2017, PixelCNN++). The mixture over a pixel's C channels draws a component k, then each
channel c from a discretized logistic whose location is mu_kc plus a linear function of the pixel's earlier
channels (PixelCNN++'s coupling: G depends on R, B on R and G), so every component is a normalized autoregressive
mass over the 256^C colours.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import Distribution, constraints

LEVELS = 256
HALF_BIN = 0.5 / (LEVELS - 1)  # half the distance between two levels, in [0, 1]
LOG_SCALE_RANGE = (-10.0, 10.0)  # log s is clamped here: s from 4.5e-5 (a bin holds all but 1e-37) to 2.2e4


def level(x: torch.Tensor) -> torch.Tensor:
    """The level k = round(255 x) in 0..255 of values x (as floats; values off the grid go to the nearest)."""
    return (x * (LEVELS - 1)).round().clamp(0, LEVELS - 1)


def to_grid(x: torch.Tensor) -> torch.Tensor:
    """x moved to the nearest of the 256 values k / 255 (clamped into [0, 1])."""
    return level(x) / (LEVELS - 1)


def log_bin_mass(x: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(level of x) under the logistic(loc, exp(log_scale)) discretized to the 256 levels (broadcast shapes).

    With u = (x + h - loc) / s and l = (x - h - loc) / s, an interior level has mass sigmoid(u) - sigmoid(l)
    = sigmoid(u) sigmoid(-l) (1 - exp(-(u - l))), whose log is computed as logsigmoid(u) + logsigmoid(-l) +
    log(-expm1(-2h/s)): every term is finite and accurate for any loc and s (no difference of two nearly equal
    CDFs, no fallback to the density). Level 0 has mass sigmoid(u), level 255 has 1 - sigmoid(l) = sigmoid(-l).
    """
    k = level(x)
    log_scale = log_scale.clamp(*LOG_SCALE_RANGE)
    inv_s = torch.exp(-log_scale)
    centre = k / (LEVELS - 1) - loc
    upper = (centre + HALF_BIN) * inv_s
    lower = (centre - HALF_BIN) * inv_s
    above, below = F.logsigmoid(upper), F.logsigmoid(-lower)
    interior = above + below + torch.log(-torch.expm1(-2 * HALF_BIN * inv_s))
    return torch.where(k == 0, above, torch.where(k == LEVELS - 1, below, interior))


def _logistic_draw(loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """A draw of the discretized logistic: loc + s log(u / (1 - u)) moved to the grid (the tails to the edges)."""
    finfo = torch.finfo(loc.dtype)
    u = torch.rand_like(loc).clamp(finfo.tiny, 1 - finfo.eps)
    return to_grid(loc + log_scale.clamp(*LOG_SCALE_RANGE).exp() * (torch.log(u) - torch.log1p(-u)))


class DiscretizedLogistic(Distribution):
    """The logistic(loc, exp(log_scale)) discretized to the 256 levels of [0, 1], one per element (batch shape =
    the parameters' shape; wrap in Independent for an image). `mean` is the median (loc moved to the grid), the
    picture of a decoder; `sample` draws exactly, on the grid."""

    arg_constraints = {"loc": constraints.real, "log_scale": constraints.real}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor, validate_args=None):
        self.loc, self.log_scale = torch.broadcast_tensors(loc, log_scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log P(level of value) (the mass of its bin), broadcast against the parameters."""
        return log_bin_mass(value, self.loc, self.log_scale)

    @property
    def mean(self) -> torch.Tensor:
        """The median on the grid: loc clamped into [0, 1] and moved to the nearest level."""
        return to_grid(self.loc)

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        return _logistic_draw(self.loc.expand(shape), self.log_scale.expand(shape))


def coupling_index(c: int, j: int) -> int:
    """Where the coefficient of channel j (< c) in channel c's location sits among the C(C-1)/2 coefficients:
    (1, 0), (2, 0), (2, 1), (3, 0), ... (for RGB: G on R, B on R, B on G)."""
    return c * (c - 1) // 2 + j


class DiscretizedLogisticMixture(Distribution):
    """A mixture of K discretized logistics over each pixel's C channels, pixels independent; event shape (C P,)
    in C-major order (all of channel 0's P pixels, then channel 1's, ...), as the flat rows of image data.

    Args:
        logits: (..., K, P) unnormalized log mixture weights per pixel.
        loc: (..., K, C, P) locations before coupling.
        log_scale: (..., K, C, P) log scales.
        coeffs: (..., K, C(C-1)/2, P) coupling coefficients (see `coupling_index`): component k's location of
            channel c is loc_kc + sum_{j<c} coeffs_k[c, j] x_j, with x_j the pixel's value of channel j.
    """

    arg_constraints = {}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, logits, loc, log_scale, coeffs, validate_args=None):
        self.logits, self.loc, self.log_scale, self.coeffs = logits, loc, log_scale, coeffs
        self.channels, pixels = loc.shape[-2], loc.shape[-1]
        super().__init__(logits.shape[:-2], torch.Size((self.channels * pixels,)), validate_args=validate_args)

    def _locations(self, x: torch.Tensor) -> torch.Tensor:
        """Coupled locations (..., K, C, P) given the pixels' channel values x (..., 1, C, P) on the grid."""
        locs = []
        for c in range(self.channels):
            m = self.loc[..., c, :]
            for j in range(c):
                m = m + self.coeffs[..., coupling_index(c, j), :] * x[..., j, :]
            locs.append(m)
        return torch.stack(torch.broadcast_tensors(*locs), -2)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log p(x) summed over pixels: sum_p log sum_k pi_k prod_c P_k(x_pc | x_p,<c), shape broadcast(...)."""
        x = to_grid(value).unflatten(-1, (self.channels, -1)).unsqueeze(-3)  # (..., 1, C, P)
        per_component = log_bin_mass(x, self._locations(x), self.log_scale).sum(-2)  # (..., K, P)
        return torch.logsumexp(F.log_softmax(self.logits, -2) + per_component, -2).sum(-1)

    def _pick(self, k: torch.Tensor):
        """The parameters of component k (..., P) per pixel: loc, log_scale (..., C, P), coeffs (..., n, P)."""
        def take(t):
            index = k.unsqueeze(-2).unsqueeze(-2).expand(*t.shape[:-3], 1, t.shape[-2], t.shape[-1])
            return t.gather(-3, index).squeeze(-3)
        return take(self.loc), take(self.log_scale), take(self.coeffs)

    def _decode(self, k: torch.Tensor, draw: bool) -> torch.Tensor:
        """Channel by channel from component k, each given the earlier ones' grid values: drawn, or the median."""
        loc, log_scale, coeffs = self._pick(k)
        values: list[torch.Tensor] = []
        for c in range(self.channels):
            m = loc[..., c, :]
            for j in range(c):
                m = m + coeffs[..., coupling_index(c, j), :] * values[j]
            values.append(_logistic_draw(m, log_scale[..., c, :]) if draw else to_grid(m))
        return torch.stack(values, -2).flatten(-2)

    @property
    def mean(self) -> torch.Tensor:
        """A picture on the grid: each pixel's most probable component, channel by channel at its median given the
        earlier channels' values (not the mixture's mean, which lies off the grid)."""
        return self._decode(self.logits.argmax(-2), draw=False)

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.logits.shape
        finfo = torch.finfo(self.logits.dtype)
        u = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device).clamp(finfo.tiny, 1 - finfo.eps)
        gumbel = -torch.log(-torch.log(u))
        k = (self.logits.expand(shape) + gumbel).argmax(-2)
        expand = DiscretizedLogisticMixture(*(t.expand(torch.Size(sample_shape) + t.shape)
                                              for t in (self.logits, self.loc, self.log_scale, self.coeffs)))
        return expand._decode(k, draw=True)
