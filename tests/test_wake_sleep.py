"""Wake-sleep (the paper's baseline) against exact expected gradients on a linear-Gaussian model.

Model: p(z) = N(0, I), p(x|z) = N(W z + b + c, s^2 I) with orthogonal columns of W (diagonal exact posterior),
q(z|x) = N(m(x) + a, (sigma exp(beta))^2) with m, sigma the exact posterior's. With q the exact posterior
(a = beta = 0), the expected gradients of the wake-sleep loss have closed forms:
  sleep, over dreams (z, x) ~ p(z) p(x|z), since E[z - m(x)] = 0 and E[(z - m(x))^2] = sigma^2:
    E[d(-log q)/da] = a / (sigma^2 e^(2 beta)),  E[d(-log q)/dbeta] = 1 - (sigma^2 + a^2) / (sigma^2 e^(2 beta)),
    both 0 at the exact posterior;
  wake, over z ~ q(z|x): E[d(-log p(x|z))/dc] = -mean_x (x - W m(x) - b - c) / s^2.
"""
import math

import torch
from torch.distributions import Independent, Normal

from aevb.paper.wake_sleep import wake_sleep

from linear_gaussian import DiagonalLinearGaussian, LearnableQ


class WithDecoderShift(LearnableQ):
    """LearnableQ plus a learnable shift c of the decoder mean: the generative parameter the wake phase updates."""

    def __init__(self, lg, a=0.0, b=0.0):
        super().__init__(lg, a, b)
        self.c = torch.nn.Parameter(torch.zeros(lg.W.shape[0], dtype=torch.float64))

    def decode(self, z):
        return Independent(Normal(z @ self.lg.W.T + self.lg.b + self.c, torch.full_like(self.c, self.lg.s)), 1)


def _grads(model, x, repeats):
    ga, gb, gc = 0, 0, 0
    for _ in range(repeats):
        model.zero_grad()
        wake_sleep(model, x)["loss"].backward()
        ga, gb, gc = ga + model.a.grad, gb + model.b.grad, gc + model.c.grad
    return ga / repeats, gb / repeats, gc / repeats


def test_sleep_gradient_matches_closed_form_and_vanishes_at_the_exact_posterior():
    torch.manual_seed(0)
    lg = DiagonalLinearGaussian(x_dim=5, z_dim=2, noise=0.5)
    sigma2 = lg.posterior_cov().diagonal()
    x = lg.sample_x(20_000)  # the sleep phase draws one dream per datapoint: 20,000 dreams per call
    for a, beta in ((0.0, 0.0), (0.3, -0.2)):
        model = WithDecoderShift(lg, a=a, b=beta)
        ga, gb, _ = _grads(model, x, repeats=10)
        var = sigma2 * math.exp(2 * beta)  # q's variance
        torch.testing.assert_close(ga, a / var, atol=0.03, rtol=0)
        torch.testing.assert_close(gb, 1 - (sigma2 + a**2) / var, atol=0.03, rtol=0)


def test_wake_gradient_reaches_only_the_decoder_and_matches_closed_form():
    torch.manual_seed(1)
    lg = DiagonalLinearGaussian(x_dim=5, z_dim=2, noise=0.5)
    x = lg.sample_x(200) + 0.3  # data off the model, so the expected decoder gradient is not zero
    model = WithDecoderShift(lg)
    _, _, gc = _grads(model, x, repeats=400)
    expected = -((x - lg.posterior_mean(x) @ lg.W.T - lg.b) / lg.s**2).mean(0)
    torch.testing.assert_close(gc, expected, atol=0.03, rtol=0)


def test_wake_term_sends_no_gradient_to_the_encoder():
    """With the sleep term removed (a decoder that dreams nothing new), the encoder's gradient is the sleep
    term's alone: compare against -mean log q(dream_z | dream_x) rebuilt from the same random draws."""
    lg = DiagonalLinearGaussian(x_dim=5, z_dim=2, noise=0.5)
    model = WithDecoderShift(lg, a=0.2, b=0.1)
    x = lg.sample_x(50)
    torch.manual_seed(3)
    model.zero_grad()
    wake_sleep(model, x)["loss"].backward()
    got = model.a.grad.clone()
    torch.manual_seed(3)
    with torch.no_grad():
        model.encode(x).sample((1,))
        dz = model.prior().sample((50,))
        dx = model.decode(dz).sample()
    model.zero_grad()
    (-model.encode(dx).log_prob(dz).mean()).backward()
    torch.testing.assert_close(got, model.a.grad, atol=1e-12, rtol=0)
