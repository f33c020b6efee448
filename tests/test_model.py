"""The VAE's contract (prior / encode / decode), the paper's initialization and the paper's Adagrad."""
import numpy as np
import pytest
import torch
from torch.distributions import Independent

from aevb import VAE, ModelConfig
from aevb import TrainConfig
from aevb.likelihoods import _softplus_sum
from aevb.optim import make_optimizer
from aevb.train import lr_factor


def test_contract_distributions_have_event_dims_and_sample_dims_first():
    model = VAE(ModelConfig(x_dim=6, latent_dim=3, hidden=(5, 4), activation="relu"))
    x = torch.rand(2, 6)
    q = model.encode(x)
    assert isinstance(q, Independent) and q.event_shape == (3,) and q.batch_shape == (2,)
    z = q.rsample((7,))
    assert z.shape == (7, 2, 3)
    px = model.decode(z)
    assert px.event_shape == (6,) and px.log_prob(x).shape == (7, 2)
    assert model.prior().event_shape == (3,)
    # log_prob sums over the event dimension: compare with the per-pixel Bernoulli cross-entropy
    logits = px.base_dist.logits
    manual = (x * torch.nn.functional.logsigmoid(logits) + (1 - x) * torch.nn.functional.logsigmoid(-logits)).sum(-1)
    torch.testing.assert_close(px.log_prob(x), manual)


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous-bernoulli", "gaussian", "gaussian-sigmoid",
                                        "categorical"])
def test_log_likelihood_is_the_decoders_log_prob_with_its_gradients(likelihood):
    # VAE.log_likelihood(z, x) (for Bernoulli: h . W^T x + b . x - sum softplus(W h + b)) must equal
    # decode(z).log_prob(x) in value and in every parameter gradient, for binary and grey-level x, with a sample
    # dimension broadcast against the batch; float64, so the tolerance is rounding
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=6, latent_dim=3, hidden=(5,), likelihood=likelihood, levels=4)).double()
    z = 2 * torch.randn(7, 2, 3, dtype=torch.float64)
    params = [*model.decoder.parameters(), *model.dec_head.parameters()]
    for x in (torch.bernoulli(torch.full((2, 6), 0.4, dtype=torch.float64)), torch.rand(2, 6, dtype=torch.float64)):
        fused, reference = model.log_likelihood(z, x), model.decode(z).log_prob(x)
        assert fused.shape == (7, 2)
        torch.testing.assert_close(fused, reference, rtol=1e-12, atol=1e-10)
        for a, b in zip(torch.autograd.grad(fused.sum(), params), torch.autograd.grad(reference.sum(), params)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("d", [784, 560, 48, 16, 97, 5])
def test_grouped_softplus_sum_is_the_softplus_sum(d):
    # sum_d max(a, 0) + sum over groups of log prod (1 + exp(-|a|)) against softplus summed in float64: groups of the
    # largest divisor of D in [16, 64] (56 for 784 and 560), plain softplus for D without one (97, 5); logits up to
    # +-200 must neither overflow the products nor lose the linear part (the reference is log(1 + e^a) exactly)
    torch.manual_seed(0)
    a = torch.cat([torch.randn(50, d, dtype=torch.float64) * 6, torch.full((1, d), 200.0, dtype=torch.float64),
                   torch.full((1, d), -200.0, dtype=torch.float64), torch.zeros(1, d, dtype=torch.float64)])
    exact = torch.logaddexp(a, torch.zeros(())).sum(-1)  # F.softplus returns a itself above a = 20
    # rtol 1e-11: the fallback is F.softplus, which returns a (off by < e^-20) above its threshold a = 20
    torch.testing.assert_close(_softplus_sum(a), exact, rtol=1e-11, atol=1e-12)
    # float32: low by at most D ulp(1) from the dropped exp(-|a|) terms, plus the usual summation rounding
    got32 = _softplus_sum(a.float()).double()
    assert ((got32 - exact).abs() <= d * 2**-23 + 2e-7 * exact.abs()).all()


def test_gaussian_decoder_with_sigmoid_mean():
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=4, latent_dim=2, hidden=(3,), likelihood="gaussian-sigmoid"))
    p = model.decode(torch.randn(5, 2) * 10)
    assert torch.all((p.mean > 0) & (p.mean < 1))
    mean, log_var = model.dec_head.out(model.decoder(torch.zeros(1, 2))).chunk(2, -1)
    x = torch.rand(1, 4)
    expected = (-0.5 * (np.log(2 * np.pi) + log_var + (x - torch.sigmoid(mean)) ** 2 / log_var.exp())).sum(-1)
    torch.testing.assert_close(model.decode(torch.zeros(1, 2)).log_prob(x), expected)


def test_paper_init():
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=784, latent_dim=20, hidden=(500,), init="paper"))
    w = model.encoder[0].weight
    assert w.std().item() == pytest.approx(0.01, rel=0.02)
    assert w.mean().abs().item() < 1e-4
    assert torch.all(model.enc_head.weight[20:] == 0) and torch.all(model.enc_head.bias[20:] == 0)
    assert torch.all(model.dec_head.out.bias == 0)
    assert model.enc_head.weight[:20].std().item() == pytest.approx(0.01, rel=0.05)


def test_config_validation():
    with pytest.raises(ValueError, match="activation"):
        ModelConfig(x_dim=4, activation="sigmoidish")
    with pytest.raises(ValueError, match="likelihood"):
        ModelConfig(x_dim=4, likelihood="poisson")
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"x_dim": 4, "latent": 3})


def test_paper_adagrad_matches_closed_form():
    """Warm-up accumulates g^2 only (step size 0); then p <- p - lr g / (sqrt(sum g^2) + eps), with the prior's
    gradient p / N added to the per-datapoint gradient."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    cfg = TrainConfig(optimizer="adagrad", lr=0.1, warmup_steps=2, weight_decay="prior", schedule="constant",
                      samples=5)
    opt = make_optimizer("adagrad", [p], lr=0.1, n_train=2, weight_decay="prior")
    ref_p, ref_sum = np.array([1.0, -2.0]), np.zeros(2)
    for step in range(5):
        for group in opt.param_groups:
            group["lr"] = 0.1 * lr_factor(cfg, step, 5)
        opt.zero_grad()
        (p**2).sum().backward()  # gradient 2p
        opt.step()
        g = 2 * ref_p + 0.5 * ref_p
        ref_sum += g**2
        if step >= 2:
            ref_p = ref_p - 0.1 * g / (np.sqrt(ref_sum) + 1e-8)
        np.testing.assert_allclose(p.detach().numpy(), ref_p, rtol=1e-12)
