"""Full VB (Appendix F): the theta KL against torch, the decoder's theta draws against an independent sampler, the
MAP limit, and the estimator's gradient against the exact gradient of the bound of a small linear-Gaussian model."""
import math

import numpy as np
import pytest
import torch
from torch.distributions import kl_divergence
from torch.func import functional_call

from aevb import VAE, ModelConfig, TrainConfig
from aevb.data import load
from aevb.estimators import sgvb_b
from aevb.paper.fullvb import THETA_NOISE, FullVB, evaluate_full_vb, fit, full_vb


def _randomize(model: FullVB, seed: int, log_var=(-3.0, -1.0), scale: float = 0.8) -> FullVB:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.vae.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
        lo, hi = log_var
        for v in model.log_var:
            v.copy_(lo + (hi - lo) * torch.rand(v.shape, generator=g, dtype=v.dtype))
    return model


@pytest.mark.parametrize("prior_std", [1.0, 0.3])
def test_kl_theta_matches_torch(prior_std):
    vae = VAE(ModelConfig(x_dim=6, latent_dim=2, hidden=(5, 4))).double()
    model = _randomize(FullVB(vae, n_train=10, prior_std=prior_std), seed=1)
    expected = kl_divergence(model.q_theta(), model.p_theta())
    n_theta = sum(p.numel() for p in list(vae.decoder.parameters()) + list(vae.dec_head.parameters()))
    assert model.q_theta().event_shape == (n_theta,)
    torch.testing.assert_close(model.kl_theta(), expected, rtol=1e-12, atol=0)


def _reference_log_lik(model: FullVB, z, x, draws: int, seed: int) -> torch.Tensor:
    """E_q(theta) log p(x|z, theta) with an explicit theta drawn per datapoint through functional_call (B,)."""
    g = torch.Generator().manual_seed(seed)
    names = [n for n, _ in model.vae.named_parameters() if n.startswith(("decoder.", "dec_head."))]
    locs = dict(model.vae.named_parameters())
    scales = dict(zip(names, [(0.5 * v).exp() for v in model.log_var]))
    total = torch.zeros(x.shape[0], dtype=x.dtype)
    for _ in range(draws):
        for i in range(x.shape[0]):
            theta = {n: locs[n] + scales[n] * torch.randn(locs[n].shape, generator=g, dtype=x.dtype) for n in names}
            h = functional_call(model.vae.decoder, {n[8:]: v for n, v in theta.items() if n.startswith("decoder.")},
                                (z[i],))
            head_theta = {n[9:]: v for n, v in theta.items() if n.startswith("dec_head.")}
            head = functional_call(model.vae.dec_head, head_theta, (h,))
            total[i] += head.log_prob(x[i])
    return total / draws


@pytest.mark.parametrize("theta_noise", THETA_NOISE)
def test_decoder_draws_match_an_explicit_theta_per_datapoint(theta_noise):
    """Both ways of drawing theta inside decode estimate E_q(theta) log p(x|z, theta) of a two-layer tanh decoder."""
    torch.manual_seed(0)
    vae = VAE(ModelConfig(x_dim=5, latent_dim=2, hidden=(4, 3), activation="tanh")).double()
    model = _randomize(FullVB(vae, n_train=10, theta_noise=theta_noise), seed=2, log_var=(-2.0, -0.5))
    x = torch.rand(3, 5, dtype=torch.float64)
    z = torch.randn(3, 2, dtype=torch.float64)
    reference = _reference_log_lik(model, z, x, draws=1000, seed=3)
    with torch.no_grad():
        if theta_noise == "local":
            values = model.decode(z.expand(4000, 3, 2)).log_prob(x)  # (S, B)
        else:
            values = torch.stack([model.decode(z).log_prob(x) for _ in range(1000)])
    se = (values.var(0) / values.shape[0] + values.var(0) / 1000).sqrt()
    assert ((values.mean(0) - reference).abs() < 4 * se).all(), (values.mean(0), reference, se)
    with model.at_mean(), torch.no_grad():  # and theta = loc is the plain VAE
        torch.testing.assert_close(model.decode(z).log_prob(x), vae.decode(z).log_prob(x))


