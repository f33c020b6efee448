"""RGB and non-square images: rows (N, C*H*W) in C-major order become pictures with each value at its known pixel and
channel; grids, PNGs, masks, pooling and upsampling per channel against hand computations; `aevb sample`, `plot`
and `restore` on a hand-made RGB run; runs without images are refused in one line."""
import io
import json

import numpy as np
import pytest
import torch

from aevb import VAE, ModelConfig
from aevb.cli import main
from aevb.inspect import plots
from aevb.inspect.plots import (as_images, check_image, display_scale, grid_png, image_grid, is_image, latent_figure,
                                reconstruction_grid, run_figures, sample_grid, save_image, traversal_grid)
from aevb.inspect.restore import (_back_project, box_filter, comparison_figure, downsample, make_mask, read_images,
                                  run_task, summarize, upsample)

from handmade_run import make_data, make_run


def _png_pixels(data: bytes) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(data), format="png")


# --- the display helper --------------------------------------------------------------------------------------

def test_rgb_rows_become_channels_last_pictures():
    # one 2x3 RGB image: value 100*c + 10*h + w at channel c, row h, column w; the row is C-major
    v = np.array([100 * c + 10 * h + w for c in range(3) for h in range(2) for w in range(3)], dtype=np.float32)
    img = as_images(v[None], [3, 2, 3])
    assert img.shape == (1, 2, 3, 3)
    assert img[0, 1, 2, 0] == 12 and img[0, 1, 2, 1] == 112 and img[0, 0, 1, 2] == 201
    assert img[0, 1, 0].tolist() == [10, 110, 210]
    # torch rows too, and grey shapes (with or without a channel axis) stay (N, H, W)
    assert as_images(torch.arange(12.0).reshape(2, 6), (2, 3)).shape == (2, 2, 3)
    np.testing.assert_array_equal(as_images(np.arange(6.0)[None], (1, 2, 3))[0], [[0, 1, 2], [3, 4, 5]])


def test_rgb_grid_puts_each_value_at_its_pixel_and_channel():
    rows = np.stack([np.arange(18, dtype=np.float32) / 100, 0.5 + np.arange(18, dtype=np.float32) / 100])
    grid = image_grid(as_images(rows, (3, 2, 3)), ncol=2, pad=1)
    assert grid.shape == (1 * 3 + 1, 2 * 4 + 1, 3)
    # second image (column 1): pixel (h, w) sits at grid row 1 + h, column 1 + 4 + w; channel c is value c*6 + 3h + w
    assert grid[2, 7, 1] == pytest.approx(0.5 + (1 * 6 + 3 * 1 + 2) / 100)
    assert grid[1, 5, 2] == pytest.approx(0.5 + 12 / 100)
    assert grid[2, 3, 0] == pytest.approx(5 / 100)  # first image, pixel (1, 2), red
    assert (grid[0] == 1).all() and (grid[:, 4] == 1).all()  # white padding in every channel


def test_rgb_png_holds_the_rounded_values_repeated():
    grid = np.zeros((2, 3, 3), dtype=np.float32)
    grid[0, 1] = [1.0, 0.5, 0.2]
    grid[1, 2] = [0.0, 0.999, 0.004]
    levels = np.round(_png_pixels(grid_png(grid, scale=2)) * 255).astype(int)  # the PNG's bytes
    assert levels.shape == (4, 6, 4)
    np.testing.assert_array_equal(levels[0:2, 2:4, :3].reshape(-1, 3), [[255, 128, 51]] * 4)  # round(255 v)
    np.testing.assert_array_equal(levels[3, 5, :3], [0, 255, 1])
    assert (levels[0, 0, :3] == 0).all() and (levels[..., 3] == 255).all()


def test_grey_png_holds_the_rounded_values_in_every_colour_channel():
    grid = np.linspace(0, 1, 15, dtype=np.float32).reshape(3, 5)
    levels = np.round(_png_pixels(grid_png(grid, 3)) * 255).astype(int)
    assert levels.shape == (9, 15, 4) and (levels[..., 3] == 255).all()
    expected = np.kron(np.round(grid * 255), np.ones((3, 3))).astype(int)
    for c in range(3):
        np.testing.assert_array_equal(levels[..., c], expected)
    assert image_grid(grid[None]).shape == (5, 7)


def test_display_scale_and_image_shapes():
    assert [display_scale(s) for s in ((28, 28), (8, 8), (28, 20), (1, 8, 8), (3, 32, 32), (3, 64, 64), (3, 48, 80))] \
        == [2, 7, 2, 7, 2, 1, 1]
    assert is_image([28, 28]) and is_image([3, 4, 5]) and is_image([1, 4, 5])
    assert not is_image(None) and not is_image([4, 4, 4]) and not is_image([10])
    with pytest.raises(ValueError, match="no images"):
        check_image(None)
    with pytest.raises(ValueError, match=r"cannot draw images of shape \[2, 4, 4\]"):
        as_images(np.zeros((1, 32)), (2, 4, 4))


