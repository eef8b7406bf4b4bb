"""Image data sets as float32 arrays `[n, H, W, C]` in [0, 1], split three ways.

Names are spelled as tensorflow-datasets (TFDS) spells them.

| name | sources | splits (train / val / test) |
|---|---|---|
| `digits` | scikit-learn's bundled 8x8 digits (no download) | 1,257 / 180 / 360, seeded |
| `mnist`, `fashion_mnist` | TFDS; the four IDX files; `.npz` | 55,000 / 5,000 / 10,000 |
| `celeb_a` | TFDS; a folder of JPEG/PNG photos; `.npz` | 162,770 / 19,867 / 19,962 |
| `svhn_cropped` | TFDS; `.npz` | 68,257 / 5,000 / 26,032 |
| `cifar10` | TFDS; `.npz` | 45,000 / 5,000 / 10,000 |

Where the data come from is decided by `data_dir` (`load`):

1. `data_dir` holds a TFDS-prepared copy of the data set (a TFDS `data_dir` with
   `<name>/<version>/`, or that version folder itself): read through TFDS. With
   `data_dir=None`, TFDS's default folder (`$TFDS_DATA_DIR` or
   `~/tensorflow_datasets`) is used, and `download=True` lets TFDS fetch the data
   (machines with internet only).
2. Local files, recognised by what `data_dir` holds: a `.npz` file (or a folder
   with one), the IDX files of MNIST / Fashion-MNIST, or CelebA's photos.
3. `download=True`: TFDS downloads and prepares the data set into `data_dir`.

Validation splits. A data set's own validation split is used where it has one
(CelebA: `list_eval_partition.txt` or TFDS's `validation`; `.npz` files with
`x_val`). Otherwise the last `min(5000, n // 10)` of the `n` training images are
held out (`validation_size`): 5,000 for MNIST-style IDX files, TFDS data sets
without one and large `.npz` arrays, a tenth of a small training split; fewer
than 10 training images is an error. TFDS stores
examples in a hashed order; `load` puts MNIST / Fashion-MNIST back in file
order (and CIFAR-10 / SVHN in the order of their `id` feature), so the TFDS and
the IDX routes give identical splits.

CelebA photos (178x218 aligned faces) become `S x S` images (`image_size`,
default 32):

- `crop="paper"` (the DMFA paper's code): resize to `round(1.875 S)` square,
  aspect ratio not kept (60x60 for S = 32, 120x120 for S = 64), then take the
  centre `S x S`.
- `crop="aspect"`: take the photo's centre square (178x178), resize it to `S x S`.

Resizing is bilinear with antialiasing, rounded to 8 bits as image libraries
do, so the images hold multiples of 1/255. Decoded photos are cached (see
`load`'s `cache`): by default in `$DMFA_TF_CACHE_DIR` or `~/.cache/dmfa_tf`.

TFDS's own `mnist` can be prepared offline from the four canonical IDX files:
`python -m dmfa_tf.datasets prepare-mnist --idx-dir DIR --data-dir DIR`
(`prepare_tfds_mnist`). The Fashion-MNIST files that Debian ships are
recompressed: their content is the original but their bytes are not, so TFDS's
checksums reject them; read them with the IDX loader instead.
"""

import argparse
import dataclasses
import errno
import gzip
import hashlib
import contextlib
import json
import logging
import os
import re
import shutil
import struct
import sys
import tempfile
import warnings
import zipfile
import zlib

import numpy as np

from dmfa_tf import sources

__all__ = [
    "CROPS",
    "DATASETS",
    "SPLITS",
    "Splits",
    "load",
    "load_sources",
    "prepare_tfds",
    "prepare_tfds_mnist",
    "read_idx",
    "read_partition",
]

# Every name `load` accepts, with its sources.
DATASETS = {
    "digits": "scikit-learn's bundled 8x8 digits",
    "mnist": "TFDS, the four IDX files, or .npz",
    "fashion_mnist": "TFDS, the four IDX files, or .npz",
    "celeb_a": "TFDS, a folder of JPEG/PNG photos, or .npz",
    "svhn_cropped": "TFDS or .npz",
    "cifar10": "TFDS or .npz",
}
CROPS = ("paper", "aspect")
CELEBA_IMAGE_SIZE = 32  # the paper's default
PAPER_RESIZE_RATIO = 1.875  # 60 / 32: resize to round(1.875 S), then crop S
VAL_HOLDOUT = 5000  # validation images held out of a training split without one
SEEDED_VAL_FRACTION = 0.1  # image folders without a partition file:
SEEDED_TEST_FRACTION = 0.1  # 80% train, 10% validation, 10% test, seeded
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
PARTITION_FILES = ("list_eval_partition.txt", "list_eval_partition.csv")
CACHE_ENV = "DMFA_TF_CACHE_DIR"
_CACHE_FORMAT = 2  # 2: a memory-mappable .npy file
_PROGRESS_THRESHOLD = 1000  # progress bar for decodes of more images than this

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_NAMES = ("mnist", "fashion_mnist")
# TFDS builders whose example keys are the positions in the source files.
_TFDS_INDEX_KEYED = ("mnist", "fashion_mnist")
_LOCAL_FORMATS = {
    "mnist": "the four IDX files or a .npz file",
    "fashion_mnist": "the four IDX files or a .npz file",
    "celeb_a": "a folder of CelebA's JPEG/PNG photos (img_align_celeba) or a .npz file",
    "svhn_cropped": "a .npz file",
    "cifar10": "a .npz file",
}


