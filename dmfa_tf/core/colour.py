"""Colour bases: a mixture over each pixel's colour values in a rotated basis.

A factor model's diagonal `d` makes a pixel's colour values independent given
the factors. On photos the three values of a pixel are nearly equal, so a
diagonal in RGB must give each of them the pixel's whole unexplained
brightness, while most of a pixel's variance lies along `(1, 1, 1)`. A
`MaskedFactorMixture` with a `basis` `Q` (`[C, C]`, orthonormal rows) holds the
parameters of `y = Q x`, pixel by pixel: its diagonal gives brightness and the
colour differences their own variances, so in RGB its covariance is
`Q^T (A A^T + diag(d)) Q`, low rank plus a `C x C` block per pixel.

Because `Q` is orthogonal and a pixel's channels are missing together, the
change of variables has Jacobian 1: `log p(x_M) = log p(y_M)` exactly, and the
squared Mahalanobis distance is the same in both bases. Means, imputations and
samples are rotated back (`x = Q^T y`); each coordinate's marginal variance is
`sum_l (Q^T a_l)_c^2 + sum_j Q_jc^2 d_j` (`coordinate_marginals`).

`benchmarks/colour_basis.py` measures the effect on CelebA: a diagonal-noise
MFA gains 448 nats per 16x16 hole in the opponent basis.
"""

import numpy as np
import tensorflow as tf

__all__ = [
    "BASES",
    "assert_pixelwise_mask",
    "basis_matrix",
    "channel_statistics",
    "coordinate_marginals",
    "from_basis",
    "pixelwise_mask",
    "to_basis",
]

# Rows: brightness, red - green, (red + green) - 2 blue; orthonormal.
_OPPONENT = np.array([[1, 1, 1], [1, -1, 0], [1, 1, -2]], np.float64)
_OPPONENT = _OPPONENT / np.linalg.norm(_OPPONENT, axis=1, keepdims=True)

BASES = ("rgb", "opponent")


def basis_matrix(name, channels):
    """The `[C, C]` float64 matrix of a named basis, or None for `"rgb"` (the
    identity: no rotation).

    Raises:
        ValueError: an unknown name, or `"opponent"` for images without 3
            channels.
    """
    if name in (None, "rgb"):
        return None
    if name != "opponent":
        raise ValueError(f"Unknown colour basis {name!r}; choose from {BASES}.")
    if channels != 3:
        raise ValueError(
            f"The opponent colour basis needs 3 channels; the images have {channels}. "
            "Use colour_basis='rgb'."
        )
    return _OPPONENT.copy()


def channel_statistics(images, name="rgb"):
    """Each channel's mean and standard deviation over the finite values of
    `images` `[B, H, W, C]`, in the basis `name`: float64 `(shift, scale)`,
    each `[C]`; what `build_model(standardize=...)` takes.

    A pixel with a non-finite value in any channel is left out. The scale is at
    least 1e-3, so a constant channel divides by that, not by 0.

    Raises:
        ValueError: `images` not `[B, H, W, C]`, no pixel with finite values in
            every channel, or a basis the channels cannot have.
    """
    images = np.asarray(images, np.float64)
    if images.ndim != 4:
        raise ValueError(
            f"`images` must be [B, H, W, C]. Received: shape {images.shape}"
        )
    channels = images.shape[-1]
    pixels = images.reshape(-1, channels)
    pixels = pixels[np.all(np.isfinite(pixels), axis=1)]
    if not len(pixels):
        raise ValueError("`images` has no pixel whose channels are all finite.")
    matrix = basis_matrix(name, channels)
    if matrix is not None:
        pixels = pixels @ matrix.T
    return pixels.mean(axis=0), np.maximum(pixels.std(axis=0), 1e-3)


def _rotate(values, matrix):
    """`values` `[..., N]` with each pixel's `C` values `v` replaced by
    `matrix @ v`; `matrix` `[..., C, C]` (batch dims broadcast against the
    leading dims of `values` without its last one).

    Written as `C^2` broadcast products of rank at most that of `values` (no
    batched matmul of rank 6, which TFLite's builtins lack); `C` is small."""
    channels = matrix.shape[-1]
    if channels is None:
        raise ValueError("A colour basis needs a static number of channels.")
    shape = tf.shape(values)
    pixels = tf.reshape(values, tf.concat([shape[:-1], [-1, channels]], 0))  # [..., P, C]
    inputs = tf.unstack(pixels, channels, axis=-1)  # C x [..., P]
    rows = tf.unstack(matrix, channels, axis=-2)  # C x [..., C]
    outputs = []
    for row in rows:
        weights = tf.unstack(row, channels, axis=-1)  # C x [...]
        outputs.append(tf.add_n([tf.expand_dims(w, -1) * v for w, v in zip(weights, inputs)]))
    return tf.reshape(tf.stack(outputs, axis=-1), shape)


def to_basis(values, basis):
    """RGB values `[..., N]` to the basis (`y = Q x` per pixel); `basis`
    `[C, C]` or batched `[B, C, C]` for values `[..., B, N]`."""
    return _rotate(values, basis)


def from_basis(values, basis):
    """Values in the basis back to RGB (`x = Q^T y` per pixel)."""
    return _rotate(values, tf.linalg.matrix_transpose(basis))


def coordinate_marginals(loc, factors, diag, basis=None):
    """Each coordinate's 1-D marginal under each component, in RGB.

    Args:
        loc: `[B, K, N]`, factors `[B, K, N, L]`, diag `[B, K, N]`: the
            parameters (in the basis when there is one).
        basis: None, `[C, C]` or `[B, C, C]`.

    Returns:
        `(mean, variance)`, each `[B, K, N]`.
    """
    if basis is None:
        return loc, diag + tf.reduce_sum(tf.square(factors), axis=-1)
    per_component = tf.expand_dims(basis, -3) if basis.shape.rank == 3 else basis  # [B, 1, C, C]
    mean = from_basis(loc, per_component)
    # Loadings rotated back: [B, K, N, L] -> [B, K, L, N] -> rotate -> back.
    loadings = tf.linalg.matrix_transpose(factors)
    loadings = from_basis(loadings, tf.expand_dims(per_component, -3))
    variance = tf.reduce_sum(tf.square(loadings), axis=-2)  # [B, K, N]
    # diag(d) in the basis is Q^T diag(d) Q in RGB: coordinate c gets sum_j Q_jc^2 d_j.
    variance += from_basis(diag, tf.square(per_component))
    return mean, variance


def pixelwise_mask(mask, channels):
    """`[...]` bool: whether every pixel of a flat mask `[..., N]` has the same
    code in all its `channels` (what a colour basis needs)."""
    shape = tf.shape(mask)
    pixels = tf.reshape(mask, tf.concat([shape[:-1], [-1, channels]], 0))  # [..., P, C]
    return tf.reduce_all(tf.equal(pixels, pixels[..., :1]), axis=[-2, -1])


def assert_pixelwise_mask(mask, basis):
    """An assertion that `pixelwise_mask` holds for every example."""
    return tf.debugging.assert_equal(
        tf.reduce_all(pixelwise_mask(mask, tf.shape(basis)[-1])), True,
        message="A mixture in a colour basis needs the same mask code (1, 0 or -1) in every "
                "channel of a pixel; this mask differs between the channels of some pixel.",
    )
