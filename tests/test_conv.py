"""The convolutional VAE (`--arch conv`): the model contract on flat rows with leading sample dimensions, the
layout of its decoder's outputs, every likelihood on it, the estimators' gradients, a run folder's round trip,
old config sections, and a short training that improves the bound."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import aevb
from aevb import models, runs
from aevb.estimators import ESTIMATORS
from aevb.models import ConvVAE, ModelConfig

SHAPES = [(28, 28), (1, 28, 28), (3, 32, 32), (3, 17, 23)]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions run fastest on one thread (and several times slower on a pool whose cores other jobs
    share)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _conv(shape, **kw) -> ConvVAE:
    cfg = ModelConfig(x_dim=math.prod(shape), arch="conv", image_shape=shape, latent_dim=4,
                      **{"conv_widths": (4, 8), "activation": "elu", **kw})
    return models.build(cfg)


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_with_leading_sample_dims(shape):
    torch.manual_seed(0)
    model = _conv(shape, conv_blocks=2)
    assert isinstance(model, ConvVAE)
    d = math.prod(shape)
    x = torch.rand(2, 3, d)  # two leading dimensions
    raw = model.encoder_params(x)
    assert raw.shape == (2, 3, 8)  # [mu, log sigma^2] of Dz = 4
    q = model.encode(x)
    assert q.batch_shape == (2, 3) and q.event_shape == (4,)
    z = q.rsample((5,))
    p = model.decode(z)
    assert p.batch_shape == (5, 2, 3) and p.event_shape == (d,)
    assert p.log_prob(x).shape == (5, 2, 3) and p.mean.shape == (5, 2, 3, d)
    assert model.log_likelihood(z, x).shape == (5, 2, 3)
    assert model.sample(7).shape == (7, d) and model.sample(7, mean=False).shape == (7, d)
    assert model.encoder_params(x[0, 0]).shape == (8,)  # no leading dimension at all
    assert model.prior().event_shape == (4,)


def test_rows_are_nchw_images_and_the_decoder_writes_the_heads_layout():
    # the encoder sees x.reshape(-1, C, H, W) padded at the bottom and right (17x23 -> 20x24 for two halvings), and
    # the Gaussian head's mean of value (c, h, w) is map c at (h, w), its log-variance map C + c
    torch.manual_seed(0)
    shape = (3, 17, 23)
    model = _conv(shape, likelihood="gaussian")
    x = torch.rand(2, math.prod(shape))
    images = F.pad(x.reshape(2, *shape), (0, 1, 0, 3))
    expected = model.enc_head(model.encoder(images).flatten(1))
    torch.testing.assert_close(model.encoder_params(x), expected)
    z = torch.randn(2, 4)
    h = model.dec_in(z).reshape(2, 8, 5, 6)
    maps = model.decoder(h)[..., :17, :23]
    assert maps.shape == (2, 6, 17, 23)
    p = model.decode(z)
    torch.testing.assert_close(p.mean.reshape(2, *shape), maps[:, :3])
    torch.testing.assert_close(p.base_dist.scale.log().mul(2).reshape(2, *shape), maps[:, 3:])


LIKELIHOOD_CASES = [("bernoulli", 1), ("continuous-bernoulli", 1), ("gaussian", 1), ("gaussian-sigmoid", 1),
                    ("categorical", 1), ("discretized-logistic", 1), ("discretized-logistic", 3)]


@pytest.mark.parametrize("arch", ["conv", "mlp"])
@pytest.mark.parametrize("likelihood, mixtures", LIKELIHOOD_CASES)
def test_every_likelihood_on_both_architectures(arch, likelihood, mixtures):
    # log_likelihood(z, x) is decode(z).log_prob(x) (float64) and finite on 8-bit RGB data; means in [0, 1] for
    # the likelihoods of [0, 1] data
    torch.manual_seed(0)
    shape = (3, 9, 10)
    cfg = ModelConfig(x_dim=270, arch=arch, image_shape=shape, latent_dim=3, hidden=(16,), conv_widths=(4,),
                      likelihood=likelihood, mixtures=mixtures, levels=5)
    model = models.build(cfg).double()
    x = torch.randint(0, 256, (2, 270)).double() / 255
    z = torch.randn(4, 2, 3, dtype=torch.float64)
    ll = model.log_likelihood(z, x)
    assert ll.shape == (4, 2) and torch.isfinite(ll).all()
    torch.testing.assert_close(ll, model.decode(z).log_prob(x), rtol=1e-12, atol=1e-9)
    if likelihood != "gaussian":
        mean = model.decode(z).mean
        assert mean.shape == (4, 2, 270) and mean.min() >= 0 and mean.max() <= 1


@pytest.mark.parametrize("estimator, kw", [("sgvb_b", {}), ("sgvb_a", {"gradient": "stl"}),
                                           ("iwae", {"num_samples": 5}), ("iwae", {"num_samples": 5,
                                                                                   "gradient": "dreg"})])
def test_estimators_run_and_every_parameter_gets_a_finite_gradient(estimator, kw):
    torch.manual_seed(0)
    model = _conv((3, 12, 12), likelihood="discretized-logistic", mixtures=2)
    x = torch.randint(0, 256, (6, 432)).float() / 255
    out = ESTIMATORS[estimator](model, x, **kw)
    assert torch.isfinite(out["loss"]) and out["elbo"].shape == (6,)
    out["loss"].backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), \
        [n for n, g in grads.items() if g is None]
    # a new residual block is the identity (its second convolution starts at zero) but still learns
    assert grads["encoder.2.body.3.weight"].abs().sum() > 0


def test_a_run_folders_config_and_weights_rebuild_the_same_model(tmp_path):
    # the path of load_run: config.json's model section -> models.config_of -> models.build, weights through
    # safetensors; the rebuilt model gives the same outputs, and load_run itself reads such a folder
    torch.manual_seed(0)
    model = _conv((3, 17, 23), likelihood="discretized-logistic", mixtures=2, conv_blocks=1).eval()
    section = json.loads(json.dumps(model.config.to_dict()))
    assert section["arch"] == "conv" and section["image_shape"] == [3, 17, 23]
    cfg = models.config_of(section)
    assert cfg == model.config
    again = models.build(cfg)
    assert isinstance(again, ConvVAE)
    runs.write_tensors(tmp_path / runs.WEIGHTS, model.state_dict())
    again.load_state_dict(runs.read_tensors(tmp_path / runs.WEIGHTS))
    again.eval()
    x = torch.rand(4, 3 * 17 * 23)
    torch.testing.assert_close(again.encoder_params(x), model.encoder_params(x), rtol=0, atol=0)
    z = torch.randn(2, 4, 4)
    torch.testing.assert_close(again.log_likelihood(z, x), model.log_likelihood(z, x), rtol=0, atol=0)
    runs.write_json(tmp_path / runs.CONFIG, {"format_version": runs.FORMAT_VERSION,
                                                       "model": section, "train": {}, "data": {}})
    loaded, _ = aevb.load_run(tmp_path)
    torch.testing.assert_close(loaded.decode(z).mean, model.decode(z).mean, rtol=0, atol=0)


def test_config_sections_old_and_new():
    # a section written before `arch` existed is the MLP with the new fields' defaults; to_dict names the arch
    old = {"x_dim": 6, "latent_dim": 2, "hidden": [5], "activation": "tanh", "likelihood": "bernoulli",
           "init": "torch", "posterior": "normal", "prior": "normal", "levels": 16}
    cfg = models.config_of(old)
    assert cfg.arch == "mlp" and cfg.image_shape is None and cfg.mixtures == 1
    assert isinstance(models.build(cfg), aevb.VAE) and cfg.to_dict()["arch"] == "mlp"
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        models.config_of({**old, "arch": "resnet"})
    with pytest.raises(ValueError, match="needs the data's image shape"):
        ModelConfig(x_dim=6, arch="conv")
    with pytest.raises(ValueError, match="holds 8 values, not x_dim = 6"):
        ModelConfig(x_dim=6, image_shape=(2, 4))
    with pytest.raises(ValueError, match="--init paper is the MLP's"):
        ModelConfig(x_dim=6, arch="conv", image_shape=(2, 3), init="paper")
    assert ModelConfig(x_dim=6, arch="conv", image_shape=[2, 3]).chw == (1, 2, 3)
    assert ModelConfig(x_dim=6, image_shape=(3, 1, 2)).chw == (3, 1, 2)


def test_the_mlps_parameters_are_the_same_as_before():
    # old run folders must load: the MLP VAE's state_dict keys and shapes, and its initialization for a seed
    torch.manual_seed(0)
    model = aevb.VAE(ModelConfig(x_dim=6, latent_dim=2, hidden=(5, 4), likelihood="gaussian"))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {"prior_loc": (2,), "prior_scale": (2,), "encoder.0.weight": (5, 6), "encoder.0.bias": (5,),
                      "encoder.2.weight": (4, 5), "encoder.2.bias": (4,), "enc_head.weight": (4, 4),
                      "enc_head.bias": (4,), "decoder.0.weight": (4, 2), "decoder.0.bias": (4,),
                      "decoder.2.weight": (5, 4), "decoder.2.bias": (5,), "dec_head.out.weight": (12, 5),
                      "dec_head.out.bias": (12,)}
    torch.manual_seed(0)
    first = torch.nn.Linear(6, 5)  # the first layer built is the encoder's, from the same random stream
    torch.testing.assert_close(model.encoder[0].weight, first.weight, rtol=0, atol=0)


def test_a_short_training_improves_the_bound():
    # 200 Adam steps of the trainer (aevb.fit) on 80 synthetic 3x8x8 8-bit images, copies of 4 random prototypes:
    # the test ELBO improves by a wide margin over the first evaluation (it starts near -1340 nats per image)
    torch.manual_seed(0)
    prototypes = torch.randint(0, 256, (4, 192)).float() / 255
    x = prototypes[torch.randint(0, 4, (80,))]
    model = _conv((3, 8, 8), likelihood="discretized-logistic", conv_widths=(8, 16))
    cfg = aevb.TrainConfig(samples=200 * 16, batch_size=16, lr=3e-3, evals_per_decade=2, eval_train_size=0)
    history = aevb.fit(model, x[:64], x[64:], cfg, progress=False)
    first, last = history[0]["test_elbo"], history[-1]["test_elbo"]
    assert all(math.isfinite(h["test_elbo"]) for h in history)
    assert last > first + 250, (first, last)