@dataclasses.dataclass(frozen=True)
class Splits:
    """Three splits of images `[n, H, W, C]` float32 in [0, 1] and labels `[n]`
    (None where the data set has none, or where `load` was not asked for the
    split)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    train_labels: np.ndarray = None
    val_labels: np.ndarray = None
    test_labels: np.ndarray = None

    @property
    def image_shape(self):
        images = next(x for x in (self.train, self.val, self.test) if x is not None)
        return tuple(images.shape[1:])


# --- IDX files (MNIST, Fashion-MNIST) ------------------------------------------


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


# --- shared helpers ----------------------------------------------------------


def validation_size(count, source):
    """How many of `count` training images are held out for validation when a
    data set has no validation split: `min(VAL_HOLDOUT, count // 10)`. Fewer
    than 10 training images is a ValueError naming `source`."""
    size = min(VAL_HOLDOUT, count // 10)
    if size < 1:
        raise ValueError(
            f"{source}: the training split holds {count} images, too few to hold out a "
            "validation split (at least 10 are needed)."
        )
    return size


def _hold_out(images, labels, test, test_labels, val_size=None, source="the data set"):
    """Splits with the last `val_size` training images as validation (default
    `validation_size`)."""
    if val_size is None:
        val_size = validation_size(len(images), source)
    cut = len(images) - val_size
    return Splits(
        train=images[:cut],
        val=images[cut:],
        test=test,
        train_labels=None if labels is None else labels[:cut],
        val_labels=None if labels is None else labels[cut:],
        test_labels=test_labels,
    )


def _to_float(images):
    """uint8 images to float32 in [0, 1]."""
    return images.astype(np.float32) / np.float32(255.0)


def _check_image_size(image_size):
    if image_size is None:
        return
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise ValueError(
            f"`image_size` must be a positive integer or None. Received: "
            f"image_size={image_size!r}"
        )
    if image_size < 1:
        raise ValueError(
            f"`image_size` must be a positive integer or None. Received: "
            f"image_size={image_size!r}"
        )


def _check_native_size(name, image_shape, image_size, where):
    """Data sets stored at a fixed size accept only that size (or None)."""
    if image_size is None:
        return
    if tuple(image_shape[:2]) != (image_size, image_size):
        raise ValueError(
            f"{where}: {name} images are {image_shape[0]}x{image_shape[1]}, but "
            f"image_size={image_size} was asked for; only CelebA photos are resized. "
            f"Leave image_size unset (--image-size) or set it to {image_shape[0]}."
        )


def _progress(target, verbose):
    """A keras Progbar for long jobs, or None."""
    if not verbose or target is None or target <= _PROGRESS_THRESHOLD:
        return None
    import keras

    return keras.utils.Progbar(target, unit_name="image")


# --- CelebA photos -----------------------------------------------------------


def _decode_photos(paths, image_size, crop, verbose, out=None):
    """Decodes and crops photo files in parallel with tf.data, into `out` (an
    array or memmap `[len(paths), S, S, 3]`, new when None), batch by batch.

    Returns:
        `out`, uint8.

    Raises:
        ValueError: a file cannot be read or decoded; names it.
    """
    source = sources.PhotoSource(paths, image_size, crop) if paths else None
    if out is None:
        out = np.empty((len(paths), int(image_size), int(image_size), 3), np.uint8)
    if source is not None:
        source.decode_into(out, verbose=verbose)
    return out


def read_partition(path):
    """Reads CelebA's `list_eval_partition.txt` (`000001.jpg 0` per line; the
    Kaggle `.csv` variant with a header row also works).

    Returns:
        a dict from file name to partition: 0 train, 1 validation, 2 test.

    Raises:
        ValueError: a malformed line; names the file and the line number.
    """
    partition = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"Cannot read the partition file {path}: {error}") from None
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        fields = [field for field in re.split(r"[,\s]+", text) if field]
        if number == 1 and len(fields) == 2 and not fields[1].lstrip("-").isdigit():
            continue  # a header row, e.g. "image_id,partition"
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(
                f"{path}, line {number}: expected '<file name> <0|1|2>' "
                f"(0 train, 1 validation, 2 test), found {line!r}."
            )
        partition[fields[0]] = int(fields[1])
    if not partition:
        raise ValueError(f"The partition file {path} lists no images.")
    return partition


def _list_images(folder):
    return sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def _celeba_image_folder(data_dir):
    """The folder of photos: `data_dir` or its `img_align_celeba/` (two levels at
    most, as Kaggle's copy nests them)."""
    folder = data_dir
    names = _list_images(folder)
    for _ in range(2):
        if names:
            break
        inner = os.path.join(folder, "img_align_celeba")
        if not os.path.isdir(inner):
            break
        folder = inner
        names = _list_images(folder)
    if not names:
        hint = ""
        if os.path.exists(os.path.join(data_dir, "img_align_celeba.zip")):
            hint = " It holds img_align_celeba.zip: unzip it first."
        raise FileNotFoundError(
            f"No JPEG/PNG images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}.{hint} "
            "celeb_a from local files needs a folder of photos (CelebA's "
            "img_align_celeba, or the folder that holds it), a .npz file, or a TFDS "
            "data_dir where celeb_a is prepared."
        )
    return folder, names


def _find_partition(folder, data_dir):
    candidates = []
    for place in (folder, os.path.dirname(os.path.abspath(folder)), data_dir):
        for name in PARTITION_FILES:
            path = os.path.join(place, name)
            if path not in candidates:
                candidates.append(path)
    for path in candidates:
        if os.path.isfile(path):
            return path
    return None


def _seeded_split(count, seed=0):
    """Indices of a seeded 80/10/10 split of `count` items, each in order."""
    if count < 3:
        raise ValueError(
            f"A seeded train/validation/test split needs at least 3 images; found {count}."
        )
    n_val = max(1, int(round(SEEDED_VAL_FRACTION * count)))
    n_test = max(1, int(round(SEEDED_TEST_FRACTION * count)))
    order = np.random.default_rng(seed).permutation(count)
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return np.sort(train), np.sort(val), np.sort(test)


def _celeba_folder_sources(data_dir, image_size, crop, cache, verbose):
    """`Splits` of `sources.ImageSource`: the photos decoded once into the
    memory-mapped uint8 cache, or (cache off) read from the files as they are
    used."""
    folder, names = _celeba_image_folder(data_dir)
    partition_path = _find_partition(folder, data_dir)
    if partition_path is not None:
        partition = read_partition(partition_path)
        listed = [name for name in names if name in partition]
        if not listed:
            raise ValueError(
                f"None of the {len(names):,} images in {folder} is listed in "
                f"{partition_path}: is it the partition file of these photos?"
            )
        if len(listed) < len(names):
            warnings.warn(
                f"{len(names) - len(listed):,} images in {folder} are not listed in "
                f"{partition_path} and are left out.",
                stacklevel=4,
            )
        names = listed
        parts = np.array([partition[name] for name in names])
        indices = [np.flatnonzero(parts == value) for value in (0, 1, 2)]
        empty = [split for split, index in zip(("train", "val", "test"), indices) if not len(index)]
        if empty:
            raise ValueError(
                f"{folder}: by {partition_path}, no image present belongs to the "
                f"{' and '.join(empty)} split(s) (found {[len(i) for i in indices]} "
                "train/val/test images)."
            )
    else:
        indices = _seeded_split(len(names))
    paths = [os.path.join(folder, name) for name in names]
    if _cache_folder(cache) is None:
        return Splits(*(
            sources.PhotoSource([paths[i] for i in index], image_size, crop) for index in indices
        ))
    key = {
        "source": "folder",
        "folder": os.path.realpath(folder),
        "image_size": int(image_size),
        "crop": crop,
        "count": len(names),
        "names": hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest(),
    }
    images = _cached(
        key,
        f"celeb_a-{image_size}px-{crop}-{len(names)}",
        (len(names), image_size, image_size, 3),
        lambda out: _decode_photos(paths, image_size, crop, verbose, out=out),
        cache,
    )
    return Splits(*(sources.ArraySource(images, rows=index) for index in indices))


def _load_celeba_folder(data_dir, image_size, crop, cache, verbose):
    found = _celeba_folder_sources(data_dir, image_size, crop, cache, verbose)

    def to_float(split):
        if isinstance(split, sources.PhotoSource):  # the cache is off
            return _to_float(_decode_photos(split.paths, image_size, crop, verbose))
        return split.to_float_array(verbose)

    return Splits(*(to_float(split) for split in (found.train, found.val, found.test)))


# --- the cache of decoded photos -----------------------------------------------


def _cache_folder(cache):
    """The cache folder for `cache` (see `load`), or None when caching is off."""
    if cache is None or cache is False:
        return None
    if cache is True:
        folder = os.environ.get(CACHE_ENV)
        if folder is not None:
            if folder.strip().lower() in ("", "0", "off", "none", "false"):
                return None
            return os.path.expanduser(folder)
        return os.path.join(os.path.expanduser("~"), ".cache", "dmfa_tf")
    return os.path.expanduser(os.fspath(cache))


def cache_path(key, stem, cache=True):
    """Where `load` caches the uint8 arrays for `key` (a dict), or None."""
    folder = _cache_folder(cache)
    if folder is None:
        return None
    digest = hashlib.sha256(
        json.dumps({"format": _CACHE_FORMAT, **key}, sort_keys=True).encode("utf-8")
    ).hexdigest()[:20]
    return os.path.join(folder, f"{stem}-{digest}.npy")


def _new_memmap(shape, folder=None, prefix="dmfa_tf-"):
    """`(path, out)`: a uint8 `.npy` memmap of `shape` in a new temporary file
    of `folder` (the system's temporary folder when None), its whole size
    reserved now, so that a full disk is an OSError here, not a SIGBUS while
    `out` is written. Nothing is left behind on error."""
    handle, temporary = tempfile.mkstemp(prefix=prefix, suffix=".npy", dir=folder)
    os.close(handle)
    try:
        out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=shape)
        _reserve(temporary)
    except BaseException:
        os.remove(temporary)
        raise
    return temporary, out


