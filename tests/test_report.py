"""The HTML report in a real browser (headless Chromium): every image renders, no console errors, a screenshot is
kept; the latent explorer's in-page decoder follows the pointer and equals the Python decoder."""
import json
import os
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from aevb import VAE, ModelConfig, load_run
from aevb.cli import main
from aevb.data import load
from aevb.likelihoods import LIKELIHOODS
from aevb.nets import ACTIVATIONS
from aevb.inspect.report import JS_HEADS, _explorer_html, decoder_spec

from browser import console_errors, full_page_screenshot, start_chromium, stop_chromium


@pytest.fixture(scope="module")
def digits():
    return load("digits")


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    """A VAE with Nz = 2 trained briefly on the 8x8 digits."""
    out = tmp_path_factory.mktemp("runs") / "digits2"
    assert main(["train", "--dataset", "digits", "--latent-dim", "2", "--hidden", "32", "--samples", "20000",
                 "--threads", "1", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium()
    yield driver
    stop_chromium(driver)


def _keep(path: Path) -> None:
    """Copy a test artifact to $AEVB_TEST_ARTIFACTS when set (the CI keeps the screenshot there)."""
    folder = os.environ.get("AEVB_TEST_ARTIFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / path.name)


def _open(driver, path: Path) -> None:
    driver.get(path.resolve().as_uri())
    driver.execute_script("return 0")
    ok = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        Promise.all(Array.from(document.images).map(img => img.decode().catch(() => null))).then(() => done(true));
    """)
    assert ok


def test_report_renders_every_image_without_console_errors(run2, browser, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", str(run2), "--out", str(out)]) == 0
    text = out.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained: nothing to fetch
    browser.get_log("browser")  # drop entries from earlier pages
    _open(browser, out)
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);")
    names = [alt for alt, *_ in images]
    assert names == ["curves", "reconstructions", "samples", "manifold", "latent", "kl"]
    for alt, complete, width, height in images:
        assert complete and width > 0 and height > 0, alt
    assert console_errors(browser) == []
    shot = full_page_screenshot(browser, tmp_path / "report-screenshot.png")
    _keep(shot)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[0] > 1500 and pixels[..., :3].std() > 0.05  # a tall page with content, not a blank frame


def test_explorer_follows_the_pointer_and_equals_the_python_decoder(run2, browser, digits, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    out = tmp_path / "report.html"
    assert main(["report", str(run2), "--out", str(out), "--points", "300"]) == 0
    _open(browser, out)
    plane = browser.find_element(By.ID, "explorer-plane")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", plane)
    model, _ = load_run(run2)
    seen = []
    for dx, dy in ((-120, -90), (110, 70), (30, -140)):
        before = browser.execute_script("return window.aevbExplorer.state.updates")
        ActionChains(browser).move_to_element_with_offset(plane, dx, dy).perform()
        state = browser.execute_script("""
            const s = window.aevbExplorer.state, c = document.getElementById('explorer-image-1x');
            const px = Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
            return {updates: s.updates, z: s.z, image: s.image, pixels: px};""")
        assert state["updates"] > before  # the pointer moved the picture
        z = torch.tensor(state["z"], dtype=torch.float32)
        # the z under the pointer: the plane spans [-e, e] in each dimension, y up
        ex, ey = json.loads(browser.execute_script(
            "return JSON.stringify([0, 1].map(d => JSON.parse(document.getElementById('aevb-explorer-data')"
            ".textContent).extent[window.aevbExplorer.state.dims[d]]))"))
        assert float(z[0]) == pytest.approx(dx / 180 * ex, abs=2 * ex / 360)
        assert float(z[1]) == pytest.approx(-dy / 180 * ey, abs=2 * ey / 360)
        with torch.no_grad():
            expected = model.decode(z[None]).mean[0].numpy()
        np.testing.assert_allclose(np.array(state["image"]), expected, atol=1e-5, rtol=0)
        grey = np.array(state["pixels"]).reshape(-1, 4)[:, 0]
        np.testing.assert_allclose(grey, np.round(np.clip(expected, 0, 1) * 255), atol=1)  # what is drawn
        seen.append(grey)
    assert np.abs(seen[0].astype(int) - seen[1].astype(int)).max() > 20  # a different picture elsewhere
    assert console_errors(browser) == []


def _page(tmp_path: Path, model, name: str, shape=(3, 4)) -> Path:
    x = torch.rand(20, model.config.x_dim, generator=torch.Generator().manual_seed(1))
    ds = types.SimpleNamespace(train=x, train_labels=torch.arange(20) % 10)
    html = _explorer_html(model, ds, shape, None, 20).replace("<h2>", "<!DOCTYPE html><meta charset='utf-8'>"
                                                               "<link rel='icon' href='data:,'><h2>", 1)
    path = tmp_path / f"{name}.html"
    path.write_text(html)
    return path


CASES = [(a, "bernoulli") for a in ACTIVATIONS] + [("tanh", lik) for lik in JS_HEADS if lik != "bernoulli"]


def test_in_page_decoder_for_every_activation_and_likelihood(browser, tmp_path):
    """explorer.js against the float64 Python decoder with the same float32 weights, weights scaled up so that
    every activation's nonlinear and saturated ranges (softplus's threshold, erf's tails) are exercised."""
    gen = torch.Generator().manual_seed(0)
    z = (3 * torch.randn(6, 3, generator=gen)).double()
    for activation, likelihood in CASES:
        torch.manual_seed(0)
        model = VAE(ModelConfig(x_dim=12, latent_dim=3, hidden=(9, 7), activation=activation, likelihood=likelihood,
                                levels=5))
        with torch.no_grad():
            for layer in model.decoder:
                if isinstance(layer, nn.Linear):
                    layer.weight.mul_(6)
        browser.get_log("browser")
        _open(browser, _page(tmp_path, model, f"{activation}-{likelihood}"))
        got = np.array(browser.execute_script(
            "return arguments[0].map(z => window.aevbExplorer.decode(z));", z.tolist()))
        with torch.no_grad():
            exact = model.double().decode(z).mean.numpy()
            single = model.float().decode(z.float()).mean.numpy()
        np.testing.assert_allclose(got, exact, atol=1e-9, rtol=0, err_msg=f"{activation}, {likelihood}")
        # torch's float32 continuous-Bernoulli mean cancels two terms of size ~1/|1 - 2p| near p = 0.5 and is off
        # by up to ~5e-4 there; the page computes in float64, so float64 is its reference for that head
        tol = 1e-3 if likelihood == "continuous-bernoulli" else 1e-5
        np.testing.assert_allclose(got, single, atol=tol, rtol=0, err_msg=f"{activation}, {likelihood}")
        assert console_errors(browser) == [], (activation, likelihood)


def test_every_likelihood_has_an_in_page_head_or_a_one_line_refusal():
    for likelihood in LIKELIHOODS:
        model = VAE(ModelConfig(x_dim=6, latent_dim=2, hidden=(4,), likelihood=likelihood))
        if likelihood in JS_HEADS:
            assert decoder_spec(model)["head"]["kind"] == JS_HEADS[likelihood]
        else:
            with pytest.raises(ValueError, match=f"does not support the likelihood '{likelihood}'"):
                decoder_spec(model)


def test_unsupported_decoder_is_refused():
    model = VAE(ModelConfig(x_dim=6, latent_dim=2, hidden=(4,)))
    model.decoder[1] = nn.Hardtanh()
    with pytest.raises(ValueError, match="does not support the activation Hardtanh"):
        decoder_spec(model)


def test_decoder_spec_embeds_float32_weights():
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=6, latent_dim=2, hidden=(4,), likelihood="gaussian"))
    spec = decoder_spec(model)
    import base64

    w = np.frombuffer(base64.b64decode(spec["layers"][0]["W"]), dtype="<f4").reshape(4, 2)
    np.testing.assert_array_equal(w, model.decoder[0].weight.detach().numpy())
    head_w = np.frombuffer(base64.b64decode(spec["head"]["W"]), dtype="<f4").reshape(-1, 4)
    np.testing.assert_array_equal(head_w, model.dec_head.out.weight.detach().numpy()[:6])  # the mean half only
    assert spec["head"]["kind"] == "identity"


@pytest.mark.parametrize("argv, message", [
    (["--dims", "0,0"], "two different latent dimensions"),
    (["--dims", "0,5"], "two different latent dimensions"),
    (["--include", "{tmp}/list.json"], "expected a JSON object"),
    (["--include", "{tmp}/none.json"], "not found"),
    (["--out", "{tmp}/no/such/folder/r.html"], "does not exist"),
])
def test_report_bad_input(run2, tmp_path, capsys, argv, message):
    (tmp_path / "list.json").write_text("[1, 2]")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["report", str(run2), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("aevb: error:")
    assert not (run2 / "report.html").exists()


def test_report_includes_json_tables(run2, tmp_path):
    extra = tmp_path / "diag.json"
    extra.write_text(json.dumps({"active_units": 2, "amortization": {"amortization_gap": 1.25}}))
    out = tmp_path / "r.html"
    assert main(["report", str(run2), "--out", str(out), "--include", str(extra), "--no-explorer"]) == 0
    text = out.read_text()
    assert "<td>amortization.amortization_gap</td><td>1.25</td>" in text
    assert "aevb-explorer-data" not in text


# --- RGB, non-square images and class names ------------------------------------------------------------------

def _explorer_pixels(driver) -> tuple[np.ndarray, dict]:
    """The explorer's 1x canvas as (H, W, 4) bytes, and its state (z, decoded image)."""
    got = driver.execute_script("""
        const s = window.aevbExplorer.state, c = document.getElementById('explorer-image-1x');
        return {w: c.width, h: c.height, z: s.z, image: s.image,
                pixels: Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)};""")
    return np.array(got["pixels"]).reshape(got["h"], got["w"], 4), got


def test_rgb_report_draws_colour_pictures_and_names_the_classes(browser, tmp_path):
    import base64
    import io
    import re

    import matplotlib.image
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from aevb.inspect.plots import sample_grid
    from aevb.inspect.report import write_report
    from handmade_run import make_data, make_run

    shape = (3, 5, 7)  # RGB, wider than tall
    model = make_run(tmp_path / "rgb", shape, latent_dim=2, class_names=["cat", "dog", "fox"])
    out = write_report(tmp_path / "rgb", tmp_path / "rgb.html", make_data(105, shape), points=40)
    text = out.read_text()
    # the embedded samples picture: each pixel 56 // 7 = 8 times, colours round(255 v)
    src = re.search(r"<figure id='fig-samples'><img src=\"data:image/png;base64,([^\"]+)\"", text).group(1)
    png = matplotlib.image.imread(io.BytesIO(base64.b64decode(src)), format="png")
    grid = sample_grid(model, shape, seed=0)
    assert png.shape == (grid.shape[0] * 8, grid.shape[1] * 8, 4)
    np.testing.assert_array_equal(np.round(png[::8, ::8, :3] * 255), np.round(grid * 255))
    browser.get_log("browser")
    _open(browser, out)
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);")
    assert [alt for alt, *_ in images] == ["curves", "reconstructions", "samples", "manifold", "latent", "kl"]
    assert all(complete and width > 0 for _, complete, width in images)
    legend = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#explorer-legend li")]
    assert legend == ["cat", "dog", "fox"]
    view = browser.find_element(By.ID, "explorer-image")
    assert (int(view.get_attribute("width")), int(view.get_attribute("height"))) == (7 * 32, 5 * 32)
    plane = browser.find_element(By.ID, "explorer-plane")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", plane)
    for dx, dy in ((0, 0), (-100, 60), (90, -120)):
        if (dx, dy) != (0, 0):
            ActionChains(browser).move_to_element_with_offset(plane, dx, dy).perform()
        pixels, state = _explorer_pixels(browser)
        assert pixels.shape == (5, 7, 4)
        with torch.no_grad():
            expected = model.decode(torch.tensor([state["z"]], dtype=torch.float32)).mean[0].numpy()
        np.testing.assert_allclose(state["image"], expected, atol=1e-5, rtol=0)
        rgb = np.round(np.clip(expected, 0, 1) * 255).reshape(3, 5, 7).transpose(1, 2, 0)  # channel c of (h, w)
        np.testing.assert_allclose(pixels[..., :3], rgb, atol=1)
        assert (pixels[..., 3] == 255).all()
        assert np.abs(pixels[..., 0].astype(int) - pixels[..., 2]).max() > 20  # colour, not grey
    assert console_errors(browser) == []


def test_explorer_draws_non_square_grey_images(browser, tmp_path):
    from selenium.webdriver.common.by import By

    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=12, latent_dim=2, hidden=(6,)))
    with torch.no_grad():
        model.dec_head.out.weight.mul_(5)
    _open(browser, _page(tmp_path, model, "grey-3x4", shape=(3, 4)))
    pixels, state = _explorer_pixels(browser)
    assert pixels.shape == (3, 4, 4)  # 3 rows of 4 pixels
    with torch.no_grad():
        expected = model.decode(torch.zeros(1, 2)).mean[0].numpy()
    grey = np.round(np.clip(expected, 0, 1) * 255).reshape(3, 4)
    for c in range(3):
        np.testing.assert_allclose(pixels[..., c], grey, atol=1)
    assert browser.find_elements(By.ID, "explorer-legend")[0].text.split() == [str(k) for k in range(10)]
    assert console_errors(browser) == []


def test_a_decoder_the_page_cannot_run_is_refused_in_one_line():
    model = VAE(ModelConfig(x_dim=6, latent_dim=2, hidden=(4,)))
    model.dec_head.out = None  # as for a decoder that computes its outputs itself
    with pytest.raises(ValueError, match="runs MLP decoders only.*--no-explorer"):
        decoder_spec(model)
