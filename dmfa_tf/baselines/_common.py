"""Helpers shared by the image baselines: argument checks and the BLAS thread
limit."""

import contextlib
import math

import numpy as np

_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


def _one_blas_thread(user_api="blas"):
    """One BLAS thread (where `threadpoolctl` is installed). Between
    TensorFlow's batches, its spinning threads make multi-threaded BLAS calls
    on small matrices up to a hundred times slower (measured: a 196 x 196
    Cholesky, 0.5 ms alone, took 40-110 ms after TensorFlow had run); the many
    small factorisations of the MFA's per-cluster PCA likewise run hundreds of
    times slower with threads on a busy machine. `user_api=None` limits
    OpenMP too (scikit-learn's `KMeans`)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn installs it
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api=user_api)


def _check_images(images, minimum):
    """`images` as an array if it is `[n, H, W, C]` with `n >= minimum`."""
    images = np.asarray(images)
    if images.ndim != 4 or len(images) < minimum:
        raise ValueError(
            f"Need at least {minimum} images of shape [n, H, W, C]. "
            f"Received: shape={images.shape}"
        )
    return images


def _check_batch(images, mask, size):
    """float64 `[B, size]` images and the mask, both checked to be `[B, size]`."""
    images = np.asarray(images, np.float64)
    mask = np.asarray(mask)
    if images.ndim != 2 or images.shape[1] != size or mask.shape != images.shape:
        raise ValueError(
            f"`images` and `mask` must both be [B, {size}]. "
            f"Received: images {images.shape}, mask {mask.shape}"
        )
    return images, mask