def _spilled(shape, decode):
    """`decode(out)` into a memmap of an unlinked temporary file."""
    temporary, out = _new_memmap(shape)
    try:
        decode(out)
        out.flush()
        return np.load(temporary, mmap_mode="r", allow_pickle=False)
    finally:
        os.remove(temporary)  # the mapping keeps the data until it is closed


def _reserve(path):
    """Allocates the whole file now (see `_new_memmap`)."""
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
        except AttributeError:  # pragma: no cover - no posix_fallocate here
            pass


def _cached(key, stem, shape, decode, cache, spill=False):
    """A uint8 array of `shape`, memory-mapped from the cache.

    A missing or damaged cache file is made by `decode(out)`, which fills the
    memmap `out` batch by batch (memory stays bounded), written to a temporary
    name and then renamed, so an interrupted run never leaves a partial file.
    With the cache off (`cache` False or `DMFA_TF_CACHE_DIR=off`), `decode`
    fills an array in memory, or with `spill=True` a memmap of a temporary file
    that is deleted as soon as it is mapped (the disk space is freed when the
    process ends). A cache folder that cannot be written is warned about, and
    the array is decoded in memory.
    """
    shape = tuple(int(s) for s in shape)
    path = cache_path(key, stem, cache)
    if path is None:
        if spill:
            return _spilled(shape, decode)
        return decode(np.empty(shape, np.uint8))
    if os.path.exists(path):
        try:
            images = np.load(path, mmap_mode="r", allow_pickle=False)
            if images.dtype == np.uint8 and images.shape == shape:
                return images
            raise ValueError(f"it holds {images.dtype} {images.shape}, not uint8 {shape}")
        except (OSError, ValueError, EOFError) as error:
            warnings.warn(f"Ignoring the unreadable cache file {path}: {error}", stacklevel=3)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary, out = _new_memmap(shape, os.path.dirname(path), prefix=".tmp-")
    except OSError as error:
        warnings.warn(f"Could not write the cache file {path}: {error}", stacklevel=3)
        return decode(np.empty(shape, np.uint8))
    try:
        decode(out)
        out.flush()
        del out
        os.replace(temporary, path)
        temporary = None
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)
    return np.load(path, mmap_mode="r", allow_pickle=False)