# --- grids of a model ----------------------------------------------------------------------------------------

SHAPE = (3, 4, 6)  # RGB, not square


@pytest.fixture
def rgb_vae():
    torch.manual_seed(0)
    return VAE(ModelConfig(x_dim=72, latent_dim=3, hidden=(8,))).eval()


def _rgb(row: torch.Tensor) -> np.ndarray:
    return row.detach().numpy().reshape(SHAPE).transpose(1, 2, 0)


def _tile(grid, row, col, pad=1):
    h, w = SHAPE[1:]
    return grid[pad + row * (h + pad): pad + row * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w]


def test_rgb_sample_grid_is_the_decoder_mean(rgb_vae):
    grid = sample_grid(rgb_vae, SHAPE, n=6, seed=3)
    assert grid.shape == (2 * 5 + 1, 3 * 7 + 1, 3)
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        mean = rgb_vae.decode(z).mean
    np.testing.assert_allclose(_tile(grid, 1, 2), _rgb(mean[5]), rtol=1e-6)


def test_rgb_reconstructions_and_traversals(rgb_vae):
    x = torch.rand(4, 72, generator=torch.Generator().manual_seed(0))
    grid = reconstruction_grid(rgb_vae, x, SHAPE, ncol=2)
    with torch.no_grad():
        rec = rgb_vae.decode(rgb_vae.encode(x).mean).mean
    np.testing.assert_allclose(_tile(grid, 0, 1), _rgb(x[1]))
    np.testing.assert_allclose(_tile(grid, 3, 0), _rgb(rec[2]), rtol=1e-6)
    base = torch.tensor([0.3, -0.2, 0.1])
    grid = traversal_grid(rgb_vae, base, [2, 0], SHAPE, torch.tensor([-1.0, 0.0, 2.0]))
    z = base.clone()
    z[0] = 2.0
    with torch.no_grad():
        expected = rgb_vae.decode(z[None]).mean[0]
    np.testing.assert_allclose(_tile(grid, 1, 2), _rgb(expected), rtol=1e-6)


def test_latent_legend_names_the_classes():
    means = np.random.default_rng(0).normal(size=(30, 2))
    labels = np.arange(30) % 3
    legend = latent_figure(means, labels, ["cat", "dog", "fox"]).axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["cat", "dog", "fox"]
    assert legend.get_title().get_text() == "class"
    numbers = latent_figure(means, labels).axes[0].get_legend()
    assert [t.get_text() for t in numbers.get_texts()] == ["0", "1", "2"]


def test_run_figures_of_an_rgb_run(tmp_path):
    model = make_run(tmp_path / "run", SHAPE, class_names=["red", "green", "blue"])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    figs = run_figures(model, config, make_data(72, SHAPE), [])
    assert list(figs) == ["reconstructions", "samples", "traversals", "interpolations", "latent", "kl"]
    for name in ("reconstructions", "samples", "traversals", "interpolations"):
        assert figs[name][1].ndim == 3 and figs[name][1].shape[-1] == 3, name
    legend = figs["latent"][1].axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["red", "green", "blue"]
    with pytest.raises(ValueError, match="no images"):
        run_figures(model, {**config, "data": {**config["data"], "image_shape": None}}, make_data(72, SHAPE), [])


# --- restoration per channel ---------------------------------------------------------------------------------

def test_masks_cover_the_same_pixels_in_every_channel():
    center = make_mask("center", 2, (3, 4, 5)).reshape(2, 3, 4, 5)
    expected = torch.zeros(4, 5, dtype=torch.bool)
    expected[1:3, 1:3] = True  # a 2x2 block: rows (4 - 2) // 2 = 1.., columns (5 - 2) // 2 = 1..
    for c in range(3):
        assert torch.equal(center[0, c], expected) and torch.equal(center[1, c], expected)
    half = make_mask("half", 1, (3, 4, 5)).reshape(3, 4, 5)
    assert half[:, 2:].all() and not half[:, :2].any()
    rnd = make_mask("random", 6, (3, 4, 5), fraction=0.4, seed=2).reshape(6, 3, 4, 5)
    grey = make_mask("random", 6, (4, 5), fraction=0.4, seed=2).reshape(6, 4, 5)
    for c in range(3):
        assert torch.equal(rnd[:, c], grey)  # the grey mask's pixels, in each channel
    assert make_mask("center", 1, (1, 4, 5)).shape == (1, 20)


