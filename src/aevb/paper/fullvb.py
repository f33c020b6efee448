"""Full variational Bayes (Appendix F): a Gaussian q(theta) over the generative parameters as well as q(z|x).

The bound on log p(X) (Appendix F, eqs. 21-24, Algorithm 2) with both KLs analytic (the low-variance form of F.1):
    L(X) = -KL(q(theta) || p(theta)) + sum_i [ E_q(theta) E_q(z|x_i) log p(x_i|z, theta) - KL(q(z|x_i) || p(z)) ],
estimated from a minibatch of M as N times its mean term minus the theta KL, and reported per datapoint (/ N).

A KL weight w (TrainConfig's `beta` and `kl_warmup`) weighs the whole KL of the variational posterior
q(theta) prod_i q(z_i|x_i) against p(theta) prod_i p(z_i): both KL(q(z|x_i) || p(z)) and KL(q(theta) || p(theta)) / N
are multiplied by w in the training loss (maximizing E_q log p(X|Z, theta) - w KL is the bound of the likelihood
raised to 1/w, so the weight tempers the posterior over theta and z alike). `free_bits` floors the KL of each latent
dimension of z as for the VAE; the theta KL has no latent dimensions and is only weighted. The reported bounds stay
w = 1.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Independent, Normal

from ..estimators import evaluate, sgvb_b
from ..models import VAE
from ..train import Trainer
from ..train.denormals import flush_denormals

# How theta is drawn inside decode(z): "local" draws the pre-activations of every linear layer from their exact
# Gaussian given the layer's input (local reparameterization, Kingma, Salimans & Welling 2015), which is in
# distribution one independent theta per datapoint, as in Algorithm 2; "shared" draws one theta per decode call
# (per minibatch) and multiplies by it. Both are unbiased; "local" has the lower variance.
THETA_NOISE = ("local", "shared")


class FullVB(nn.Module):
    """A VAE whose generative parameters theta (decoder MLP and output head) have q(theta) = N(loc, diag scale^2).

    loc is the wrapped VAE's own decoder parameters, so `self.vae` is always the model at the posterior mean of
    theta; the variances are new parameters, stored as log scale^2. The encoder's parameters stay point estimates:
    in Appendix F they are variational parameters, like loc and scale. The prior is p(theta) = N(0, prior_std^2 I)
    (Appendix F.1: N(0, I)). The model follows the contract prior() / encode(x) / decode(z); decode draws theta
    afresh on every call (`theta_noise`), or uses theta = loc inside `at_mean()`.

    Args:
        vae: the VAE whose decoder parameters become loc (its layers must be Linear or parameter-free).
        n_train: N, the training set size; the bound per datapoint carries KL(q(theta) || p(theta)) / N.
        prior_std: standard deviation of the prior on every generative parameter.
        init_log_var: log scale^2 of every parameter at the start (small: training starts near the point estimate).
        theta_noise: a key of THETA_NOISE.
    """

    def __init__(self, vae: VAE, *, n_train: int, prior_std: float = 1.0, init_log_var: float = -6.0,
                 theta_noise: str = "local"):
        super().__init__()
        if theta_noise not in THETA_NOISE:
            raise ValueError(f"unknown theta_noise {theta_noise!r}; choose from {', '.join(THETA_NOISE)}")
        if n_train < 1 or prior_std <= 0:
            raise ValueError(f"n_train and prior_std must be positive, got {n_train} and {prior_std}")
        self.vae, self.config = vae, vae.config
        self.n_train, self.prior_std, self.theta_noise = int(n_train), float(prior_std), theta_noise
        self.layers = [m for m in vae.decoder if isinstance(m, nn.Linear)] + [vae.dec_head.out]
        stray = [m for m in vae.decoder if not isinstance(m, nn.Linear) and any(True for _ in m.parameters())]
        if stray:
            raise ValueError(f"full VB needs decoder layers that are Linear or parameter-free, got {stray[0]}")
        self.log_var = nn.ParameterList([nn.Parameter(torch.full_like(p, init_log_var))
                                         for layer in self.layers for p in (layer.weight, layer.bias)])
        self._at_mean = False

    # -- q(theta) and p(theta) ----------------------------------------------------------------------------
    def theta_loc(self) -> list[torch.Tensor]:
        """loc of q(theta), one tensor per parameter: [W_1, b_1, ..., W_out, b_out]."""
        return [p for layer in self.layers for p in (layer.weight, layer.bias)]

    def q_theta(self) -> Independent:
        """q(theta) over the flattened generative parameters, event shape (P,)."""
        loc = torch.cat([p.flatten() for p in self.theta_loc()])
        scale = torch.cat([(0.5 * v).exp().flatten() for v in self.log_var])
        return Independent(Normal(loc, scale), 1)

    def p_theta(self) -> Independent:
        """p(theta) = N(0, prior_std^2 I) with the same event shape as q_theta()."""
        n = sum(p.numel() for p in self.theta_loc())
        loc = self.log_var[0].new_zeros(n)
        return Independent(Normal(loc, torch.full_like(loc, self.prior_std)), 1)

    def kl_theta(self) -> torch.Tensor:
        """KL(q(theta) || p(theta)) = 1/2 sum_j [(scale_j^2 + loc_j^2) / s0^2 - 1 - log scale_j^2 + log s0^2] (F.1)."""
        s2 = self.prior_std ** 2
        total = 0.0
        for loc, log_var in zip(self.theta_loc(), self.log_var):
            total = total + 0.5 * ((log_var.exp() + loc.square()) / s2 - 1.0 - log_var + math.log(s2)).sum()
        return total

    @contextlib.contextmanager
    def at_mean(self):
        """Within the block, decode(z) uses theta = loc (the posterior mean) instead of drawing theta."""
        previous, self._at_mean = self._at_mean, True
        try:
            yield self
        finally:
            self._at_mean = previous

    # -- the model contract -------------------------------------------------------------------------------
    def prior(self):
        return self.vae.prior()

    def encoder_params(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encoder_params(x)

    def posterior(self, raw: torch.Tensor):
        return self.vae.posterior(raw)

    def encode(self, x: torch.Tensor):
        """q(z|x) of the (point-estimate) encoder."""
        return self.vae.encode(x)

    def decode(self, z: torch.Tensor):
        """p(x|z, theta) with theta ~ q(theta) drawn afresh (see THETA_NOISE), or theta = loc inside at_mean()."""
        noise = "mean" if self._at_mean else self.theta_noise
        h, i = z, 0
        for module in self.vae.decoder:
            if isinstance(module, nn.Linear):
                h = self._linear(i, h, noise)
                i += 1
            else:
                h = module(h)
        return self.vae.dec_head.from_outputs(self._linear(i, h, noise))

    def _linear(self, i: int, h: torch.Tensor, noise: str) -> torch.Tensor:
        layer, log_var_w, log_var_b = self.layers[i], self.log_var[2 * i], self.log_var[2 * i + 1]
        if noise == "mean":
            return F.linear(h, layer.weight, layer.bias)
        if noise == "shared":
            w = layer.weight + (0.5 * log_var_w).exp() * torch.randn_like(layer.weight)
            b = layer.bias + (0.5 * log_var_b).exp() * torch.randn_like(layer.bias)
            return F.linear(h, w, b)
        # a = W h + b with independent Gaussian entries is Gaussian: mean loc_W h + loc_b, var scale_W^2 h^2 + scale_b^2
        mean = F.linear(h, layer.weight, layer.bias)
        var = F.linear(h.square(), log_var_w.exp(), log_var_b.exp())
        return mean + var.sqrt() * torch.randn_like(mean)

    @torch.no_grad()
    def sample(self, n: int, *, mean: bool = True) -> torch.Tensor:
        """n decoder means (or draws) at z ~ p(z), theta ~ q(theta) (use at_mean() for theta = loc)."""
        p = self.decode(self.prior().sample((n,)))
        return p.mean if mean else p.sample()


def full_vb(model: FullVB, x: torch.Tensor, *, num_samples: int = 1, gradient: str = "standard", kl_weight=1.0,
            free_bits: float = 0.0) -> dict:
    """Appendix F's estimator per datapoint: estimator B with theta ~ q(theta), minus KL(q(theta) || p(theta)) / N.

    F.1's low-variance form: KL(q(z|x) || p(z)) and KL(q(theta) || p(theta)) in closed form, only
    log p(x|z, theta) sampled (z ~ q(z|x) L times, theta as model.theta_noise says). Over a minibatch of M the
    loss is -(1/M) sum_i [rec_i - kl_i] + KL_theta / N, i.e. -L(X) / N for eq. 8's minibatch estimate of L(X).

    With a KL weight w (`kl_weight`) the loss is -(1/M) sum_i rec_i + w [(1/M) sum_i kl_i + KL_theta / N]: the
    weight applies to the KL of the whole variational posterior, over z and theta. `free_bits` floors each latent
    dimension's KL of z (estimators.kl_loss); the theta KL is weighted, never floored. Neither changes `elbo`.

    Returns:
        dict with `loss` (scalar) and detached (B,) `elbo` (the per-datapoint bound, including KL_theta / N),
        `rec`, `kl` (of z), and the scalar `kl_theta` (/ N).
    """
    out = sgvb_b(model, x, num_samples=num_samples, gradient=gradient, kl_weight=kl_weight, free_bits=free_bits)
    kl_theta = model.kl_theta() / model.n_train
    return {**out, "loss": out["loss"] + kl_weight * kl_theta, "elbo": out["elbo"] - kl_theta.detach(),
            "kl_theta": kl_theta.detach()}



@torch.no_grad()
def evaluate_full_vb(model: FullVB, x: torch.Tensor, *, num_samples: int = 1, batch_size: int = 2000) -> dict:
    """The bounds of a full-VB model over a whole split, nats per datapoint.

    Returns:
        dict of floats: `elbo` (E_q(theta) of the ELBO, one theta draw per z draw), `elbo_at_mean` (theta = loc),
        `kl_theta` (KL(q(theta) || p(theta)) / N), `bound` = elbo - kl_theta (per datapoint, L(X) / N on the
        training set; on other data it only shows the same sum), `rec`, `kl` and `n`.
    """
    drawn = evaluate(model, x, estimator="sgvb_b", num_samples=num_samples, batch_size=batch_size)
    with model.at_mean():
        at_mean = evaluate(model, x, estimator="sgvb_b", num_samples=num_samples, batch_size=batch_size)
    kl_theta = float(model.kl_theta()) / model.n_train
    return {"elbo": drawn["elbo"], "elbo_at_mean": at_mean["elbo"], "kl_theta": kl_theta,
            "bound": drawn["elbo"] - kl_theta, "rec": drawn["rec"], "kl": drawn["kl"], "n": drawn["n"]}


def fit(model: FullVB, train_x: torch.Tensor, test_x: torch.Tensor, cfg, run_dir=None, *, progress: bool = True,
        resume: bool = False) -> list[dict]:
    """aevb.fit with `full_vb` as the objective (Algorithm 2 with minibatches); the same history and run folder.

    The logged `train_elbo`/`test_elbo` are E_q(theta) ELBOs (theta drawn, KL_theta not subtracted); use
    evaluate_full_vb for the bound. cfg.weight_decay must be 0 (the prior on theta is in the objective) and
    cfg.estimator sgvb_b or auto (F.1's form is estimator B). cfg.beta, cfg.kl_warmup and cfg.free_bits act as
    `full_vb` describes (the weight on the KL over z and theta, free bits on z's dimensions).
    """
    if cfg.weight_decay != 0:
        raise ValueError("full VB has its prior on theta in the objective; use weight_decay=0")
    if cfg.estimator not in ("auto", "sgvb_b"):
        raise ValueError(f"full VB uses estimator B (analytic KLs), not {cfg.estimator!r}")
    torch.manual_seed(cfg.seed)
    flush = flush_denormals(True)
    trainer = Trainer(model, train_x, test_x, cfg, Path(run_dir) if run_dir is not None else None, progress=progress)
    trainer.estimator = torch.compile(full_vb) if cfg.compile else full_vb
    try:
        if resume:
            trainer.restore()
        return trainer.run()
    finally:
        if flush:
            flush_denormals(False)
