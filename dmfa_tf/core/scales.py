"""A scale prior: each component's covariance times a random scale `c`.

The network predicts, per image, a mixture of `K` Gaussians
`N(loc_k, Sigma_k)`. Its errors are not Gaussian in size: on some images the
missing block lies much closer to the mean than `Sigma_k` says, on others much
farther. The squared Mahalanobis distance of the block, which is chi-squared
with `|M|` degrees of freedom (relative spread `sqrt(2 / |M|)`, 5% at a 16x16
colour hole) when the model is right, spreads over a factor of three around
`|M|` on the shipped models' images, both ways. A single `Sigma_k` cannot be
right for both kinds of image.

The scale prior gives every component a discrete distribution over a scale
of its whole covariance, shared by all images:

```none
p(x_M) = sum_k pi_k sum_j w_j N(x_M; loc_k[M], c_j Sigma_k[M, M])
```

with scales `c_j` on a fixed geometric grid and weights `w = softmax(scale_logits)`
fitted by EM on a validation split (`fit_weights`): a Gaussian scale mixture,
which is heavier-tailed than a Gaussian, as a multivariate t is. Each term is
still a low-rank-plus-diagonal Gaussian, and its log density follows from the
`c = 1` one in O(1):

```none
log N(x; mu, c Sigma) = log N(x; mu, Sigma) - |M|/2 log c - (1/c - 1) d^2 / 2
```

where `d^2` is the squared Mahalanobis distance under `Sigma`. Under component
`k` with its scale prior, `d^2` is distributed as `c chi2(|M|)`, `c ~ w`:
its distribution function, `mahalanobis_cdf`, is the chi-squared calibration
test of such a component.

Shapes: `scales` and `scale_logits` are `[..., J]` (the network outputs them
per image, all rows equal).
"""

import numpy as np
import tensorflow as tf

__all__ = ["DEFAULT_SCALES", "component_log_prob", "fit_weights", "mahalanobis_cdf"]

# 33 scales from 1/16 to 16, 2^(1/4) (19%) apart. The shipped models' distances
# need about that fine a grid: 9 scales from 1/4 to 4 (41% apart) left 11-18% of
# held-out images beyond each chi-squared tail, 17 or 33 scales 0.4-3.5%
# (README, "Scale prior").
DEFAULT_SCALES = tuple(float(2.0 ** (e / 4.0)) for e in range(-16, 17))


def component_log_prob(unit_log_prob, mahalanobis, num_scored, scales, scale_logits):
    """Each component's log density with its scale prior.

    Args:
        unit_log_prob: `[S, B, K]` log densities at scale 1.
        mahalanobis: `[S, B, K]` squared Mahalanobis distances at scale 1.
        num_scored: `[B, 1]` the number of scored coordinates `|M|`.
        scales: `[B, J]` scales (> 0).
        scale_logits: `[B, J]` unnormalised log weights of the scales.

    Returns:
        `[S, B, K]`: `log sum_j w_j N(x; loc_k, c_j Sigma_k)`.
    """
    scales = tf.expand_dims(scales, -2)  # [B, 1, J]
    log_weights = tf.expand_dims(tf.math.log_softmax(scale_logits, axis=-1), -2)  # [B, 1, J]
    per_scale = (
        tf.expand_dims(unit_log_prob, -1)
        - 0.5 * tf.expand_dims(num_scored, -1) * tf.math.log(scales)
        - 0.5 * tf.expand_dims(mahalanobis, -1) * (1.0 / scales - 1.0)
    )  # [S, B, K, J]
    return tf.reduce_logsumexp(per_scale + log_weights, axis=-1)


def mahalanobis_cdf(mahalanobis, dof, scales=None, scale_logits=None):
    """The distribution function of a squared Mahalanobis distance under its
    component: chi-squared(`dof`), or with a scale prior the mixture
    `sum_j w_j P(chi2(dof) <= d^2 / c_j)`.

    Args:
        mahalanobis: `[B]` or `[B, K]` distances.
        dof: `[B]` degrees of freedom (the scored coordinates); images with
            none get 0.5.
        scales, scale_logits: `[B, J]`, or None for no scale prior.

    Returns:
        The shape of `mahalanobis`, values in [0, 1]; below 0.01 or above 0.99
        are the distances outside the 1st and 99th percentiles.
    """
    dtype = mahalanobis.dtype
    inner = [1] * (mahalanobis.shape.rank - 1)  # the K axis, if any
    half_dof = tf.reshape(0.5 * tf.cast(dof, dtype), [-1] + inner)
    safe = tf.maximum(half_dof, 0.5)
    if scales is None:
        cdf = tf.math.igamma(safe, 0.5 * mahalanobis)
    else:
        shape = tf.concat([tf.shape(scales)[:1], inner, tf.shape(scales)[-1:]], 0)
        weights = tf.reshape(tf.math.softmax(tf.cast(scale_logits, dtype), axis=-1), shape)
        per_scale = tf.math.igamma(
            tf.expand_dims(safe, -1),
            0.5 * tf.expand_dims(mahalanobis, -1) / tf.reshape(tf.cast(scales, dtype), shape),
        )  # [B, (K,) J]
        cdf = tf.reduce_sum(weights * per_scale, axis=-1)
    return tf.where(half_dof > 0, cdf, tf.constant(0.5, dtype))


