"""MNIST-style IDX files (MNIST, Fashion-MNIST) and scikit-learn's bundled
8x8 digits.

`read_idx` parses one IDX file (gzipped or not); `_load_idx_dataset` reads the
four files of a folder into `Splits`, holding the last 5,000 training images
out for validation (`common.validation_size`). The digits are split 1,257 /
180 / 360, seeded.
"""

import gzip
import os
import struct
import zlib

import numpy as np

from dmfa_tf.data.common import Splits, _hold_out

__all__ = ["IDX_FILES", "read_idx"]

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_NAMES = ("mnist", "fashion_mnist")  # the data sets stored as IDX files


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
        "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (gzipped or not), a "
        ".npz file, or a TFDS data_dir where the data set is prepared."
    )


def _load_idx_dataset(data_dir, need_train=True):
    """The IDX files' splits; `need_train=False` reads only the test files
    (train and val are None)."""
    if not data_dir:
        raise ValueError(
            "This data set is read from its IDX files: pass data_dir (--data-dir) "
            "naming the folder that holds them."
        )
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"Data folder not found: {data_dir}")
    if not need_train:
        test, labels = (read_idx(_find_idx(data_dir, IDX_FILES[f"test_{key}"])) for key in ("images", "labels"))
        if test.ndim != 3 or labels.ndim != 1 or len(test) != len(labels):
            raise ValueError(
                f"{data_dir}: test images {test.shape} and labels {labels.shape} do not match."
            )
        return Splits(
            train=None,
            val=None,
            test=test[..., None].astype(np.float32) / 255.0,
            test_labels=labels.astype(np.int64),
        )
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
    return _hold_out(images, labels, test, arrays["test_labels"].astype(np.int64),
                     source=f"{data_dir} (IDX files)")


def _has_idx_files(folder):
    return any(
        os.path.exists(os.path.join(folder, stem + suffix))
        for stem in IDX_FILES.values()
        for suffix in ("", ".gz")
    )


# --- scikit-learn's digits ---------------------------------------------------


def _load_digits(seed=0):
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

