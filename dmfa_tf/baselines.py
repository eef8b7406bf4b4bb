"""Baselines, scored by the same code and on the same masks as the DMFA networks.

Two kinds of baseline:

- A *mixture* baseline is a callable `baseline({"image", "mask"}) -> {"logits",
  "loc", "factors", "diag"}`, like a DMFA network (`DiagonalGaussian`).
- A *predictor* baseline has `predict_missing(images, mask)`: NumPy in, NumPy
  out, for models whose conditional is not a mixture of factor analysers
  (`FullGaussian`, `KNNImputation`). `dmfa_tf.evaluation.score` scores both.

`predict_missing(images, mask)` takes `[B, N]` float64 images and `[B, N]`
masks (1 observed, 0 missing, -1 absent) and returns a dict of `[B, N]` or
`[B]` float64 arrays: `imputation` (always; observed values kept), and, for a
baseline with a density, `log_prob` (`log p(x_missing | x_observed)`), `pit`
(each missing coordinate's value under its 1-D conditional CDF) and
`mahalanobis` (the squared Mahalanobis distance of the missing block).
"""

import contextlib
import math

import numpy as np
import scipy.linalg
import scipy.special
import tensorflow as tf

from dmfa_tf import sources

__all__ = [
    "DEFAULT_REGULARIZATION",
    "KNN_NEIGHBORS",
    "DiagonalGaussian",
    "FullGaussian",
    "KNNImputation",
]

# Added to the diagonal of `FullGaussian`'s covariance. It bounds every
# conditional variance from below (the Schur complement is monotone), like the
# variance floor of the DMFA heads and of `DiagonalGaussian` (1e-4).
DEFAULT_REGULARIZATION = 1e-4
KNN_NEIGHBORS = 5  # scikit-learn's KNNImputer default

_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)
_OBSERVED, _MISSING, _ABSENT = 1, 0, -1