# --- .npz arrays -------------------------------------------------------------

_NPZ_VAL_KEYS = ("val", "valid", "validation")


def _find_npz(data_dir, name):
    """The `.npz` file that `data_dir` is or holds, or None."""
    if os.path.isfile(data_dir):
        return data_dir if data_dir.lower().endswith(".npz") else None
    files = sorted(f for f in os.listdir(data_dir) if f.lower().endswith(".npz"))
    if not files:
        return None
    if len(files) == 1:
        return os.path.join(data_dir, files[0])
    if name + ".npz" in files:
        return os.path.join(data_dir, name + ".npz")
    raise ValueError(
        f"{data_dir} holds several .npz files ({', '.join(files)}); name one with "
        f"--data-dir, or call one of them {name}.npz."
    )


def _npz_images(array, path, key):
    """An image array from a .npz file to float32 `[n, H, W, C]` in [0, 1]."""
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or 0 in array.shape[1:]:
        raise ValueError(
            f"{path}: {key} has shape {array.shape}; expected [n, H, W] or [n, H, W, C]."
        )
    if array.dtype == np.uint8:
        return _to_float(array)
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(
                f"{path}: {key} holds integers outside [0, 255] "
                f"({array.min()} to {array.max()})."
            )
        return _to_float(array)
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
        if np.isinf(array).any():
            raise ValueError(f"{path}: {key} holds infinite values.")
        nan = np.isnan(array)
        if nan.any() and key != "x_train":
            raise ValueError(
                f"{path}: {key} holds NaN values. Only x_train may (incomplete training "
                "images: train with --nonfinite=absent); validation and test images are "
                "scored whole."
            )
        if nan.all():
            raise ValueError(f"{path}: {key} holds only NaN values.")
        low, high = (float(f(array)) for f in (np.nanmin, np.nanmax)) if array.size else (0, 0)
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"{path}: {key} holds floats outside [0, 1] ({low:g} to "
                f"{high:g}); store uint8 in [0, 255] or floats in [0, 1]."
            )
        return array
    raise ValueError(f"{path}: {key} has dtype {array.dtype}; expected uint8 or float.")


def _npz_labels(archive, path, key, count):
    if key not in archive.files:
        return None
    labels = archive[key]
    if labels.size != count or (labels.ndim > 1 and labels.shape[0] != count):
        raise ValueError(
            f"{path}: {key} has shape {labels.shape}, but there are {count} images."
        )
    labels = labels.reshape(count)
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating) or not np.array_equal(
            labels, np.round(labels)
        ):
            raise ValueError(f"{path}: {key} must hold integer class labels.")
    return labels.astype(np.int64)


def _load_npz(path, name, image_size):
    # np.load reads any file that is not a zip archive (or .npy) as a pickle and
    # then refuses it as "pickled data": name the real problem instead.
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"Cannot read the .npz file {path}: it is not a zip archive (a .npz file made by "
            "numpy.savez), so it is truncated or not a .npz file at all."
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"Cannot read the .npz file {path}: {error}") from None
    with archive:
        files = set(archive.files)
        missing = [key for key in ("x_train", "x_test") if key not in files]
        if missing:
            raise ValueError(
                f"{path} has no {' or '.join(missing)} array (it has "
                f"{sorted(files)}); expected x_train, x_test and optionally y_train, "
                "y_test, x_val, y_val."
            )
        try:
            arrays = {"train": archive["x_train"], "test": archive["x_test"]}
            val_key = next((v for v in _NPZ_VAL_KEYS if f"x_{v}" in files), None)
            if val_key:
                arrays["val"] = archive[f"x_{val_key}"]
            images = {split: _npz_images(array, path, f"x_{split if split != 'val' else val_key}")
                      for split, array in arrays.items()}
            labels = {
                split: _npz_labels(
                    archive, path, f"y_{split if split != 'val' else val_key}", len(images[split])
                )
                for split in images
            }
        except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as error:
            raise ValueError(f"Cannot read the .npz file {path}: {error}") from None
    shapes = {split: array.shape[1:] for split, array in images.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"{path}: the splits' images differ in shape: {shapes}.")
    _check_native_size(name, shapes["train"], image_size, path)
    if "val" in images:
        return Splits(
            train=images["train"],
            val=images["val"],
            test=images["test"],
            train_labels=labels["train"],
            val_labels=labels["val"],
            test_labels=labels["test"],
        )
    count = len(images["train"])
    if count < 10:
        raise ValueError(
            f"{path}: x_train holds {count} images, too few to hold out a validation "
            "split; add x_val / y_val arrays."
        )
    return _hold_out(images["train"], labels["train"], images["test"], labels["test"], source=path)


