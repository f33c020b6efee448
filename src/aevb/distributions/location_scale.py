"""Families torch lacks whose ``rsample`` is the paper's second trick (section 2.4): z = loc + scale * eps, eps drawn
from the standard member of the family. Triangular (eps by inverse CDF) and the multivariate Student's t of the
elliptical family (eps = L n sqrt(df / chi2)).
"""

import math

import torch
from torch.distributions import Chi2, Distribution, constraints
from torch.distributions.utils import broadcast_all

from .inverse_cdf import _InverseCdf


def _triangle_left(z, c):
    """Which side of the mode the standard point z lies on; c == 1 puts the whole support on the left."""
    return (z < c) | (c >= 1)


class Triangular(_InverseCdf):
    """Triangular(c, loc, scale) as scipy ``triang(c, loc, scale)``: support [loc, loc + scale], mode loc + c scale.

    The standard member (y = (x - loc) / scale in [0, 1]) has p(y) = 2y / c for y < c and 2(1 - y) / (1 - c)
    otherwise; CDF y^2 / c, then 1 - (1 - y)^2 / (1 - c).
    Trick: location-scale, z = loc + scale * eps with eps the standard triangular drawn by inverse CDF,
    eps = sqrt(c u) for u < c, else 1 - sqrt((1 - c)(1 - u)), u ~ U(0, 1).
    Mean loc + scale (1 + c) / 3; variance scale^2 (1 - c + c^2) / 18; entropy 1/2 + log(scale / 2).
    """

    _param_names = ("c", "loc", "scale")
    arg_constraints = {"c": constraints.unit_interval, "loc": constraints.real, "scale": constraints.positive}

    def __init__(self, c, loc=0.0, scale=1.0, validate_args=None):
        self.c, self.loc, self.scale = broadcast_all(c, loc, scale)
        super().__init__(self.c.shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.interval(self.loc, self.loc + self.scale)

    @property
    def mean(self):
        return self.loc + self.scale * (1 + self.c) / 3

    @property
    def mode(self):
        return self.loc + self.scale * self.c

    @property
    def variance(self):
        return self.scale.pow(2) * (1 - self.c + self.c.pow(2)) / 18

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        z = (value - self.loc) / self.scale
        left = _triangle_left(z, self.c)
        inside = (z >= 0) & (z <= 1)
        # Placeholders (1 / 1) in the branch not taken keep log() and its gradient finite there.
        num = torch.where(inside, torch.where(left, z, 1 - z), torch.ones_like(z))
        den = torch.where(inside, torch.where(left, self.c, 1 - self.c), torch.ones_like(z))
        lp = math.log(2) + num.log() - den.log() - self.scale.log()
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def cdf(self, value):
        z = ((value - self.loc) / self.scale).clamp(0, 1)
        left = _triangle_left(z, self.c)
        c_left = torch.where(left, self.c, torch.ones_like(z))
        c_right = torch.where(left, torch.zeros_like(z), self.c)
        return torch.where(left, z.pow(2) / c_left, 1 - (1 - z).pow(2) / (1 - c_right))

    def icdf(self, value):
        left = (value < self.c) | (self.c >= 1)
        # Placeholders in the branch not taken keep sqrt's gradient finite at c = 0 and c = 1.
        a = torch.where(left, self.c * value, torch.ones_like(value))
        b = torch.where(left, torch.ones_like(value), (1 - self.c) * (1 - value))
        standard = torch.where(left, a.sqrt(), 1 - b.sqrt())
        return self.loc + self.scale * standard

    def entropy(self):
        return 0.5 + (self.scale / 2).log()


class MultivariateStudentT(Distribution):
    """Multivariate Student's t, MVT(df, loc, L) with scale matrix Sigma = L L^T (scipy ``multivariate_t``):

        log p(x) = lgamma((df + d)/2) - lgamma(df/2) - d/2 log(df pi) - log|L| - (df + d)/2 log(1 + M/df),

    M = |L^-1 (x - loc)|^2. Trick: location-scale of the elliptical family, z = loc + L n sqrt(df / w),
    n ~ N(0, I_d), w ~ Chi2(df); w comes from torch's Chi2.rsample (implicit reparameterization of the Gamma), so
    df gets a gradient too. Mean loc (df > 1); covariance df / (df - 2) Sigma (df > 2).

    Args:
        df: degrees of freedom, batch shape.
        loc: (..., d).
        scale_tril: (..., d, d), lower triangular with positive diagonal.
    """

    arg_constraints = {
        "df": constraints.positive,
        "loc": constraints.real_vector,
        "scale_tril": constraints.lower_cholesky,
    }
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, df, loc, scale_tril, validate_args=None):
        if loc.dim() < 1 or scale_tril.dim() < 2:
            raise ValueError("loc needs shape (..., d) and scale_tril (..., d, d)")
        d = loc.shape[-1]
        df = torch.as_tensor(df, dtype=loc.dtype, device=loc.device)
        batch_shape = torch.broadcast_shapes(df.shape, loc.shape[:-1], scale_tril.shape[:-2])
        self.df = df.expand(batch_shape)
        self.loc = loc.expand(batch_shape + (d,))
        self.scale_tril = scale_tril.expand(batch_shape + (d, d))
        super().__init__(batch_shape, torch.Size((d,)), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(MultivariateStudentT, _instance)
        batch_shape = torch.Size(batch_shape)
        new.df = self.df.expand(batch_shape)
        new.loc = self.loc.expand(batch_shape + self.event_shape)
        new.scale_tril = self.scale_tril.expand(batch_shape + self.event_shape + self.event_shape)
        Distribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def covariance_matrix(self):
        return self.scale_tril @ self.scale_tril.mT * self._variance_factor[..., None, None]

    @property
    def _variance_factor(self):
        """df / (df - 2) for df > 2, inf for 1 < df <= 2, nan for df <= 1 (as torch's StudentT)."""
        df = self.df
        factor = torch.where(df > 2, df / (df - 2), torch.full_like(df, math.inf))
        return torch.where(df > 1, factor, torch.full_like(df, math.nan))

    @property
    def mean(self):
        return torch.where(self.df[..., None] > 1, self.loc, torch.full_like(self.loc, math.nan))

    @property
    def mode(self):
        return self.loc

    @property
    def variance(self):
        return self.scale_tril.pow(2).sum(-1) * self._variance_factor[..., None]

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        n = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)  # (S..., B..., d)
        w = Chi2(self.df).rsample(sample_shape)  # (S..., B...)
        radial = torch.sqrt(self.df / w).unsqueeze(-1)
        return self.loc + (self.scale_tril @ n.unsqueeze(-1)).squeeze(-1) * radial

    def _log_norm_const(self):
        d = self.event_shape[0]
        half_log_det = self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return (torch.lgamma((self.df + d) / 2) - torch.lgamma(self.df / 2)
                - d / 2 * torch.log(self.df * math.pi) - half_log_det)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        diff = (value - self.loc).unsqueeze(-1)  # (S..., B..., d, 1)
        white = torch.linalg.solve_triangular(self.scale_tril, diff, upper=False).squeeze(-1)
        maha = white.pow(2).sum(-1)  # (S..., B...)
        d = self.event_shape[0]
        return self._log_norm_const() - (self.df + d) / 2 * torch.log1p(maha / self.df)

    def entropy(self):
        d = self.event_shape[0]
        half = (self.df + d) / 2
        return -self._log_norm_const() + half * (torch.digamma(half) - torch.digamma(self.df / 2))
