"""A folder of images -> one cached uint8 array (N, C*H*W), decoded once with all cores and reused.

Rules (docs/data.md):
- Files are found recursively by extension (IMAGE_EXTENSIONS, any case); other files are ignored and counted.
  Symbolic links are followed; a link back to one of its own parent folders is refused (a loop).
- Order: by file name, numbers in names comparing as numbers ("2.png" before "10.png"), then by path. A folder
  whose files are named by their index therefore keeps that order whatever sub-folder each file is in.
- Labels: when every image sits in a sub-folder, the first sub-folder under the root is its class; the classes are
  numbered in the same natural order of their names.
- Pixels: 8-bit grey (one channel) or RGB (three). Palette images are expanded, alpha is dropped (the colour values
  are kept as stored), CMYK and other colour modes go through Pillow's conversion to RGB, 16-bit and 32-bit grey
  levels are scaled to 8 bits (v / 257, rounded). EXIF orientation is applied. `image_size` resizes the shorter
  side to fit and crops the centre. An image over Pillow's pixel limit (a decompression bomb) is refused.
- The cache: $XDG_CACHE_HOME/aevb/decoded/<key>/, keyed by the folder's listing (paths, sizes, modification
  times) and the decoding options; it is written to a temporary folder and renamed, so it is whole or absent.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from .sets import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
CACHE_VERSION = 1
_CHUNK = 256  # files per task of the decoding pool


def natural_key(text: str) -> tuple:
    """Sort key in which runs of digits compare as numbers: "img2" < "img10"."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text))


@dataclass(frozen=True)
class Listing:
    """The images of a folder in their order: paths relative to the root, class of each (or None) and the counts."""

    root: Path
    files: tuple[str, ...]
    classes: tuple[str, ...] | None  # the first sub-folder of each file, when every file has one
    ignored: int  # files that are not images by their extension
    stamp: str = ""  # SHA-256 of each file's relative path, size and modification time (nanoseconds), in order:
    # what the cache is keyed by


def _scan(root: Path) -> tuple[list[tuple[str, int, int]], int]:
    """(relative path, size, mtime_ns) of every image file under root, and the number of other files."""
    found, ignored = [], 0
    stack = [("", str(root), (os.path.realpath(root),))]
    while stack:
        rel_dir, folder, ancestors = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            raise DataError(f"cannot read the folder {folder}: {e.strerror or e}") from None
        for entry in entries:
            rel = rel_dir + entry.name
            if entry.is_dir(follow_symlinks=True):
                real = os.path.realpath(entry.path)
                if real in ancestors:
                    raise DataError(f"{entry.path}: symbolic-link loop (it points back to {real}); remove the link")
                stack.append((rel + "/", entry.path, (*ancestors, real)))
            elif entry.is_file(follow_symlinks=True):
                if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                    st = entry.stat(follow_symlinks=True)
                    found.append((rel, st.st_size, st.st_mtime_ns))
                else:
                    ignored += 1
    return found, ignored


def list_images(root: str | os.PathLike) -> Listing:
    """The image files under `root`, recursively, in aevb's order (module docstring).

    Raises:
        DataError: the folder is missing, has a symbolic-link loop, or holds no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    found, ignored = _scan(root)
    if not found:
        raise DataError(f"{root}: no images found ({', '.join(IMAGE_EXTENSIONS)}; {ignored} other files ignored)")
    found.sort(key=lambda f: (natural_key(f[0].rsplit("/", 1)[-1]), natural_key(f[0])))
    files = tuple(f[0] for f in found)
    stamp = hashlib.sha256("".join(f"{r}\0{size}\0{mtime}\n" for r, size, mtime in found).encode()).hexdigest()
    nested = all("/" in rel for rel in files)
    classes = tuple(rel.split("/", 1)[0] for rel in files) if nested else None
    return Listing(root, files, classes, ignored, stamp)


# ---------------------------------------------------------------------------------------------
# Decoding one image (runs in the worker processes)


def _open(data: bytes):
    """The decoded Pillow image of a file's bytes, oriented; decompression bombs and unreadable files raise."""
    from PIL import Image, ImageOps

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return ImageOps.exif_transpose(img)