def test_down_and_upsampling_per_channel_by_hand():
    # channel c, pixel (h, w) of a 2x4 image holds (8c + 4h + w) / 100
    x = (torch.arange(24, dtype=torch.float64) / 100).reshape(1, 24)
    y = downsample(x, (3, 2, 4), 2)
    # the 2x2 blocks of channel c: (8c + (0 + 1 + 4 + 5) / 4) / 100 and (8c + (2 + 3 + 6 + 7) / 4) / 100
    np.testing.assert_allclose(y.numpy()[0], np.array([2.5, 4.5, 10.5, 12.5, 18.5, 20.5]) / 100, rtol=1e-12)
    near = upsample(y, (3, 2, 4), 2, "nearest").numpy().reshape(3, 2, 4)
    for c in range(3):
        a, b = y[0, 2 * c].item(), y[0, 2 * c + 1].item()
        np.testing.assert_allclose(near[c], [[a, a, b, b]] * 2)
    lin = upsample(y, (3, 2, 4), 2, "bilinear").numpy().reshape(3, 2, 4)
    a, b = 0.185, 0.205  # the blue channel: a, 0.75a + 0.25b, 0.25a + 0.75b, b in both rows
    np.testing.assert_allclose(lin[2], [[a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b]] * 2, rtol=1e-12)
    with pytest.raises(ValueError, match="images of 4x5 pixels do not divide"):
        downsample(torch.zeros(1, 60), (3, 4, 5), 2)


def test_box_filter_and_back_projection_keep_channels_apart():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3 * 4 * 6, generator=g, dtype=torch.float64)
    out = box_filter(x, SHAPE).reshape(2, 3, 4, 6)
    grey = box_filter(x.reshape(6, 24), (4, 6)).reshape(2, 3, 4, 6)
    torch.testing.assert_close(out, grey)
    assert float(out[1, 2, 0, 0]) == pytest.approx(float(x.reshape(2, 3, 4, 6)[1, 2, :2, :2].mean()))
    y = torch.rand(2, 3 * 2 * 3, generator=g, dtype=torch.float64)
    proj = _back_project(x, y, SHAPE, 2)
    torch.testing.assert_close(downsample(proj, SHAPE, 2), y, atol=1e-12, rtol=0)
    assert proj.min() >= 0 and proj.max() <= 1


@pytest.mark.parametrize("task", ["denoise", "inpaint", "superres"])
def test_restore_tasks_on_rgb_images(rgb_vae, task):
    x = torch.rand(3, 72, generator=torch.Generator().manual_seed(4))
    kw = {"missing": make_mask("center", 3, SHAPE), "pixel_mean": torch.full((72,), 0.5)} if task == "inpaint" else {}
    r = run_task(rgb_vae, task, SHAPE, truth=x, steps=2, opt_steps=3, samples=10, **kw)
    for name, out in r.outputs.items():
        assert out.shape == (3, 72), name
    if task == "inpaint":
        assert torch.equal(r.outputs["optimize"][~kw["missing"]], x[~kw["missing"]])
    if task == "superres":
        torch.testing.assert_close(downsample(r.outputs["iterative"], SHAPE, 2), downsample(x, SHAPE, 2),
                                   atol=1e-6, rtol=0)
    assert set(summarize(r)["methods"]) == set(r.outputs)
    ax = comparison_figure(r, SHAPE, 2).axes[0]
    assert ax.images[0].get_array().shape == (4 + 2, 2 * 7 + 1, 3)  # one row of two RGB images


def test_read_rgb_images(tmp_path):
    img = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    save_image(tmp_path / "a.png", img.transpose(1, 2, 0), scale=1)
    np.save(tmp_path / "b.npy", img)
    np.save(tmp_path / "c.npy", np.stack([img, 1 - img]))
    save_image(tmp_path / "grey.png", img[0], scale=1)
    x = read_images([tmp_path / "a.png", tmp_path / "b.npy", tmp_path / "c.npy", tmp_path / "grey.png"], (3, 4, 5))
    assert x.shape == (5, 60)
    np.testing.assert_allclose(x[0].numpy(), np.round(img.ravel() * 255) / 255, atol=1e-7)  # C-major rows
    np.testing.assert_array_equal(x[1].numpy(), img.ravel())
    np.testing.assert_array_equal(x[3].numpy(), 1 - img.ravel())
    assert torch.equal(x[4, :20], x[4, 20:40]) and torch.equal(x[4, :20], x[4, 40:])  # grey: three equal channels
    grey = read_images([tmp_path / "a.png"], (4, 5))  # a colour PNG for a grey run: the mean of R, G, B
    np.testing.assert_allclose(grey[0].numpy(), x[0].reshape(3, 20).mean(0).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="do not match the expected 3 channels of 5x4 pixels"):
        read_images([tmp_path / "b.npy"], (3, 5, 4))


