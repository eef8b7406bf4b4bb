"""CelebA from a folder of photos: the partition file, the split, the decode.

CelebA photos (178x218 aligned faces) become `S x S` images (`image_size`,
default 32):

- `crop="paper"` (the DMFA paper's code): resize to `round(1.875 S)` square,
  aspect ratio not kept (60x60 for S = 32, 120x120 for S = 64), then take the
  centre `S x S`.
- `crop="aspect"`: take the photo's centre square (178x178), resize it to `S x S`.

Resizing is bilinear with antialiasing, rounded to 8 bits as image libraries
do (`sources.square_photo`), so the images hold multiples of 1/255. The splits
follow CelebA's `list_eval_partition.txt` when it is found, else a seeded
80/10/10 split. Decoded photos are cached (`dmfa_tf.data.cache`).
"""

import hashlib
import os
import re
import warnings

import numpy as np

from dmfa_tf.data import sources
from dmfa_tf.data.cache import _cache_folder, _cached
from dmfa_tf.data.common import Splits, _to_float

__all__ = ["IMAGE_EXTENSIONS", "PARTITION_FILES", "read_partition"]

PAPER_RESIZE_RATIO = sources.PAPER_RESIZE_RATIO  # 60 / 32: resize to round(1.875 S), crop S
SEEDED_VAL_FRACTION = 0.1  # image folders without a partition file:
SEEDED_TEST_FRACTION = 0.1  # 80% train, 10% validation, 10% test, seeded
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
PARTITION_FILES = ("list_eval_partition.txt", "list_eval_partition.csv")


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

