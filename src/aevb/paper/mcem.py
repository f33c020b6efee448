"""Monte Carlo EM (Appendix E): the paper's baseline without a recognition model.

Every training datapoint keeps a persistent latent chain z_i. One iteration takes a minibatch, moves each of its
chains by one HMC transition of `leapfrog_steps` leapfrog steps on log p(x_i, z) (each chain's step size adapts
toward `target_accept`), then makes `updates` Adagrad steps of the generative weights on the mean of
log p(x_i, z_i) over the minibatch. It is not online: the chains are a table with one row per datapoint.

Only the decoder of a `VAE` is trained; its encoder is ignored. `PriorStart` wraps such a model for the
marginal-likelihood estimators of aevb.marginal, whose chains then start at prior samples instead of encoder
samples (give them a longer burn-in).
"""
from __future__ import annotations

import dataclasses
import math

import torch

from ..marginal.hmc import Joint, hmc_step
from ..optim import make_optimizer
from ..train import Batches


@dataclasses.dataclass
class MCEMConfig:
    """Settings of Monte Carlo EM; the defaults are Appendix E's.

    Args:
        lr: Adagrad step size of the weight updates.
        batch_size: datapoints per iteration.
        leapfrog_steps: leapfrog steps of the one HMC transition per iteration (the paper: 10).
        updates: weight updates per iteration (the paper: 5).
        target_accept: acceptance rate the per-chain step sizes adapt toward (the paper: 0.9).
        initial_step_size: every chain's step size before adaptation.
        weight_decay: "prior" (a N(0, I) prior on the weights, as in the paper's MAP) or a number.
        seed: seeds the chains' start, the data order and the HMC noise.
    """

    lr: float = 0.02
    batch_size: int = 100
    leapfrog_steps: int = 10
    updates: int = 5
    target_accept: float = 0.9
    initial_step_size: float = 0.1
    weight_decay: str | float = "prior"
    seed: int = 0

    def __post_init__(self):
        for name in ("batch_size", "leapfrog_steps", "updates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.target_accept < 1:
            raise ValueError(f"target_accept must be in (0, 1), got {self.target_accept}")
        if self.initial_step_size <= 0:
            raise ValueError(f"initial_step_size must be positive, got {self.initial_step_size}")


class MCEM:
    """Holds the chains, their step sizes and the optimizer; `run(n)` makes n iterations.

    `params` are the generative weights to learn (default: a VAE's decoder and dec_head).
    `samples_seen` counts datapoints through the E-step (batch_size per iteration), the x-axis of Figure 3.
    """

    def __init__(self, model, train_x: torch.Tensor, cfg: MCEMConfig = MCEMConfig(), params=None):
        self.model, self.train_x, self.cfg = model, train_x, cfg
        n = train_x.shape[0]
        if n == 0:
            raise ValueError("Monte Carlo EM needs at least one training datapoint")
        g = torch.Generator(device=train_x.device).manual_seed(cfg.seed)
        joint = Joint(model, train_x[:1])
        prior = joint.prior
        z0 = _prior_sample(prior, n, g)
        self.chains = joint.to_u(z0).detach()  # (N, Du), unconstrained coordinates
        self.step_size = train_x.new_full((n, 1), cfg.initial_step_size)
        self.accept_rate = math.nan
        if params is None:  # a VAE's generative part
            params = [p for name, p in model.named_parameters() if name.startswith(("decoder.", "dec_head."))]
        self.params = list(params)
        self.optimizer = make_optimizer("adagrad", self.params, lr=cfg.lr, n_train=n,
                                        weight_decay=cfg.weight_decay)
        self.batches = Batches(n, cfg.batch_size, False, cfg.seed + 1)
        self.samples_seen = 0

    def iteration(self) -> torch.Tensor:
        """One E-step (an HMC transition per chain of the minibatch) and `updates` M-steps. Returns the mean
        log p(x, z) of the minibatch after the last update (a detached scalar)."""
        c = self.cfg
        idx = self.batches.next().to(self.train_x.device)
        x = self.train_x[idx]
        joint = Joint(self.model, x)
        u, eps = self.chains[idx], self.step_size[idx]
        u, _, accept = hmc_step(joint, u, joint(u), eps, c.leapfrog_steps)
        self.step_size[idx] = eps * torch.exp(accept - c.target_accept).unsqueeze(-1)
        self.chains[idx] = u
        self.accept_rate = float(accept.mean())
        z = joint.transform(u)
        log_prior = joint.prior.log_prob(z)
        for _ in range(c.updates):
            log_joint = self.model.decode(z).log_prob(x) + log_prior
            self.optimizer.zero_grad(set_to_none=True)
            (-log_joint.mean()).backward()
            self.optimizer.step()
        self.samples_seen += x.shape[0]
        return log_joint.detach().mean()

    def run(self, n_iterations: int) -> float:
        """n iterations; returns the mean log p(x, z) of the last minibatch."""
        last = torch.tensor(math.nan)
        for _ in range(n_iterations):
            last = self.iteration()
        return float(last)


def _prior_sample(prior, n: int, g: torch.Generator) -> torch.Tensor:
    """n draws from the prior: with the private generator for a Normal prior, else from the global stream."""
    base = getattr(prior, "base_dist", prior)
    if isinstance(base, torch.distributions.Normal):
        eps = torch.randn((n, *prior.event_shape), generator=g, device=base.loc.device, dtype=base.loc.dtype)
        return base.loc + base.scale * eps
    return prior.sample((n,))


class PriorStart:
    """A model without a usable encoder (Monte Carlo EM's), seen through the contract prior / encode / decode with
    encode(x) = p(z) for every x: the marginal-likelihood estimators' chains then start at prior samples."""

    def __init__(self, model):
        self.model = model

    @property
    def training(self) -> bool:
        return self.model.training

    def eval(self):
        self.model.eval()
        return self

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self

    def prior(self):
        return self.model.prior()

    def encode(self, x: torch.Tensor):
        return self.model.prior().expand(x.shape[:1])

    def decode(self, z: torch.Tensor):
        return self.model.decode(z)
