"""Reading data sets that tensorflow-datasets (TFDS) prepared.

`_tfds_builder` finds the builder for a TFDS `data_dir` (or one data set's
folder, or one version folder); `_load_tfds` reads its splits into `Splits`:
fixed-size data sets as arrays, CelebA's photos cropped through the decode
cache (`dmfa_tf.data.cache`). A split without a validation split has the last
`min(5000, n // 10)` training images held out.

TFDS stores a split's examples in a hashed order (`tfds_record_order`); the
reader puts MNIST / Fashion-MNIST back in file order and CIFAR-10 / SVHN in
the order of their `id` feature, so TFDS and the IDX files give identical
splits.
"""

import contextlib
import hashlib
import logging
import os

import numpy as np

from dmfa_tf.data import sources
from dmfa_tf.data.cache import _cached
from dmfa_tf.data.common import (
    _LOCAL_FORMATS,
    Splits,
    _check_native_size,
    _hold_out,
    _progress,
    _to_float,
)

__all__ = ["tfds_record_order"]

# TFDS builders whose example keys are the positions in the source files.
_TFDS_INDEX_KEYED = ("mnist", "fashion_mnist")


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
            " (prepare one offline with `python -m dmfa_tf.data prepare-mnist "
            "--idx-dir DIR --data-dir DIR`)"
        )
    fixes.append(f"or a folder with {_LOCAL_FORMATS[name]}")
    fixes.append("or add --download (download=True) on a machine with internet access")
    return f"{name} is not prepared in {where} and download=False. Fix: " + ", ".join(fixes) + "."


def tfds_record_order(split, count):
    """The keys `0, ..., count - 1` in the order TFDS stores them on disk.

    TFDS's writer sorts a split's examples by a stable 128-bit MD5 of the
    split name then the key: `md5(split.encode("utf-8") + str(key).encode(
    "utf-8"))`, compared as a big-endian integer (the split name salts the
    hash, so that equal keys of two splits are not stored alike). TFDS keeps
    this order stable (changing it would reorder every prepared data set), so
    it is computed here with `hashlib` alone. Comparing the 16-byte digests
    compares the integers.

    Returns:
        an int64 array: `order[j]` is the key of the `j`-th example on disk.
    """
    salted = hashlib.md5(split.encode("utf-8"))

    def digest(key):
        md5 = salted.copy()
        md5.update(str(key).encode("utf-8"))
        return md5.digest()

    return np.array(sorted(range(count), key=digest), np.int64)


def _restore_order(name, builder, split, images, labels, ids):
    """Puts TFDS's hashed record order back into the source order, where known."""
    count = len(images)
    if ids is not None:
        order = np.argsort(ids, kind="stable")
    elif name in _TFDS_INDEX_KEYED and count == builder.info.splits[split].num_examples:
        # These builders' keys are the positions in the IDX files.
        order = np.argsort(tfds_record_order(split, count))
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
