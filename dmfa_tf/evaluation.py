"""Batched scoring of a model on a test set with seeded masks."""

import numpy as np
import keras
import tensorflow as tf

from dmfa_tf import masks as masks_lib
from dmfa_tf.losses import negative_log_likelihood, squared_error

__all__ = ["score", "summarize"]


def score(model, images, mask, seed=0, batch_size=256, verbose=0):
    """Per-image NLL and squared error of `model` on `images`.

    Args:
        model: a DMFA model, or any callable from `{"image", "mask"}` to the
            mixture parameters (the baselines).
        images: `[n, H, W, C]` float images in [0, 1].
        mask: a mask spec or `MaskGenerator`; image `i` gets the mask seeded
            `(seed, i)`, so every model scored with the same seed sees the same
            masks.
        seed: mask seed.
        batch_size: images per batch.
        verbose: 1 shows a progress bar.

    Returns:
        dict of `[n]` float64 arrays: `nll` (nats) and `squared_error`, both
        summed over the missing pixels of each image.
    """
    images = np.asarray(images, np.float32)
    data = masks_lib.with_masks(tf.data.Dataset.from_tensor_slices(images), mask, seed)
    data = data.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    @tf.function(reduce_retracing=True)
    def step(batch):
        params = model(batch, training=False)
        return (
            negative_log_likelihood(params, batch["image"], batch["mask"]),
            squared_error(params, batch["image"], batch["mask"]),
        )

    steps = -(-len(images) // batch_size)
    progress = keras.utils.Progbar(steps, verbose=verbose, unit_name="batch")
    nll, error = [], []
    for i, batch in enumerate(data):
        batch_nll, batch_error = step(batch)
        nll.append(batch_nll.numpy())
        error.append(batch_error.numpy())
        progress.update(i + 1)
    return {
        "nll": np.concatenate(nll).astype(np.float64),
        "squared_error": np.concatenate(error).astype(np.float64),
    }


def summarize(values):
    """Mean, standard deviation, median, min and max of per-image values."""
    values = np.asarray(values, np.float64)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "median": float(np.median(values)),
        "min": float(values.min()),
        "max": float(values.max()),
        "count": int(values.size),
    }
