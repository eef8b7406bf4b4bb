"""`DiagonalGaussian`: independent Gaussians per pixel, a *mixture* baseline
(callable like a DMFA network; see `dmfa_tf.baselines`)."""

import numpy as np
import tensorflow as tf

from dmfa_tf.baselines._common import _check_images
from dmfa_tf.data import sources

__all__ = ["DiagonalGaussian"]


class DiagonalGaussian:
    """Independent Gaussians per coordinate, fitted to complete training images.

    The missing pixels' density ignores the observed ones: the reference point
    any conditional model has to beat. Mean and variance are the maximum
    likelihood estimates, the variance floored at `variance_floor` (constant
    pixels, such as image borders, would otherwise have variance 0).
    """

    def __init__(self, mean, variance):
        self.mean = np.asarray(mean, np.float32)  # [H, W, C]
        self.variance = np.asarray(variance, np.float32)  # [H, W, C]

    @classmethod
    def fit(cls, images, variance_floor=1e-4):
        """Fits to `[n, H, W, C]` images. NaN pixels (absent: incomplete training
        data) are left out of their pixel's mean and variance; a pixel absent
        from every image gets mean 0.5 and variance 1/12 (uniform on [0, 1])."""
        if isinstance(images, sources.ImageSource):
            if images.dtype == tf.uint8 and len(images) >= 2:
                return cls._fit_source(images, variance_floor)
            images = images.to_float_array()
        images = np.asarray(_check_images(images, 2), np.float64)
        if np.isnan(images).any():
            present = (~np.isnan(images)).sum(0)
            total = np.nansum(images, axis=0)
            mean = np.where(present > 0, total / np.maximum(present, 1), 0.5)
            squares = np.nansum(np.square(images - mean), axis=0)
            variance = np.where(present > 0, squares / np.maximum(present, 1), 1.0 / 12.0)
            return cls(mean, np.maximum(variance, variance_floor))
        return cls(images.mean(0), np.maximum(images.var(0), variance_floor))

    @classmethod
    def _fit_source(cls, source, variance_floor, batch_size=4096):
        """`fit` on 8-bit images read batch by batch (two passes, float64)."""
        def batches():
            return source.images().map(sources.to_float).batch(batch_size).as_numpy_iterator()

        total = np.zeros(source.image_shape)
        for batch in batches():
            total += batch.sum(0, dtype=np.float64)
        mean = total / len(source)
        squares = np.zeros(source.image_shape)
        for batch in batches():
            squares += np.square(batch.astype(np.float64) - mean).sum(0)
        return cls(mean, np.maximum(squares / len(source), variance_floor))

    @property
    def image_shape(self):
        """`(H, W, C)` of the images the baseline was fitted to."""
        return tuple(int(v) for v in self.mean.shape)

    def __call__(self, inputs, training=False):
        batch = tf.shape(inputs["image"])[0]
        n = self.mean.size
        loc = tf.tile(tf.reshape(tf.constant(self.mean), [1, 1, n]), [batch, 1, 1])
        diag = tf.tile(tf.reshape(tf.constant(self.variance), [1, 1, n]), [batch, 1, 1])
        return {
            "logits": tf.zeros([batch, 1]),
            "loc": loc,  # [B, 1, N]
            "factors": tf.zeros([batch, 1, n, 1]),  # [B, 1, N, 1]
            "diag": diag,  # [B, 1, N]
        }
