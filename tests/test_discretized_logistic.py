"""The discretized logistic and its channel-coupled mixture (aevb.discretized, the heads in aevb.likelihoods):
exact masses against scipy's logistic CDF, normalization over all 256 levels (and all 256^3 colours of an RGB
pixel), the K = 1 mixture equal to the single head, grid-valued means and samples, discrete_levels."""
import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from aevb.discretized import (LEVELS, DiscretizedLogistic, DiscretizedLogisticMixture, coupling_index,
                              log_bin_mass, to_grid)
from aevb.likelihoods import (HEAD_CLASSES, LIKELIHOODS, DiscretizedLogisticHead, LogisticMixtureHead,
                              data_support, discrete_levels)
from aevb.models import ModelConfig

GRID = torch.arange(LEVELS, dtype=torch.float64) / (LEVELS - 1)
PARAMS = [(0.5, -3.0), (0.0, -5.0), (1.0, -2.0), (0.3, 0.5), (-2.0, -1.0), (3.0, -4.0), (0.7, -9.5),
          (0.42, 2.0)]


def _scipy_masses(loc: float, log_scale: float) -> np.ndarray:
    """The 256 masses from scipy's logistic CDF F: F(x + h) - F(x - h) inside, the tails F(h) and 1 - F(1 - h) at
    levels 0 and 255; above loc as the difference of survival functions 1 - F, so that no mass is the difference
    of two numbers near 1."""
    s, h = np.exp(log_scale), 0.5 / 255
    x = np.arange(256) / 255
    cdf_upper, cdf_lower = stats.logistic.cdf(x + h, loc, s), stats.logistic.cdf(x - h, loc, s)
    sf_upper, sf_lower = stats.logistic.sf(x + h, loc, s), stats.logistic.sf(x - h, loc, s)
    cdf_upper[-1], cdf_lower[0], sf_upper[-1], sf_lower[0] = 1.0, 0.0, 0.0, 1.0
    return np.where(x > loc, sf_lower - sf_upper, cdf_upper - cdf_lower)


@pytest.mark.parametrize("loc, log_scale", PARAMS)
def test_masses_sum_to_one_and_are_scipys_cdf_differences(loc, log_scale):
    # float64: the 256 masses sum to 1 to rounding, and each equals scipy's CDF difference (edges: the tails) to a
    # relative 1e-9 (masses above 1e-300; smaller ones underflow in scipy's difference)
    d = DiscretizedLogistic(torch.tensor(loc, dtype=torch.float64), torch.tensor(log_scale, dtype=torch.float64))
    log_mass = d.log_prob(GRID)
    assert log_mass.shape == (256,) and torch.isfinite(log_mass).all()
    mass = log_mass.exp().numpy()
    assert mass.sum() == pytest.approx(1.0, abs=1e-13)
    expected = _scipy_masses(loc, log_scale)
    big = expected > 1e-300
    np.testing.assert_allclose(mass[big], expected[big], rtol=1e-9)
    for k in (0, 1, 127, 254, 255):
        if expected[k] > 1e-300:
            assert mass[k] == pytest.approx(expected[k], rel=1e-9), k


def test_masses_far_in_the_tails_stay_finite_and_accurate():
    # where the masses underflow float64, the log mass is still right: compare with scipy's log survival functions,
    # log(sf(x - h) - sf(x + h)) = logsf(x - h) + log1p(-exp(logsf(x + h) - logsf(x - h)))
    loc, log_scale = torch.tensor(0.0, dtype=torch.float64), torch.tensor(-8.0, dtype=torch.float64)
    s, h = float(np.exp(-8.0)), 0.5 / 255
    x = torch.tensor([200, 250], dtype=torch.float64) / 255
    got = log_bin_mass(x, loc, log_scale)
    a, b = stats.logistic.logsf(x.numpy() - h, 0.0, s), stats.logistic.logsf(x.numpy() + h, 0.0, s)
    np.testing.assert_allclose(got.numpy(), a + np.log1p(-np.exp(b - a)), rtol=1e-12)
    assert (got < -1000).all()  # far below float64's smallest number (e^-745): only the log is representable
    # float32, extreme parameters: finite values and finite gradients
    loc32 = torch.tensor([0.5, -50.0, 50.0, 0.5], requires_grad=True)
    log_s32 = torch.tensor([-20.0, 0.0, 0.0, 20.0], requires_grad=True)
    out = log_bin_mass(torch.tensor([0.0, 1.0, 0.0, 128 / 255]), loc32, log_s32)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(loc32.grad).all() and torch.isfinite(log_s32.grad).all()


def test_values_off_the_grid_are_their_nearest_level():
    d = DiscretizedLogistic(torch.tensor(0.4), torch.tensor(-3.0))
    on = torch.tensor([0.0, 100 / 255, 1.0])
    torch.testing.assert_close(d.log_prob(on + torch.tensor([0.001, -0.0015, -0.0019])), d.log_prob(on))


