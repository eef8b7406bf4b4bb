"""Baselines that return DMFA-form parameters, so they are scored by the same code.

A baseline is a callable `baseline({"image", "mask"}) -> {"logits", "loc",
"factors", "diag"}`, like a DMFA network.
"""

import numpy as np
import tensorflow as tf

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
        """Fits to `[n, H, W, C]` images."""
        images = np.asarray(images, np.float64)
        if images.ndim != 4 or len(images) < 2:
            raise ValueError(
                f"Need at least 2 images of shape [n, H, W, C]. Received: shape={images.shape}"
            )
        return cls(images.mean(0), np.maximum(images.var(0), variance_floor))

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
