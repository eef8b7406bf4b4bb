"""`FullGaussian`: one full-covariance Gaussian over whole images and its exact
conditional, a *predictor* baseline (see `dmfa_tf.baselines`)."""

import numpy as np
import scipy.linalg
import scipy.special

from dmfa_tf.baselines._common import (
    _HALF_LOG_TWO_PI,
    _check_batch,
    _check_images,
    _one_blas_thread,
)
from dmfa_tf.core.checks import ABSENT, MISSING, OBSERVED

__all__ = ["DEFAULT_REGULARIZATION", "FullGaussian"]

# Added to the diagonal of `FullGaussian`'s covariance. It bounds every
# conditional variance from below (the Schur complement is monotone), like the
# variance floor of the DMFA heads and of `DiagonalGaussian` (1e-4).
DEFAULT_REGULARIZATION = 1e-4


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
        residual = np.where(mask == OBSERVED, images - self.mean, 0.0)  # [B, N]
        return residual @ self.precision  # the precision is symmetric

    def _conditional(self, x, mask, projected=None):
        absent = np.flatnonzero(mask == ABSENT)
        missing = np.flatnonzero(mask == MISSING)
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
        """`imputation` (also as `mean`: one Gaussian's conditional mean),
        `log_prob`, `pit` and `mahalanobis` of a batch (module docstring).
        `calibration_images` (default `images`): the values at which `pit` and
        `mahalanobis` are measured, e.g. dequantized ones."""
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
            if not np.any(mask[b] != OBSERVED):
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
            "mean": imputation,
            "log_prob": log_prob,
            "pit": pit,
            "mahalanobis": mahalanobis,
        }
