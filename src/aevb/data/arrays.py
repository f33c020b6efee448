"""NumPy arrays (.npy, .npz) and tables (.csv, .parquet) as data: read without pickle, checked, described.

Arrays (`read_array`):
- `.npy` is memory-mapped, so an array larger than memory is never read whole; `.npz` members are loaded.
- Shapes: N x D (vectors), N x H x W (grey images), N x H x W x C or N x C x H x W with C in {1, 3} (the channel
  axis is the last when it has 1 or 3 entries, else the second).
- Values: uint8 (levels 0..255, divided by 255) or floats in [0, 1] are images / vectors in [0, 1]; any other
  N x D array of numbers is a table (standardized columns). NaN or Inf is refused.
- Object arrays and pickled .npz members are refused (never `allow_pickle=True`).
- An .npz holds `train` (optionally `test`, `train_labels`, `test_labels`), or `x` (optionally `y`), or one array.

Tables (`read_table`): a header row (detected: any cell of the first row that is not a number) names the columns;
every other cell must be a number.
"""
from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .sets import DataError

ARRAY_SUFFIXES = (".npy", ".npz")
TABLE_SUFFIXES = (".csv", ".parquet")
_HASH_BLOCK = 1 << 24


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Array:
    """What an array or table file holds: rows (N, D), their kind, and (for images) the (C, H, W) layout.

    kind: "images" (uint8 levels or [0, 1] floats with an image shape), "vectors" (N x D in [0, 1]) or "table".
    `rows` is C-major flat (N, D): uint8 for 8-bit data (divide by 255), float otherwise; it may be a memory map.
    """

    rows: np.ndarray
    kind: str
    image_shape: tuple[int, ...] | None
    labels: np.ndarray | None = None
    columns: tuple[str, ...] | None = None
    test: "Array | None" = None  # an .npz's own test split


def _npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        if "object" in str(e).lower() or "pickle" in str(e).lower():
            raise DataError(f"{path}: an array of Python objects would need pickle, which aevb refuses; save "
                            "numbers (e.g. uint8 or float32)") from None
        raise DataError(f"{path}: not a readable NumPy .npy file ({e})") from None


