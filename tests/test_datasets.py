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

from dmfa_tf import data as datasets
from dmfa_tf.data import idx as data_idx
from dmfa_tf.data import photos as data_photos
from dmfa_tf.data import tfds as data_tfds

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


def test_load_only_the_test_split(mnist, mnist_dir, monkeypatch):
    """`splits=("test",)` returns None for the others and does not read the
    training files (what evaluate.py asks for when no baseline needs them)."""
    read = []
    read_idx = datasets.read_idx
    monkeypatch.setattr(data_idx, "read_idx", lambda path: read.append(os.path.basename(path)) or read_idx(path))
    test_only = datasets.load("mnist", data_dir=mnist_dir, splits=("test",))
    assert sorted(read) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert test_only.train is None and test_only.val is None and test_only.val_labels is None
    np.testing.assert_array_equal(test_only.test, mnist.test)
    np.testing.assert_array_equal(test_only.test_labels, mnist.test_labels)
    val = datasets.load("digits", splits="val")
    assert val.train is None and val.test is None and len(val.val) == 180
    with pytest.raises(ValueError, match=r"`splits` must name some of \('train', 'val', 'test'\).*'tset'"):
        datasets.load("digits", splits=("tset",))


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
    # 5,003 training images: the last tenth (500) is held out (validation_size)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4503, 500, 4)
    assert splits.image_shape == (2, 3, 1)
    # Image k has every pixel k % 256, scaled to [0, 1].
    np.testing.assert_allclose(splits.train[:3, 0, 0, 0], np.array([0, 1, 2]) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(splits.val[0], np.full((2, 3, 1), 4503 % 256 / 255.0), rtol=1e-6)
    np.testing.assert_allclose(splits.val[-1], np.full((2, 3, 1), 5002 % 256 / 255.0), rtol=1e-6)
    assert (splits.test == 1.0).all()
    np.testing.assert_array_equal(splits.val_labels, arrays["train-labels-idx1-ubyte"][4503:])
    np.testing.assert_array_equal(splits.test_labels, [0, 1, 2, 3])


def test_images_and_labels_must_match(tmp_path):
    _write_small_set(tmp_path, labels_train=5002)
    with pytest.raises(ValueError, match="do not match"):
        datasets.load("mnist", data_dir=str(tmp_path))


# --- errors ----------------------------------------------------------------


@pytest.mark.parametrize("data_dir", [None, ""])
def test_idx_data_set_needs_data_dir(data_dir, tmp_path, monkeypatch):
    # With no data_dir, TFDS's default folder is tried: make sure it is empty.
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
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


def _small_idx_set(folder, train_count, test_count=20, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train_count), ("t10k", test_count)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_bytes(images))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(np.arange(count) % 10))
    return folder


def test_small_idx_set_holds_out_a_tenth(tmp_path):
    """A valid IDX set of 100 training images: 10 for validation, 90 to train
    (the 5,000-image hold-out would have taken them all)."""
    data = datasets.load("mnist", str(_small_idx_set(tmp_path / "small", 100)))
    assert (len(data.train), len(data.val), len(data.test)) == (90, 10, 20)
    np.testing.assert_array_equal(data.val_labels, np.arange(90, 100) % 10)
    assert datasets.validation_size(60_000, "x") == 5000
    assert datasets.validation_size(10, "x") == 1
    with pytest.raises(ValueError, match=r"tiny.*holds 9 images, too few"):
        datasets.load("mnist", str(_small_idx_set(tmp_path / "tiny", 9)))


def test_training_on_a_small_idx_set(tmp_path):
    from dmfa_tf.config import TrainConfig
    from dmfa_tf.training import train_and_evaluate

    folder = _small_idx_set(tmp_path / "small", 100)
    metrics = train_and_evaluate(
        TrainConfig(dataset="mnist", data_dir=str(folder), architecture="mlp", width=8,
                    epochs=1, batch_size=16, output=str(tmp_path / "out"),
                    workdir=str(tmp_path / "work")),
        verbose=0,
    )
    assert metrics["test_images"] == 20 and np.isfinite(metrics["nll"]["mean"])


@pytest.mark.parametrize("name", ["cifar100", "MNIST", "fashion-mnist", "celeba", ""])
def test_unknown_dataset(name):
    with pytest.raises(ValueError) as info:
        datasets.load(name)
    message = str(info.value)
    assert repr(name) in message
    for choice in ("digits", "mnist", "fashion_mnist", "celeb_a", "svhn_cropped", "cifar10"):
        assert repr(choice) in message


