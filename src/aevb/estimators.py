"""SGVB estimators of the evidence lower bound (section 2.3, eqs. 6-7) and the importance-weighted bound.

Each estimator is `(model, x, *, num_samples, gradient) -> dict` with a scalar `loss` that carries the graph
(loss = -mean bound per datapoint, eq. 8 up to the factor N) and detached per-datapoint diagnostics in nats.
`gradient` picks the gradient estimator: "standard" (plain reparameterization), "stl" (sticking the landing,
Roeder et al. 2017: the score term of log q is dropped by evaluating q's density with stopped parameters) or
"dreg" (doubly reparameterized, Tucker et al. 2019, for iwae). All three have the same expected gradient.
Each estimator is registered in `ESTIMATORS` with the facts the trainer needs: the gradients it allows, whether
it needs an analytic KL, and whether its bound has a KL term that training may weight (`kl_terms`: sgvb_a and
sgvb_b take `kl_weight` and `free_bits`, see `kl_loss`; their `elbo` stays the true bound). The paper's
wake-sleep baseline (aevb.paper.wake_sleep) registers itself with the same signature; it is not an ELBO estimator.
"""
from __future__ import annotations

import math

import torch
from torch.distributions import Independent, kl_divergence

GRADIENTS = ("standard", "stl", "dreg")
ESTIMATORS: dict = {}


def register(name: str, *, gradients: tuple[str, ...], analytic_kl: bool = False, kl_terms: bool = False):
    """Register an estimator `(model, x, *, num_samples, gradient) -> dict` under `name`, with the gradient
    estimators it allows (`fn.gradients`), whether it needs a closed-form KL (`fn.analytic_kl`) and whether it
    also takes `kl_weight` and `free_bits` (`fn.kl_terms`)."""
    def decorate(fn):
        fn.gradients, fn.analytic_kl, fn.kl_terms = tuple(gradients), analytic_kl, kl_terms
        ESTIMATORS[name] = fn
        return fn
    return decorate


def check_args(num_samples: int, gradient: str, allowed: tuple[str, ...]) -> None:
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if gradient not in allowed:
        raise ValueError(f"gradient {gradient!r} is not available here; choose from {', '.join(allowed)}")


def analytic_kl(model) -> bool | None:
    """Whether the model's (q, prior) pair has a closed-form KL, as the model states it (`has_analytic_kl`);
    None for a model that does not say."""
    return getattr(model, "has_analytic_kl", None)


def _sample(model, x, num_samples: int, gradient: str):
    """q(z|x), z ~ q (L, B, Dz), and the q whose density log q(z) is evaluated (parameters stopped for STL/DReG).

    The standard gradient needs only the contract encode(x); STL and DReG also need model.encoder_params(x) and
    model.posterior(raw), to rebuild q from stopped parameters.
    """
    if gradient == "standard":
        q = model.encode(x)
        return q, q.rsample((num_samples,)), q
    raw = model.encoder_params(x)
    q = model.posterior(raw)
    return q, q.rsample((num_samples,)), model.posterior(raw.detach())


def _factors(dist):
    """The one-dimensional factors of a distribution with event shape (Dz,): the base of an Independent over one
    dimension, else None (a full covariance, a Dirichlet, a flow, a mixture: no per-dimension split)."""
    if isinstance(dist, Independent) and dist.reinterpreted_batch_ndims == 1:
        return dist.base_dist
    return None


def _split_pair(q, prior):
    """(q's factors, the prior's factors), or a ValueError naming the pair when the KL does not split."""
    qf, pf = _factors(q), _factors(prior)
    if qf is None or pf is None:
        raise ValueError(f"free bits need a KL that splits over the latent dimensions, and KL({_name(q)} || "
                         f"{_name(prior)}) does not; train without --free-bits")
    return qf, pf


def kl_splits(model) -> bool | None:
    """Whether the model's KL(q(z|x) || p(z)) is a sum over latent dimensions (q and p factorize), which free bits
    need: the model's `kl_splits` where it states it, else decided from q built from zero encoder outputs
    (`raw_size()` or `family.n_out`, then `posterior(raw)`) and the prior, without data; None where that cannot be
    told (the estimator then refuses on the first minibatch)."""
    stated = getattr(model, "kl_splits", None)
    if stated is not None:
        return bool(stated)
    family, config = getattr(model, "family", None), getattr(model, "config", None)
    if family is None or config is None or not hasattr(model, "posterior"):
        return None
    size = model.raw_size() if hasattr(model, "raw_size") else family.n_out(config.latent_dim)
    try:
        with torch.no_grad():
            q = model.posterior(torch.zeros(1, size))
            prior = model.prior()
    except (AttributeError, TypeError, ValueError, RuntimeError, NotImplementedError):
        return None
    return _factors(q) is not None and _factors(prior) is not None


