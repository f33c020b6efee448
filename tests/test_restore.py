"""Restoration: PSNR, corruptions and baselines against hand computations; the methods keep what was observed; the
importance-sampled log p(x_missing | x_observed) against the linear-Gaussian model's exact conditional; the CLI."""
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from aevb import VAE, ModelConfig
from aevb.cli import main
from aevb.inspect.plots import save_image
from aevb.inspect.restore import (_back_project, add_noise, box_filter, downsample, inpaint_importance,
                                  inpaint_iterative, inpaint_optimize, make_mask, psnr, read_images, run_task,
                                  summarize, upsample)

from linear_gaussian import LinearGaussian


def test_psnr_by_hand():
    truth = torch.zeros(2, 4, dtype=torch.float64)
    est = torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.5, 0.0, 0.0, 0.0]], dtype=torch.float64)
    np.testing.assert_allclose(psnr(est, truth).numpy(), [20.0, 10 * math.log10(1 / (0.25 / 4))], rtol=1e-12)
    mask = torch.tensor([[True, False, False, False], [True, True, False, False]])
    np.testing.assert_allclose(psnr(est, truth, mask).numpy(), [20.0, 10 * math.log10(1 / 0.125)], rtol=1e-12)
    assert psnr(truth, truth).tolist() == [100.0, 100.0]  # exact: capped
    with pytest.raises(ValueError, match="empty mask"):
        psnr(est, truth, torch.zeros(2, 4, dtype=torch.bool))


