"""A known-answer latent model for tests: p(z) = N(0, I), p(x|z) = N(W z + b, s^2 I).

log p(x) = log N(x; b, W W^T + s^2 I) and the posterior p(z|x) = N(m, S) with S = (I + W^T W / s^2)^-1,
m = S W^T (x - b) / s^2 are exact, so bounds and marginal-likelihood estimators can be checked against them.
It follows the public model contract prior() / encode(x) / decode(z).
"""
import torch
from torch.distributions import Independent, MultivariateNormal, Normal


class LinearGaussian(torch.nn.Module):
    def __init__(self, x_dim=5, z_dim=2, noise=0.5, seed=0, q_shift=0.0, q_scale=1.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(x_dim, z_dim, generator=g, dtype=torch.float64)
        self.b = torch.randn(x_dim, generator=g, dtype=torch.float64)
        self.s = noise
        self.z_dim = z_dim
        # q(z|x): the exact posterior's mean and marginal std, optionally shifted/scaled to make q imperfect
        self.q_shift, self.q_scale = q_shift, q_scale

    def prior(self):
        zeros = torch.zeros(self.z_dim, dtype=torch.float64)
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)

    def posterior_cov(self):
        eye = torch.eye(self.z_dim, dtype=torch.float64)
        return torch.linalg.inv(eye + self.W.T @ self.W / self.s**2)

    def posterior_mean(self, x):
        return (x - self.b) @ self.W @ self.posterior_cov() / self.s**2  # (B, Dz); S is symmetric

    def exact_posterior(self, x):
        return MultivariateNormal(self.posterior_mean(x), covariance_matrix=self.posterior_cov())

    def encode(self, x):
        """Diagonal Gaussian q: exact means, exact marginal stds (exact only if the posterior is diagonal)."""
        std = self.posterior_cov().diagonal().sqrt().expand(x.shape[0], -1)
        return Independent(Normal(self.posterior_mean(x) + self.q_shift, std * self.q_scale), 1)

    def decode(self, z):
        return Independent(Normal(z @ self.W.T + self.b, torch.full_like(self.b, self.s)), 1)

    def log_marginal(self, x):
        cov = self.W @ self.W.T + self.s**2 * torch.eye(self.W.shape[0], dtype=torch.float64)
        return MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)

    def sample_x(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.z_dim, generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + self.s * torch.randn(n, self.W.shape[0], generator=g, dtype=torch.float64)


class DiagonalLinearGaussian(LinearGaussian):
    """W with orthogonal columns, so the exact posterior is diagonal and the diagonal q can equal it."""

    def __init__(self, x_dim=5, z_dim=2, noise=0.5, seed=0, **kw):
        super().__init__(x_dim, z_dim, noise, seed, **kw)
        q, _ = torch.linalg.qr(self.W)
        self.W = q * torch.tensor([1.5, 0.7], dtype=torch.float64)[:z_dim]


class LearnableQ(torch.nn.Module):
    """Wraps a DiagonalLinearGaussian with q(z|x) = N(m + a, (s * exp(b))^2): a and b are the "encoder" parameters,
    and a = b = 0 is the exact posterior. Follows the contract encoder_params / posterior used by STL and DReG."""

    def __init__(self, lg: LinearGaussian, a=0.0, b=0.0):
        super().__init__()
        self.lg = lg
        self.a = torch.nn.Parameter(torch.full((lg.z_dim,), a, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.full((lg.z_dim,), b, dtype=torch.float64))
        self.x_dim = lg.W.shape[0]

    def prior(self):
        return self.lg.prior()

    def decode(self, z):
        return self.lg.decode(z)

    def encoder_params(self, x):
        m = self.lg.posterior_mean(x) + self.a
        log_s = 0.5 * self.lg.posterior_cov().diagonal().log() + self.b
        return torch.cat([m, log_s.expand_as(m)], -1)

    def posterior(self, raw):
        m, log_s = raw.chunk(2, -1)
        return Independent(Normal(m, log_s.exp()), 1)

    def encode(self, x):
        return self.posterior(self.encoder_params(x))
