"""Data set loaders, against the published statistics of the real files (see
the shared data's README.md) and hand-built IDX files."""

import gzip
import hashlib
import os
import shutil
import struct
from collections import Counter

import numpy as np
import pytest

from dmfa_tf import datasets

STEMS = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]
# The well-known class counts of MNIST's 60,000 training and 10,000 test labels.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _folder(shared_data, name):
    path = os.path.join(shared_data, name)
    if not all(os.path.exists(os.path.join(path, stem + ".gz")) for stem in STEMS):
        pytest.skip(f"the four {name} IDX files are not in {path}")
    return path


@pytest.fixture(scope="module")
def mnist_dir(shared_data):
    return _folder(shared_data, "mnist")


@pytest.fixture(scope="module")
def fashion_dir(shared_data):
    return _folder(shared_data, "fashion-mnist")


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return datasets.load("mnist", data_dir=mnist_dir)


def _raw_idx(path, header):
    """The data bytes after a header of known length, read without the module."""
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=header)


def _idx_bytes(array):
    """An IDX file of unsigned bytes, built by hand."""
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _copy_real_files(source, target, except_stem):
    for stem in STEMS:
        if stem != except_stem:
            shutil.copy(os.path.join(source, stem + ".gz"), target)


# --- digits ----------------------------------------------------------------


def _keys(images, labels):
    return Counter(
        hashlib.sha1(image.tobytes() + bytes([int(label)])).hexdigest()
        for image, label in zip(images, labels)
    )


def test_digits():
    from sklearn.datasets import load_digits

    splits = datasets.load("digits")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1257, 180, 360)
    assert splits.image_shape == (8, 8, 1)
    for images, labels in [
        (splits.train, splits.train_labels),
        (splits.val, splits.val_labels),
        (splits.test, splits.test_labels),
    ]:
        assert images.shape[1:] == (8, 8, 1)
        assert images.dtype == np.float32
        assert len(labels) == len(images)
        assert set(np.unique(labels)) <= set(range(10))
        # The digits' grey levels are the integers 0..16.
        np.testing.assert_array_equal(images * 16, np.round(images * 16))
    everything = np.concatenate([splits.train, splits.val, splits.test])
    assert everything.min() == 0.0 and everything.max() == 1.0
    assert set(np.unique(splits.train_labels)) == set(range(10))

    # The three splits together are the 1,797 digits, each exactly once.
    digits = load_digits()
    full = _keys((digits.images[..., None] / 16.0).astype(np.float32), digits.target)
    assert len(full) == 1797  # no two (image, label) pairs are equal
    parts = [
        _keys(splits.train, splits.train_labels),
        _keys(splits.val, splits.val_labels),
        _keys(splits.test, splits.test_labels),
    ]
    assert not parts[0].keys() & parts[1].keys()
    assert not parts[0].keys() & parts[2].keys()
    assert not parts[1].keys() & parts[2].keys()
    assert parts[0] + parts[1] + parts[2] == full

    # Seeded: the same split every time.
    again = datasets.load("digits")
    np.testing.assert_array_equal(again.test, splits.test)
    np.testing.assert_array_equal(again.train_labels, splits.train_labels)


# --- the real MNIST-style files ----------------------------------------------


def test_read_idx_mnist(mnist_dir):
    images = datasets.read_idx(os.path.join(mnist_dir, "train-images-idx3-ubyte.gz"))
    labels = datasets.read_idx(os.path.join(mnist_dir, "train-labels-idx1-ubyte.gz"))
    test_images = datasets.read_idx(os.path.join(mnist_dir, "t10k-images-idx3-ubyte.gz"))
    test_labels = datasets.read_idx(os.path.join(mnist_dir, "t10k-labels-idx1-ubyte.gz"))
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and labels.dtype == np.uint8
    assert test_images.shape == (10000, 28, 28) and test_images.dtype == np.uint8
    assert test_labels.shape == (10000,) and test_labels.dtype == np.uint8
    assert round(float(images.mean(dtype=np.float64)), 3) == 33.318
    assert np.bincount(labels).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(test_labels).tolist() == MNIST_TEST_COUNTS


