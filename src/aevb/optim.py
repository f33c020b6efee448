"""Optimizers: the paper's Adagrad (section 5 and the authors' code) and the table the trainer picks from."""
from __future__ import annotations

import torch


class PaperAdagrad(torch.optim.Optimizer):
    """Adagrad as in the AEVB experiments: warm-up minibatches and a N(0, I) prior on the weights.

    For the first `warmup` steps only the squared gradients are accumulated (no update), then
    p <- p - lr * g / sqrt(sum g^2 + eps). `prior_scale` adds prior_scale * p to each gradient, which is the
    gradient of a N(0, I) prior on the parameters scaled by M/N per minibatch of M when the loss is a per-datapoint
    mean: use prior_scale = 1/N.
    """

    def __init__(self, params, lr: float = 0.01, *, eps: float = 1e-8, warmup: int = 100, prior_scale: float = 0.0):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        super().__init__(params, dict(lr=lr, eps=eps, warmup=warmup, prior_scale=prior_scale))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            lr, eps, decay, warmup = group["lr"], group["eps"], group["prior_scale"], group["warmup"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["sum"] = torch.zeros_like(p)
                    st["step"] = torch.zeros((), dtype=torch.float64)
                self._update(p, p.grad, st, lr, eps, decay, warmup)
        return loss

    def _update(self, p, g, st, lr, eps, decay, warmup) -> None:
        # In place, with one scratch buffer per parameter: fresh temporaries would cost more than the arithmetic.
        if decay:
            g.add_(p, alpha=decay)
        st["sum"].addcmul_(g, g)
        st["step"] += 1
        if st["step"].item() <= warmup:
            return
        buf = self._scratch.get(p)
        if buf is None or buf.shape != p.shape:
            buf = self._scratch[p] = torch.empty_like(p)
        torch.add(st["sum"], eps, out=buf).rsqrt_()
        p.addcmul_(g, buf, value=-lr)

    @property
    def _scratch(self) -> dict:
        if not hasattr(self, "_scratch_buffers"):
            self._scratch_buffers = {}
        return self._scratch_buffers


def make_optimizer(name: str, params, *, lr: float, n_train: int, warmup: int, weight_decay: str | float):
    """Build an optimizer by name; weight_decay="prior" means a N(0, I) prior on the weights (1/N per datapoint)."""
    decay = 1.0 / n_train if weight_decay == "prior" else float(weight_decay)
    if name == "adagrad":
        return PaperAdagrad(params, lr=lr, warmup=warmup, prior_scale=decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay, foreach=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay, foreach=True)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")


OPTIMIZERS = ("adagrad", "adam", "adamw")