def fit_weights(unit_log_prob, mahalanobis, logits, num_scored, scales=DEFAULT_SCALES,
                iterations=1000, tolerance=1e-9, keep=1e-4):
    """The scale prior of largest likelihood on a set of images (EM, NumPy
    float64): the mixture weights `pi` and each component's density at scale 1
    stay fixed, only the scale weights `w` move. Scales whose weight ends
    below `keep` times the largest are dropped (fewer terms in every density,
    interval and sample) and EM runs again on the others.

    Args:
        unit_log_prob: `[B, K]` log densities of the images' missing blocks
            under each component at scale 1 (`component_log_prob` of a
            distribution without a scale prior).
        mahalanobis: `[B, K]` their squared Mahalanobis distances.
        logits: `[B, K]` mixture logits.
        num_scored: `[B]` scored coordinates per image; images with none are
            left out.
        scales: `[J]` the grid.
        iterations, tolerance: each EM run stops after `iterations` steps or
            when the mean log likelihood gains less than `tolerance` nats.
        keep: the relative weight below which a scale is dropped.

    Returns:
        dict: `scales` and `weights` (the kept ones, lists), `mean_log_prob`
        (the images' mean log density with them), `unit_mean_log_prob` (at
        scale 1 alone), `images`.

    Raises:
        ValueError: no image with a missing coordinate, a non-positive or
            non-finite scale, or non-finite densities.
    """
    scales = np.asarray(scales, np.float64)
    if scales.ndim != 1 or not len(scales) or not np.all(np.isfinite(scales)) or np.any(scales <= 0):
        raise ValueError(f"Scales must be a non-empty list of positive numbers. Received: {scales.tolist()}")
    lp = np.asarray(unit_log_prob, np.float64)
    d2 = np.asarray(mahalanobis, np.float64)
    logits = np.asarray(logits, np.float64)
    count = np.asarray(num_scored, np.float64).reshape(-1)
    chosen = count > 0
    if not chosen.any():
        raise ValueError("Cannot fit a scale prior: no image has a missing coordinate.")
    lp, d2, logits, count = lp[chosen], d2[chosen], logits[chosen], count[chosen]
    if not (np.all(np.isfinite(lp)) and np.all(np.isfinite(d2)) and np.all(np.isfinite(logits))):
        raise ValueError("Cannot fit a scale prior: the model's densities hold NaN or inf values.")
    log_pi = logits - _logsumexp(logits, axis=1, keepdims=True)  # [B, K]
    joint = (lp + log_pi)[:, :, None] - 0.5 * count[:, None, None] * np.log(scales) \
        - 0.5 * d2[:, :, None] * (1.0 / scales - 1.0)  # [B, K, J]
    joint = _logsumexp(joint, axis=1)  # [B, J]: the components summed out
    weights = _em(joint, np.full(len(scales), 1.0 / len(scales)), iterations, tolerance)
    kept = weights >= keep * weights.max()
    weights = _em(joint[:, kept], weights[kept] / weights[kept].sum(), iterations, tolerance)
    return {
        "scales": scales[kept].tolist(),
        "weights": weights.tolist(),
        "mean_log_prob": float(np.mean(_logsumexp(joint[:, kept] + np.log(weights), axis=1))),
        "unit_mean_log_prob": float(np.mean(_logsumexp(lp + log_pi, axis=1))),
        "images": int(len(lp)),
    }


def _em(joint, weights, iterations, tolerance):
    """EM for the weights of the columns of `joint` `[B, J]` (log densities)."""
    previous = -np.inf
    for _ in range(int(iterations)):
        with np.errstate(divide="ignore"):
            scored = joint + np.log(weights)
        total = _logsumexp(scored, axis=1, keepdims=True)  # [B, 1]
        weights = np.mean(np.exp(scored - total), axis=0)
        mean = float(np.mean(total))
        if mean - previous < tolerance:
            break
        previous = mean
    return weights


def _logsumexp(a, axis, keepdims=False):
    top = np.max(a, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    out = top + np.log(np.sum(np.exp(a - top), axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)