def test_small_scales_give_the_map_objective():
    """As scale -> 0, the bound is the MAP objective ELBO + log p(loc) / N plus the entropy of q(theta) / N;
    its gradient for loc is the MAP gradient (weight decay loc / N)."""
    n = 50
    vae = VAE(ModelConfig(x_dim=8, latent_dim=2, hidden=(6,))).double()
    model = _randomize(FullVB(vae, n_train=n, prior_std=1.0), seed=4, log_var=(-36.0, -36.0))
    x = torch.rand(7, 8, dtype=torch.float64)
    torch.manual_seed(5)
    bound = full_vb(model, x)
    torch.manual_seed(5)  # the same z draws: sgvb_b draws z before the decoder draws theta
    map_out = sgvb_b(vae, x)
    q, p = model.q_theta(), model.p_theta()
    entropy, log_prior = float(q.entropy().detach()), float(p.log_prob(q.mean).detach())
    # -KL(q || p) = H(q) + E_q log p(theta), and E_q log p(theta) = log p(loc) - sum scale^2 / 2 -> log p(loc)
    torch.testing.assert_close(bound["elbo"] - entropy / n, map_out["elbo"] + log_prior / n, rtol=0, atol=1e-6)

    locs = model.theta_loc()
    torch.manual_seed(5)
    g_vb = torch.autograd.grad(full_vb(model, x)["loss"], locs)
    torch.manual_seed(5)
    g_map = torch.autograd.grad(sgvb_b(vae, x)["loss"], locs)
    for a, b, loc in zip(g_vb, g_map, locs):
        torch.testing.assert_close(a, b + loc.detach() / n, rtol=0, atol=1e-6)


def _exact_objective(model: FullVB, x: torch.Tensor, nodes: int = 80) -> torch.Tensor:
    """-L(X) / N of a linear decoder with a Gaussian head and Nz = 1, in closed form over theta, Gauss-Hermite in z.

    Given z, the mean a_d and log-variance c_d of pixel d are independent Gaussians (different rows of theta), so
    E log N(x_d; a_d, e^c_d) = -log(2 pi) / 2 - E[c_d] / 2 - ((x_d - E a_d)^2 + Var a_d) E[e^-c_d] / 2, with
    E[e^-c] = exp(-E c + Var c / 2). KL(q(z|x) || p(z)) is Appendix B's; KL_theta is model.kl_theta().
    """
    vae = model.vae
    mu, log_var = vae.enc_head(x).unbind(-1)  # Nz = 1: (B,) each
    s = (0.5 * log_var).exp()
    t, w = (torch.tensor(v, dtype=x.dtype) for v in np.polynomial.hermite.hermgauss(nodes))
    z = mu[:, None] + math.sqrt(2) * s[:, None] * t  # (B, K)
    W, b = vae.dec_head.out.weight[:, 0], vae.dec_head.out.bias  # (2D,)
    sw2, sb2 = model.log_var[0][:, 0].exp(), model.log_var[1].exp()
    mean = z[..., None] * W + b  # (B, K, 2D)
    var = z[..., None].square() * sw2 + sb2
    d = x.shape[1]
    m_a, m_c, v_a, v_c = mean[..., :d], mean[..., d:], var[..., :d], var[..., d:]
    g = (-0.5 * math.log(2 * math.pi) - 0.5 * m_c
         - 0.5 * ((x[:, None] - m_a).square() + v_a) * torch.exp(-m_c + 0.5 * v_c)).sum(-1)  # (B, K)
    rec = (g * w).sum(-1) / math.sqrt(math.pi)
    kl_z = 0.5 * (mu.square() + s.square() - 1 - log_var)
    return -(rec - kl_z).mean() + model.kl_theta() / model.n_train


