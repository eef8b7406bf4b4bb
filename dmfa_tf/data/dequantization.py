"""Dequantization: the continuous values behind 8-bit pixels.

Pixels stored with 8 bits take the values `k / 255`. A continuous density on
such data can be made arbitrarily high by shrinking its variance onto the
levels (Theis, van den Oord and Bethge, "A note on the evaluation of generative
models", ICLR 2016); only the variance floor stops it, and the model then
reports intervals that cover a background pixel of MNIST every time. Its
uncertainty cannot be calibrated.

Dequantization replaces a value `x` on a grid of step `q` by `x + (v - 1/2) q`
with `v ~ U(0, 1)`: a continuous variable whose density is the probability of
`x`'s level spread evenly over the level's bin (and whose mean is `x`).

- Training (`dequantize_targets`, `train.py --dequantize`): the network sees
  the stored pixels, and its density is fitted to the dequantized values of the
  missing ones.
- Calibration (`dmfa_tf.evaluation`): the PIT, the interval coverages and the
  Mahalanobis distance are measured at the dequantized values (seeded per
  image), the variable the density describes. NLL and MSE stay on the stored
  values, as in the paper.

`quantization_step(images)` finds `q`: `1/255` for 8-bit data (MNIST,
Fashion-MNIST, and CelebA as `dmfa_tf.data.load` loads it: resized, then rounded
to 8 bits), 0 (nothing to do) for anything else, such as float arrays of an
`.npz` file.
"""

import numpy as np
import tensorflow as tf

from dmfa_tf.data import sources

__all__ = ["LEVELS", "dequantize_targets", "jitter", "jitter_rows", "quantization_step"]

LEVELS = 255  # 8-bit pixels in [0, 1]: k / 255


def quantization_step(images, tolerance=1e-4):
    """`1 / 255` when every finite value of `images` is a multiple of it (8-bit
    data scaled to [0, 1]), else 0.0. `images` may be a `sources.ImageSource`:
    uint8 ones are 8-bit by their type."""
    if isinstance(images, sources.ImageSource):
        if images.dtype == tf.uint8:
            return 1.0 / LEVELS
        images = images.to_array()
    images = np.asarray(images)
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"`images` must be floats in [0, 1]. Received dtype {images.dtype}.")
    flat = images.reshape(len(images), -1) if images.ndim else images.reshape(1, 1)
    seen = False
    for start in range(0, len(flat), 4096):  # in chunks: no float64 copy of it all
        values = flat[start : start + 4096].astype(np.float64)
        values = values[np.isfinite(values)]
        if values.size:
            seen = True
            scaled = values * LEVELS
            if np.max(np.abs(scaled - np.round(scaled))) > tolerance:
                return 0.0
    return 1.0 / LEVELS if seen else 0.0


def jitter(shape, seed):
    """`v - 1/2` for `v ~ U(0, 1)`, float32 of `shape` `[n, ...]`: row `i` is
    seeded `(seed, i)`, so an image gets the same jitter whatever the batch or
    the number of images scored."""
    shape = tuple(int(s) for s in shape)
    return jitter_rows(range(shape[0]), shape[1:], seed)


def jitter_rows(rows, shape, seed):
    """The rows `rows` of `jitter([n, *shape], seed)`: `[len(rows), *shape]`."""
    rows = [int(row) for row in np.asarray(rows).reshape(-1)]
    out = np.empty((len(rows),) + tuple(int(s) for s in shape), np.float32)
    for j, i in enumerate(rows):
        out[j] = np.random.default_rng([int(seed), i, 0x6A17]).random(out.shape[1:], np.float32)
    return out - 0.5


def dequantize_targets(dataset, step, seed):
    """Training pairs with dequantized targets.

    Args:
        dataset: a batched `tf.data.Dataset` of `{"image", "mask"}` dicts.
        step: the quantization step `q` (`quantization_step`); 0 returns
            `dataset` as it is.
        seed: int; batch `b` gets the jitter seeded `(seed, b)`.

    Returns:
        A data set of `({"image", "mask"}, target)` pairs, `target = image +
        (v - 1/2) q`, `v ~ U(0, 1)` per pixel: the network's input is
        unchanged and `DMFAModel` scores its density at `target`.
    """
    if not step:
        return dataset
    step = float(step)

    def pair(index, batch):
        image = batch["image"]
        v = tf.random.stateless_uniform(
            tf.shape(image), seed=tf.stack([tf.constant(int(seed), tf.int64), index]),
            dtype=image.dtype,
        )
        return batch, image + (v - 0.5) * step

    return dataset.enumerate().map(pair, num_parallel_calls=tf.data.AUTOTUNE)
