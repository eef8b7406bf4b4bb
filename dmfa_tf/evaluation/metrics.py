"""Per-image metrics of a scored batch (NLL, the paper's MSE, PSNR, SSIM, the
Mahalanobis distance) and the calibration of a split (coverages, PIT deciles,
chi-squared tails); see `dmfa_tf.evaluation`."""

import math

import numpy as np
import tensorflow as tf

from dmfa_tf.core import recalibration as recalibration_lib
from dmfa_tf.core.distribution import (
    MISSING,
    flatten_images,
    unflatten_images,
)

METRICS = ("nll", "squared_error", "squared_error_mixture_mean", "psnr", "ssim", "mahalanobis")


COVERAGES = (0.5, 0.9)  # central intervals whose coverage `calibration` reports


PIT_BINS = 10


CHI2_TAILS = (0.01, 0.99)


RECALIBRATED = "recalibrated_"  # prefix of the interval counts read through a recalibration


def _gaussian_kernel(size, sigma=1.5):
    """`[size, size, 1, 1]` normalised Gaussian window, as `tf.image.ssim`'s."""
    coords = tf.range(size, dtype=tf.float32) - (size - 1) / 2.0
    logits = tf.square(coords) * (-0.5 / sigma**2)
    logits = tf.reshape(logits, [1, -1]) + tf.reshape(logits, [-1, 1])
    kernel = tf.math.softmax(tf.reshape(logits, [1, -1]))
    return tf.reshape(kernel, [size, size, 1, 1])


def ssim(a, b, filter_size=11, max_val=1.0):
    """SSIM per image, the definition of `tf.image.ssim` (Gaussian window of
    `filter_size`, sigma 1.5, K1 = 0.01, K2 = 0.03, 'valid' positions; colour
    images: the mean over channels).

    One `conv2d` over the channels stacked as images, instead of
    `tf.image.ssim`'s depthwise convolutions: four times faster on CPU, equal
    to it up to float32 rounding (differences of order 1e-7).

    Args:
        a, b: `[B, H, W, C]` float32 images.
    """
    height, width, channels = (int(d) for d in a.shape[-3:])
    kernel = _gaussian_kernel(filter_size)
    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2

    def local_mean(x):  # [B, H, W, C] -> [B, C, H', W']
        planes = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [-1, height, width, 1])
        out = tf.nn.conv2d(planes, kernel, strides=1, padding="VALID")
        return tf.reshape(out, [-1, channels, height - filter_size + 1, width - filter_size + 1])

    mean_a, mean_b = local_mean(a), local_mean(b)
    num0 = mean_a * mean_b * 2.0
    den0 = tf.square(mean_a) + tf.square(mean_b)
    luminance = (num0 + c1) / (den0 + c1)
    num1 = local_mean(a * b) * 2.0
    den1 = local_mean(tf.square(a) + tf.square(b))
    structure = (num1 - num0 + c2) / (den1 - den0 + c2)
    return tf.reduce_mean(luminance * structure, axis=[-3, -2, -1])