@pytest.mark.parametrize("theta_noise", THETA_NOISE)
def test_gradient_is_unbiased_for_the_exact_bound(theta_noise):
    torch.manual_seed(0)
    vae = VAE(ModelConfig(x_dim=2, latent_dim=1, hidden=(), likelihood="gaussian")).double()
    # moderate weights: E[exp(-c)] of the log-variance c has heavy tails when its variance is large
    model = _randomize(FullVB(vae, n_train=5, prior_std=0.7, theta_noise=theta_noise), seed=6,
                       log_var=(-3.0, -1.5), scale=0.3)
    x = torch.randn(3, 2, dtype=torch.float64)
    params = list(model.parameters())
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(_exact_objective(model, x), params)])
    groups, per_group = (40, 2000) if theta_noise == "local" else (400, 200)
    grads = []
    for _ in range(groups):
        loss = full_vb(model, x, num_samples=per_group)["loss"]
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    grads = torch.stack(grads)
    mean, se = grads.mean(0), grads.std(0) / math.sqrt(groups)
    assert ((mean - exact).abs() < 4 * se + 1e-9).all(), torch.stack([mean, exact, se])
    assert (mean - exact).norm() < 0.05 * exact.norm()
    # and the estimate of the bound itself
    with torch.no_grad():
        value = -torch.stack([full_vb(model, x, num_samples=2000)["elbo"].mean() for _ in range(20)])
        expected = _exact_objective(model, x)
    assert abs(value.mean() - expected) < 4 * value.std() / math.sqrt(20)


def test_training_raises_the_bound_and_the_prior_belongs_to_the_objective():
    ds = load("digits")
    torch.manual_seed(0)
    model = FullVB(VAE(ModelConfig(x_dim=64, latent_dim=3, hidden=(32,))), n_train=ds.train.shape[0])
    before = evaluate_full_vb(model, ds.train)
    cfg = TrainConfig(optimizer="adam", lr=3e-3, samples=15_000, batch_size=50)
    history = fit(model, ds.train, ds.test, cfg, progress=False)
    after = evaluate_full_vb(model, ds.train)
    assert after["bound"] > before["bound"] + 15
    assert after["kl_theta"] < before["kl_theta"]  # the scales grow toward the prior where the data allow
    assert history[-1]["train_elbo"] == pytest.approx(after["elbo"], abs=1.0)
    with pytest.raises(ValueError, match="weight_decay=0"):
        fit(model, ds.train, ds.test, TrainConfig(samples=100, weight_decay="prior"), progress=False)
    with pytest.raises(ValueError, match="estimator B"):
        fit(model, ds.train, ds.test, TrainConfig(samples=100, estimator="iwae"), progress=False)
    with pytest.raises(ValueError, match="theta_noise"):
        FullVB(VAE(ModelConfig(x_dim=4)), n_train=3, theta_noise="none")


@pytest.mark.parametrize("kl_weight, free_bits", [(0.5, 0.0), (3.0, 0.0), (0.5, 0.4)])
def test_the_kl_weight_weighs_both_kls_and_free_bits_floor_the_latent_dimensions(kl_weight, free_bits):
    torch.manual_seed(0)
    vae = VAE(ModelConfig(x_dim=6, latent_dim=3, hidden=(5,))).double()
    model = _randomize(FullVB(vae, n_train=20), seed=4)
    x = torch.rand(8, 6, dtype=torch.float64)
    torch.manual_seed(1)
    plain = full_vb(model, x, num_samples=2)
    torch.manual_seed(1)
    weighted = full_vb(model, x, num_samples=2, kl_weight=kl_weight, free_bits=free_bits)
    with torch.no_grad():
        mu, log_var = vae.encoder_params(x).chunk(2, -1)
    kl_dims = 0.5 * (mu.square() + log_var.exp() - 1 - log_var)  # (B, Nz), Appendix B per dimension
    kl_z = kl_dims.mean(0).clamp(min=free_bits).sum() if free_bits else kl_dims.sum(-1).mean()
    kl_theta = float(model.kl_theta().detach()) / 20
    expected = -float(plain["rec"].mean()) + kl_weight * (float(kl_z) + kl_theta)
    assert float(weighted["loss"]) == pytest.approx(expected, rel=1e-10)
    torch.testing.assert_close(weighted["elbo"], plain["elbo"])  # the reported bound stays the true one
    assert float(plain["loss"]) == pytest.approx(-float(plain["elbo"].mean()), rel=1e-10)


def test_fit_takes_beta_warmup_and_free_bits():
    ds = load("digits")
    for kw in ({"beta": 0.5}, {"kl_warmup": 500}, {"free_bits": 0.1}):
        torch.manual_seed(0)
        model = FullVB(VAE(ModelConfig(x_dim=64, latent_dim=3, hidden=(16,))), n_train=ds.train.shape[0])
        history = fit(model, ds.train, ds.test, TrainConfig(optimizer="adam", samples=1000, batch_size=50, **kw),
                      progress=False)
        assert math.isfinite(history[-1]["train_elbo"]), kw
