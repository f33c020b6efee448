"""Reading and verifying the data files (IDX, Frey Face's .mat, scikit-learn's digits) into DataSets."""

from __future__ import annotations

import gzip
import os
import warnings
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import torch

from .sets import (_TEST_IMAGES, _TEST_LABELS, _TRAIN_IMAGES, _TRAIN_LABELS, DATASETS, DataError, DataSet,
                   DatasetSpec, sha256_of)

_PAPER_TRAIN = 50_000  # mnist.pkl.gz: the first 50,000 training images; the last 10,000 are validation
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


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
    with warnings.catch_warnings():  # a read-only array is fine: the conversion below copies it
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        flat = torch.from_numpy(np.ascontiguousarray(pixels).reshape(pixels.shape[0], -1))
    return flat.to(torch.float32).div_(scale)  # torch's conversion: about 4x numpy's astype, the same values


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