def _batch_metrics(image, flat_mask, predictions, window):
    """Per-image metrics of one batch from a model's predictions.

    Args:
        image: `[B, H, W, C]` float32 originals.
        flat_mask: `[B, N]` mask (1 / 0 / -1).
        predictions: dict of `imputation [B, N]` (observed values kept) and,
            for models with a density, `nll [B]`, `pit [B, N]` and
            `mahalanobis [B]`, and for mixtures `mixture_mean [B, N]`; those
            missing become NaN.
        window: SSIM window size.
    """
    image_shape = [int(d) for d in image.shape[1:]]
    target = flatten_images(image)  # [B, N]
    batch = tf.shape(target)[0]
    imputation = tf.cast(predictions["imputation"], tf.float32)
    scored = tf.equal(flat_mask, MISSING)  # [B, N]

    def squared_error(values):  # [B]: summed over the scored coordinates
        error = tf.square(tf.cast(values, tf.float32) - target)
        return tf.reduce_sum(tf.where(scored, error, tf.zeros_like(error)), axis=-1)

    inpainted = tf.clip_by_value(unflatten_images(imputation, image_shape), 0.0, 1.0)
    unknown = tf.fill([batch], math.nan)
    out = {
        "nll": predictions.get("nll", unknown),
        "squared_error": squared_error(imputation),
        "squared_error_mixture_mean": (
            squared_error(predictions["mixture_mean"]) if "mixture_mean" in predictions else unknown
        ),
        "psnr": tf.image.psnr(inpainted, image, max_val=1.0),
        "ssim": ssim(inpainted, image, filter_size=window),
        "mahalanobis": predictions.get("mahalanobis", unknown),
        "mahalanobis_cdf": tf.cast(predictions.get("mahalanobis_cdf", unknown), tf.float32),
        "mahalanobis_posterior_low": tf.cast(predictions.get("mahalanobis_posterior_low", unknown), tf.float32),
        "mahalanobis_posterior_high": tf.cast(predictions.get("mahalanobis_posterior_high", unknown), tf.float32),
        "missing": tf.reduce_sum(tf.cast(scored, tf.float32), axis=-1),
    }
    pit = predictions.get("pit")
    if pit is None:
        for alpha in COVERAGES:
            out[f"inside_{round(100 * alpha)}"] = unknown
        out["pit_counts"] = tf.fill([batch, PIT_BINS], math.nan)
        return out
    weight = tf.cast(scored, tf.float32)
    out.update(_pit_metrics(pit, scored, weight))
    if "pit_recalibrated" in predictions:  # the same through a recalibration's map
        out.update(_pit_metrics(predictions["pit_recalibrated"], scored, weight, RECALIBRATED))
    if "pit_histogram_bins" in predictions:  # pooled over the batch: [1, sd cells, bins]
        bins = predictions["pit_histogram_bins"]
        cells = len(recalibration_lib.SD_GRID) - 1
        pit = tf.boolean_mask(pit, scored)
        cell = tf.boolean_mask(recalibration_lib.sd_bin(predictions["sd"]), scored)
        index = tf.cast(cell, tf.int32) * bins + recalibration_lib.pit_bin(pit, bins)
        counts = tf.math.bincount(index, minlength=cells * bins, maxlength=cells * bins)
        out["pit_histogram"] = tf.reshape(tf.cast(counts, tf.float32), [1, cells, bins])
    return out


def _pit_metrics(pit, scored, weight, prefix=""):
    """Interval counts (`inside_50`, `inside_90`) and PIT decile counts of
    each image's missing coordinates."""
    pit = tf.where(scored, pit, tf.constant(0.5, pit.dtype))  # NaN-free outside M
    out = {}
    for alpha in COVERAGES:
        inside = (pit >= (1.0 - alpha) / 2.0) & (pit <= (1.0 + alpha) / 2.0)
        out[f"{prefix}inside_{round(100 * alpha)}"] = tf.reduce_sum(
            weight * tf.cast(inside, tf.float32), -1
        )
    bins = tf.clip_by_value(tf.cast(tf.floor(pit * PIT_BINS), tf.int32), 0, PIT_BINS - 1)
    out[f"{prefix}pit_counts"] = tf.reduce_sum(
        tf.one_hot(bins, PIT_BINS, dtype=tf.float32) * weight[..., None], axis=-2
    )  # [B, 10]
    return out


def summarize(values):
    """Mean, standard deviation, median, min and max of per-image values.

    Non-finite values (PSNR is +inf for an image with nothing missing) are left
    out; `count` says how many values were used, `excluded` how many were not.
    """
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    summary = {"count": int(finite.size), "excluded": int(values.size - finite.size)}
    if not finite.size:
        return dict(summary, mean=None, std=None, median=None, min=None, max=None)
    return dict(
        summary,
        mean=float(finite.mean()),
        std=float(finite.std()),
        median=float(np.median(finite)),
        min=float(finite.min()),
        max=float(finite.max()),
    )