# --- tensorflow-datasets -----------------------------------------------------


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:  # pragma: no cover - a dependency of the package
        raise RuntimeError(
            f"tensorflow-datasets is needed to read TFDS data ({error}); "
            "pip install 'tensorflow-datasets>=4.9,<5'."
        ) from None
    return tfds


@contextlib.contextmanager
def _quiet_absl():
    """Hides TFDS's absl warnings about folders that are not prepared (it checks
    for them on every lookup; `load` reports a missing data set itself)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _is_prepared(builder):
    with _quiet_absl():
        return builder.is_prepared()


def _version_key(text):
    return tuple(int(part) if part.isdigit() else -1 for part in text.split("."))


def _tfds_builder(name, data_dir):
    """A TFDS builder for `name` reading from `data_dir` (None: TFDS's default)."""
    tfds = _tfds()
    if data_dir is not None:
        folder = data_dir
        if (
            not os.path.isfile(os.path.join(folder, "dataset_info.json"))
            and os.path.basename(os.path.normpath(folder)) == name
        ):
            # The data set's own folder, holding one folder per version?
            versions = [
                entry
                for entry in os.listdir(folder)
                if os.path.isfile(os.path.join(folder, entry, "dataset_info.json"))
            ]
            if versions:
                folder = os.path.join(folder, max(versions, key=_version_key))
        if os.path.isfile(os.path.join(folder, "dataset_info.json")):
            builder = tfds.builder_from_directory(folder)
            if builder.name != name:
                raise ValueError(
                    f"{folder} holds the TFDS data set {builder.name!r}, not {name!r}."
                )
            return builder
    with _quiet_absl():
        return tfds.builder(name, data_dir=data_dir)


def _may_hold_tfds(folder, name):
    """Whether the local `folder` can hold a TFDS-prepared `name`: TFDS keeps
    it in `<folder>/<name>/[<config>/]<version>/`, and `_tfds_builder` also
    takes a version folder or the data set's own folder of versions. Folders
    that cannot are not handed to TFDS (importing it and making a builder take
    about a second)."""
    if os.path.isdir(os.path.join(folder, name)):
        return True
    if os.path.isfile(os.path.join(folder, "dataset_info.json")):
        return True
    return os.path.basename(os.path.normpath(folder)) == name and any(
        os.path.isfile(os.path.join(folder, entry, "dataset_info.json"))
        for entry in os.listdir(folder)
    )


def _tfds_default_dir():
    return os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")


def _not_in_tfds(name, data_dir):
    where = data_dir if data_dir is not None else f"TFDS's default data_dir {_tfds_default_dir()}"
    fixes = [f"pass --data-dir (data_dir) naming a TFDS data_dir where {name} is prepared"]
    if name == "mnist":
        fixes[0] += (
            " (prepare one offline with `python -m dmfa_tf.datasets prepare-mnist "
            "--idx-dir DIR --data-dir DIR`)"
        )
    fixes.append(f"or a folder with {_LOCAL_FORMATS[name]}")
    fixes.append("or add --download (download=True) on a machine with internet access")
    return f"{name} is not prepared in {where} and download=False. Fix: " + ", ".join(fixes) + "."


def _restore_order(name, builder, split, images, labels, ids):
    """Puts TFDS's hashed record order back into the source order, where known."""
    count = len(images)
    if ids is not None:
        order = np.argsort(ids, kind="stable")
    elif name in _TFDS_INDEX_KEYED and count == builder.info.splits[split].num_examples:
        try:
            from tensorflow_datasets.core import hashing
        except ImportError:  # pragma: no cover - TFDS internals moved
            return images, labels
        # TFDS writes the examples sorted by an MD5 of (split name, key); these
        # builders' keys are the positions in the IDX files.
        hasher = hashing.Hasher(split)
        written = np.array(sorted(range(count), key=hasher.hash_key))
        order = np.argsort(written)
    else:
        return images, labels
    return images[order], None if labels is None else labels[order]


def _read_tfds_split(name, builder, split, verbose):
    """One TFDS split of a fixed-size data set as uint8 images and int64 labels
    (or None), source order (celeb_a: `_decode_tfds_celeba`)."""
    import tensorflow as tf

    features = builder.info.features
    has_label = "label" in features
    has_id = "id" in features

    def convert(example):
        out = {"image": example["image"]}
        if has_label:
            out["label"] = example["label"]
        if has_id:
            out["id"] = example["id"]
        return out

    dataset = (
        builder.as_dataset(split=split, shuffle_files=False)
        .map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(1024)
        .prefetch(tf.data.AUTOTUNE)
    )
    bar = _progress(builder.info.splits[split].num_examples, verbose)
    images, labels, ids = [], [], []
    for batch in dataset.as_numpy_iterator():
        images.append(batch["image"])
        if has_label:
            labels.append(batch["label"])
        if has_id:
            ids.append(batch["id"])
        if bar is not None:
            bar.add(len(batch["image"]))
    if not images:
        raise ValueError(f"The TFDS split {name}/{split} in {builder.data_dir} is empty.")
    images = np.concatenate(images)
    labels = np.concatenate(labels).astype(np.int64) if has_label else None
    ids = np.concatenate(ids) if has_id else None
    images, labels = _restore_order(name, builder, split, images, labels, ids)
    if images.ndim == 3:
        images = images[..., None]
    return images, labels


def _decode_tfds_celeba(builder, split, image_size, crop, verbose, out):
    """TFDS's celeb_a split, cropped to `[S, S, 3]` uint8, into `out` batch by
    batch (TFDS's order)."""
    import tensorflow as tf

    data = builder.as_dataset(split=split, shuffle_files=False).map(
        lambda example: sources.square_photo(example["image"], image_size, crop),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
    )
    if not len(out):
        raise ValueError(f"The TFDS split celeb_a/{split} in {builder.data_dir} is empty.")
    return sources.write_array(out, data, verbose=verbose)


def _load_tfds(name, builder, image_size, crop, cache, verbose, stream=False):
    splits = dict(builder.info.splits)
    if "train" not in splits or "test" not in splits:
        raise ValueError(
            f"The TFDS data set {name} in {builder.data_dir} has splits {sorted(splits)}; "
            "train and test are needed."
        )
    if name != "celeb_a":
        image_shape = builder.info.features["image"].shape
        _check_native_size(name, image_shape, image_size, builder.data_dir)
    wanted = ["train", "validation", "test"] if "validation" in splits else ["train", "test"]
    arrays = {}
    for split in wanted:
        if name == "celeb_a":
            key = {
                "source": "tfds",
                "data_dir": os.path.realpath(os.fspath(builder.data_dir)),
                "version": str(builder.info.version),
                "split": split,
                "image_size": int(image_size),
                "crop": crop,
                "count": splits[split].num_examples,
            }
            labels = None
            images = _cached(
                key,
                f"celeb_a-tfds-{split}-{image_size}px-{crop}",
                (splits[split].num_examples, image_size, image_size, 3),
                lambda out, split=split: _decode_tfds_celeba(
                    builder, split, image_size, crop, verbose, out
                ),
                cache,
                spill=stream,
            )
        else:
            images, labels = _read_tfds_split(name, builder, split, verbose)
        arrays[split] = (images if stream else _to_float(images), labels)  # stream: uint8
    if "validation" in arrays:
        return Splits(
            train=arrays["train"][0],
            val=arrays["validation"][0],
            test=arrays["test"][0],
            train_labels=arrays["train"][1],
            val_labels=arrays["validation"][1],
            test_labels=arrays["test"][1],
        )
    (train, train_labels), (test, test_labels) = arrays["train"], arrays["test"]
    return _hold_out(train, train_labels, test, test_labels,
                     source=f"The TFDS split {name}/train in {builder.data_dir}")


def _download_and_prepare(name, builder):
    try:
        builder.download_and_prepare()
    except Exception as error:  # TFDS raises many kinds when offline
        raise RuntimeError(
            f"TFDS could not download and prepare {name} into {builder.data_dir}: "
            f"{type(error).__name__}: {error}. Without internet access, pass --data-dir "
            f"naming {_LOCAL_FORMATS[name]} instead."
        ) from error


# --- preparing a TFDS builder offline -----------------------------------------


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_tfds(name, source_dir, data_dir):
    """Prepares TFDS's own builder `name` offline from its source files.

    The files TFDS would download (its `checksums.tsv`) are looked up in
    `source_dir` by content (SHA-256), whatever their names, placed under the
    names that the builder expects in a temporary manual directory, and the
    builder runs `download_and_prepare(download_config=DownloadConfig(
    manual_dir=..., try_download_gcs=False))`. Afterwards
    `load(name, data_dir=data_dir)` reads through TFDS. Needs
    `importlib_resources` and `Pillow`.

    Args:
        name: a TFDS builder name, e.g. `"mnist"`.
        source_dir: folder holding the source files, byte-identical to the
            canonical ones (e.g. MNIST's four `.gz` IDX files).
        data_dir: TFDS data_dir to prepare into (created if needed).

    Returns:
        the prepared builder.

    Raises:
        FileNotFoundError: `source_dir` does not exist.
        ValueError: a file TFDS needs is not in `source_dir` (or differs from
            the canonical bytes); names it and its expected checksum.
    """
    tfds = _tfds()
    if not source_dir or not os.path.isdir(source_dir):
        raise FileNotFoundError(f"Source folder not found: {source_dir!r}")
    if not data_dir:
        raise ValueError("prepare_tfds needs data_dir (--data-dir): where TFDS writes the data.")
    with _quiet_absl():
        builder = tfds.builder(name, data_dir=data_dir)
    if _is_prepared(builder):
        return builder
    url_infos = builder.url_infos or {}
    if not url_infos:
        raise ValueError(
            f"TFDS's {name} builder lists no source files (checksums.tsv); it cannot "
            "be prepared from local files this way."
        )
    expected = {}
    for url, info in url_infos.items():
        expected[info.checksum] = (info.filename or url.rstrip("/").split("/")[-1], info.size)
    sizes = {size for _, size in expected.values()}
    found, examined = {}, {}
    for entry in sorted(os.listdir(source_dir)):
        path = os.path.join(source_dir, entry)
        if not os.path.isfile(path):
            continue
        if os.path.getsize(path) in sizes or entry in {n for n, _ in expected.values()}:
            checksum = _sha256(path)
            examined[entry] = checksum
            if checksum in expected:
                found[checksum] = path
    missing = [(filename, checksum) for checksum, (filename, _) in expected.items()
               if checksum not in found]
    if missing:
        lines = []
        for filename, checksum in missing:
            line = f"{filename} (sha256 {checksum})"
            if filename in examined:
                line += (
                    f": {os.path.join(source_dir, filename)} has sha256 {examined[filename]}, "
                    "not byte-identical to the canonical file"
                )
            lines.append(line)
        raise ValueError(
            f"{source_dir} lacks files that TFDS's {name} builder needs: "
            + "; ".join(lines)
            + ". TFDS verifies checksums, so only the canonical bytes work (recompressed "
            "copies such as Debian's Fashion-MNIST are rejected); read such files with "
            f"load({name!r}, data_dir={source_dir!r}) instead."
        )
    os.makedirs(data_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".prepare-{name}-", dir=data_dir)
    try:
        manual_dir = os.path.join(work, "manual")
        os.makedirs(manual_dir)
        for checksum, path in found.items():
            target = os.path.join(manual_dir, expected[checksum][0])
            try:
                os.symlink(os.path.abspath(path), target)
            except OSError:
                shutil.copyfile(path, target)
        builder.download_and_prepare(
            download_dir=os.path.join(work, "downloads"),
            download_config=tfds.download.DownloadConfig(
                manual_dir=manual_dir, try_download_gcs=False
            ),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return builder


def prepare_tfds_mnist(idx_dir, data_dir):
    """Prepares TFDS's `mnist` offline from the four canonical MNIST IDX `.gz`
    files in `idx_dir` into the TFDS data_dir `data_dir` (see `prepare_tfds`)."""
    return prepare_tfds("mnist", idx_dir, data_dir)


# --- the entry point ---------------------------------------------------------


SPLITS = ("train", "val", "test")


def _check_splits(splits):
    """`splits` (a name or names) as a tuple of names from `SPLITS`."""
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    unknown = [split for split in splits if split not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"`splits` must name some of {SPLITS}. Received: splits={splits!r}")
    return splits


def load(
    name,
    data_dir=None,
    image_size=None,
    crop="paper",
    download=False,
    cache=True,
    verbose=1,
    splits=SPLITS,
):
    """Loads a data set by name (see the module docstring).

    Args:
        name: `"digits"`, `"mnist"`, `"fashion_mnist"`, `"celeb_a"`,
            `"svhn_cropped"` or `"cifar10"`.
        data_dir: a TFDS data_dir, or the local files: a folder of IDX files,
            a folder of CelebA photos (or the folder holding `img_align_celeba/`
            and `list_eval_partition.txt`), or a `.npz` file (or a folder with
            one). None: TFDS's default data_dir.
        image_size: CelebA's side S (default 32). Data sets stored at a fixed
            size accept only None or that size.
        crop: CelebA's crop, `"paper"` or `"aspect"` (module docstring).
        download: let TFDS download the data (machines with internet only).
        cache: where decoded CelebA photos are cached: True (default) for
            `$DMFA_TF_CACHE_DIR`, else `~/.cache/dmfa_tf` (setting the variable
            to `off` turns caching off); a folder; or False for no cache. Cache
            files are keyed by the folder, image size, crop and file list, and
            written to a temporary file first, then renamed. Delete them freely.
        verbose: 1 shows a progress bar for long decodes, 0 nothing.
        splits: the splits wanted, some of `("train", "val", "test")` (all);
            the others are None in the result. The IDX loader then skips the
            training files when neither "train" nor "val" is wanted (the
            other sources read everything).

    Returns:
        `Splits`.

    Raises:
        ValueError: unknown name, bad `image_size` / `crop`, unreadable or
            malformed files (named), data not in TFDS without `download`.
        FileNotFoundError: `data_dir` or a file in it is missing.
        RuntimeError: TFDS failed to download.
    """
    splits = _check_splits(splits)
    result = _load(name, data_dir, image_size, crop, download, cache, verbose,
                   need_train="train" in splits or "val" in splits)
    dropped = {}
    for split in SPLITS:
        if split not in splits:
            dropped[split] = None
            dropped[f"{split}_labels"] = None
    return dataclasses.replace(result, **dropped) if dropped else result


def load_sources(
    name,
    data_dir=None,
    image_size=None,
    crop="paper",
    download=False,
    cache=True,
    verbose=1,
    splits=SPLITS,
):
    """As `load`, but each split is a `sources.ImageSource` that training and
    evaluation read inside `tf.data`, not a float array in memory.

    - CelebA (photo folder or TFDS): the photos are decoded once, batch by
      batch, into a uint8 cache file that is then memory-mapped, so memory
      holds at most the uint8 pages in use. With the cache off, a photo folder
      is read, decoded and cropped from the files as images are needed (memory
      does not grow with the number of photos), and a TFDS split is decoded
      into a temporary file that is deleted as soon as it is mapped.
    - The other data sets (IDX, `.npz`, digits, TFDS MNIST-style sets) are
      small: their arrays are held in memory (TFDS ones as uint8) and read
      through an `ArraySource`.

    The images, splits and order are those of `load`. Each split's
    `to_float_array()` gives `load`'s array.
    """
    splits = _check_splits(splits)
    result = _load(name, data_dir, image_size, crop, download, cache, verbose,
                   need_train="train" in splits or "val" in splits, stream=True)
    fields = {}
    for split in SPLITS:
        images = getattr(result, split)
        wanted = split in splits and images is not None
        fields[split] = sources.as_source(images) if wanted else None
        if not wanted:
            fields[f"{split}_labels"] = None
    return dataclasses.replace(result, **fields)


def _load(name, data_dir, image_size, crop, download, cache, verbose, need_train, stream=False):
    if name not in DATASETS:
        raise ValueError(
            f"Unknown dataset {name!r}; choose one of {sorted(DATASETS)}."
        )
    _check_image_size(image_size)
    if crop not in CROPS:
        raise ValueError(f"`crop` must be one of {CROPS}. Received: crop={crop!r}")
    if name == "digits":
        if data_dir is not None:
            raise ValueError(
                f"digits are bundled with scikit-learn: data_dir (--data-dir) does not apply. "
                f"Received: data_dir={data_dir!r}"
            )
        _check_native_size(name, (8, 8), image_size, "scikit-learn's digits")
        return _load_digits()
    if name == "celeb_a" and image_size is None:
        image_size = CELEBA_IMAGE_SIZE
    if data_dir is not None:
        data_dir = os.fspath(data_dir)
    if data_dir == "":
        raise ValueError(
            f"data_dir is empty: pass --data-dir naming a TFDS data_dir or a folder "
            f"with {_LOCAL_FORMATS[name]}."
        )

    if data_dir is None:  # TFDS's default data_dir
        builder = _tfds_builder(name, None)
        if not _is_prepared(builder):
            if not download:
                raise ValueError(_not_in_tfds(name, None))
            _download_and_prepare(name, builder)
        return _load_tfds(name, builder, image_size, crop, cache, verbose, stream)

    if not os.path.exists(data_dir):
        if not download:
            raise FileNotFoundError(f"Data folder not found: {data_dir}")
        builder = _tfds_builder(name, data_dir)  # TFDS downloads into a new folder
        _download_and_prepare(name, builder)
        return _load_tfds(name, builder, image_size, crop, cache, verbose, stream)
    if os.path.isfile(data_dir):
        if not data_dir.lower().endswith(".npz"):
            raise ValueError(
                f"{data_dir} is a file but not a .npz file; data_dir must be a folder "
                f"(a TFDS data_dir or one with {_LOCAL_FORMATS[name]}) or a .npz file."
            )
        return _load_npz(data_dir, name, image_size)

    # 1. A TFDS-prepared copy.
    builder = None
    if _may_hold_tfds(data_dir, name):
        builder = _tfds_builder(name, data_dir)
        if _is_prepared(builder):
            return _load_tfds(name, builder, image_size, crop, cache, verbose, stream)
    # 2. Local files.
    npz = _find_npz(data_dir, name)
    if npz is not None:
        return _load_npz(npz, name, image_size)
    if name in _IDX_NAMES and (_has_idx_files(data_dir) or not download):
        _check_native_size(name, (28, 28), image_size, data_dir)
        return _load_idx_dataset(data_dir, need_train=need_train)
    if name == "celeb_a":
        try:
            if stream:
                return _celeba_folder_sources(data_dir, image_size, crop, cache, verbose)
            return _load_celeba_folder(data_dir, image_size, crop, cache, verbose)
        except FileNotFoundError:
            if not download:
                raise
    # 3. A download into data_dir.
    if download:
        builder = builder or _tfds_builder(name, data_dir)
        _download_and_prepare(name, builder)
        return _load_tfds(name, builder, image_size, crop, cache, verbose, stream)
    raise FileNotFoundError(_not_in_tfds(name, data_dir) + f" ({data_dir} holds neither.)")


# --- command line ------------------------------------------------------------


def main(argv=None):
    """`python -m dmfa_tf.datasets {prepare-mnist,prepare,show} ...`"""
    parser = argparse.ArgumentParser(
        prog="python -m dmfa_tf.datasets",
        description="Prepare TFDS data sets offline, or load one and show its splits.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    mnist = commands.add_parser(
        "prepare-mnist",
        help="prepare TFDS's mnist offline from the four canonical IDX .gz files",
    )
    mnist.add_argument("--idx-dir", required=True, help="folder of the four MNIST .gz files")
    mnist.add_argument("--data-dir", required=True, help="TFDS data_dir to prepare into")
    generic = commands.add_parser(
        "prepare", help="prepare any TFDS builder offline from its canonical source files"
    )
    generic.add_argument("name", help="TFDS builder name, e.g. mnist")
    generic.add_argument("--source-dir", required=True, help="folder of the source files")
    generic.add_argument("--data-dir", required=True, help="TFDS data_dir to prepare into")
    show = commands.add_parser("show", help="load a data set and print its splits")
    show.add_argument("name", choices=sorted(DATASETS))
    show.add_argument("--data-dir", default=None)
    show.add_argument("--image-size", type=int, default=None)
    show.add_argument("--crop", choices=CROPS, default="paper")
    show.add_argument("--download", action="store_true")
    show.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    args = parser.parse_args(argv)
    try:
        if args.command in ("prepare-mnist", "prepare"):
            name = "mnist" if args.command == "prepare-mnist" else args.name
            source = args.idx_dir if args.command == "prepare-mnist" else args.source_dir
            builder = prepare_tfds(name, source, args.data_dir)
            print(
                f"{name} {builder.info.version} is prepared in {args.data_dir}: "
                + ", ".join(f"{k} {v.num_examples:,}" for k, v in builder.info.splits.items())
                + f". Use it with --dataset={name} --data-dir={args.data_dir}"
            )
        else:
            splits = load(
                args.name,
                data_dir=args.data_dir,
                image_size=args.image_size,
                crop=args.crop,
                download=args.download,
                cache=not args.no_cache,
            )
            for split in ("train", "val", "test"):
                images = getattr(splits, split)
                print(f"{split:5s} {images.shape} {images.dtype} mean {images.mean():.4f}")
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
