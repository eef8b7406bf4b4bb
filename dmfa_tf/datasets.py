"""Image data sets as float32 arrays `[n, H, W, C]` in [0, 1], split three ways.

| name | source | splits (train / val / test) |
|---|---|---|
| `digits` | scikit-learn's bundled 8x8 digits (no download) | 1,257 / 180 / 360, seeded |
| `mnist`, `fashion_mnist` | the four IDX files (`.gz` or not) in `data_dir` | 55,000 / 5,000 / 10,000 |

For MNIST-style data the validation split is the last 5,000 training images.
"""

import dataclasses
import gzip
import os
import struct
import zlib

import numpy as np

__all__ = ["DATASETS", "Splits", "load", "read_idx"]

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclasses.dataclass(frozen=True)
class Splits:
    """Three splits of images `[n, H, W, C]` float32 in [0, 1] and labels `[n]`
    (None where the data set has none)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    train_labels: np.ndarray = None
    val_labels: np.ndarray = None
    test_labels: np.ndarray = None

    @property
    def image_shape(self):
        return tuple(self.train.shape[1:])


def read_idx(path):
    """Reads an IDX file (as MNIST is distributed), gzipped or not.

    Returns:
        a uint8 array, `[n, rows, cols]` for images or `[n]` for labels.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a valid uint8 IDX file, names `path`.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"IDX file not found: {path}")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"Cannot read IDX file {path}: {error}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(
            f"{path} is not an IDX file of unsigned bytes (bad magic number "
            f"{data[:4].hex() or 'empty'})."
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim < 1 or len(data) < header:
        raise ValueError(f"{path}: truncated IDX header.")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: header says {shape} = {expected} bytes of data, "
            f"file has {len(data) - header} (truncated or corrupt)."
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _find_idx(data_dir, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        f"Neither {stem}.gz nor {stem} is in {data_dir!r}. The MNIST-style loaders "
        "read the four IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (gzipped or not)."
    )


def _load_idx_dataset(data_dir, val_size=5000):
    if not data_dir:
        raise ValueError(
            "This data set is read from its IDX files: pass data_dir (--data-dir) "
            "naming the folder that holds them."
        )
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"Data folder not found: {data_dir}")
    arrays = {key: read_idx(_find_idx(data_dir, stem)) for key, stem in IDX_FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{data_dir}: {split} images {images.shape} and labels {labels.shape} "
                "do not match."
            )
    images = arrays["train_images"][..., None].astype(np.float32) / 255.0
    test = arrays["test_images"][..., None].astype(np.float32) / 255.0
    labels = arrays["train_labels"].astype(np.int64)
    return Splits(
        train=images[:-val_size],
        val=images[-val_size:],
        test=test,
        train_labels=labels[:-val_size],
        val_labels=labels[-val_size:],
        test_labels=arrays["test_labels"].astype(np.int64),
    )


def _load_digits(data_dir=None, seed=0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images[..., None] / 16.0).astype(np.float32)  # [1797, 8, 8, 1]
    order = np.random.default_rng(seed).permutation(len(images))
    test, val, train = order[:360], order[360:540], order[540:]
    labels = digits.target.astype(np.int64)
    return Splits(
        train=images[train],
        val=images[val],
        test=images[test],
        train_labels=labels[train],
        val_labels=labels[val],
        test_labels=labels[test],
    )


DATASETS = {
    "digits": lambda data_dir: _load_digits(data_dir),
    "mnist": _load_idx_dataset,
    "fashion_mnist": _load_idx_dataset,
}


def load(name, data_dir=None):
    """Loads a data set by name (see the module docstring).

    Args:
        name: `"digits"`, `"mnist"` or `"fashion_mnist"`.
        data_dir: folder of the data files, for the data sets that need one.

    Returns:
        `Splits`.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {sorted(DATASETS)}.")
    return DATASETS[name](data_dir)
