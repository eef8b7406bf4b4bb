"""Data sets stored as a `.npz` file (`numpy.savez`).

The archive holds `x_train`, `x_test` and optionally `y_train`, `y_test` and a
validation split `x_val` / `y_val` (or `valid`, `validation`). Images are
`[n, H, W]` or `[n, H, W, C]`, uint8 in [0, 255] or floats in [0, 1]; only
`x_train` may hold NaN (incomplete training images). Without a validation
split the last `min(5000, n // 10)` training images are held out.
"""

import os
import zipfile
import zlib

import numpy as np

from dmfa_tf.data.common import Splits, _check_native_size, _hold_out, _to_float


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
