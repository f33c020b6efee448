"""Your own data (`aevb.data.open_data`, `aevb train --data`): folders of images, arrays, tables, and bad input.

Pixels are checked against exact values (the built-in MNIST loader, Pillow's own conversions, hand-made arrays);
each bad input must raise a one-line DataError naming the problem (exit 2 from the CLI, no run folder left).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from aevb.data import DataError, Rows, load, open_data
from aevb.data.images import list_images, natural_key
from aevb.data.user import as_rows


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)


def _folder(root, n=10, shape=(6, 5), classes=("a", "b"), seed=0):
    rng = np.random.default_rng(seed)
    images = {}
    for i in range(n):
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        rel = f"{classes[i % len(classes)]}/{i}.png" if classes else f"{i}.png"
        _save(root / rel, a)
        images[i] = a
    return images


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


# -- folders -------------------------------------------------------------------------------------------------------


def test_natural_order_by_file_name_then_folder(tmp_path):
    images = _folder(tmp_path / "d", n=12)
    listing = list_images(tmp_path / "d")
    assert [f.rsplit("/", 1)[1] for f in listing.files] == [f"{i}.png" for i in range(12)]
    assert listing.classes == tuple("ab"[i % 2] for i in range(12))
    assert natural_key("img2") < natural_key("img10")
    ds = open_data(tmp_path / "d", test_fraction=0.25, progress=False)
    x = np.concatenate([ds.train.numpy(), ds.test.numpy()])
    order = np.concatenate([np.setdiff1d(np.arange(12), ds.test_indices), ds.test_indices])
    expected = np.stack([images[i].reshape(-1) for i in order]).astype(np.float32) / 255
    np.testing.assert_array_equal(x, expected)
    assert ds.image_shape == (6, 5) and ds.class_names == ("a", "b")
    assert ds.train_labels.tolist() == [i % 2 for i in np.setdiff1d(np.arange(12), ds.test_indices)]


def test_png_folder_gives_the_builtin_loaders_pixels_and_labels(tmp_path, shared_data):
    mnist = load("mnist", data_dir=shared_data, download=False)
    n, m = 300, 100
    for split, x, y, count in (("train", mnist.train, mnist.train_labels, n), ("test", mnist.test, mnist.test_labels, m)):
        for i in range(count):
            _save(tmp_path / split / str(int(y[i])) / f"{i:05d}.png", (x[i] * 255).round().byte().view(28, 28).numpy())
    ds = open_data(tmp_path / "train", test_data=tmp_path / "test", progress=False)
    assert torch.equal(ds.train, mnist.train[:n]) and torch.equal(ds.test, mnist.test[:m])
    assert torch.equal(ds.train_labels, mnist.train_labels[:n]) and torch.equal(ds.test_labels, mnist.test_labels[:m])
    assert ds.class_names == tuple(str(k) for k in range(10))


def test_second_open_reads_the_cache_and_a_changed_source_is_reported(tmp_path):
    _folder(tmp_path / "d")
    first = open_data(tmp_path / "d", test_fraction=0.2, progress=False)
    again = open_data(tmp_path / "d", test_indices=first.test_indices, expect=first.source, progress=False)
    assert not first.decode["cached"] and again.decode["cached"]
    assert torch.equal(first.train, again.train)
    _save(tmp_path / "d" / "a" / "0.png", np.zeros((6, 5), np.uint8))
    os.utime(tmp_path / "d" / "a" / "0.png", ns=(1, 1))
    with pytest.raises(DataError, match="has changed since the run was made") as e:
        open_data(tmp_path / "d", test_indices=first.test_indices, expect=first.source, progress=False)
    _one_line(e)


def test_image_modes_are_converted_as_documented(tmp_path):
    d = tmp_path / "m"
    grey16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 257 * 20)
    _save(d / "0.png", grey16)                                   # 16-bit grey: v / 257
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0                          # fully transparent red: alpha dropped
    _save(d / "1.png", rgba, "RGBA")
    pal = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4), "P")
    pal.putpalette([v for k in range(256) for v in (k * 10 % 256, 0, 0)])
    pal.save(d / "2.png")
    Image.fromarray(np.full((3, 4, 3), 100, np.uint8)).convert("CMYK").save(d / "3.tif")
    ds = open_data(d, test_fraction=0.25, test_indices=np.array([3]), progress=False)
    assert ds.image_shape == (3, 3, 4)  # some image has colour: RGB
    x = (ds.train * 255).round().to(torch.int64).view(-1, 3, 3, 4)
    assert x[0, 0].flatten().tolist() == [20 * k for k in range(12)] and torch.equal(x[0, 0], x[0, 2])
    assert (x[1, 0] == 200).all() and (x[1, 1:] == 0).all()
    assert x[2, 0].flatten().tolist() == [k * 10 % 256 for k in range(12)] and (x[2, 1:] == 0).all()
    cmyk = np.asarray(Image.open(d / "3.tif").convert("RGB")).transpose(2, 0, 1)
    assert (ds.test * 255).round().to(torch.uint8).view(3, 3, 4).numpy().tolist() == cmyk.tolist()
    grey = open_data(d, channels=1, test_indices=np.array([3]), progress=False)
    assert grey.image_shape == (3, 4)


def test_mixed_sizes_need_image_size_which_resizes_and_crops(tmp_path):
    _save(tmp_path / "s" / "0.png", np.zeros((8, 8), np.uint8))
    _save(tmp_path / "s" / "1.png", np.full((8, 16), 255, np.uint8))
    with pytest.raises(DataError, match="different sizes.*--image-size") as e:
        open_data(tmp_path / "s", test_fraction=0.5, progress=False)
    _one_line(e)
    ds = open_data(tmp_path / "s", test_fraction=0.5, image_size=(4, 4), progress=False)
    assert ds.image_shape == (4, 4)
    assert torch.equal(torch.cat([ds.train, ds.test]).sort(0).values[:, 0], torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_bad_image_is_named_or_skipped_and_counted(tmp_path, damage):
    _folder(tmp_path / "d", n=6, classes=None)
    bad = tmp_path / "d" / "3.png"
    data = bad.read_bytes()
    bad.write_bytes(b"not an image at all" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(DataError, match=r"3\.png.*--skip-bad") as e:
        open_data(tmp_path / "d", test_fraction=0.2, progress=False)
    _one_line(e)
    decoded = tmp_path / "cache" / "aevb" / "decoded"
    assert not any(decoded.iterdir())  # nothing partial left in the cache
    ds = open_data(tmp_path / "d", test_fraction=0.2, skip_bad=True, progress=False)
    assert ds.train.shape[0] + ds.test.shape[0] == 5 and ds.source["skipped"] == 1
    assert [p.name.startswith(".tmp") for p in decoded.iterdir()] == [False]


def test_non_images_are_ignored_and_counted_and_an_empty_folder_refused(tmp_path):
    _folder(tmp_path / "d", n=4, classes=None)
    (tmp_path / "d" / "notes.txt").write_text("hello")
    (tmp_path / "d" / "data.csv").write_text("1,2")
    ds = open_data(tmp_path / "d", test_fraction=0.25, progress=False)
    assert ds.source["ignored"] == 2 and ds.source["files"] == 4
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(DataError, match="no images found.*1 other files ignored") as e:
        open_data(tmp_path / "empty", progress=False)
    _one_line(e)


def test_a_decompression_bomb_is_refused(tmp_path, monkeypatch):
    _save(tmp_path / "b" / "0.png", np.zeros((40, 40), np.uint8))
    _save(tmp_path / "b" / "1.png", np.zeros((40, 40), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 1,600 pixels: more than twice the limit
    with pytest.raises(DataError, match=r"0\.png.*decompression bomb") as e:
        open_data(tmp_path / "b", test_fraction=0.5, progress=False)
    _one_line(e)


@pytest.mark.parametrize("name,match", [("missing", "no such file or folder"),
                                        ("notes.txt", "cannot read this kind of file")])
def test_a_missing_source_or_an_unknown_kind_of_file_is_refused(tmp_path, name, match):
    if name != "missing":
        (tmp_path / name).write_text("x")
    with pytest.raises(DataError, match=match) as e:
        open_data(tmp_path / name, progress=False)
    _one_line(e)


def test_a_symlink_loop_is_refused(tmp_path):
    _folder(tmp_path / "d", n=2, classes=None)
    (tmp_path / "d" / "sub").mkdir()
    os.symlink(tmp_path / "d", tmp_path / "d" / "sub" / "back")
    with pytest.raises(DataError, match="symbolic-link loop") as e:
        open_data(tmp_path / "d", progress=False)
    _one_line(e)


def test_decoding_with_worker_processes_gives_the_same_pixels(tmp_path):
    from aevb.data.images import decode_folder

    _folder(tmp_path / "d", n=600, classes=None, shape=(4, 4))
    one = np.array(decode_folder(tmp_path / "d", workers=1, progress=False).pixels)
    for p in (tmp_path / "cache").rglob("*"):
        if p.is_file():
            p.unlink()
    for p in sorted((tmp_path / "cache").rglob("*"), reverse=True):
        p.rmdir()
    two = decode_folder(tmp_path / "d", workers=2, progress=False)
    assert not two.cached and np.array_equal(one, np.array(two.pixels))


# -- arrays --------------------------------------------------------------------------------------------------------


def test_array_layouts_give_the_same_rows(tmp_path):
    rng = np.random.default_rng(1)
    nchw = rng.integers(0, 256, (10, 3, 4, 5), dtype=np.uint8)
    np.save(tmp_path / "nchw.npy", nchw)
    np.save(tmp_path / "nhwc.npy", nchw.transpose(0, 2, 3, 1))
    a = open_data(tmp_path / "nchw.npy", test_fraction=0.2, progress=False)
    b = open_data(tmp_path / "nhwc.npy", test_fraction=0.2, progress=False)
    assert a.image_shape == b.image_shape == (3, 4, 5)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    rows = np.setdiff1d(np.arange(10), a.test_indices)
    np.testing.assert_array_equal(a.train.numpy(), nchw[rows].reshape(8, -1).astype(np.float32) / 255)
    np.savez(tmp_path / "split.npz", train=nchw[:7], test=nchw[7:], train_labels=np.arange(7))
    c = open_data(tmp_path / "split.npz", progress=False)
    assert c.train.shape == (7, 60) and c.test.shape == (3, 60) and c.train_labels.tolist() == list(range(7))


def test_rows_left_on_disk_read_like_the_resident_tensor(tmp_path, monkeypatch):
    x = np.random.default_rng(2).integers(0, 256, (50, 12), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    resident = open_data(tmp_path / "x.npy", test_fraction=0.2, progress=False)
    monkeypatch.setattr("aevb.data.user.RESIDENT_BYTES", 0)
    disk = open_data(tmp_path / "x.npy", test_fraction=0.2, progress=False)
    assert isinstance(disk.train, Rows) and torch.is_tensor(resident.train)
    assert disk.train.file is not None  # read with pread, not through the map
    idx = torch.tensor([5, 0, 39, 5, 6, 7, 8, 2])
    for _ in range(3):
        assert torch.equal(disk.train[idx], resident.train[idx])
    assert torch.equal(torch.cat(list(disk.train.split(7))), resident.train)
    assert torch.equal(disk.train[3:9], resident.train[3:9]) and disk.train.shape == resident.train.shape


@pytest.mark.parametrize("case,match", [
    ("object", "pickle"), ("pickled_npz", "pickled"), ("nan", "NaN or infinite"), ("inf", "NaN or infinite"),
    ("shape", "cannot read an array of shape"), ("range", r"images must be uint8"), ("strings", "numbers only"),
])
def test_bad_arrays_are_refused(tmp_path, case, match):
    path = tmp_path / ("x.npz" if case == "pickled_npz" else "x.npy")
    if case == "object":
        np.save(path, np.array([[{"a": 1}]], dtype=object), allow_pickle=True)
    elif case == "pickled_npz":
        np.savez(path, train=np.array([[None, 1]], dtype=object))
    elif case in ("nan", "inf"):
        x = np.random.default_rng(0).random((10, 4))
        x[3, 2] = np.nan if case == "nan" else np.inf
        np.save(path, x)
    elif case == "shape":
        np.save(path, np.zeros((4, 5, 6, 7), np.uint8))
    elif case == "range":
        np.save(path, np.full((4, 5, 6), 3.0))
    else:
        np.save(path, np.array([["a", "b"]] * 4))
    with pytest.raises(DataError, match=match) as e:
        open_data(path, progress=False)
    _one_line(e)


# -- tables --------------------------------------------------------------------------------------------------------


def test_a_csv_table_is_standardized_with_the_training_rows(tmp_path):
    x = np.random.default_rng(3).normal(5, 3, (40, 3))
    lines = ["a,b,c"] + [",".join(f"{v:.17g}" for v in row) for row in x]
    (tmp_path / "t.csv").write_text("\n".join(lines))
    ds = open_data(tmp_path / "t.csv", test_fraction=0.25, progress=False)
    train = x[np.setdiff1d(np.arange(40), ds.test_indices)]
    mean, std = train.mean(0), train.std(0)
    np.testing.assert_allclose(ds.train.numpy(), (train - mean) / std, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ds.source["scaler"]["mean"], mean, rtol=1e-15)
    assert ds.source["columns"] == ["a", "b", "c"] and ds.image_shape is None and ds.source["kind"] == "table"


@pytest.mark.parametrize("text,match", [
    ("a,b\n1,2\n3,x\n", r"line 3: column 'b' holds 'x', not a number"),
    ("a,b\n1,2\n3,nan\n", "NaN or infinite"),
    ("a,b\n1,2\n3\n", "line 3: 1 cells"),
    ("", "empty"),
])
def test_bad_tables_are_refused(tmp_path, text, match):
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(DataError, match=match) as e:
        open_data(tmp_path / "t.csv", progress=False)
    _one_line(e)


def test_a_parquet_table_reads_like_the_csv(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    x = np.random.default_rng(4).normal(size=(20, 2))
    pq.write_table(pa.table({"u": x[:, 0], "v": x[:, 1]}), tmp_path / "t.parquet")
    (tmp_path / "t.csv").write_text("u,v\n" + "\n".join(f"{a:.17g},{b:.17g}" for a, b in x))
    p, c = (open_data(tmp_path / f"t.{s}", test_fraction=0.25, progress=False) for s in ("parquet", "csv"))
    assert torch.equal(p.train, c.train) and p.source["columns"] == ["u", "v"]
    pq.write_table(pa.table({"u": x[:, 0], "name": ["x"] * 20}), tmp_path / "s.parquet")
    with pytest.raises(DataError, match="column 'name' has type string"):
        open_data(tmp_path / "s.parquet", progress=False)


# -- splits and in-memory data ---------------------------------------------------------------------------------


def test_a_test_fraction_that_leaves_no_test_example_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((5, 4), np.uint8))
    with pytest.raises(DataError, match="leaves no test example") as e:
        open_data(tmp_path / "x.npy", test_fraction=0.05, progress=False)
    _one_line(e)
    ds = open_data(tmp_path / "x.npy", test_fraction=0.2, progress=False)
    assert ds.test_indices.tolist() == open_data(tmp_path / "x.npy", test_fraction=0.2).test_indices.tolist()


def test_as_rows_takes_tensors_arrays_and_datasets():
    x = np.random.default_rng(5).integers(0, 256, (6, 2, 3), dtype=np.uint8)
    expected = torch.from_numpy(x.reshape(6, 6).astype(np.float32)) / 255
    assert torch.equal(as_rows(x), expected) and torch.equal(as_rows(torch.from_numpy(x)), expected)
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.arange(6))
    assert torch.equal(as_rows(dataset), expected)
    with pytest.raises(DataError, match="holds no datapoints"):
        as_rows(np.zeros((0, 3)))


# -- the command line ----------------------------------------------------------------------------------------------


def _aevb(*argv):
    from aevb.cli import main

    return main([str(a) for a in argv])


def test_train_eval_and_sample_on_a_folder_and_bad_input_leaves_nothing(tmp_path, capsys):
    _folder(tmp_path / "d", n=20, shape=(4, 6))
    out = tmp_path / "run"
    assert _aevb("train", "--data", tmp_path / "d", "--samples", 60, "--batch-size", 10, "--hidden", 16,
                 "--latent-dim", 2, "--out", out, "--no-progress") == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["image_shape"] == [4, 6] and config["data"]["source"]["class_names"] == ["a", "b"]
    assert (out / "split.safetensors").is_file() and (out / "samples.png").is_file()
    assert _aevb("eval", out) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n_test"] == 2 and result["test_bpd"] == pytest.approx(-result["test_elbo"] / (24 * np.log(2)))
    _save(tmp_path / "d" / "a" / "0.png", np.zeros((4, 6), np.uint8))
    assert _aevb("eval", out) == 2
    assert "has changed since the run was made" in capsys.readouterr().err
    (tmp_path / "d" / "a" / "0.png").write_bytes(b"broken")
    bad = tmp_path / "bad-run"
    assert _aevb("train", "--data", tmp_path / "d", "--samples", 60, "--out", bad, "--no-progress") == 2
    err = capsys.readouterr().err
    assert "0.png" in err and len(err.strip().splitlines()) == 1 and not bad.exists()
    assert _aevb("train", "--data", tmp_path / "d", "--dataset", "mnist", "--out", bad) == 2
    assert "not both" in capsys.readouterr().err
    assert _aevb("train", "--test-fraction", "0.2", "--out", bad) == 2
    assert "only apply to your own data" in capsys.readouterr().err and not bad.exists()


def test_the_python_example_of_docs_data_runs_and_writes_a_run_folder(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    block = text.split("## From Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "docs/data.md", "exec"), {})
    elbo, bpd = map(float, capsys.readouterr().out.split()[-2:])
    assert bpd == pytest.approx(-elbo / (784 * np.log(2)), rel=1e-12)
    config = json.loads((tmp_path / "runs" / "mine" / "config.json").read_text())
    assert config["data"]["n_train"] == 900 and config["data"]["image_shape"] == [28, 28]
    assert _aevb("sample", tmp_path / "runs" / "mine", "--n", 4) == 0
    assert _aevb("eval", tmp_path / "runs" / "mine") == 2
    assert "in-memory" in capsys.readouterr().err


def test_a_table_run_samples_in_the_columns_own_units(tmp_path, capsys):
    rng = np.random.default_rng(6)
    x = np.stack([rng.normal(1000, 50, 400), rng.normal(-3, 0.1, 400)], axis=1)
    (tmp_path / "t.csv").write_text("price,temp\n" + "\n".join(f"{a:.17g},{b:.17g}" for a, b in x))
    out = tmp_path / "run"
    assert _aevb("train", "--data", tmp_path / "t.csv", "--samples", 4000, "--hidden", 16, "--latent-dim", 2,
                 "--out", out, "--no-progress") == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["likelihood"] == "gaussian" and config["data"]["image_shape"] is None
    assert not (out / "samples.png").exists()
    assert _aevb("sample", out, "--n", 500) == 0
    lines = (out / "samples.csv").read_text().splitlines()
    assert lines[0] == "price,temp" and len(lines) == 501
    s = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    # standardized columns are N(0, 1) for the model; undone, the draws sit around each column's own scale
    assert abs(s[:, 0].mean() - 1000) < 20 and abs(s[:, 1].mean() + 3) < 0.05
    # drawn in chunks: the same seed and chunk size give the same rows, and every chunk is drawn
    from aevb import load_run
    from aevb.cli.evaluate import _write_table

    model, config = load_run(out)
    _write_table(tmp_path / "a.csv", model, config, 7, seed=0, chunk=10)
    _write_table(tmp_path / "b.csv", model, config, 7, seed=0, chunk=10)
    _write_table(tmp_path / "c.csv", model, config, 7, seed=0, chunk=3)
    a, c = (tmp_path / "a.csv").read_text().splitlines(), (tmp_path / "c.csv").read_text().splitlines()
    assert (tmp_path / "b.csv").read_text().splitlines() == a and a[0] == c[0] == "price,temp"
    assert len(a) == len(c) == 8 and len(set(c[1:])) == 7  # 3 + 3 + 1 rows, no chunk repeated
    assert _aevb("plot", out) == 0
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "columns.png", "correlations.png", "curves.png", "kl.png", "latent.png"]
    # the column pictures are in the columns' own units, as the samples are
    from aevb.cli.common import run_and_data
    from aevb.inspect.tables import table_figures

    model, config, ds = run_and_data(out, None)
    axes = table_figures(model, config, ds, [])["columns"][1].axes
    assert [ax.get_title() for ax in axes] == ["price", "temp"]
    assert 800 < axes[0].get_xlim()[0] < 1000 < axes[0].get_xlim()[1] < 1200
    assert -3.5 < axes[1].get_xlim()[0] < -3 < axes[1].get_xlim()[1] < -2.5


def test_an_rgb_folder_trains_a_conv_model_with_the_discretized_logistic_and_reports(tmp_path, capsys):
    _folder(tmp_path / "d", n=30, shape=(8, 12, 3))
    out = tmp_path / "run"
    assert _aevb("train", "--data", tmp_path / "d", "--arch", "conv", "--conv-widths", "4,8", "--latent-dim", 2,
                 "--likelihood", "discretized-logistic", "--samples", 60, "--batch-size", 10, "--out", out,
                 "--no-progress") == 0
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["test_bpd"] == pytest.approx(-last["test_elbo"] / (8 * 12 * 3 * np.log(2)), rel=1e-12)
    assert 0 < last["test_bpd"] < 12  # a mass over 256 levels: at most 8 bits plus the KL
    assert _aevb("report", out, "--out", tmp_path / "r.html") == 0
    page = (tmp_path / "r.html").read_text()
    assert "Not available for this run" in page and "id='fig-samples'" in page and "id='fig-reconstructions'" in page


def test_restore_refuses_the_logistic_mixture_in_one_line(tmp_path, capsys):
    from aevb import ModelConfig
    from aevb.inspect.restore_methods import _pixel_log_prob
    from aevb.models import build

    model = build(ModelConfig(x_dim=3 * 4 * 4, image_shape=(3, 4, 4), latent_dim=2, hidden=(8,),
                              likelihood="discretized-logistic", mixtures=2))
    with pytest.raises(ValueError, match="couples each pixel's channels"):
        _pixel_log_prob(model, torch.zeros(1, 2), torch.zeros(1, 48))


def test_sample_pictures_draw_from_the_models_own_prior():
    from aevb import ModelConfig
    from aevb.inspect.plots import as_images, decode_mean, image_grid, sample_grid
    from aevb.models import build

    torch.manual_seed(0)
    model = build(ModelConfig(x_dim=16, image_shape=(4, 4), latent_dim=2, hidden=(8,), prior="mog",
                              prior_components=3))
    with torch.random.fork_rng():
        torch.manual_seed(7)
        z = model.prior().sample((9,))
    expected = image_grid(as_images(decode_mean(model, z), (4, 4)))
    np.testing.assert_array_equal(sample_grid(model, (4, 4), n=9, seed=7), expected)


def test_sample_pictures_of_a_hierarchy_draw_ancestrally():
    from aevb import ModelConfig
    from aevb.inspect.plots import as_images, decode_mean, image_grid, sample_grid
    from aevb.models import build

    torch.manual_seed(0)
    model = build(ModelConfig(x_dim=16, image_shape=(4, 4), latent_dim=2, hidden=(8,), stochastic_layers=2))
    with torch.random.fork_rng():
        torch.manual_seed(3)
        z = model.prior().sample((9,))
    expected = image_grid(as_images(decode_mean(model, z), (4, 4)))
    np.testing.assert_array_equal(sample_grid(model, (4, 4), n=9, seed=3), expected)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian-sigmoid", "discretized-logistic"])
def test_a_table_with_a_likelihood_of_another_support_is_refused_in_its_own_terms(tmp_path, capsys, likelihood):
    (tmp_path / "t.csv").write_text("a,b\n" + "\n".join(f"{i},{i % 7}" for i in range(50)))
    out = tmp_path / "run"
    assert _aevb("train", "--data", tmp_path / "t.csv", "--likelihood", likelihood, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"aevb: error: --likelihood {likelihood} cannot model a table: aevb standardizes its columns "
                   "(mean 0, standard deviation 1), so the values span the real line; use --likelihood gaussian")
    assert not out.exists()


def test_a_run_finds_its_moved_data_through_data_dir_and_checks_its_content(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    text = "a,b\n" + "\n".join(f"{i},{(i * 7) % 11}" for i in range(60)) + "\n"
    (tmp_path / "a" / "t.csv").write_text(text)
    out = tmp_path / "run"
    assert _aevb("train", "--data", tmp_path / "a" / "t.csv", "--samples", 300, "--hidden", 8, "--latent-dim", 2,
                 "--batch-size", 20, "--out", out, "--no-progress") == 0
    capsys.readouterr()
    assert _aevb("eval", out) == 0
    before = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "t.csv").rename(tmp_path / "b" / "t.csv")
    assert _aevb("eval", out) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("t.csv: no such file or folder; if the run's data moved, pass --data-dir with the folder "
                        "that now holds t.csv") and "\n" not in err
    assert _aevb("eval", out, "--data-dir", tmp_path / "b") == 0
    after = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert after["test_elbo"] == before["test_elbo"] and after["n_test"] == before["n_test"]
    assert _aevb("eval", out, "--data-dir", tmp_path) == 2
    assert "holds no t.csv (the run was trained on" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "t.csv").write_text(text.replace("59,", "58,"))  # one value changed
    assert _aevb("eval", out, "--data-dir", tmp_path / "c") == 2
    assert "has changed since the run was made" in capsys.readouterr().err
    assert _aevb("train", "--resume", out, "--data-dir", tmp_path / "b", "--no-progress") == 0