def kl_loss(kl: torch.Tensor, kl_weight=1.0, free_bits: float = 0.0, kl_dims=None) -> torch.Tensor:
    """The KL term of a training loss (scalar, with the graph): kl_weight * mean_b KL_b, or with free bits
    (Kingma et al. 2016, one group per latent dimension) kl_weight * sum_j max(free_bits, mean_b KL_bj).

    Args:
        kl: (B,) KL per datapoint.
        kl_weight: the weight of the KL (beta, or the warm-up's current value).
        free_bits: lambda, nats per latent dimension; 0 is off.
        kl_dims: (B, Dz) the KL per datapoint and dimension; needed with free bits.
    """
    if not free_bits:
        return kl_weight * kl.mean()
    return kl_weight * kl_dims.mean(0).clamp(min=free_bits).sum()


def _loss(elbo, rec, kl, kl_weight, free_bits, kl_dims) -> torch.Tensor:
    """-mean bound, or with a KL weight or free bits -(mean rec - kl_loss) (the bound itself is unchanged)."""
    if kl_weight == 1 and not free_bits:
        return -elbo.mean()
    return kl_loss(kl, kl_weight, free_bits, kl_dims() if free_bits else None) - rec.mean()


@register("sgvb_a", gradients=("standard", "stl"), kl_terms=True)
def sgvb_a(model, x: torch.Tensor, *, num_samples: int = 1, gradient: str = "standard", kl_weight=1.0,
           free_bits: float = 0.0) -> dict:
    """Estimator A (eq. 6): (1/L) sum_l [log p(x, z_l) - log q(z_l|x)], z_l = g(eps_l, x).

    `kl_weight` and `free_bits` change the training loss only (`kl_loss`, on the Monte Carlo KL; free bits need q
    and p that factorize over the latent dimensions); the defaults give the bound.

    Returns:
        dict with `loss` (scalar), and (B,) detached `elbo`, `rec` = mean log p(x|z_l), `kl` = mean of
        log q(z_l|x) - log p(z_l) (a Monte Carlo KL).
    """
    check_args(num_samples, gradient, sgvb_a.gradients)
    _, z, q_density = _sample(model, x, num_samples, gradient)
    prior = model.prior()
    rec = model.decode(z).log_prob(x)  # (L, B)
    kl = q_density.log_prob(z) - prior.log_prob(z)  # (L, B)
    elbo = (rec - kl).mean(0)

    def kl_dims():  # (B, Dz): the Monte Carlo KL of each dimension
        qf, pf = _split_pair(q_density, prior)
        return (qf.log_prob(z) - pf.log_prob(z)).mean(0)

    loss = _loss(elbo, rec.mean(0), kl.mean(0), kl_weight, free_bits, kl_dims)
    return {"loss": loss, "elbo": elbo.detach(), "rec": rec.mean(0).detach(), "kl": kl.mean(0).detach()}


@register("sgvb_b", gradients=("standard", "stl"), analytic_kl=True, kl_terms=True)
def sgvb_b(model, x: torch.Tensor, *, num_samples: int = 1, gradient: str = "standard", kl_weight=1.0,
           free_bits: float = 0.0) -> dict:
    """Estimator B (eq. 7): -KL(q(z|x) || p(z)) + (1/L) sum_l log p(x|z_l), with the KL in closed form.

    For the Gaussian VAE the KL is Appendix B's -1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2).
    With gradient="stl" the KL = cross-entropy - entropy keeps its analytic cross-entropy KL(q||p) + H(q) and
    estimates the entropy by -log q(z_l) at stopped parameters (its path derivative only). `kl_weight` and
    `free_bits` change the training loss only (`kl_loss`, on the KL per dimension for free bits); the defaults
    give the bound.

    Raises:
        ValueError: the pair (q, prior) has no analytic KL (use sgvb_a).
    """
    check_args(num_samples, gradient, sgvb_b.gradients)
    q, z, q_density = _sample(model, x, num_samples, gradient)
    prior = model.prior()
    kl = _closed_form_kl(model, q, prior)  # (B,)
    if gradient == "stl":
        kl = kl + q.entropy() + q_density.log_prob(z).mean(0)  # analytic cross-entropy, path-derivative entropy
    rec = model.decode(z).log_prob(x).mean(0)  # (B,)
    elbo = rec - kl

    def kl_dims():  # (B, Dz): the same KL, dimension by dimension
        qf, pf = _split_pair(q, prior)
        dims = kl_divergence(qf, pf)
        if gradient == "stl":
            dims = dims + qf.entropy() + _factors(q_density).log_prob(z).mean(0)
        return dims

    loss = _loss(elbo, rec, kl, kl_weight, free_bits, kl_dims)
    return {"loss": loss, "elbo": elbo.detach(), "rec": rec.detach(), "kl": kl.detach()}