# --- CelebA from a folder of photos --------------------------------------------

CELEBA_SPLITS = (4560, 780, 660)  # the shared subset, by list_eval_partition.txt


@pytest.fixture(scope="module")
def celeba_dir(shared_data):
    path = os.path.join(shared_data, "celeba")
    if not os.path.isdir(os.path.join(path, "img_align_celeba")):
        pytest.skip(f"the CelebA photos are not in {path}/img_align_celeba")
    return path


@pytest.fixture(scope="module")
def celeba_names(celeba_dir):
    """File names per standard partition, from the subset's manifest (read here,
    not with the module)."""
    names = {0: [], 1: [], 2: []}
    with open(os.path.join(celeba_dir, "img_align_celeba_subset_manifest.tsv")) as f:
        next(f)
        for line in f:
            fields = line.rstrip("\n").split("\t")
            names[int(fields[2])].append(fields[0])
    return {key: sorted(value) for key, value in names.items()}


@pytest.fixture(scope="module")
def celeba_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("dmfa_cache"))


@pytest.fixture(scope="module")
def celeba32(celeba_dir, celeba_cache):
    return datasets.load("celeb_a", data_dir=celeba_dir, cache=celeba_cache, verbose=0)


def _pil_square(path, size, crop):
    """The reference preprocessing with Pillow and NumPy: uint8 [S, S, 3] / 255."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        if crop == "paper":
            side = round(1.875 * size)
            array = np.asarray(image.resize((side, side), Image.BILINEAR))
            top = (side - size) // 2
            array = array[top : top + size, top : top + size]
        else:
            width, height = image.size
            side = min(width, height)
            box = ((width - side) // 2, (height - side) // 2)
            image = image.crop((box[0], box[1], box[0] + side, box[1] + side))
            array = np.asarray(image.resize((size, size), Image.BILINEAR))
    return array.astype(np.float32) / 255.0


def _assert_close_to_pil(ours, reference):
    # Bilinear kernels with antialiasing differ by at most a grey level or two.
    difference = np.abs(ours - reference)
    assert difference.max() <= 2.0 / 255 + 1e-6
    assert difference.mean() <= 0.5 / 255


def _photo_subset(celeba_dir, celeba_names, target, counts=(6, 3, 3), partition=True):
    """A small CelebA layout: target/img_align_celeba/*.jpg (+ a partition file)."""
    folder = target / "img_align_celeba"
    folder.mkdir(parents=True)
    chosen = {}
    for part, count in enumerate(counts):
        for name in celeba_names[part][:count]:
            shutil.copy(os.path.join(celeba_dir, "img_align_celeba", name), folder)
            chosen[name] = part
    if partition:
        lines = [f"{name} {part}\n" for name, part in sorted(chosen.items())]
        (target / "list_eval_partition.txt").write_text("".join(lines))
    return folder, chosen


def test_celeba_paper_crop(celeba32, celeba_dir, celeba_names):
    splits = celeba32
    assert (len(splits.train), len(splits.val), len(splits.test)) == CELEBA_SPLITS
    assert tuple(len(celeba_names[part]) for part in range(3)) == CELEBA_SPLITS
    assert splits.image_shape == (32, 32, 3)
    for images in (splits.train, splits.val, splits.test):
        assert images.shape[1:] == (32, 32, 3)
        assert images.dtype == np.float32
        assert images.min() >= 0.0 and images.max() <= 1.0
        # 8-bit images, as image libraries resize them.
        np.testing.assert_allclose(images[:50] * 255, np.round(images[:50] * 255), atol=1e-3)
    assert splits.train_labels is None and splits.test_labels is None
    # Each split holds its partition's photos in file-name order: compare a few
    # with an independent Pillow computation (resize to 60x60, centre crop 32x32).
    photos = os.path.join(celeba_dir, "img_align_celeba")
    for images, part, index in [
        (splits.train, 0, 0),
        (splits.train, 0, len(celeba_names[0]) - 1),
        (splits.val, 1, 5),
        (splits.test, 2, 0),
    ]:
        reference = _pil_square(os.path.join(photos, celeba_names[part][index]), 32, "paper")
        _assert_close_to_pil(images[index], reference)


def test_celeba_cache_round_trip(celeba32, celeba_dir, celeba_cache, monkeypatch):
    files = os.listdir(celeba_cache)
    assert len(files) == 1 and files[0].startswith("celeb_a-32px-paper-6000-")
    assert files[0].endswith(".npy")  # memory-mapped by load_sources

    def no_decoding(*args, **kwargs):
        raise AssertionError("the photos were decoded again: the cache was missed")

    monkeypatch.setattr(data_photos, "_decode_photos", no_decoding)
    # The image folder itself (partition file found in its parent) is the same key.
    again = datasets.load(
        "celeb_a", data_dir=os.path.join(celeba_dir, "img_align_celeba"),
        cache=celeba_cache, verbose=0,
    )
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(again, split), getattr(celeba32, split))
    assert os.listdir(celeba_cache) == files  # nothing new, no temporary files left
    # Bypassing the cache decodes again.
    with pytest.raises(AssertionError, match="cache was missed"):
        datasets.load("celeb_a", data_dir=celeba_dir, cache=False, verbose=0)
    monkeypatch.setenv(datasets.CACHE_ENV, "off")
    with pytest.raises(AssertionError, match="cache was missed"):
        datasets.load("celeb_a", data_dir=celeba_dir, verbose=0)
    # The environment variable moves the default cache.
    monkeypatch.setenv(datasets.CACHE_ENV, celeba_cache)
    datasets.load("celeb_a", data_dir=celeba_dir, verbose=0)


def test_damaged_cache_file_is_replaced(celeba_dir, celeba_names, tmp_path):
    _photo_subset(celeba_dir, celeba_names, tmp_path / "data", counts=(3, 1, 1))
    cache = tmp_path / "cache"
    first = datasets.load("celeb_a", data_dir=str(tmp_path / "data"), cache=str(cache), verbose=0)
    (path,) = cache.iterdir()
    path.write_bytes(b"half a file")
    with pytest.warns(UserWarning, match="unreadable cache file"):
        again = datasets.load("celeb_a", data_dir=str(tmp_path / "data"), cache=str(cache))
    np.testing.assert_array_equal(again.train, first.train)
    assert [p.name for p in cache.iterdir()] == [path.name] and path.stat().st_size > 1000


def test_celeba_64(celeba_dir, celeba_names, tmp_path):
    # The paper's 64x64 variant: resize to 120x120, centre crop 64x64 (a subset
    # keeps this fast; test_celeba_64_full decodes all 6,000 photos).
    folder, _ = _photo_subset(celeba_dir, celeba_names, tmp_path)
    splits = datasets.load("celeb_a", data_dir=str(folder), image_size=64, cache=False, verbose=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 3, 3)
    assert splits.image_shape == (64, 64, 3)
    assert splits.val.shape[1:] == splits.test.shape[1:] == (64, 64, 3)
    assert splits.train.dtype == np.float32
    assert splits.train.min() >= 0.0 and splits.train.max() <= 1.0
    for part, images in ((0, splits.train), (2, splits.test)):
        reference = _pil_square(str(folder / celeba_names[part][1]), 64, "paper")
        _assert_close_to_pil(images[1], reference)


@pytest.mark.slow
def test_celeba_64_full(celeba_dir, celeba_names):
    splits = datasets.load("celeb_a", data_dir=celeba_dir, image_size=64, cache=False, verbose=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == CELEBA_SPLITS
    assert splits.image_shape == (64, 64, 3)
    photos = os.path.join(celeba_dir, "img_align_celeba")
    reference = _pil_square(os.path.join(photos, celeba_names[1][-1]), 64, "paper")
    _assert_close_to_pil(splits.val[-1], reference)


def test_celeba_aspect_crop(celeba_dir, celeba_names, tmp_path):
    _photo_subset(celeba_dir, celeba_names, tmp_path)
    paper = datasets.load("celeb_a", data_dir=str(tmp_path), cache=False, verbose=0)
    aspect = datasets.load("celeb_a", data_dir=str(tmp_path), crop="aspect", cache=False, verbose=0)
    assert (len(aspect.train), len(aspect.val), len(aspect.test)) == (6, 3, 3)
    assert aspect.image_shape == (32, 32, 3)
    # Not the paper's crop: the aspect ratio is kept and more of the face shows.
    assert np.abs(aspect.train - paper.train).mean() > 20.0 / 255
    for index in (0, 4):
        reference = _pil_square(
            str(tmp_path / "img_align_celeba" / celeba_names[0][index]), 32, "aspect"
        )
        _assert_close_to_pil(aspect.train[index], reference)


def test_celeba_layouts_and_present_files(celeba_dir, celeba_names, tmp_path):
    folder, chosen = _photo_subset(celeba_dir, celeba_names, tmp_path, counts=(4, 2, 2))
    # The partition lists an image that is not there: only present files count.
    with open(tmp_path / "list_eval_partition.txt", "a") as f:
        f.write("999999.jpg 0\n")
    outer = datasets.load("celeb_a", data_dir=str(tmp_path), cache=False, verbose=0)
    inner = datasets.load("celeb_a", data_dir=str(folder), cache=False, verbose=0)
    assert (len(outer.train), len(outer.val), len(outer.test)) == (4, 2, 2)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(outer, split), getattr(inner, split))
    # A photo that the partition file does not list is left out, with a warning.
    shutil.copy(folder / celeba_names[0][0], folder / "extra.jpg")
    with pytest.warns(UserWarning, match="not listed"):
        splits = datasets.load("celeb_a", data_dir=str(folder), cache=False, verbose=0)
    assert len(splits.train) == 4


def test_celeba_seeded_split(celeba_dir, celeba_names, tmp_path):
    folder, _ = _photo_subset(
        celeba_dir, celeba_names, tmp_path, counts=(14, 3, 3), partition=False
    )
    splits = datasets.load("celeb_a", data_dir=str(folder), cache=False, verbose=0)
    # 80% / 10% / 10%, seeded.
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 2, 2)
    everything = np.concatenate([splits.train, splits.val, splits.test])
    keys = {image.tobytes() for image in everything}
    assert len(keys) == 20  # each photo exactly once
    again = datasets.load("celeb_a", data_dir=str(folder), cache=False, verbose=0)
    np.testing.assert_array_equal(again.test, splits.test)
    np.testing.assert_array_equal(again.train, splits.train)


def test_celeba_png_and_grey_photos(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for index in range(5):
        pixels = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{index:06d}.png")
    Image.fromarray(rng.integers(0, 256, (218, 178), dtype=np.uint8)).save(tmp_path / "000009.png")
    splits = datasets.load("celeb_a", data_dir=str(tmp_path), cache=False, verbose=0)
    assert sum(len(images) for images in (splits.train, splits.val, splits.test)) == 6
    assert splits.image_shape == (32, 32, 3)


@pytest.mark.parametrize("content", ["empty", "text-only"])
def test_celeba_folder_without_images(tmp_path, content):
    if content == "text-only":
        (tmp_path / "notes.txt").write_text("no photos here")
    with pytest.raises(FileNotFoundError) as info:
        datasets.load("celeb_a", data_dir=str(tmp_path), cache=False, verbose=0)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("damage", ["random-bytes", "truncated", "empty"])
def test_corrupt_photo_is_named(celeba_dir, celeba_names, tmp_path, damage):
    folder, _ = _photo_subset(celeba_dir, celeba_names, tmp_path, partition=False)
    good = (folder / celeba_names[0][0]).read_bytes()
    content = {
        "random-bytes": np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes(),
        "truncated": good[: len(good) // 3],
        "empty": b"",
    }[damage]
    bad = folder / "000003.jpg"
    bad.write_bytes(content)
    with pytest.raises(ValueError) as info:
        datasets.load("celeb_a", data_dir=str(folder), cache=False, verbose=0)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize(
    "line", ["000002.jpg 3", "000002.jpg", "000002.jpg 0 1", "000002.jpg train"]
)
def test_malformed_partition_file(celeba_dir, celeba_names, tmp_path, line):
    _photo_subset(celeba_dir, celeba_names, tmp_path)
    path = tmp_path / "list_eval_partition.txt"
    lines = path.read_text().splitlines()
    lines.insert(2, line)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as info:
        datasets.load("celeb_a", data_dir=str(tmp_path), cache=False, verbose=0)
    assert str(path) in str(info.value) and "line 3" in str(info.value)


def test_read_partition_csv_with_header(tmp_path):
    path = tmp_path / "list_eval_partition.csv"
    path.write_text("image_id,partition\n000001.jpg,0\n000002.jpg,1\n000003.jpg,2\n")
    assert datasets.read_partition(str(path)) == {
        "000001.jpg": 0, "000002.jpg": 1, "000003.jpg": 2,
    }


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(image_size=0), "image_size"),
        (dict(image_size=-32), "image_size"),
        (dict(image_size=32.0), "image_size"),
        (dict(image_size=True), "image_size"),
        (dict(crop="centre"), "'centre'"),
        (dict(crop=None), "crop"),
    ],
)
def test_bad_image_size_or_crop(kwargs, word, tmp_path):
    with pytest.raises(ValueError, match=word):
        datasets.load("celeb_a", data_dir=str(tmp_path), cache=False, **kwargs)


def test_image_size_of_fixed_size_data(mnist_dir):
    with pytest.raises(ValueError, match="28x28"):
        datasets.load("mnist", data_dir=mnist_dir, image_size=32)


# --- .npz arrays ---------------------------------------------------------------


def _npz_arrays(n_train=60, n_test=10, shape=(6, 5), dtype=np.uint8, val=0):
    rng = np.random.default_rng(3)

    def images(n):
        if dtype == np.uint8:
            return rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        return rng.random((n, *shape)).astype(dtype)

    arrays = {
        "x_train": images(n_train),
        "y_train": rng.integers(0, 10, n_train),
        "x_test": images(n_test),
        "y_test": rng.integers(0, 10, (n_test, 1)),  # as keras' cifar10 stores them
    }
    if val:
        arrays["x_val"] = images(val)
        arrays["y_val"] = rng.integers(0, 10, val)
    return arrays


@pytest.mark.parametrize("in_folder", [False, True])
def test_npz_uint8_without_val(tmp_path, in_folder):
    arrays = _npz_arrays()
    path = tmp_path / "digits.npz"
    np.savez(path, **arrays)
    splits = datasets.load("cifar10", data_dir=str(tmp_path if in_folder else path))
    # Without validation arrays, the last min(5000, n // 10) training images.
    assert (len(splits.train), len(splits.val), len(splits.test)) == (54, 6, 10)
    assert splits.image_shape == (6, 5, 1)
    assert splits.train.dtype == np.float32
    np.testing.assert_array_equal(splits.train[..., 0] * 255, arrays["x_train"][:54])
    np.testing.assert_array_equal(splits.val[..., 0] * 255, arrays["x_train"][54:])
    np.testing.assert_array_equal(splits.val_labels, arrays["y_train"][54:])
    np.testing.assert_array_equal(splits.test_labels, arrays["y_test"][:, 0])
    assert np.issubdtype(splits.test_labels.dtype, np.integer)


def test_npz_float_with_val_no_labels(tmp_path):
    arrays = _npz_arrays(shape=(4, 4, 3), dtype=np.float64, val=7)
    for key in ("y_train", "y_val", "y_test"):
        del arrays[key]
    path = tmp_path / "faces.npz"
    np.savez(path, **arrays)
    splits = datasets.load("celeb_a", data_dir=str(path), image_size=4)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (60, 7, 10)
    assert splits.image_shape == (4, 4, 3)
    np.testing.assert_allclose(splits.val, arrays["x_val"], rtol=1e-6)
    assert splits.train_labels is None and splits.val_labels is None
    # The data set's default size (32) does not match 4x4 arrays: a clear error.
    with pytest.raises(ValueError, match="4x4"):
        datasets.load("celeb_a", data_dir=str(path))


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda a: a.pop("x_test"), ["x_test"]),
        (lambda a: a.update(x_train=a["x_train"].astype(np.float32) * 2), ["x_train", "[0, 1]"]),
        (lambda a: a.update(y_train=a["y_train"][:-1]), ["y_train"]),
        (lambda a: a.update(x_test=a["x_test"][..., None][:, :3]), ["shape"]),
        (lambda a: a.update(x_train=np.zeros((60, 6), np.uint8)), ["x_train"]),
    ],
    ids=["no-x_test", "float-range", "labels-length", "shapes-differ", "flat"],
)
def test_npz_errors_name_file(tmp_path, change, words):
    arrays = _npz_arrays()
    change(arrays)
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError) as info:
        datasets.load("svhn_cropped", data_dir=str(path))
    assert str(path) in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_npz_not_a_zip(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="broken.npz: it is not a zip archive") as info:
        datasets.load("cifar10", data_dir=str(path))
    assert "pickle" not in str(info.value)
    # a truncated archive (a killed copy) says the same
    arrays = {"x_train": np.zeros((20, 32, 32, 3), np.uint8), "x_test": np.zeros((5, 32, 32, 3), np.uint8)}
    np.savez(tmp_path / "full.npz", **arrays)
    data = (tmp_path / "full.npz").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a zip archive.*truncated"):
        datasets.load("cifar10", data_dir=str(path))


# --- tensorflow-datasets -------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_tfds_record_order_is_that_of_tfds_hasher(split):
    """Our `hashlib` computation of TFDS's on-disk order equals the order of
    TFDS's own (private) Hasher: the split name salts an MD5 of the key."""
    hashing = pytest.importorskip("tensorflow_datasets.core.hashing")
    count = 500
    expected = sorted(range(count), key=hashing.Hasher(split).hash_key)
    order = data_tfds.tfds_record_order(split, count)
    assert order.dtype == np.int64 and sorted(order.tolist()) == list(range(count))
    np.testing.assert_array_equal(order, expected)
    assert not np.array_equal(order, np.arange(count))  # a real shuffle


@pytest.fixture(scope="module")
def tfds_mnist_dir(mnist_dir, tmp_path_factory):
    """TFDS's own mnist, prepared offline from the shared IDX files (~20 s)."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    assert datasets.main(["prepare-mnist", "--idx-dir", mnist_dir, "--data-dir", data_dir]) == 0
    return data_dir


def test_tfds_mnist_prepared_offline(tfds_mnist_dir, mnist, mnist_dir, monkeypatch):
    assert sorted(os.listdir(tfds_mnist_dir)) == ["mnist"]  # no leftovers
    calls = []
    read_tfds = data_tfds._load_tfds

    def spy(*args, **kwargs):
        calls.append(args[0])
        return read_tfds(*args, **kwargs)

    def no_idx(*args, **kwargs):
        raise AssertionError("the IDX loader was used")

    monkeypatch.setattr(data_tfds, "_load_tfds", spy)
    monkeypatch.setattr(data_idx, "_load_idx_dataset", no_idx)
    splits = datasets.load("mnist", data_dir=tfds_mnist_dir, verbose=0)
    assert calls == ["mnist"]
    # The same images and labels as the IDX route, in the same order.
    for field in ("train", "val", "test", "train_labels", "val_labels", "test_labels"):
        np.testing.assert_array_equal(getattr(splits, field), getattr(mnist, field))
    assert splits.train.dtype == np.float32
    # Preparing again finds it prepared and does nothing.
    assert datasets.prepare_tfds_mnist(mnist_dir, tfds_mnist_dir).is_prepared()


@pytest.mark.slow
def test_tfds_version_folder(tfds_mnist_dir, mnist):
    version = os.listdir(os.path.join(tfds_mnist_dir, "mnist"))[0]
    splits = datasets.load(
        "mnist", data_dir=os.path.join(tfds_mnist_dir, "mnist", version), verbose=0
    )
    np.testing.assert_array_equal(splits.test[:100], mnist.test[:100])
    np.testing.assert_array_equal(splits.val_labels, mnist.val_labels)


def test_tfds_rejects_recompressed_fashion_mnist(fashion_dir, tmp_path):
    with pytest.raises(ValueError) as info:
        datasets.prepare_tfds("fashion_mnist", fashion_dir, str(tmp_path))
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message and "not byte-identical" in message
    assert not (tmp_path / "fashion_mnist").exists()


def test_prepare_needs_source_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        datasets.prepare_tfds_mnist(str(tmp_path / "nowhere"), str(tmp_path / "tfds"))
    assert datasets.main(
        ["prepare-mnist", "--idx-dir", str(tmp_path), "--data-dir", str(tmp_path / "tfds")]
    ) == 2  # an empty folder: the missing files are named on stderr


@pytest.mark.parametrize("name", ["mnist", "celeb_a", "svhn_cropped", "cifar10"])
def test_not_in_tfds_offline(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError) as info:
        datasets.load(name)
    message = str(info.value)
    assert name in message and "download=False" in message
    for fix in ("--data-dir", "--download"):
        assert fix in message


@pytest.mark.parametrize("name", ["svhn_cropped", "cifar10"])
def test_folder_without_data(name, tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        datasets.load(name, data_dir=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message and "--download" in message and ".npz" in message