def test_noise_is_seeded_gaussian_clipped():
    x = torch.full((3, 5), 0.5)
    y = add_noise(x, 0.3, seed=4)
    eps = torch.randn(3, 5, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(y, (0.5 + 0.3 * eps).clamp(0, 1))
    torch.testing.assert_close(add_noise(x, 0.3, seed=4), y)


def test_masks():
    center = make_mask("center", 2, (28, 28))
    grid = center[0].reshape(28, 28)
    assert grid.sum() == 196 and grid[7:21, 7:21].all() and torch.equal(center[0], center[1])
    half = make_mask("half", 1, (28, 20))[0].reshape(28, 20)
    assert half[14:].all() and not half[:14].any()
    rnd = make_mask("random", 100, (10, 10), fraction=0.3, seed=1)
    expected = torch.rand(100, 100, generator=torch.Generator().manual_seed(1)) < 0.3
    assert torch.equal(rnd, expected)
    with pytest.raises(ValueError, match="unknown mask"):
        make_mask("ring", 1, (4, 4))


def test_down_and_upsampling_by_hand():
    x = torch.arange(16, dtype=torch.float64).reshape(1, 16) / 16
    y = downsample(x, (4, 4), 2)
    blocks = x.numpy().reshape(2, 2, 2, 2).transpose(0, 2, 1, 3).reshape(4, 4).mean(-1)
    np.testing.assert_allclose(y.numpy()[0], blocks)
    near = upsample(y, (4, 4), 2, "nearest").numpy().reshape(4, 4)
    np.testing.assert_allclose(near, np.repeat(np.repeat(y.numpy().reshape(2, 2), 2, 0), 2, 1))
    a, b = 0.2, 0.6  # one row [a, b] doubled: a, 0.75a + 0.25b, 0.25a + 0.75b, b (half-pixel centres)
    lin = upsample(torch.tensor([[a, b, a, b]]), (4, 4), 2, "bilinear").numpy().reshape(4, 4)
    np.testing.assert_allclose(lin[0], [a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b], rtol=1e-6)
    with pytest.raises(ValueError, match="do not divide"):
        downsample(torch.zeros(1, 20), (4, 5), 2)
    with pytest.raises(ValueError, match="factor"):
        downsample(torch.zeros(1, 16), (4, 4), 3)


def test_box_filter_by_hand():
    x = torch.rand(1, 25, generator=torch.Generator().manual_seed(0))
    img = x.reshape(5, 5)
    out = box_filter(x, (5, 5)).reshape(5, 5)
    assert float(out[0, 0]) == pytest.approx(float(img[:2, :2].mean()))
    assert float(out[2, 3]) == pytest.approx(float(img[1:4, 2:5].mean()))


def test_back_projection_matches_the_observation():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(3, 4, generator=g, dtype=torch.float64)
    y[0, 0], y[1, 1] = 0.0, 1.0
    x = torch.rand(3, 16, generator=g, dtype=torch.float64)
    out = _back_project(x, y, (4, 4), 2)
    torch.testing.assert_close(downsample(out, (4, 4), 2), y, atol=1e-12, rtol=0)
    assert out.min() >= 0 and out.max() <= 1
    # within a block whose pixels stay inside (0, 1), every pixel moves by the same amount: the residual
    x2 = 0.4 + 0.2 * torch.rand(1, 16, generator=g, dtype=torch.float64)
    y2 = downsample(x2, (4, 4), 2) + torch.tensor([[0.05, -0.05, 0.1, 0.0]], dtype=torch.float64)
    up = upsample(y2 - downsample(x2, (4, 4), 2) + 0.5, (4, 4), 2, "nearest") - 0.5
    torch.testing.assert_close(_back_project(x2, y2, (4, 4), 2), x2 + up, atol=1e-12, rtol=0)


@pytest.fixture
def vae():
    torch.manual_seed(0)
    return VAE(ModelConfig(x_dim=16, latent_dim=3, hidden=(12,))).eval()


def test_iterative_inpainting_keeps_observed_pixels_and_is_the_loop(vae):
    x = torch.rand(4, 16, generator=torch.Generator().manual_seed(1))
    missing = make_mask("center", 4, (4, 4))
    fill = torch.full((16,), 0.4)
    out, z = inpaint_iterative(vae, x, missing, fill, steps=3)
    assert torch.equal(out[~missing], x[~missing])
    cur = torch.where(missing, fill, x)
    with torch.no_grad():
        for _ in range(3):
            cur = torch.where(missing, vae.decode(vae.encode(cur).mean).mean, x)
    torch.testing.assert_close(out, cur)
    torch.testing.assert_close(z, vae.encode(cur).mean.detach())


def test_latent_optimization_raises_its_objective(vae):
    x = torch.rand(4, 16, generator=torch.Generator().manual_seed(1))
    missing = make_mask("half", 4, (4, 4))
    fill = torch.full((16,), 0.4)
    out, z = inpaint_optimize(vae, x, missing, fill, steps=50, lr=0.05)
    assert torch.equal(out[~missing], x[~missing])

    def objective(z):
        with torch.no_grad():
            return (vae.decode(z).base_dist.log_prob(x) * ~missing).sum(-1) + vae.prior().log_prob(z)

    z0 = vae.encode(torch.where(missing, fill, x)).mean.detach()
    assert (objective(z) > objective(z0)).all()
    assert all(p.requires_grad for p in vae.parameters())


def test_importance_completion_is_the_self_normalized_predictive_mean(vae):
    x = torch.rand(3, 16, generator=torch.Generator().manual_seed(5))
    missing = make_mask("center", 3, (4, 4))
    torch.manual_seed(1)
    out, ll = inpaint_importance(vae, x, missing, x, samples=64, truth=x)
    torch.manual_seed(1)
    with torch.no_grad():
        q = vae.encode(x)
        z = q.sample((64,))
        p = vae.decode(z)
        log_w = (p.base_dist.log_prob(x) * ~missing).sum(-1) + vae.prior().log_prob(z) - q.log_prob(z)
        w = torch.softmax(log_w, 0).unsqueeze(-1)
        lik = (p.base_dist.log_prob(x) * missing).sum(-1)
    torch.testing.assert_close(out, torch.where(missing, (w * p.mean).sum(0), x))
    torch.testing.assert_close(ll, torch.logsumexp(log_w + lik, 0) - torch.logsumexp(log_w, 0))


def test_importance_sampled_conditional_equals_the_exact_gaussian_conditional():
    lg = LinearGaussian(x_dim=6, z_dim=2, noise=0.4)
    x = lg.sample_x(5)
    missing = torch.zeros(5, 6, dtype=torch.bool)
    missing[:, 3:] = True
    torch.manual_seed(0)
    _, loglik = inpaint_importance(lg, x, missing, x, samples=50_000, truth=x)
    cov = (lg.W @ lg.W.T + lg.s**2 * torch.eye(6, dtype=torch.float64)).numpy()
    mean = lg.b.numpy()
    o, m = slice(0, 3), slice(3, 6)
    for i in range(5):
        xi = x[i].numpy()
        gain = cov[m, o] @ np.linalg.inv(cov[o, o])
        cond_mean = mean[m] + gain @ (xi[o] - mean[o])
        cond_cov = cov[m, m] - gain @ cov[o, m]
        exact = multivariate_normal(cond_mean, cond_cov).logpdf(xi[m])
        assert float(loglik[i]) == pytest.approx(exact, abs=0.01)


def test_summary_ranks_methods_by_psnr(vae):
    x = torch.rand(6, 16, generator=torch.Generator().manual_seed(2))
    r = run_task(vae, "superres", (4, 4), truth=x, factor=2, steps=2, opt_steps=5)
    s = summarize(r)
    for name, out in r.outputs.items():
        assert s["methods"][name]["psnr"] == pytest.approx(float(psnr(out, x).mean()))
    vae_best = max(("iterative", "optimize"), key=lambda m: s["methods"][m]["psnr"])
    base_best = max(("nearest", "bilinear"), key=lambda m: s["methods"][m]["psnr"])
    assert (s["best"], s["best_baseline"]) == (vae_best, base_best)
    assert s["beats_baseline"] == (s["methods"][vae_best]["psnr"] > s["methods"][base_best]["psnr"])


def test_tasks_are_reproducible_by_seed(vae):
    x = torch.rand(5, 16, generator=torch.Generator().manual_seed(3))
    kw = dict(truth=x, missing=make_mask("center", 5, (4, 4)), pixel_mean=torch.full((16,), 0.3), steps=2,
              opt_steps=3, samples=20)
    torch.manual_seed(123)
    a = run_task(vae, "inpaint", (4, 4), seed=7, **kw)
    state = torch.get_rng_state()
    b = run_task(vae, "inpaint", (4, 4), seed=7, **kw)
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is left alone
    assert torch.equal(a.outputs["importance"], b.outputs["importance"])
    c = run_task(vae, "inpaint", (4, 4), seed=8, **kw)
    assert not torch.equal(a.outputs["importance"], c.outputs["importance"])


def test_read_images(tmp_path):
    img = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    save_image(tmp_path / "a.png", img, scale=1)
    np.save(tmp_path / "b.npy", np.round(img * 255).astype(np.uint8)[None])
    x = read_images([tmp_path / "a.png", tmp_path / "b.npy"], (3, 4))
    assert x.shape == (2, 12)
    np.testing.assert_allclose(x[0].numpy(), img.ravel(), atol=1 / 255 + 1e-6)  # the colormap's 256 levels
    np.testing.assert_allclose(x[1].numpy(), np.round(img.ravel() * 255) / 255, atol=1e-7)
    with pytest.raises(ValueError, match="do not match the expected 4x4"):
        read_images([tmp_path / "a.png"], (4, 4))
    np.save(tmp_path / "c.npy", np.full((3, 4), 2.0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        read_images([tmp_path / "c.npy"], (3, 4))


@pytest.fixture(scope="module")
def mnist_run(shared_data, tmp_path_factory):
    """A small VAE trained for 1e5 datapoints on MNIST (grey levels, Bernoulli decoder)."""
    out = tmp_path_factory.mktemp("runs") / "mnist"
    assert main(["train", "--dataset", "mnist", "--data-dir", str(shared_data), "--latent-dim", "8", "--hidden",
                 "128", "--samples", "100000", "--threads", "1", "--out", str(out), "--no-progress"]) == 0
    return out


def test_restore_cli_superres_on_mnist(mnist_run, shared_data, tmp_path, capsys):
    from aevb.data import load

    out = tmp_path / "sr"
    assert main(["restore", str(mnist_run), "--task", "superres", "--factor", "2", "--limit", "200", "--out",
                 str(out), "--opt-steps", "100", "--steps", "20", "--save-outputs"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    arrays = np.load(out / "restored.npz", allow_pickle=False)
    truth = load("mnist", data_dir=shared_data).test[:200].double()
    for name in ("nearest", "bilinear", "iterative", "optimize"):
        est = torch.from_numpy(arrays[name].reshape(200, -1)).double()
        assert m["methods"][name]["psnr"] == pytest.approx(float(psnr(est, truth).mean()), abs=1e-9)
    assert m["n"] == 200 and m["best_baseline"] == "bilinear"
    assert m["beats_baseline"] and m["gain_db"] > 1  # even a small model knows digits better than interpolation
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.iterdir()) == ["comparison.png", "metrics.json", "restored.npz"]


def test_restore_cli_observed_images(mnist_run, shared_data, tmp_path, capsys):
    from aevb.data import load

    x = load("mnist", data_dir=shared_data).test[:3]
    low = downsample(x, (28, 28), 4).numpy().reshape(3, 7, 7)
    np.save(tmp_path / "low.npy", low)
    out = tmp_path / "o"
    assert main(["restore", str(mnist_run), "--task", "superres", "--factor", "4", "--images",
                 str(tmp_path / "low.npy"), "--observed", "--out", str(out), "--opt-steps", "10", "--steps", "5",
                 "--save-outputs"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 3 and "best" not in m and "psnr" not in m["methods"]["iterative"]
    arrays = np.load(out / "restored.npz", allow_pickle=False)
    np.testing.assert_allclose(downsample(torch.from_numpy(arrays["iterative"].reshape(3, -1)), (28, 28), 4).numpy(),
                               low.reshape(3, -1), atol=1e-6)  # consistent with the observation


@pytest.mark.parametrize("argv, message", [
    (["--task", "denoise", "--observed"], "--observed needs --images"),
    (["--task", "inpaint", "--mask", "{tmp}/nomask.png"], "not found"),
    (["--task", "inpaint", "--mask", "{tmp}/small.npy"], "do not match"),
    (["--task", "denoise", "--noise", "0"], "noise std must be positive"),
    (["--task", "denoise", "--steps", "0"], "--steps must be >= 1"),
    (["--task", "superres", "--images", "{tmp}/small.npy"], "do not match the expected 28x28"),
])
def test_restore_bad_input(mnist_run, tmp_path, capsys, argv, message):
    np.save(tmp_path / "small.npy", np.zeros((5, 5), dtype=np.float32))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    capsys.readouterr()
    assert main(["restore", str(mnist_run), "--limit", "5", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("aevb: error:")
    assert not (tmp_path / "out").exists()