# --- the commands on a hand-made RGB run ---------------------------------------------------------------------

@pytest.fixture
def rgb_run(tmp_path, monkeypatch):
    """An RGB run folder and its in-memory data set, which the commands get in place of a data set on disk."""
    run = tmp_path / "rgb"
    make_run(run, SHAPE, class_names=["a", "b", "c"])
    ds = make_data(72, SHAPE)
    import aevb.cli.inspecting as inspecting
    from aevb import load_run

    monkeypatch.setattr(inspecting, "run_and_data", lambda r, d, device="cpu": (*load_run(r, device=device), ds))
    return run


def test_sample_command_writes_rgb_png(rgb_run, tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", str(rgb_run), "--n", "4", "--seed", "2", "--out", str(out)]) == 0
    px = _png_pixels(out.read_bytes())
    assert px.shape == ((2 * 5 + 1) * 2, (2 * 7 + 1) * 2, 4)  # save_image repeats each pixel twice
    from aevb import load_run

    expected = sample_grid(load_run(rgb_run)[0], SHAPE, n=4, seed=2)
    np.testing.assert_allclose(px[::2, ::2, :3], np.round(expected * 255) / 255, atol=1e-7)
    np.testing.assert_array_equal(px[1::2, 1::2], px[::2, ::2])


def test_plot_command_on_an_rgb_run(rgb_run, tmp_path, capsys):
    assert main(["plot", str(rgb_run), "--out", str(tmp_path / "p")]) == 0
    names = [p.rsplit("/", 1)[-1] for p in capsys.readouterr().out.split()]
    assert names == ["curves.png", "reconstructions.png", "samples.png", "traversals.png", "interpolations.png",
                     "latent.png", "kl.png"]
    px = _png_pixels((tmp_path / "p" / "samples.png").read_bytes())
    assert px.shape[:2] == ((10 * 5 + 1) * 9, (10 * 7 + 1) * 9)  # 100 samples, each pixel 56 // 6 = 9 times
    assert np.abs(px[..., 0] - px[..., 1]).max() > 0.1  # colour, not grey


def test_restore_command_on_an_rgb_run(rgb_run, tmp_path, capsys):
    mask = np.zeros((4, 6), dtype=np.float32)
    mask[:, :2] = 1
    np.save(tmp_path / "mask.npy", mask)
    out = tmp_path / "inp"
    assert main(["restore", str(rgb_run), "--task", "inpaint", "--mask", str(tmp_path / "mask.npy"), "--limit", "3",
                 "--steps", "2", "--opt-steps", "3", "--samples", "10", "--save-outputs", "--out", str(out)]) == 0
    arrays = np.load(out / "restored.npz")
    assert arrays["optimize"].shape == (3, 3, 4, 6)
    observed = arrays["observed"]
    assert (observed[:, :, :, :2] == 0.5).all() and (observed[:, :, :, 2:] != 0.5).any()  # all channels missing
    low = downsample(make_data(72, SHAPE).test[:2], SHAPE, 2).numpy().reshape(2, 3, 2, 3)
    np.save(tmp_path / "low.npy", low)
    out = tmp_path / "sr"
    assert main(["restore", str(rgb_run), "--task", "superres", "--images", str(tmp_path / "low.npy"), "--observed",
                 "--steps", "2", "--opt-steps", "3", "--save-outputs", "--out", str(out)]) == 0
    up = np.load(out / "restored.npz")["iterative"].reshape(2, -1)
    np.testing.assert_allclose(downsample(torch.from_numpy(up), SHAPE, 2).numpy(), low.reshape(2, -1), atol=1e-6)


@pytest.mark.parametrize("command", ["sample", "restore"])  # plot and report draw a table's pictures (test_tables)
def test_a_run_without_images_is_refused(tmp_path, monkeypatch, capsys, command):
    run = tmp_path / "tabular"
    make_run(run, None, x_dim=7)
    import aevb.cli.inspecting as inspecting
    from aevb import load_run

    monkeypatch.setattr(inspecting, "run_and_data", lambda r, d, device="cpu": (*load_run(r), make_data(7, None)))
    assert main([command, str(run), *(["--task", "denoise"] if command == "restore" else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no images" in err and len(err.splitlines()) == 1 and err.startswith("aevb: error:")
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.jsonl", "model.safetensors"]


def test_helpers_are_the_ones_plots_exports():
    assert plots.is_image is is_image and plots.as_images is as_images
