"""What every image loader shares: the data set names, the `Splits` result,
the validation hold-out, and the argument checks.

NumPy only (Keras for a progress bar when one is shown).
"""

import dataclasses

import numpy as np

__all__ = ["CROPS", "DATASETS", "SPLITS", "Splits", "validation_size"]

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
SPLITS = ("train", "val", "test")
VAL_HOLDOUT = 5000  # validation images held out of a training split without one
_PROGRESS_THRESHOLD = 1000  # progress bar for decodes of more images than this
# What `data_dir` may hold instead of a TFDS copy, for the error messages.
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


def _check_splits(splits):
    """`splits` (a name or names) as a tuple of names from `SPLITS`."""
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    unknown = [split for split in splits if split not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"`splits` must name some of {SPLITS}. Received: splits={splits!r}")
    return splits


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