def _one_blas_thread():
    """One BLAS thread (where `threadpoolctl` is installed). Between
    TensorFlow's batches, its spinning threads make multi-threaded BLAS calls
    on small matrices up to a hundred times slower (measured: a 196 x 196
    Cholesky, 0.5 ms alone, took 40-110 ms after TensorFlow had run)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn installs it
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _check_images(images, minimum):
    images = np.asarray(images)
    if images.ndim != 4 or len(images) < minimum:
        raise ValueError(
            f"Need at least {minimum} images of shape [n, H, W, C]. "
            f"Received: shape={images.shape}"
        )
    return images


def _check_batch(images, mask, size):
    images = np.asarray(images, np.float64)
    mask = np.asarray(mask)
    if images.ndim != 2 or images.shape[1] != size or mask.shape != images.shape:
        raise ValueError(
            f"`images` and `mask` must both be [B, {size}]. "
            f"Received: images {images.shape}, mask {mask.shape}"
        )
    return images, mask


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


class FullGaussian:
    """One full-covariance Gaussian over whole images, and its exact conditional.

    Fitted to complete training images: the float64 maximum likelihood mean
    `mu` and covariance `S`, plus `regularization * I`, so that constant pixels
    (MNIST's borders) keep a positive variance. The precision
    `Lambda = (S + regularization * I)^-1` is computed once, by Cholesky.

    For an image with observed coordinates `o`, missing (scored) coordinates
    `h` and absent coordinates `a` (neither given nor scored), the hidden block
    `u = (a, h)` given `x_o` is Gaussian with precision `Lambda_uu` and mean

    ```none
    m_u = mu_u - Lambda_uu^-1 Lambda_uo (x_o - mu_o)
    ```

    The absent coordinates are then marginalised out: with the lower Cholesky
    factor `R` of `Lambda_uu` in the order `(a, h)`, its bottom-right block
    `R_hh` satisfies `R_hh R_hh^T = Lambda_hh - Lambda_ha Lambda_aa^-1 Lambda_ah`,
    the precision of `x_h` given `x_o` alone (a Schur complement). So one
    `|u| x |u|` Cholesky per image gives the density of `x_h`,

    ```none
    log p(x_h | x_o) = sum log diag(R_hh) - |h|/2 log(2 pi) - |R_hh^T (x_h - m_h)|^2 / 2
    ```

    the imputation `m_h` (the conditional mean, also filled in at absent
    coordinates), the per-coordinate conditional variances (the diagonal of
    `(R_hh R_hh^T)^-1`) and the squared Mahalanobis distance
    `|R_hh^T (x_h - m_h)|^2`. No `N x N` work happens per image.
    """

    def __init__(self, mean, covariance, image_shape, regularization=0.0):
        """Builds the baseline.

        Args:
            mean: `[N]` mean.
            covariance: `[N, N]` covariance, without the regularisation.
            image_shape: `(H, W, C)` with `H * W * C = N`.
            regularization: added to the covariance's diagonal (>= 0); the
                result must be positive definite.

        Raises:
            ValueError: shapes that do not fit, a negative regularisation or a
                covariance that is not positive definite.
        """
        self.mean = np.asarray(mean, np.float64).reshape(-1)
        covariance = np.asarray(covariance, np.float64)
        size = self.mean.size
        self._image_shape = tuple(int(d) for d in image_shape)
        if covariance.shape != (size, size) or int(np.prod(self._image_shape)) != size:
            raise ValueError(
                f"Need a [N] mean, a [N, N] covariance and an image shape with N values. "
                f"Received: mean {self.mean.shape}, covariance {covariance.shape}, "
                f"image_shape {self._image_shape}"
            )
        if not regularization >= 0:
            raise ValueError(f"`regularization` must be >= 0. Received: {regularization!r}")
        self.regularization = float(regularization)
        self.covariance = covariance + self.regularization * np.eye(size)
        try:
            chol = scipy.linalg.cholesky(self.covariance, lower=True)
        except np.linalg.LinAlgError:
            raise ValueError(
                "The covariance plus regularization * I is not positive definite; "
                f"use a regularization > 0 (received {self.regularization})."
            ) from None
        precision = scipy.linalg.cho_solve((chol, True), np.eye(size))
        self.precision = 0.5 * (precision + precision.T)  # [N, N]

    @classmethod
    def fit(cls, images, regularization=DEFAULT_REGULARIZATION, batch_size=4096):
        """Fits to `[n, H, W, C]` complete images, in float64 and in batches."""
        images = _check_images(images, 2)
        flat = images.reshape(len(images), -1)
        mean = np.zeros(flat.shape[1])
        for start in range(0, len(flat), batch_size):
            mean += flat[start : start + batch_size].sum(0, dtype=np.float64)
        mean /= len(flat)
        covariance = np.zeros((flat.shape[1], flat.shape[1]))
        for start in range(0, len(flat), batch_size):
            centred = flat[start : start + batch_size].astype(np.float64) - mean
            covariance += centred.T @ centred
        covariance /= len(flat)
        return cls(mean, covariance, images.shape[1:], regularization)

    @property
    def image_shape(self):
        """`(H, W, C)` of the images the baseline was fitted to."""
        return self._image_shape

    def conditional(self, image, mask):
        """The Gaussian of one image's missing coordinates given its observed ones.

        Args:
            image: `[N]` values; only observed (mask 1) coordinates are read.
            mask: `[N]` 1 observed, 0 missing, -1 absent (marginalised out).

        Returns:
            `(index, mean, chol)`: the missing coordinates' indices `[m]`
            (ascending), their conditional mean `[m]` and the lower Cholesky
            factor `[m, m]` of their conditional precision.
        """
        x, mask = _check_batch(np.reshape(image, (1, -1)), np.reshape(mask, (1, -1)), self.mean.size)
        _, missing, mean, chol, _ = self._conditional(x[0], mask[0])
        return missing, mean, chol

    def _projected(self, images, mask):
        """`Lambda (x - mu)` with `x - mu` zeroed outside the observed
        coordinates: `[B, N]`, whose entries at `u` are `Lambda_uo (x_o - mu_o)`."""
        residual = np.where(mask == _OBSERVED, images - self.mean, 0.0)  # [B, N]
        return residual @ self.precision  # the precision is symmetric

    def _conditional(self, x, mask, projected=None):
        absent = np.flatnonzero(mask == _ABSENT)
        missing = np.flatnonzero(mask == _MISSING)
        hidden = np.concatenate([absent, missing])  # u = (a, h)
        if projected is None:
            projected = self._projected(x[None], mask[None])[0]
        block = self.precision[np.ix_(hidden, hidden)]  # Lambda_uu
        chol = scipy.linalg.cholesky(block, lower=True, check_finite=False)
        shift = scipy.linalg.cho_solve((chol, True), projected[hidden], check_finite=False)
        hidden_mean = self.mean[hidden] - shift  # [u]
        skip = len(absent)
        return hidden, missing, hidden_mean[skip:], chol[skip:, skip:], hidden_mean

    has_density = True

    def predict_missing(self, images, mask, calibration_images=None):
        """`imputation`, `log_prob`, `pit` and `mahalanobis` of a batch (module
        docstring). `calibration_images` (default `images`): the values at
        which `pit` and `mahalanobis` are measured, e.g. dequantized ones."""
        images, mask = _check_batch(images, mask, self.mean.size)
        if calibration_images is None:
            calibration_images = images
        else:
            calibration_images, _ = _check_batch(calibration_images, mask, self.mean.size)
        with _one_blas_thread():
            return self._predict_missing(images, mask, calibration_images)

    def _predict_missing(self, images, mask, calibration_images):
        imputation = images.copy()
        log_prob = np.zeros(len(images))
        mahalanobis = np.zeros(len(images))
        pit = np.full(images.shape, np.nan)
        projected = self._projected(images, mask)  # [B, N]: one matrix product
        for b in range(len(images)):
            if not np.any(mask[b] != _OBSERVED):
                continue
            hidden, missing, mean, chol, hidden_mean = self._conditional(
                images[b], mask[b], projected[b]
            )
            imputation[b, hidden] = hidden_mean
            if not len(missing):
                continue
            residual = images[b, missing] - mean
            whitened = chol.T @ residual  # |.|^2 = r^T Q r with Q = chol chol^T
            log_prob[b] = (
                np.sum(np.log(np.diag(chol)))
                - _HALF_LOG_TWO_PI * len(missing)
                - 0.5 * (whitened @ whitened)
            )
            residual = calibration_images[b, missing] - mean
            whitened = chol.T @ residual
            mahalanobis[b] = whitened @ whitened
            inverse = scipy.linalg.solve_triangular(
                chol, np.eye(len(missing)), lower=True, check_finite=False
            )  # chol^-1; Q^-1 = chol^-T chol^-1
            variance = np.sum(np.square(inverse), axis=0)
            pit[b, missing] = scipy.special.ndtr(residual / np.sqrt(variance))
        return {
            "imputation": imputation,
            "log_prob": log_prob,
            "pit": pit,
            "mahalanobis": mahalanobis,
        }


class KNNImputation:
    """k-nearest-neighbour imputation: scikit-learn's `KNNImputer(n_neighbors=5)`
    fitted on complete training images, computed in batches.

    A test image's missing and absent coordinates are unknown (NaN for
    `KNNImputer`). Its neighbours are the `k` training images nearest in the
    nan-Euclidean distance, `sqrt(N / |o| * sum_o (x_o - y_o)^2)` over its
    observed coordinates `o`, and each unknown coordinate is the (uniform) mean
    of theirs. The training images are complete, so the neighbours are the same
    for every coordinate of an image, and the scale `N / |o|` does not change
    the ranking: this is `KNNImputer`'s result, found with two matrix products
    per batch instead of its per-column loop (which takes about 0.4 s per MNIST
    test image against 55,000 training images on 2 CPU cores). Candidates are
    ranked in float32 (the `candidates` nearest), then re-ranked exactly in
    float64. An image with no observed coordinate gets the training mean, as
    `KNNImputer` does. There is no density: `predict_missing` returns the
    imputation only.
    """

    def __init__(self, train, image_shape, neighbors=KNN_NEIGHBORS, candidates=64, chunk=8192):
        """Builds the imputer.

        Args:
            train: `[T, N]` complete training images (no NaN).
            image_shape: `(H, W, C)` with `H * W * C = N`.
            neighbors: `k` (5, `KNNImputer`'s default), at most `T`.
            candidates: float32 candidates per image re-ranked in float64.
            chunk: training rows per matrix product (bounds the memory).
        """
        train = np.asarray(train, np.float32)
        self._image_shape = tuple(int(d) for d in image_shape)
        if train.ndim != 2 or train.shape[1] != int(np.prod(self._image_shape)):
            raise ValueError(
                f"`train` must be [T, N] with N = {int(np.prod(self._image_shape))}. "
                f"Received: shape={train.shape}"
            )
        if not np.all(np.isfinite(train)):
            raise ValueError("The KNN baseline's training images must be complete (no NaN or inf).")
        if not 1 <= neighbors <= len(train):
            raise ValueError(
                f"The KNN baseline needs at least `neighbors` = {neighbors} training "
                f"images; received {len(train)}."
            )
        self.train = train  # [T, N]
        self.neighbors = int(neighbors)
        self.candidates = int(max(candidates, neighbors))
        self.chunk = int(chunk)
        self.mean = train.mean(0, dtype=np.float64)  # [N]: for images with nothing observed
        self._squares = np.square(train)  # [T, N]

    @classmethod
    def fit(cls, images, neighbors=KNN_NEIGHBORS, max_rows=None):
        """Keeps `[n, H, W, C]` training images (the first `max_rows` if given)."""
        images = _check_images(images, 1)
        if max_rows is not None:
            images = images[:max_rows]
        return cls(images.reshape(len(images), -1), images.shape[1:], neighbors)

    @property
    def image_shape(self):
        """`(H, W, C)` of the training images."""
        return self._image_shape

    def neighbours(self, images, mask):
        """`[B, k]` indices of each image's nearest training images (observed
        coordinates only), nearest first; -1 where nothing is observed."""
        images, mask = _check_batch(images, mask, self.train.shape[1])
        observed = mask == _OBSERVED
        given = np.where(observed, images, 0.0)
        # sum_o (x_o - y_o)^2 = |x_o|^2 - 2 x_o . y + sum_o y^2; the first term
        # is the same for every training image.
        left = np.concatenate([-2.0 * given, observed], axis=1).astype(np.float32)  # [B, 2N]
        count = min(self.candidates, len(self.train))
        keys = np.empty((len(images), len(self.train)), np.float32)
        for start in range(0, len(self.train), self.chunk):
            stop = start + self.chunk
            keys[:, start:stop] = (
                left[:, : given.shape[1]] @ self.train[start:stop].T
                + left[:, given.shape[1] :] @ self._squares[start:stop].T
            )
        if count < len(self.train):
            candidates = np.argpartition(keys, count - 1, axis=1)[:, :count]  # [B, C]
        else:
            candidates = np.broadcast_to(np.arange(len(self.train)), keys.shape)
        exact = np.empty(candidates.shape)
        for b in range(len(images)):  # float64, as KNNImputer ranks them
            donors = self.train[candidates[b]][:, observed[b]].astype(np.float64)
            exact[b] = np.sum(np.square(donors - images[b, observed[b]]), axis=1)
        order = np.argsort(exact, axis=1, kind="stable")[:, : self.neighbors]
        nearest = np.take_along_axis(candidates, order, axis=1)
        nearest[~observed.any(axis=1)] = -1
        return nearest

    def predict_missing(self, images, mask):
        """`{"imputation": [B, N]}`: unknown coordinates filled, observed kept."""
        images, mask = _check_batch(images, mask, self.train.shape[1])
        nearest = self.neighbours(images, mask)
        fill = self.train[np.maximum(nearest, 0)].mean(axis=1, dtype=np.float64)  # [B, N]
        fill[nearest[:, 0] < 0] = self.mean
        return {"imputation": np.where(mask == _OBSERVED, images, fill)}