def test_mean_is_the_median_on_the_grid_and_samples_follow_the_masses():
    torch.manual_seed(0)
    loc = torch.tensor([0.2, -0.5, 1.7, 0.5003])
    d = DiscretizedLogistic(loc, torch.full((4,), -4.0))
    torch.testing.assert_close(d.mean, torch.tensor([51 / 255, 0.0, 1.0, 128 / 255]))
    draws = DiscretizedLogistic(torch.tensor(0.3), torch.tensor(-4.0)).sample((200_000,))
    assert torch.equal(draws, to_grid(draws)) and draws.min() >= 0 and draws.max() <= 1
    freq = torch.bincount((draws * 255).round().long(), minlength=256).double() / draws.numel()
    expected = torch.tensor(_scipy_masses(0.3, -4.0))
    assert (freq - expected).abs().max() < 5e-3  # about 5 standard errors of the largest mass (~0.09)


def _mixture_params(k: int, c: int, p: int, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(k, p, generator=g, dtype=dtype)
    loc = torch.rand(k, c, p, generator=g, dtype=dtype)
    log_scale = torch.rand(k, c, p, generator=g, dtype=dtype) * 2 - 4
    coeffs = torch.rand(k, c * (c - 1) // 2, p, generator=g, dtype=dtype) * 2 - 1
    return logits, loc, log_scale, coeffs


def test_rgb_mixture_sums_to_one_over_all_256_cubed_colours():
    # one RGB pixel, K = 3 with coupling: the masses of all 16,777,216 colours sum to 1 (float64, in chunks of R)
    logits, loc, log_scale, coeffs = _mixture_params(3, 3, 1)
    mix = DiscretizedLogisticMixture(logits, loc, log_scale, coeffs)
    gb = torch.cartesian_prod(GRID, GRID)  # (65536, 2)
    total = torch.zeros((), dtype=torch.float64)
    for r in GRID:
        x = torch.cat([r.expand(gb.shape[0], 1), gb], 1)  # (65536, 3) = one pixel's (R, G, B), C-major with P = 1
        total += mix.log_prob(x).exp().sum()
    assert float(total) == pytest.approx(1.0, abs=1e-10)


def test_mixture_is_the_weighted_sum_of_coupled_products():
    # log p(x) of a two-pixel RGB image against the formula written out: sum_k pi_k prod_c DL(x_c | mu_kc + ...)
    logits, loc, log_scale, coeffs = _mixture_params(2, 3, 2, seed=1)
    mix = DiscretizedLogisticMixture(logits, loc, log_scale, coeffs)
    x = torch.tensor([[10, 200], [0, 255], [128, 31]], dtype=torch.float64) / 255  # (C, P)
    total = 0.0
    for p in range(2):
        pi = torch.softmax(logits[:, p], 0)
        px = 0.0
        for k in range(2):
            prob = 1.0
            for c in range(3):
                m = loc[k, c, p] + sum(coeffs[k, coupling_index(c, j), p] * x[j, p] for j in range(c))
                s = float(log_scale[k, c, p].exp())
                prob *= _scipy_masses(float(m), float(np.log(s)))[int(round(float(x[c, p]) * 255))]
            px += float(pi[k]) * prob
        total += np.log(px)
    assert float(mix.log_prob(x.flatten())) == pytest.approx(total, rel=1e-10)
    assert [coupling_index(c, j) for c in range(3) for j in range(c)] == [0, 1, 2]


@pytest.mark.parametrize("channels", [1, 3])
def test_mixture_with_one_component_is_the_single_head(channels):
    # K = 1 (and coupling coefficients at zero, i.e. pre-activations 0 through tanh): the mixture head's log p and
    # its picture equal the single discretized-logistic head's on the same locations and scales
    torch.manual_seed(0)
    pixels = 6
    d = channels * pixels
    loc, log_scale = torch.rand(4, d, dtype=torch.float64), torch.rand(4, d, dtype=torch.float64) - 4
    single = DiscretizedLogisticHead(None, d)(torch.cat([loc, log_scale], -1))
    ncoef = channels * (channels - 1) // 2
    a = torch.cat([torch.randn(4, pixels, dtype=torch.float64), loc, log_scale,
                   torch.zeros(4, ncoef * pixels, dtype=torch.float64)], -1)
    head = LogisticMixtureHead(None, d, 1, channels)
    assert head.n_out == a.shape[-1] == head.per_pixel * pixels
    mixture = head(a)
    x = to_grid(torch.rand(3, 1, d, dtype=torch.float64))
    torch.testing.assert_close(mixture.log_prob(x), single.log_prob(x), rtol=1e-12, atol=1e-10)
    assert mixture.log_prob(x).shape == (3, 4)
    torch.testing.assert_close(mixture.mean, single.mean)


def test_mixture_mean_and_samples_are_on_the_grid_with_the_right_shapes():
    torch.manual_seed(0)
    head = LIKELIHOODS["discretized-logistic"](8, 3 * 5, mixtures=4, channels=3)
    assert isinstance(head, LogisticMixtureHead) and head.n_out == 4 * 10 * 5
    p = head(torch.randn(7, 2, 8))
    assert p.batch_shape == (7, 2) and p.event_shape == (15,)
    for v in (p.mean, p.sample(), p.sample((3,))):
        assert torch.equal(v, to_grid(v)) and v.min() >= 0 and v.max() <= 1
    assert p.sample((3,)).shape == (3, 7, 2, 15)
    x = to_grid(torch.rand(2, 15))
    assert p.log_prob(x).shape == (7, 2)


def test_mixture_samples_follow_the_masses():
    # a one-pixel RGB mixture: the frequencies of (R, G) pairs on a coarse grid of the draws match the masses
    torch.manual_seed(0)
    logits, loc, log_scale, coeffs = _mixture_params(2, 3, 1, seed=3, dtype=torch.float32)
    log_scale = log_scale + 1.5  # wide enough that many bins are hit
    mix = DiscretizedLogisticMixture(logits, loc, log_scale, coeffs)
    draws = mix.sample((100_000,))  # (N, 3)
    assert torch.equal(draws, to_grid(draws))
    mix64 = DiscretizedLogisticMixture(*(t.double() for t in (logits, loc, log_scale, coeffs)))
    # P(R = r) summed over G, B: the R marginal is the components' R masses weighted by pi
    pi = torch.softmax(logits.double()[:, 0], 0)
    r_mass = sum(float(pi[k]) * _scipy_masses(float(loc[k, 0, 0]), float(log_scale[k, 0, 0])) for k in range(2))
    freq = np.bincount((draws[:, 0] * 255).round().long().numpy(), minlength=256) / draws.shape[0]
    assert np.abs(freq - r_mass).max() < 4e-3
    # G and B follow R: the draws are likelier under the mixture than the same draws with G and B shuffled across
    # draws (same marginals, coupling to R broken)
    shuffled = torch.cat([draws[:, :1], draws[torch.randperm(draws.shape[0]), 1:]], 1)
    assert mix64.log_prob(draws.double()).mean() > mix64.log_prob(shuffled.double()).mean()


def test_facts_support_and_discrete_levels():
    assert data_support("discretized-logistic") is torch.distributions.constraints.unit_interval
    assert HEAD_CLASSES["discretized-logistic"] is DiscretizedLogisticHead
    cfg = ModelConfig(x_dim=12, likelihood="discretized-logistic", mixtures=2, image_shape=(3, 2, 2))
    assert discrete_levels(cfg) == 256
    assert discrete_levels(ModelConfig(x_dim=12, likelihood="categorical", levels=8)) == 8
    for name in ("bernoulli", "continuous-bernoulli", "gaussian", "gaussian-sigmoid"):
        assert discrete_levels(ModelConfig(x_dim=12, likelihood=name)) is None
    assert discrete_levels(cfg.to_dict()) == 256  # a config.json section works too
    assert discrete_levels({"likelihood": "bernoulli"}) is None
    with pytest.raises(ValueError, match="mixtures > 1 needs --likelihood discretized-logistic"):
        ModelConfig(x_dim=12, mixtures=2)


@pytest.mark.parametrize("name, mixtures, channels", [("bernoulli", 1, 3), ("gaussian", 1, 3), ("categorical", 1, 3),
                                                      ("discretized-logistic", 1, 3),
                                                      ("discretized-logistic", 3, 3), ("discretized-logistic", 2, 1)])
def test_from_maps_gives_the_flat_layout_of_from_outputs(name, mixtures, channels):
    # a conv decoder's maps (n_out / (H W), H, W) turned into the flat pre-activations: each value's parameters
    # land where from_outputs reads them (checked on the per-value parameter of pixel (c, h, w) for every head)
    h, w, levels = 3, 4, 5
    head = LIKELIHOODS[name](None, channels * h * w, levels=levels, mixtures=mixtures, channels=channels)
    n_maps = head.n_out // (h * w)
    maps = torch.arange(n_maps * h * w, dtype=torch.float64).reshape(n_maps, h, w)
    flat = head.from_maps(maps)
    assert flat.shape == (head.n_out,)
    if name == "categorical":
        # map c K + k at (h, w) is level k's logit of value (c, h, w): flat index ((c H + h) W + w) K + k
        for c, i, j, k in itertools.product(range(channels), range(h), range(w), range(levels)):
            assert flat[((c * h + i) * w + j) * levels + k] == maps[c * levels + k, i, j]
    else:
        torch.testing.assert_close(flat, maps.flatten())