def _to_mode(img, channels: int):
    """The image as 8-bit "L" (channels=1) or "RGB" (3): high bit depths scaled, alpha dropped."""
    from PIL import Image

    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(img, dtype=np.float64)
        scale = 257.0 if img.mode != "F" else 1 / 255.0
        img = Image.fromarray(np.clip(np.rint(a / scale), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    target = "L" if channels == 1 else "RGB"
    if img.mode in ("LA", "La", "PA") and target == "L":
        img = img.getchannel(0)
    return img if img.mode == target else img.convert(target)


def _fit(img, size: tuple[int, int] | None):
    """Resize so the image covers `size` (H, W) and crop the centre; None leaves it as it is."""
    if size is None or (img.height, img.width) == size:
        return img
    from PIL import Image

    h, w = size
    s = max(h / img.height, w / img.width)
    rh, rw = max(h, round(img.height * s)), max(w, round(img.width * s))
    img = img.resize((rw, rh), Image.Resampling.BICUBIC)
    top, left = (rh - h) // 2, (rw - w) // 2
    return img.crop((left, top, left + w, top + h))


def _probe(paths: list[str]) -> list[tuple]:
    """(height, width, mode) of each image from its header, or ("error", message)."""
    from PIL import Image

    out = []
    for p in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(p) as img:
                    out.append((img.height, img.width, img.mode))
        except Exception as e:  # noqa: BLE001 - Pillow raises many types on bad files
            out.append(("error", _reason(e)))
    return out


def _reason(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) < 160 else text[:157] + "..."


def _decode(task) -> list:
    """Decode files [start, start + n) into rows of the output array; per file its SHA-256 or an error."""
    paths, start, out_path, shape, channels, size = task
    out = np.load(out_path, mmap_mode="r+")
    results = []
    for i, p in enumerate(paths):
        try:
            data = Path(p).read_bytes()
            img = _fit(_to_mode(_open(data), channels), size)  # the bytes read once, for the hash and the pixels
            if (img.height, img.width) != shape[1:]:
                raise ValueError(f"it is {img.height}x{img.width}, the others {shape[1]}x{shape[2]}")
            a = np.asarray(img, dtype=np.uint8)
            out[start + i] = (a[None] if channels == 1 else a.transpose(2, 0, 1)).reshape(-1)
            results.append(hashlib.sha256(data).hexdigest())
        except Exception as e:  # noqa: BLE001
            results.append(("error", _reason(e)))
    out.flush()
    del out
    return results


# ---------------------------------------------------------------------------------------------
# The whole folder


@dataclass(frozen=True)
class Decoded:
    """A decoded folder: the (N, C*H*W) uint8 pixels (memory-mapped), labels, class names and its facts."""

    pixels: np.ndarray
    labels: np.ndarray | None
    class_names: tuple[str, ...] | None
    image_shape: tuple[int, ...]
    sha256: str  # of the source: every image's relative path and the SHA-256 of its bytes, in order
    files: int
    ignored: int  # non-image files
    skipped: tuple[str, ...]  # files refused as bad (with skip_bad)
    cached: bool  # True when read from the cache without decoding


def cache_root() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "aevb" / "decoded"


def decode_folder(root, *, image_size: tuple[int, int] | None = None, channels: int | None = None,
                  skip_bad: bool = False, workers: int | None = None, progress: bool = True,
                  classes: tuple[str, ...] | None = None, listing: Listing | None = None) -> Decoded:
    """Decode (or read from the cache) every image under `root` into one uint8 array.

    Args:
        image_size: (H, W) to resize and centre-crop to; None requires all images to have one size.
        channels: 1 or 3; None: 1 when every image is grey (modes 1, L, LA, I, I;16, F), else 3.
        skip_bad: leave out (and count) files that cannot be decoded instead of failing.
        workers: decoding processes (default: the usable cores).
        classes: class names to number the labels with (e.g. the union with a test folder's); default: this
            folder's own.
        listing: `list_images(root)` when the caller has it already.

    Raises:
        DataError: a bad file (without skip_bad), mixed sizes without image_size, or no usable image.
    """
    listing = listing or list_images(root)
    options = {"image_size": list(image_size) if image_size else None, "channels": channels, "skip_bad": skip_bad,
               "version": CACHE_VERSION}
    key = hashlib.sha256(json.dumps([str(Path(root).resolve()), listing.stamp, options]).encode())
    folder = cache_root() / key.hexdigest()[:32]
    cached = (folder / "meta.json").is_file()
    if not cached:
        _build_cache(listing, folder, image_size, channels, skip_bad, workers, progress)
    return _read_cache(folder, listing, classes, cached)


def _pool(workers: int | None, n: int):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(workers or cores, math.ceil(n / _CHUNK)))
    return ProcessPoolExecutor(workers, mp_context=get_context("fork")) if workers > 1 else None


def _map(pool, fn, tasks, bar):
    results = pool.map(fn, tasks) if pool is not None else map(fn, tasks)
    out = []
    for r in results:
        out.extend(r)
        if bar is not None:
            bar.update(len(r))
    return out


def _shape(listing: Listing, headers: list, image_size, channels, skip_bad) -> tuple[tuple[int, ...], list[int]]:
    """The output (C, H, W) and the indices of the files whose header could be read."""
    bad = [(i, h[1]) for i, h in enumerate(headers) if h[0] == "error"]
    if bad and not skip_bad:
        i, why = bad[0]
        raise DataError(f"{listing.root / listing.files[i]}: not a readable image ({why}); fix or remove it, or pass "
                        f"--skip-bad to leave such files out ({len(bad)} in all)")
    good = [i for i, h in enumerate(headers) if h[0] != "error"]
    if not good:
        raise DataError(f"{listing.root}: none of the {len(headers)} images could be read")
    grey = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
    c = channels or (1 if all(headers[i][2] in grey for i in good) else 3)
    if image_size is None:
        sizes = sorted({headers[i][:2] for i in good})
        if len(sizes) > 1:
            a = next(i for i in good if headers[i][:2] == sizes[0])
            b = next(i for i in good if headers[i][:2] == sizes[-1])
            raise DataError(f"{listing.root}: images of different sizes ({listing.files[a]} is {sizes[0][0]}x"
                            f"{sizes[0][1]}, {listing.files[b]} is {sizes[-1][0]}x{sizes[-1][1]}; {len(sizes)} "
                            "sizes in all); pass --image-size HxW to resize and crop them to one size")
        image_size = sizes[0]
    return (c, *image_size), good


def _build_cache(listing, folder, image_size, channels, skip_bad, workers, progress) -> None:
    from ..bars import bar as progress_bar

    paths = [str(listing.root / rel) for rel in listing.files]
    n = len(paths)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        pool = _pool(workers, n)
        bar = progress_bar(total=2 * n, desc=f"aevb: decoding {n:,} images", unit="img", disable=not progress,
                           leave=False)
        try:
            chunks = [paths[i:i + _CHUNK] for i in range(0, n, _CHUNK)]
            headers = _map(pool, _probe, chunks, bar)
            shape, good = _shape(listing, headers, image_size, channels, skip_bad)
            bar.update(n - len(good))
            out = tmp / "pixels.npy"
            np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(len(good), math.prod(shape))).flush()
            gpaths = [paths[i] for i in good]
            tasks = [(gpaths[i:i + _CHUNK], i, str(out), shape, shape[0], shape[1:] if image_size else None)
                     for i in range(0, len(good), _CHUNK)]
            hashes = _map(pool, _decode, tasks, bar)
        finally:
            bar.close()
            if pool is not None:
                pool.shutdown()
        _finish(listing, tmp, folder, shape, good, hashes, skip_bad, headers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _finish(listing, tmp, folder, shape, good, hashes, skip_bad, headers) -> None:
    """Drop the rows of files that failed to decode (or fail), write meta.json and move the cache into place."""
    errors = [(good[j], h[1]) for j, h in enumerate(hashes) if isinstance(h, tuple)]
    if errors and not skip_bad:
        i, why = errors[0]
        raise DataError(f"{listing.root / listing.files[i]}: cannot decode this image ({why}); fix or remove it, or "
                        f"pass --skip-bad to leave such files out ({len(errors)} in all)")
    kept = [j for j, h in enumerate(hashes) if not isinstance(h, tuple)]
    if not kept:
        raise DataError(f"{listing.root}: none of the {len(listing.files)} images could be decoded")
    if len(kept) < len(hashes):  # compact the rows of the good files into a new array
        src = np.load(tmp / "pixels.npy", mmap_mode="r")
        dst = np.lib.format.open_memmap(tmp / "kept.npy", mode="w+", dtype=np.uint8, shape=(len(kept), src.shape[1]))
        for a in range(0, len(kept), 4096):
            dst[a:a + 4096] = src[kept[a:a + 4096]]
        dst.flush()
        del src, dst
        os.replace(tmp / "kept.npy", tmp / "pixels.npy")
    rows = [good[j] for j in kept]
    skipped = sorted(set(range(len(listing.files))) - set(rows))
    h = hashlib.sha256()
    for i, j in zip(rows, kept):
        h.update(f"{listing.files[i]}\0{hashes[j]}\n".encode())
    meta = {"version": CACHE_VERSION, "shape": list(shape), "rows": rows, "sha256": h.hexdigest(),
            "skipped": [listing.files[i] for i in skipped]}
    (tmp / "meta.json").write_text(json.dumps(meta))
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _read_cache(folder: Path, listing: Listing, classes, cached: bool) -> Decoded:
    meta = json.loads((folder / "meta.json").read_text())
    pixels = np.load(folder / "pixels.npy", mmap_mode="r")
    rows = meta["rows"]
    labels, names = None, None
    if listing.classes is not None:
        names = tuple(classes) if classes is not None else tuple(sorted(set(listing.classes), key=natural_key))
        index = {c: k for k, c in enumerate(names)}
        labels = np.array([index[listing.classes[i]] for i in rows], dtype=np.int64)
    return Decoded(pixels, labels, names, tuple(meta["shape"]), meta["sha256"], len(listing.files),
                   listing.ignored, tuple(meta["skipped"]), cached)
