"""Your own data (`aevb train --data PATH`): a folder of images, an array file or a table, as a DataSet.

`open_data` reads the source (images.py, arrays.py), holds out a test set (a second source, an .npz's own `test`,
or a seeded fraction whose indices the caller stores), standardizes tables with the training rows' statistics,
and records where the data came from and its content hash, so that a later command finds the same data or says
that it changed. 8-bit data that would take more than RESIDENT_BYTES as float32 stays on disk (`Rows`): training
reads its minibatches from the memory map.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.utils.data

from .arrays import ARRAY_SUFFIXES, TABLE_SUFFIXES, Array, file_sha256, read_array, read_table
from .images import decode_folder, list_images, natural_key
from .sets import DataError, DataSet

RESIDENT_BYTES = int(os.environ.get("AEVB_RESIDENT_BYTES", 2 << 30))
SPLIT_SEED = 0  # the held-out fraction is the same for every run of a source, so their test ELBOs compare


class Rows:
    """The rows `index` of a 2-D uint8 (or float) array left where it is, converted to float32 when indexed.

    Indexing with an int, a slice or an index tensor returns an (n, D) float32 tensor (uint8 levels divided by
    255). The rows of a memory-mapped array are read from its file with `os.pread` (one read per run of consecutive
    rows), not through the map: the data pass through the page cache, never into this process's resident memory,
    so a data set larger than memory trains with bounded memory.
    """

    ndim = 2
    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, array: np.ndarray, index: np.ndarray | None = None):
        self.array, self.index = array, index
        self.file = None
        if isinstance(array, np.memmap) and array.filename and array.flags.c_contiguous:
            self.file = (array.filename, int(array.offset))
        self.scale = 255.0 if array.dtype == np.uint8 else None
        n = array.shape[0] if index is None else len(index)
        self.shape = torch.Size((n, array.shape[1]))

    def __len__(self) -> int:
        return self.shape[0]

    def is_floating_point(self) -> bool:
        return True

    def _rows(self, key) -> np.ndarray:
        if torch.is_tensor(key):
            key = key.cpu().numpy()
        if isinstance(key, (int, np.integer)):
            key = [key]
        if isinstance(key, slice):
            rows = np.arange(*key.indices(self.shape[0]))
            return rows if self.index is None else self.index[rows]
        return np.asarray(key, dtype=np.int64) if self.index is None else self.index[key]

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """The rows from the file, consecutive ones in one read."""
        d, dtype = self.array.shape[1], self.array.dtype
        size = d * dtype.itemsize
        out = np.empty((len(rows), d), dtype)
        view = memoryview(out).cast("B")
        starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)
        ends = np.append(starts[1:], len(rows))
        fd = os.open(self.file[0], os.O_RDONLY)
        try:
            for a, b in zip(starts.tolist(), ends.tolist()):
                want = (b - a) * size
                got = os.preadv(fd, [view[a * size:b * size]], self.file[1] + int(rows[a]) * size)
                if got != want:
                    raise DataError(f"{self.file[0]}: the file is shorter than its header says (truncated?)")
        finally:
            os.close(fd)
        return out

    def __getitem__(self, key) -> torch.Tensor:
        rows = self._rows(key)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.array.shape[0]):
            raise IndexError(f"row index out of range for {self.array.shape[0]} rows")
        block = torch.from_numpy(self._read(rows) if self.file else np.array(self.array[rows]))
        return block.to(torch.float32).div_(self.scale) if self.scale else block.to(torch.float32)

    def split(self, size: int):
        """Consecutive blocks of `size` rows (the last may be shorter), each read when reached, as tensors."""
        return (self[a:a + size] for a in range(0, self.shape[0], size))

    def to(self, device, *args, **kwargs):
        """Itself on the CPU; elsewhere every row, converted (it must fit in the device's memory)."""
        return self if torch.device(device).type == "cpu" else self[:].to(device)


def _tensor(a: np.ndarray, index: np.ndarray | None, scale: float | None) -> torch.Tensor:
    """Rows of `a` as a float32 tensor (divided by `scale`); a memory map is read from its file (see Rows)."""
    if isinstance(a, np.memmap):
        return Rows(a, index)[:]
    rows = a if index is None else a[index]
    flat = np.asarray(rows).astype(np.float32) if rows.dtype != np.float32 else np.array(rows)
    t = torch.from_numpy(flat)
    return t.div_(scale) if scale else t


def _split(n: int, fraction: float, path) -> np.ndarray:
    if not 0 < fraction < 1:
        raise DataError(f"--test-fraction must lie in (0, 1), got {fraction:g}")
    n_test = int(round(fraction * n))
    if n_test < 1 or n_test >= n:
        raise DataError(f"--test-fraction {fraction:g} of the {n:,} datapoints in {path} leaves "
                        f"{'no test example' if n_test < 1 else 'no training example'}; change it or pass --test-data")
    test = np.sort(np.random.default_rng(SPLIT_SEED).choice(n, n_test, replace=False))
    return test


def _source(path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if not p.is_dir() and p.suffix.lower() not in ARRAY_SUFFIXES + TABLE_SUFFIXES:
        raise DataError(f"{p}: cannot read this kind of file; give a folder of images, a .npy/.npz array or a "
                        ".csv/.parquet table")
    return p


def _read(path: Path, *, image_size, channels, skip_bad, progress, classes=None, listings=None) -> tuple[Array, dict]:
    """(what the source holds, facts for the record) of one source."""
    if path.is_dir():
        start = time.perf_counter()
        d = decode_folder(path, image_size=image_size, channels=channels, skip_bad=skip_bad, progress=progress,
                          classes=classes, listing=(listings or {}).get(path))
        facts = {"sha256": d.sha256, "files": d.files, "ignored": d.ignored, "skipped": len(d.skipped),
                 "cached": d.cached, "seconds": round(time.perf_counter() - start, 2)}
        return Array(d.pixels, "images", d.image_shape, d.labels, None), {**facts, "class_names": d.class_names}
    sha = file_sha256(path)
    a = read_array(path) if path.suffix.lower() in ARRAY_SUFFIXES else read_table(path)
    return a, {"sha256": sha}


def _classes(path: Path, test_path: Path | None, listings: dict) -> tuple[str, ...] | None:
    """The class names of a folder and its test folder together, so both number the classes alike (their listings
    are kept in `listings` for the decoding)."""
    if not path.is_dir() or test_path is None or not test_path.is_dir():
        return None
    names = set()
    for p in (path, test_path):
        listings[p] = list_images(p)
        if listings[p].classes is None:
            return None
        names |= set(listings[p].classes)
    return tuple(sorted(names, key=natural_key))


def _check_same(facts: dict, expected: str | None, path: Path) -> None:
    if expected and facts["sha256"] != expected:
        raise DataError(f"{path} has changed since the run was made (content sha256 {facts['sha256'][:12]}..., the "
                        f"run recorded {expected[:12]}...); restore the data the run was trained on")


def _test_source(a: Array, test_path: Path | None, opts: dict, expect: dict, classes) -> tuple[Array | None, dict]:
    """The test set of a second source (with the training set's channels), or (None, {})."""
    if test_path is None:
        return None, {}
    if a.image_shape is not None and test_path.is_dir():
        opts = {**opts, "channels": a.image_shape[0]}
    t, facts = _read(test_path, classes=classes, **opts)
    _check_same(facts, expect.get("test_sha256"), test_path)
    if t.rows.shape[1] != a.rows.shape[1] or t.kind != a.kind or t.image_shape != a.image_shape:
        what = (lambda s, x: f"{'x'.join(map(str, s))} {x.kind}" if s else f"{x.rows.shape[1]} values of {x.kind}")
        raise DataError(f"the test data {test_path} ({what(t.image_shape, t)}) does not match the training data "
                        f"({what(a.image_shape, a)}); pass --image-size to bring images to one size")
    return t, facts


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Columns standardized with the training rows' mean and standard deviation (1 for a constant column)."""
    mean = train.mean(0)
    std = train.std(0)
    std[std == 0] = 1.0
    z = [torch.from_numpy(((x - mean) / std).astype(np.float32)) for x in (train, test)]
    return z[0], z[1], {"mean": mean.tolist(), "std": std.tolist()}


def _labels(labels: np.ndarray | None, index: np.ndarray | None) -> torch.Tensor | None:
    if labels is None:
        return None
    return torch.from_numpy(np.asarray(labels if index is None else labels[index], dtype=np.int64))


def open_data(path, *, test_data=None, test_fraction: float = 0.1, image_size: tuple[int, int] | None = None,
              channels: int | None = None, skip_bad: bool = False, test_indices: np.ndarray | None = None,
              expect: dict | None = None, progress: bool = True) -> DataSet:
    """Read a folder of images, an array (.npy, .npz) or a table (.csv, .parquet) as a DataSet (docs/data.md).

    Args:
        path: the source of the training data (and of the test data unless `test_data` is given).
        test_data: a second source of the same kind for the test set.
        test_fraction: without test_data (or an .npz's `test`), the fraction held out as the test set, drawn with a
            fixed seed; its indices are `DataSet.test_indices` (store them to find the same split again).
        image_size: (H, W) to resize and centre-crop images to.
        channels: 1 (grey) or 3 (RGB) for images; default: grey when every image is.
        skip_bad: leave out images that cannot be decoded (counted) instead of failing.
        test_indices: the held-out indices of an earlier run (instead of drawing them).
        expect: an earlier run's record (`DataSet.source`): a source whose content differs is a DataError.
        progress: a progress bar while decoding images.

    Returns:
        The data set; `source` holds the record a run folder stores (kind, content hashes, class names, table
        columns and their standardization, ...).

    Raises:
        DataError: a missing, unreadable, inconsistent or changed source, or a split without test examples.
    """
    if channels not in (None, 1, 3):
        raise DataError(f"--channels must be 1 or 3, got {channels}")
    expect = expect or {}
    p, tp = _source(path), (_source(test_data) if test_data else None)
    opts = {"image_size": tuple(image_size) if image_size else None, "channels": channels, "skip_bad": skip_bad,
            "progress": progress}
    listings: dict = {}
    classes = _classes(p, tp, listings)
    opts["listings"] = listings
    a, facts = _read(p, classes=classes, **opts)
    _check_same(facts, expect.get("sha256"), p)
    t, tfacts = _test_source(a, tp, opts, expect, classes)
    train_index = test_index = None
    if t is None and a.test is not None:
        t = a.test
    elif t is None:
        n = a.rows.shape[0]
        test_index = np.asarray(test_indices if test_indices is not None else _split(n, test_fraction, p), np.int64)
        if test_index.size == 0 or test_index.min() < 0 or test_index.max() >= n:
            raise DataError(f"the stored test indices do not fit the {n:,} datapoints of {p}")
        train_index = np.setdiff1d(np.arange(n), test_index)
        t = a
    record = {"kind": a.kind, "sha256": facts["sha256"], "test_sha256": tfacts.get("sha256"),
              **{k: facts[k] for k in ("files", "ignored", "skipped") if k in facts}}
    if a.kind == "table":
        tr, te, record["scaler"] = _standardize(a.rows if train_index is None else a.rows[train_index],
                                                t.rows if test_index is None else t.rows[test_index])
        record["columns"] = list(a.columns or ())
    else:
        scale = 255.0 if a.rows.dtype == np.uint8 else None
        n_train = a.rows.shape[0] if train_index is None else len(train_index)
        big = scale and n_train * a.rows.shape[1] * 4 > RESIDENT_BYTES
        tr = Rows(a.rows, train_index) if big else _tensor(a.rows, train_index, scale)
        te = _tensor(t.rows, test_index, 255.0 if t.rows.dtype == np.uint8 else None)
    names = facts.get("class_names")
    record["class_names"] = list(names) if names else None
    shape = a.image_shape
    return DataSet(
        name=p.stem if p.is_file() else p.name, train=tr, test=te,
        train_labels=_labels(a.labels, train_index), test_labels=_labels(t.labels, test_index),
        image_shape=(shape[1:] if shape[0] == 1 else shape) if shape else None, split="user",
        class_names=tuple(names) if names else None, source=record, test_indices=test_index,
        decode=facts if p.is_dir() else None)


def as_rows(data, what: str = "data") -> torch.Tensor | Rows:
    """In-memory data as (N, D) float32 rows: a tensor or NumPy array (uint8 levels are divided by 255; images of
    any shape are flattened per datapoint), a `torch.utils.data.Dataset` whose items are such arrays or (x, label)
    pairs, or `Rows` (kept as they are).

    Raises:
        DataError: an empty set, items of different sizes, or values that are not numbers.
    """
    if isinstance(data, Rows):
        return data
    if isinstance(data, torch.utils.data.Dataset) and not torch.is_tensor(data):
        n = len(data)
        if n == 0:
            raise DataError(f"the {what} Dataset is empty")
        items = [data[i] for i in range(n)]
        items = [it[0] if isinstance(it, (tuple, list)) else it for it in items]
        try:
            data = torch.stack([torch.as_tensor(np.asarray(it) if not torch.is_tensor(it) else it) for it in items])
        except (RuntimeError, TypeError, ValueError) as e:
            raise DataError(f"the {what} Dataset's items cannot be stacked into one array ({e})") from None
    if isinstance(data, np.ndarray):
        if data.dtype.hasobject or not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_):
            raise DataError(f"the {what} array has dtype {data.dtype}; aevb reads numbers only")
        data = torch.from_numpy(np.ascontiguousarray(data))
    if not torch.is_tensor(data):
        raise DataError(f"cannot use a {type(data).__name__} as {what}: give a tensor, a NumPy array, a "
                        "torch Dataset or a path")
    if data.ndim < 2 or data.shape[0] == 0:
        raise DataError(f"the {what} of shape {tuple(data.shape)} holds no datapoints (need N x ... with N >= 1)")
    flat = data.reshape(data.shape[0], -1)
    return flat.to(torch.float32).div_(255.0) if flat.dtype == torch.uint8 else flat.to(torch.float32)