@register("iwae", gradients=("standard", "dreg"))
def iwae(model, x: torch.Tensor, *, num_samples: int = 1, gradient: str = "standard") -> dict:
    """Importance-weighted bound (Burda et al. 2016): log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x).

    Equals estimator A's bound for K = 1 and rises toward log p(x) as K grows. With gradient="dreg" the encoder
    gets sum_k w~_k^2 d log w_k / dz_k dz_k / dphi and the decoder the usual sum_k w~_k d log w_k / dtheta, where
    w~ are the normalized weights: a surrogate loss whose z-gradients are rescaled by w~ through a hook.
    Returns `log_w` (K, B) besides `elbo` (the K-sample bound), `rec` and `kl` (sample means).
    """
    # STL is biased for the importance-weighted bound when K > 1 (Tucker et al. 2019); DReG is its unbiased form.
    check_args(num_samples, gradient, iwae.gradients)
    _, z, q_density = _sample(model, x, num_samples, gradient)
    rec = model.decode(z).log_prob(x)  # (K, B)
    kl = q_density.log_prob(z) - model.prior().log_prob(z)  # (K, B)
    log_w = rec - kl
    bound = torch.logsumexp(log_w, 0) - math.log(num_samples)
    if gradient == "dreg":
        w = torch.softmax(log_w.detach(), 0)  # (K, B)
        if z.requires_grad:
            z.register_hook(lambda g: g * w.unsqueeze(-1))  # path gradients get one more factor w~
        loss = -(w * log_w).sum(0).mean()
    else:
        loss = -bound.mean()
    return {"loss": loss, "elbo": bound.detach(), "rec": rec.mean(0).detach(), "kl": kl.mean(0).detach(),
            "log_w": log_w.detach()}


def _name(dist) -> str:
    base = getattr(dist, "base_dist", dist)
    return type(base).__name__


def _closed_form_kl(model, q, prior):
    """KL(q || prior) in closed form; a ValueError naming the pair where there is none (never Monte Carlo)."""
    known = analytic_kl(model)
    if known is False:  # asked, not caught: torch.compile cannot resume a graph break in a try
        raise _no_closed_form(q, prior)
    if known:
        return kl_divergence(q, prior)
    try:  # a model that does not state it
        return kl_divergence(q, prior)
    except NotImplementedError:
        raise _no_closed_form(q, prior) from None


def _no_closed_form(q, prior) -> ValueError:
    return ValueError(f"estimator sgvb_b needs an analytic KL, and there is none for {_name(q)} || {_name(prior)}; "
                      "use sgvb_a")


def resolve_estimator(name: str, model) -> str:
    """Turn "auto" into sgvb_b where the model's (q, prior) pair has an analytic KL and sgvb_a otherwise; the
    model states it (`model.has_analytic_kl`, decided from its families, without running the encoder). A model
    that does not state it gets sgvb_a.

    Raises:
        ValueError: an unknown estimator, or one that needs an analytic KL for a pair without one (never a silent
            switch).
    """
    if name not in ESTIMATORS and name != "auto":
        raise ValueError(f"unknown estimator {name!r}; choose from auto, {', '.join(ESTIMATORS)}")
    known = analytic_kl(model)
    if name == "auto":
        return "sgvb_b" if known else "sgvb_a"
    if ESTIMATORS[name].analytic_kl and known is False:
        c = getattr(model, "config", None)
        pair = c.latent_pair() if hasattr(c, "latent_pair") else "this model's pair"
        raise ValueError(f"estimator {name} needs an analytic KL, and there is none for {pair}; use --estimator "
                         "sgvb_a (or auto)")
    return name


@torch.no_grad()
def evaluate(model, x: torch.Tensor, *, estimator: str = "sgvb_b", num_samples: int = 1,
             batch_size: int = 2000) -> dict:
    """Mean bound and its parts per datapoint over a whole split (nats), in chunks of `batch_size`.

    Returns:
        dict of floats: `elbo`, `rec`, `kl` (means over the N datapoints) and `n`.

    Raises:
        ValueError: an unknown estimator, or `x` that is not a non-empty (N, D) tensor with the model's D.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
    fn = ESTIMATORS[estimator]
    d = getattr(getattr(model, "config", None), "x_dim", None)
    if x.ndim != 2 or x.shape[0] == 0 or (d is not None and x.shape[1] != d):
        want = f"(N, {d})" if d is not None else "(N, D)"
        raise ValueError(f"evaluate needs a non-empty {want} tensor of datapoints, got shape {tuple(x.shape)}")
    was_training = model.training
    model.eval()
    sums = {k: torch.zeros((), dtype=torch.float64, device=x.device) for k in ("elbo", "rec", "kl")}
    for chunk in x.split(batch_size):
        out = fn(model, chunk, num_samples=num_samples)
        for k in sums:
            sums[k] += out[k].double().sum()
    model.train(was_training)
    n = x.shape[0]
    return {**{k: float(v) / n for k, v in sums.items()}, "n": n}