def test_load_mnist(mnist, mnist_dir):
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (55000, 5000, 10000)
    assert mnist.image_shape == (28, 28, 1)
    for images in (mnist.train, mnist.val, mnist.test):
        assert images.shape[1:] == (28, 28, 1)
        assert images.dtype == np.float32
        assert images.min() == 0.0 and images.max() == 1.0
    train_val = np.concatenate([mnist.train, mnist.val])
    assert abs(train_val.mean(dtype=np.float64) * 255 - 33.318) < 1e-3

    for labels, size in [
        (mnist.train_labels, 55000),
        (mnist.val_labels, 5000),
        (mnist.test_labels, 10000),
    ]:
        assert labels.shape == (size,)
        assert np.issubdtype(labels.dtype, np.integer)
        assert labels.min() == 0 and labels.max() == 9
    assert np.bincount(mnist.train_labels, minlength=10).sum() == 55000
    train_val_labels = np.concatenate([mnist.train_labels, mnist.val_labels])
    assert np.bincount(train_val_labels).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(mnist.test_labels).tolist() == MNIST_TEST_COUNTS

    # The validation split is the last 5,000 training images, in file order.
    raw = _raw_idx(os.path.join(mnist_dir, "train-images-idx3-ubyte.gz"), 16)
    raw = raw.reshape(60000, 28, 28, 1)
    np.testing.assert_array_equal(np.round(mnist.val * 255), raw[55000:])
    np.testing.assert_array_equal(np.round(mnist.train[:100] * 255), raw[:100])
    raw_labels = _raw_idx(os.path.join(mnist_dir, "train-labels-idx1-ubyte.gz"), 8)
    np.testing.assert_array_equal(mnist.val_labels, raw_labels[55000:])


def test_load_fashion_mnist(fashion_dir):
    splits = datasets.load("fashion_mnist", data_dir=fashion_dir)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55000, 5000, 10000)
    assert splits.image_shape == (28, 28, 1)
    assert splits.train.dtype == np.float32
    assert splits.train.min() == 0.0 and splits.train.max() == 1.0
    train_val = np.concatenate([splits.train, splits.val])
    assert abs(train_val.mean(dtype=np.float64) * 255 - 72.94) < 0.005
    labels = np.concatenate([splits.train_labels, splits.val_labels])
    assert np.bincount(labels).tolist() == [6000] * 10
    assert np.bincount(splits.test_labels).tolist() == [1000] * 10


def test_uncompressed_idx_files_load(mnist_dir, mnist, tmp_path):
    for stem in STEMS[:2]:
        shutil.copy(os.path.join(mnist_dir, stem + ".gz"), tmp_path)
    for stem in STEMS[2:]:
        with gzip.open(os.path.join(mnist_dir, stem + ".gz"), "rb") as f:
            (tmp_path / stem).write_bytes(f.read())
    plain = datasets.read_idx(str(tmp_path / "t10k-images-idx3-ubyte"))
    assert plain.shape == (10000, 28, 28) and plain.dtype == np.uint8
    np.testing.assert_array_equal(
        plain.reshape(-1), _raw_idx(os.path.join(mnist_dir, "t10k-images-idx3-ubyte.gz"), 16)
    )
    splits = datasets.load("mnist", data_dir=str(tmp_path))
    assert len(splits.test) == 10000
    np.testing.assert_array_equal(splits.test, mnist.test)
    np.testing.assert_array_equal(splits.test_labels, mnist.test_labels)


# --- hand-built IDX files --------------------------------------------------


