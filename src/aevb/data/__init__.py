"""Data: the built-in sets of the AEVB experiments (MNIST, Frey Face, Fashion-MNIST, scikit-learn's 8x8 digits)
through `load`, and your own (a folder of images, an array or a table) through `open_data` (user.py).

Built-in files are looked up locally, optionally fetched once into the per-user cache, and always checksum-verified.
"""
from __future__ import annotations

import os

from .fetch import _locate
from .files import _load_digits, _load_frey, _load_idx_set, _spec, read_idx
from .sets import DATASETS, SPLITS, DataError, DataSet, DatasetSpec, binarize_dynamic, binarize_static, sha256_of
from .user import Rows, open_data


__all__ = [
    "DATASETS",
    "SPLITS",
    "DataError",
    "DataSet",
    "DatasetSpec",
    "Rows",
    "binarize_dynamic",
    "binarize_static",
    "load",
    "open_data",
    "read_idx",
    "sha256_of",
]


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