def calibration(scores):
    """Calibration of a split's scores (from `score`), pooled over all its
    missing pixels; None for a model without a density.

    Returns:
        dict: `pixels` (missing pixels pooled), `coverage_50` and
        `coverage_90` (the share of them inside their central 50% / 90%
        interval; ideally 0.5 and 0.9), `pit_deciles` (the share with PIT in
        `[0, 0.1)`, ..., `[0.9, 1]`; ideally 0.1 each), `mahalanobis_images`
        (images with something missing), `mahalanobis_below_p1` and
        `mahalanobis_above_p99` (the share of them whose squared Mahalanobis
        distance under the most probable component lies below the 1st / above
        the 99th percentile of its distribution under that component:
        chi-squared with `missing` degrees of freedom, or with a scale prior
        its mixture of scaled chi-squared; ideally 0.01 each),
        `mahalanobis_posterior_below_p1` and `mahalanobis_posterior_above_p99`
        (the same with the component drawn from its posterior given the whole
        image, as expected shares: exactly 0.01 each if the model is right),
        `dequantization_step` (q of `score`: the values were dequantized by it;
        0 for the stored values), and, when `score` was given a
        recalibration, `recalibrated`: the coverages and PIT deciles of the
        recalibrated intervals.
    """
    from scipy import stats

    counts = np.asarray(scores["pit_counts"], np.float64)  # [n, 10]
    usable = np.all(np.isfinite(counts), axis=-1)
    if not usable.any():
        return None
    pixels = counts[usable].sum()
    result = {"pixels": int(pixels)}
    if "dequantization_step" in scores:  # the values measured: dmfa_tf.data.dequantization
        result["dequantization_step"] = float(np.asarray(scores["dequantization_step"])[0])
    result.update(_coverages(scores, usable, pixels))
    if f"{RECALIBRATED}pit_counts" in scores:
        result["recalibrated"] = _coverages(scores, usable, pixels, RECALIBRATED)
    distance = np.asarray(scores["mahalanobis"], np.float64)
    dof = np.asarray(scores["missing"], np.float64)
    ok = usable & np.isfinite(distance) & (dof > 0)
    # The distance's distribution function under its component: chi-squared,
    # or with a scale prior the scale mixture of chi-squared (`mahalanobis_cdf`).
    cdf = np.asarray(scores.get("mahalanobis_cdf", np.full(len(distance), np.nan)), np.float64)
    plain = ok & ~np.isfinite(cdf)
    cdf = np.where(plain, stats.chi2.cdf(distance, np.maximum(dof, 1)), cdf)
    low, high = CHI2_TAILS
    result["mahalanobis_images"] = int(ok.sum())
    result["mahalanobis_below_p1"] = float(np.mean(cdf[ok] < low)) if ok.any() else None
    result["mahalanobis_above_p99"] = float(np.mean(cdf[ok] > high)) if ok.any() else None
    # The component drawn from its posterior given the whole image instead
    # (expected shares): the same test, exact for a mixture if the model is
    # right. One component (the Gaussian baselines): the same numbers.
    for key, tail, beyond in (("below_p1", "low", cdf < low), ("above_p99", "high", cdf > high)):
        share = np.asarray(scores.get(f"mahalanobis_posterior_{tail}", np.full(len(cdf), np.nan)), np.float64)
        share = np.where(plain | ~np.isfinite(share), beyond, share)
        result[f"mahalanobis_posterior_{key}"] = float(np.mean(share[ok])) if ok.any() else None
    return result


def _coverages(scores, usable, pixels, prefix=""):
    result = {}
    for alpha in COVERAGES:
        key = round(100 * alpha)
        inside = np.asarray(scores[f"{prefix}inside_{key}"], np.float64)[usable].sum()
        result[f"coverage_{key}"] = float(inside / pixels) if pixels else None
    counts = np.asarray(scores[f"{prefix}pit_counts"], np.float64)[usable]
    result["pit_deciles"] = (counts.sum(0) / pixels).tolist() if pixels else None
    return result