def _npz(path: Path) -> dict[str, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz archive ({e})") from None
    out = {}
    with archive:
        for name in archive.files:
            try:
                out[name] = archive[name]
            except ValueError:
                raise DataError(f"{path}: member {name!r} holds pickled Python objects, which aevb refuses") from None
            except Exception as e:  # noqa: BLE001 - zipfile raises several types on damaged archives
                raise DataError(f"{path}: member {name!r} cannot be read ({e})") from None
    return out


def _pick(members: dict[str, np.ndarray], path: Path):
    """(train, test, train_labels, test_labels) of an .npz by the member names in the module docstring."""
    m = members
    if "train" in m:
        return m["train"], m.get("test"), m.get("train_labels"), m.get("test_labels")
    if "x" in m:
        return m["x"], None, m.get("y"), None
    if len(m) == 1:
        return next(iter(m.values())), None, None, None
    raise DataError(f"{path}: an .npz needs a member 'train' (and optionally 'test'), 'x', or exactly one array; it "
                    f"has {', '.join(sorted(m)) or 'none'}")


def _layout(shape: tuple[int, ...], path: Path) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """(axes order to C, H, W, image shape (C, H, W)) of an array shape; (None, None) for N x D."""
    if len(shape) == 2:
        return None, None
    if len(shape) == 3:
        return (0, 1, 2), (1, shape[1], shape[2])
    if len(shape) == 4:
        if shape[3] in (1, 3):
            return (0, 3, 1, 2), (shape[3], shape[1], shape[2])
        if shape[1] in (1, 3):
            return (0, 1, 2, 3), (shape[1], shape[2], shape[3])
    raise DataError(f"{path}: cannot read an array of shape {shape} as data; use N x D, N x H x W, N x H x W x C or "
                    "N x C x H x W with C = 1 or 3")


def _check_values(a: np.ndarray, path: Path, what: str) -> tuple[float, float]:
    """(min, max) of a numeric array, in blocks; NaN or Inf is a DataError."""
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.issubdtype(a.dtype, np.complexfloating):
        raise DataError(f"{path}: {what} has dtype {a.dtype}; aevb reads real numbers only")
    if a.dtype == np.uint8:
        return 0.0, 255.0  # every byte is a level; a memory-mapped array is not read for this
    lo, hi, bad = math.inf, -math.inf, 0
    flat = a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1)
    for s in range(0, flat.shape[0], max(1, (1 << 24) // max(1, flat.shape[1]))):
        block = np.asarray(flat[s:s + max(1, (1 << 24) // max(1, flat.shape[1]))])
        if block.dtype.kind == "f":
            finite = np.isfinite(block)
            bad += int(block.size - finite.sum())
            block = block[finite]
        if block.size:
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    if bad:
        raise DataError(f"{path}: {what} has {bad} values that are NaN or infinite")
    return lo, hi


def _describe(a: np.ndarray, path: Path, what: str, labels=None) -> Array:
    if a.ndim < 2 or a.shape[0] == 0:
        raise DataError(f"{path}: {what} of shape {a.shape} holds no datapoints (need N x ... with N >= 1)")
    order, image_shape = _layout(a.shape, path)
    lo, hi = _check_values(a, path, what)
    if order is not None and order != tuple(range(a.ndim)):
        a = np.ascontiguousarray(np.transpose(a, order))
    rows = a.reshape(a.shape[0], -1)
    if a.dtype == np.uint8:
        kind = "images" if image_shape else "vectors"
    elif lo >= 0 and hi <= 1:
        kind = "images" if image_shape else "vectors"
        rows = rows if rows.dtype == np.float32 else rows.astype(np.float32)
    elif image_shape is not None:
        raise DataError(f"{path}: {what} holds image values in [{lo:g}, {hi:g}]; images must be uint8 (0..255) or "
                        "floats in [0, 1]")
    else:
        kind, rows = "table", rows.astype(np.float64)
    if image_shape is None and kind != "table":
        side = math.isqrt(rows.shape[1])
        image_shape = (1, side, side) if side * side == rows.shape[1] else None
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (rows.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}: labels for {what} must be N integers, got shape {labels.shape} {labels.dtype}")
    return Array(rows, kind, image_shape, labels)


def read_array(path: str | Path) -> Array:
    """Read a .npy or .npz file (module docstring)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        return _describe(_npy(path), path, "the array")
    train, test, ytrain, ytest = _pick(_npz(path), path)
    out = _describe(train, path, "the training array", ytrain)
    if test is None:
        return out
    t = _describe(test, path, "the test array", ytest)
    if t.rows.shape[1:] != out.rows.shape[1:] or t.kind != out.kind:
        raise DataError(f"{path}: the test array {test.shape} does not match the training array {train.shape}")
    return Array(out.rows, out.kind, out.image_shape, out.labels, test=t)


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _csv(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path} as CSV: {getattr(e, 'strerror', None) or e}") from None
    if not rows:
        raise DataError(f"{path}: the table is empty")
    header = any(_number(c) is None for c in rows[0])
    names = [c.strip() for c in rows[0]] if header else [f"column {j + 1}" for j in range(len(rows[0]))]
    body = rows[1:] if header else rows
    values = np.empty((len(body), len(names)), dtype=np.float64)
    for i, row in enumerate(body):
        if len(row) != len(names):
            raise DataError(f"{path}, line {i + 1 + header}: {len(row)} cells, the table has {len(names)} columns")
        for j, cell in enumerate(row):
            v = _number(cell)
            if v is None:
                raise DataError(f"{path}, line {i + 1 + header}: column {names[j]!r} holds {cell!r}, not a number; "
                                "aevb reads numeric columns only (drop or encode this one)")
            values[i, j] = v
    return names, values


def _parquet(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        import pyarrow.parquet as pq
        import pyarrow.types as pt
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow, or aevb[parquet])") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises its own error types
        raise DataError(f"cannot read {path} as Parquet: {e}") from None
    for field in table.schema:
        if not (pt.is_integer(field.type) or pt.is_floating(field.type) or pt.is_boolean(field.type)):
            raise DataError(f"{path}: column {field.name!r} has type {field.type}, not numbers; aevb reads numeric "
                            "columns only (drop or encode this one)")
    cols = [table.column(i).to_numpy(zero_copy_only=False).astype(np.float64) for i in range(table.num_columns)]
    return list(table.column_names), np.stack(cols, axis=1) if cols else np.empty((table.num_rows, 0))


def read_table(path: str | Path) -> Array:
    """Read a CSV or Parquet table of numeric columns (module docstring)."""
    path = Path(path)
    names, values = _csv(path) if path.suffix.lower() == ".csv" else _parquet(path)
    if values.shape[0] == 0 or values.shape[1] == 0:
        raise DataError(f"{path}: the table has no rows or no columns")
    _check_values(values, path, "the table")
    return Array(values, "table", None, None, tuple(names))
