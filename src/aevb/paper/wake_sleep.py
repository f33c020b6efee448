"""The paper's wake-sleep baseline (section 5, Figure 2), registered as estimator "wake_sleep" so that the trainer
runs it like the SGVB estimators."""
from __future__ import annotations

import torch

from ..estimators import check_args, register


@register("wake_sleep", gradients=("standard",))
def wake_sleep(model, x: torch.Tensor, *, num_samples: int = 1, gradient: str = "standard") -> dict:
    """The wake-sleep baseline (Hinton, Dayan, Frey & Neal 1995; the original, not reweighted) as one loss.

    Wake: z ~ q(z|x) without a path to the encoder; the decoder ascends log p(x, z) = log p(x|z) + log p(z).
    Sleep: dream z ~ p(z), x~ ~ p(x|z) (one dream per datapoint of the minibatch, all without gradient); the
    encoder ascends log q(z|x~). Each term reaches only its own parameters, so one backward pass and one
    optimizer step make both updates. Not a bound: the returned `elbo` is estimator A's value at the wake
    samples, for the running display (the trainer logs the standard ELBO).
    """
    check_args(num_samples, gradient, wake_sleep.gradients)
    q, prior = model.encode(x), model.prior()
    with torch.no_grad():
        z = q.sample((num_samples,))  # (L, B, Dz)
        dream_z = prior.sample(x.shape[:1])  # (B, Dz)
        dream_x = model.decode(dream_z).sample()  # (B, D)
    rec = model.decode(z).log_prob(x)  # (L, B)
    log_prior = prior.log_prob(z)
    wake = (rec + log_prior).mean(0)  # (B,)
    sleep = model.encode(dream_x).log_prob(dream_z)  # (B,)
    with torch.no_grad():
        kl = (q.log_prob(z) - log_prior).mean(0)
    return {"loss": -(wake.mean() + sleep.mean()), "elbo": rec.mean(0).detach() - kl, "rec": rec.mean(0).detach(),
            "kl": kl}