def _write_small_set(folder, train=5003, test=4, labels_train=None, compress=False):
    """Tiny IDX files: image k is 2x3 pixels, all equal to k % 256."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": np.arange(train)[:, None, None] % 256 + np.zeros((1, 2, 3)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, labels_train or train),
        "t10k-images-idx3-ubyte": np.full((test, 2, 3), 255),
        "t10k-labels-idx1-ubyte": np.arange(test) % 10,
    }
    for stem, array in arrays.items():
        data = _idx_bytes(array)
        if compress:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_load_hand_built_files(tmp_path, compress):
    arrays = _write_small_set(tmp_path, compress=compress)
    splits = datasets.load("mnist", data_dir=str(tmp_path))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3, 5000, 4)
    assert splits.image_shape == (2, 3, 1)
    # Image k has every pixel k % 256, scaled to [0, 1].
    np.testing.assert_allclose(splits.train[:, 0, 0, 0], np.array([0, 1, 2]) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(splits.val[-1], np.full((2, 3, 1), 5002 % 256 / 255.0), rtol=1e-6)
    assert (splits.test == 1.0).all()
    np.testing.assert_array_equal(splits.val_labels, arrays["train-labels-idx1-ubyte"][3:])
    np.testing.assert_array_equal(splits.test_labels, [0, 1, 2, 3])


def test_images_and_labels_must_match(tmp_path):
    _write_small_set(tmp_path, labels_train=5002)
    with pytest.raises(ValueError, match="do not match"):
        datasets.load("mnist", data_dir=str(tmp_path))


# --- errors ----------------------------------------------------------------


@pytest.mark.parametrize("data_dir", [None, ""])
def test_idx_data_set_needs_data_dir(data_dir):
    with pytest.raises(ValueError, match="--data-dir"):
        datasets.load("mnist", data_dir=data_dir)


def test_missing_data_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        datasets.load("fashion_mnist", data_dir=str(tmp_path / "nowhere"))


@pytest.mark.parametrize("missing", STEMS)
def test_missing_file_is_named(mnist_dir, tmp_path, missing):
    _copy_real_files(mnist_dir, tmp_path, except_stem=missing)
    with pytest.raises(FileNotFoundError) as info:
        datasets.load("mnist", data_dir=str(tmp_path))
    # The message names the missing file (and perhaps others as hints).
    assert missing in str(info.value)


def test_empty_folder_names_a_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        datasets.load("mnist", data_dir=str(tmp_path))


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        datasets.read_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"))


def _corrupt_gz_random():
    data = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    return b"\x00" + data  # not the gzip magic number 1f 8b


def _corrupt_gz_body():
    # A valid gzip header followed by a damaged deflate stream.
    good = gzip.compress(_idx_bytes(np.arange(600).reshape(10, 6, 10) % 256), mtime=0)
    return good[:10] + bytes(range(256))[: len(good) - 10]


def _truncated_gz():
    good = gzip.compress(_idx_bytes(np.arange(600).reshape(10, 6, 10) % 256), mtime=0)
    return good[: len(good) // 2]


@pytest.mark.parametrize(
    "content", [_corrupt_gz_random, _corrupt_gz_body, _truncated_gz],
    ids=["random-bytes", "damaged-deflate", "truncated-gz"],
)
def test_corrupt_gz_names_the_file(mnist_dir, tmp_path, content):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(content())
    _copy_real_files(mnist_dir, tmp_path, except_stem="train-images-idx3-ubyte")
    with pytest.raises(ValueError) as info:
        datasets.load("mnist", data_dir=str(tmp_path))
    assert str(path) in str(info.value)
    with pytest.raises(ValueError) as info:
        datasets.read_idx(str(path))
    assert str(path) in str(info.value)


def test_truncated_idx(mnist_dir, tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    full = _idx_bytes(np.zeros((10, 28, 28)))
    path.write_bytes(full[: 16 + 100])  # header claims 7,840 bytes, 100 present
    with pytest.raises(ValueError, match="truncated") as info:
        datasets.read_idx(str(path))
    assert str(path) in str(info.value)
    _copy_real_files(mnist_dir, tmp_path, except_stem="train-images-idx3-ubyte")
    with pytest.raises(ValueError, match="truncated"):
        datasets.load("mnist", data_dir=str(tmp_path))


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00\x00",
        b"\x00\x00\x08",
        # Other element types, with one byte per element so that only the
        # type code betrays them.
        b"\x00\x00\x0b\x01" + struct.pack(">I", 2) + b"\x00\x01",  # int16
        b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00",  # float
        b"\x00\x00\x09\x01" + struct.pack(">I", 1) + b"\x00",  # signed byte
        b"\x01\x00\x08\x01" + struct.pack(">I", 2) + b"\x05\x06",
        b"\x00\x01\x08\x01" + struct.pack(">I", 2) + b"\x05\x06",
        b"\x08\x01\x00\x00\x00\x00\x00\x02\x05\x06",  # bytes in the wrong order
        b"%PDF-1.4\n" + bytes(100),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_wrong_magic_number(tmp_path, content, compress):
    name = "t10k-labels-idx1-ubyte" + (".gz" if compress else "")
    path = tmp_path / name
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(ValueError) as info:
        datasets.read_idx(str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\x00\x08\x03" + struct.pack(">I", 10),  # 3 sizes promised, 1 given
        b"\x00\x00\x08\x00",  # no dimensions at all
        b"\x00\x00\x08\x00\x05",  # no dimensions, one byte of data
        b"\x00\x00\x08\x01" + struct.pack(">I", 2) + b"\x05\x06\x07",  # one byte too many
    ],
)
def test_bad_idx_header_or_size(tmp_path, content):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        datasets.read_idx(str(path))
    assert str(path) in str(info.value)


def test_read_idx_hand_built(tmp_path):
    expected = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx_bytes(expected))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(expected)))
    for name in ("a", "a.gz"):
        out = datasets.read_idx(str(tmp_path / name))
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("name", ["cifar10", "MNIST", "fashion-mnist", ""])
def test_unknown_dataset(name):
    with pytest.raises(ValueError) as info:
        datasets.load(name)
    message = str(info.value)
    assert repr(name) in message
    for choice in ("digits", "mnist", "fashion_mnist"):
        assert repr(choice) in message
