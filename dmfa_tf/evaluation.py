"""Batched scoring of models on a test set with seeded masks: the paper's metrics
and calibration.

Per image (all on the [0, 1] pixel scale, summed over the missing pixels of
every channel; lower is better for the first two):

| metric | definition |
|---|---|
| `nll` | `-log p(x_missing | x_observed)` in nats, the paper's NLL |
| `squared_error` | the paper's "MSE": sum of squared errors of the most probable imputation |
| `psnr` | PSNR of the inpainted image (observed pixels kept) against the original, dB, peak 1 |
| `ssim` | SSIM of the inpainted image against the original (as `tf.image.ssim`: peak 1, Gaussian window of size min(11, H, W), sigma 1.5; colour images: mean over channels) |
| `mahalanobis` | squared Mahalanobis distance of the missing block under the most probable component (the one `imputation()` uses); chi-squared with `missing` degrees of freedom if the model is right |

Calibration (`calibration`), pooled over every missing pixel of the split: each
missing pixel's PIT `u = F_i(x_i)` under its exact 1-D marginal, for a
mixture `F_i(x) = sum_k w_k Phi((x - loc_k[i]) / sigma_k[i])` with `w =
softmax(logits)` and `sigma_k[i]^2 = diag_k[i] + sum_l factors_k[i, l]^2`. The
value lies in the central `alpha` interval exactly when `(1 - alpha) / 2 <= u
<= (1 + alpha) / 2`, which gives the 50% and 90% coverages without root
finding; the PIT deciles are the shares of `u` in `[0, 0.1), ..., [0.9, 1]`.
Per image, the Mahalanobis distance is compared with the chi-squared
distribution's 1st and 99th percentiles.

Models without a density (`baselines.KNNImputation`) have NaN NLL, Mahalanobis
and calibration: not available.

Image `i` gets the mask seeded `(seed, i)`: every model scored with the same seed
and mask spec sees the same masks, so comparisons are paired.
"""

import csv
import io
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from dmfa_tf import files
from dmfa_tf.data import dequantization, sources
from dmfa_tf.core import recalibration as recalibration_lib
from dmfa_tf.core.recalibration import marginal_cdf
from dmfa_tf import masks as masks_lib
from dmfa_tf.core.distribution import (
    MISSING,
    OBSERVED,
    MaskedFactorMixture,
    flatten_images,
    flatten_mask,
    unflatten_images,
)

__all__ = [
    "BASELINES",
    "COVERAGES",
    "METRICS",
    "ModelSpec",
    "calibration",
    "comparison_table",
    "marginal_cdf",
    "parse_model_spec",
    "score",
    "seeded_masks",
    "ssim",
    "summarize",
    "write_csv",
    "write_json",
    "write_text",
]

METRICS = ("nll", "squared_error", "psnr", "ssim", "mahalanobis")
COVERAGES = (0.5, 0.9)  # central intervals whose coverage `calibration` reports
PIT_BINS = 10
CHI2_TAILS = (0.01, 0.99)
RECALIBRATED = "recalibrated_"  # prefix of the interval counts read through a recalibration
# Baseline names `parse_model_spec` knows, fitted to the training split.
BASELINES = {
    "diagonal": "a Gaussian per pixel (diagonal covariance)",
    "gaussian": "one full-covariance Gaussian and its exact conditional; "
    "'gaussian:R' sets the diagonal regularisation R (1e-4)",
    "knn": "scikit-learn's KNNImputer (k = 5), imputation only; 'knn:N' uses the "
    "first N training images (all)",
}


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
            `mahalanobis [B]`; those missing become NaN.
        window: SSIM window size.
    """
    image_shape = [int(d) for d in image.shape[1:]]
    target = flatten_images(image)  # [B, N]
    batch = tf.shape(target)[0]
    imputation = tf.cast(predictions["imputation"], tf.float32)
    scored = tf.equal(flat_mask, MISSING)  # [B, N]
    error = tf.where(scored, tf.square(imputation - target), tf.zeros_like(target))
    inpainted = tf.clip_by_value(unflatten_images(imputation, image_shape), 0.0, 1.0)
    unknown = tf.fill([batch], math.nan)
    out = {
        "nll": predictions.get("nll", unknown),
        "squared_error": tf.reduce_sum(error, axis=-1),
        "psnr": tf.image.psnr(inpainted, image, max_val=1.0),
        "ssim": ssim(inpainted, image, filter_size=window),
        "mahalanobis": predictions.get("mahalanobis", unknown),
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


def _mixture_step(model, window, recalibration=None, pit_histogram_bins=None):
    """The traced scoring step of a model that returns mixture parameters
    (`recalibration`, `pit_histogram_bins`: as `score`)."""

    def step(batch):
        image, batch_mask = batch["image"], batch["mask"]
        params = model({"image": image, "mask": batch_mask}, training=False)
        dist = MaskedFactorMixture.from_images(params, batch_mask, image)
        target = tf.cast(flatten_images(image), dist.dtype)  # [B, N]
        # Calibration at the dequantized values (dmfa_tf.data.dequantization).
        calibrated = tf.cast(flatten_images(batch["calibration_image"]), dist.dtype)
        distances = dist.component_mahalanobis(calibrated)  # [B, K]
        best = dist.most_probable_component()  # [B]: the imputation's component
        predictions = {
            "imputation": dist.imputation(),
            "nll": -dist.log_prob(target),
            "pit": marginal_cdf(dist, calibrated),
            "mahalanobis": tf.gather(distances, best, axis=-1, batch_dims=1),
        }
        if recalibration is not None or pit_histogram_bins:
            predictions["sd"] = dist.stddev()  # the recalibration groups pixels by it
        if recalibration is not None:
            predictions["pit_recalibrated"] = recalibration(predictions["pit"], predictions["sd"])
        if pit_histogram_bins:
            predictions["pit_histogram_bins"] = int(pit_histogram_bins)
        return _batch_metrics(image, tf.cast(dist.mask, tf.float32), predictions, window)

    # Without autograph the (single) trace takes about a second instead of
    # several. A model whose Python control flow depends on tensors cannot be
    # traced so; it gets autograph.
    fast, converted = tf.function(step, autograph=False), tf.function(step)
    state = {"function": fast}

    def call(batch):
        try:
            return state["function"](batch)
        except tf.errors.OperatorNotAllowedInGraphError:
            if state["function"] is converted:
                raise
            state["function"] = converted
            return converted(batch)

    return call


def _predictor_step(model, window):
    """The scoring step of a baseline with `predict_missing` (NumPy, float64)."""
    metrics = tf.function(
        lambda image, flat_mask, predictions: _batch_metrics(image, flat_mask, predictions, window),
        autograph=False,
    )
    keys = {"log_prob": "nll", "imputation": "imputation", "pit": "pit", "mahalanobis": "mahalanobis"}

    def step(batch, count):
        image = batch["image"]
        flat_mask = flatten_mask(batch["mask"], int(np.prod(image.shape[1:])))
        x = flatten_images(image).numpy()[:count].astype(np.float64)
        calibrated = flatten_images(batch["calibration_image"]).numpy()[:count].astype(np.float64)
        kwargs = {}
        if getattr(model, "has_density", False) and not np.array_equal(x, calibrated):
            kwargs["calibration_images"] = calibrated
        outputs = model.predict_missing(x, flat_mask.numpy()[:count], **kwargs)
        predictions = {}
        for key, name in keys.items():
            if key in outputs:
                value = np.asarray(outputs[key], np.float64)
                if key == "log_prob":
                    value = -value
                pad = [(0, len(flat_mask) - count)] + [(0, 0)] * (value.ndim - 1)
                predictions[name] = tf.constant(np.pad(value, pad))
        return metrics(image, flat_mask, predictions)

    return step


def _pad(batch, size):
    """Pads a batch to `size` images (zeros, fully observed), so the scoring
    function is traced once; the padding is dropped from the results."""
    count = int(batch["image"].shape[0])
    if count == size:
        return batch
    return {
        "image": tf.concat([batch["image"], tf.zeros([size - count] + batch["image"].shape[1:])], 0),
        "calibration_image": tf.concat(
            [batch["calibration_image"], tf.zeros([size - count] + batch["image"].shape[1:])], 0
        ),
        "mask": tf.concat(
            [batch["mask"], tf.fill([size - count] + batch["mask"].shape[1:], float(OBSERVED))], 0
        ),
    }


def score(model, images, mask, seed=0, batch_size=256, verbose=0, dequantize="auto",
          recalibration=None, pit_histogram_bins=None):
    """Per-image scores of `model` on `images` with seeded masks.

    Args:
        model: a DMFA model, or any callable from `{"image", "mask"}` to the
            mixture parameters (MFA models, `baselines.DiagonalGaussian`), or a
            baseline with `predict_missing` (`baselines.FullGaussian`,
            `baselines.KNNImputation`).
        images: `[n, H, W, C]` float images in [0, 1] (or uint8), or a
            `sources.ImageSource` (read batch by batch: a memory-mapped cache
            or photo files are scored without loading the split).
        mask: a mask spec or `MaskGenerator` (masks made in the pipeline,
            image `i`'s seeded `(seed, i)`); or the masks themselves, an
            `[n, H, W, 1 or C]` array from `seeded_masks` (to score several
            models on masks made once).
        seed: mask seed: image `i` gets the mask seeded `(seed, i)` (ignored
            when `mask` is an array).
        batch_size: images per batch. The last batch is padded to the same
            size, so the scoring function is traced once.
        verbose: 1 shows a progress bar.
        dequantize: the quantization step `q` of the values at which
            calibration (PIT, coverages, Mahalanobis distance) is measured:
            `"auto"` (default) for `dequantization.quantization_step(images)`,
            1/255 for 8-bit images (values k/255) and 0 otherwise; a number; or 0 for the
            stored values. Pixel `j` of image `i` is measured at `x + (v -
            1/2) q`, `v ~ U(0, 1)` seeded `(seed, i)`. NLL and squared error
            are always those of the stored values.
        recalibration: a `recalibration.Recalibration` (models with mixture
            parameters only): also count the coverages and PIT deciles of the
            recalibrated PITs, as `recalibrated_inside_50`,
            `recalibrated_inside_90` and `recalibrated_pit_counts`.
        pit_histogram_bins: also return `pit_histogram` `[len(SD_GRID) - 1,
            pit_histogram_bins]`: the PITs of all missing coordinates counted
            in this many bins (`recalibration.pit_bin`), per cell of their predictive
            sd on `recalibration.SD_GRID` (what
            `recalibration.Recalibration.from_counts` fits).

    Returns:
        dict of `[n]` float64 arrays: `nll`, `squared_error`, `psnr`, `ssim`,
        `mahalanobis`, `missing` (the number of scored coordinates per image),
        `inside_50` and `inside_90` (how many of them lie in the central 50% /
        90% interval of their marginal), and `pit_counts` `[n, 10]` (how many
        have their PIT in each tenth), and `dequantization_step` (q, the same
        for every image). NaN where the model has no density.
    """
    source = sources.as_source(images)
    count = len(source)
    image_shape = tuple(source.image_shape)
    model_shape = getattr(model, "image_shape", None)
    if model_shape is not None and tuple(model_shape) != image_shape:
        raise ValueError(
            f"The model takes images of shape {tuple(model_shape)}, the data set has "
            f"{image_shape}. Evaluate it on the data set (and image size) it was trained for."
        )
    batch_size = min(int(batch_size), count)
    if isinstance(mask, (str, masks_lib.MaskGenerator)):
        data = masks_lib.with_masks(source.images(), mask, seed)  # image i: seeded (seed, i)
    else:
        mask = np.asarray(mask)
        if mask.ndim != 4 or mask.shape[:3] != source.shape[:3] or mask.shape[3] not in (1, image_shape[2]):
            raise ValueError(
                f"`mask` must be a spec, a MaskGenerator or [n, H, W, 1 or C] masks for "
                f"images of shape {source.shape}. Received: shape={mask.shape}"
            )
        data = tf.data.Dataset.zip(
            source.images().map(sources.to_float), tf.data.Dataset.from_tensor_slices(mask)
        ).map(lambda image, m: {"image": image, "mask": tf.cast(m, tf.float32)})
    try:
        q = dequantization.quantization_step(source) if dequantize == "auto" else float(dequantize)
    except (TypeError, ValueError):
        q = math.nan
    if not (q >= 0 and math.isfinite(q)):
        raise ValueError(f"`dequantize` must be 'auto' or a number >= 0. Received: dequantize={dequantize!r}")

    def with_calibration_image(position, batch):
        image = batch["image"]
        if q:  # image i's jitter is seeded (seed, i): dequantization.jitter
            noise = tf.numpy_function(
                lambda rows: dequantization.jitter_rows(rows, image_shape, seed),
                [position], tf.float32, stateful=False,
            )
            image = image + q * tf.reshape(noise, tf.shape(image))
        return {**batch, "calibration_image": image}

    data = tf.data.Dataset.zip(tf.data.Dataset.range(count), data).batch(batch_size)
    data = data.map(with_calibration_image).prefetch(tf.data.AUTOTUNE)
    window = min(11, image_shape[0], image_shape[1])
    predictor = hasattr(model, "predict_missing")
    if predictor and (recalibration is not None or pit_histogram_bins):
        raise ValueError(
            "Recalibrated intervals are for models that return mixture parameters "
            "(DMFA, MFA), not for scikit-learn style baselines."
        )
    if predictor:
        step = _predictor_step(model, window)
    else:
        step = _mixture_step(model, window, recalibration, pit_histogram_bins)

    steps = -(-count // batch_size)
    progress = keras.utils.Progbar(steps, verbose=verbose, unit_name="batch")
    results, pit_histogram = {}, None
    for i, batch in enumerate(data):
        count = int(batch["image"].shape[0])
        batch = _pad(batch, batch_size)
        outputs = step(batch, count) if predictor else step(batch)
        histogram = outputs.pop("pit_histogram", None)
        if histogram is not None:  # pooled over the batches
            pooled = histogram.numpy()[0].astype(np.float64)
            pit_histogram = pooled if pit_histogram is None else pit_histogram + pooled
        for key, value in outputs.items():
            results.setdefault(key, []).append(value.numpy()[:count])
        progress.update(i + 1)
    results = {key: np.concatenate(values).astype(np.float64) for key, values in results.items()}
    if pit_histogram_bins:
        results["pit_histogram"] = pit_histogram
    results["dequantization_step"] = np.full(len(source), q)
    return results


def seeded_masks(images, mask, seed=0, batch_size=1024):
    """The masks `score` gives `images` (image `i`: seeded `(seed, i)`), as an
    `[n, H, W, 1 or C]` float32 array, made once for several models.

    The images are checked as `masks.with_masks` checks them (values in
    [0, 1], finite).
    """
    data = masks_lib.with_masks(sources.as_source(images).images(), mask, seed)
    data = data.map(lambda element: element["mask"]).batch(batch_size)
    return np.concatenate([batch.numpy() for batch in data])


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
        distance lies below the 1st / above the 99th percentile of
        chi-squared with `missing` degrees of freedom; ideally 0.01 each),
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
    low, high = (stats.chi2.ppf(q, dof[ok]) for q in CHI2_TAILS)
    result["mahalanobis_images"] = int(ok.sum())
    result["mahalanobis_below_p1"] = float(np.mean(distance[ok] < low)) if ok.any() else None
    result["mahalanobis_above_p99"] = float(np.mean(distance[ok] > high)) if ok.any() else None
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


class ModelSpec:
    """A model named on the command line: a saved model folder, `.keras` file,
    an MFA folder with `:paper` / `:exact` (its conditional), or a baseline
    fitted to the training split (`BASELINES`): `diagonal`, `gaussian` (or
    `gaussian:R`, regularisation R) and `knn` (or `knn:N`, the first N
    training images)."""

    def __init__(self, path, conditional=None, option=None):
        self.path = path
        self.conditional = conditional
        self.option = option

    @property
    def is_baseline(self):
        return self.path in BASELINES

    @property
    def label(self):
        if self.path == "diagonal":
            return "diagonal Gaussian"
        if self.path == "gaussian":
            return "full Gaussian" + ("" if self.option is None else f" (reg. {self.option:g})")
        if self.path == "knn":
            from dmfa_tf.baselines import KNN_NEIGHBORS

            rows = "" if self.option is None else f", first {self.option:,} images"
            return f"KNN (k={KNN_NEIGHBORS}{rows})"
        name = os.path.basename(os.path.normpath(self.path))
        return f"{name} ({self.conditional})" if self.conditional else name

    def check(self):
        """Raises `FileNotFoundError` now, before any data are loaded, for a
        name that is neither a baseline nor an existing path."""
        if not self.is_baseline and not os.path.exists(self.path):
            raise FileNotFoundError(
                f"No saved model at {self.path!r}, and it is not a baseline name "
                f"({', '.join(sorted(BASELINES))})."
            )

    def load(self, train_images=None, variance_floor=1e-4, dataset=None):
        """The model; baselines are fitted to `train_images`.

        Raises:
            ValueError: a baseline without training images, or a non-MFA model
                with a conditional.
            FileNotFoundError: no model at the path.
        """
        if self.is_baseline:
            from dmfa_tf import baselines

            if train_images is None or not len(train_images):
                where = f"the data set {dataset!r} has" if dataset else "there are"
                raise ValueError(
                    f"The {self.path!r} baseline is fitted to the training split, and "
                    f"{where} no training images."
                )
            if self.path == "diagonal":
                return baselines.DiagonalGaussian.fit(train_images, variance_floor=variance_floor)
            if self.path == "gaussian":
                regularization = baselines.DEFAULT_REGULARIZATION if self.option is None else self.option
                return baselines.FullGaussian.fit(train_images, regularization=regularization)
            return baselines.KNNImputation.fit(train_images, max_rows=self.option)
        from dmfa_tf import saving

        self.check()
        model = saving.load(self.path)
        if self.conditional is not None:
            if not hasattr(model, "conditional"):
                raise ValueError(
                    f"{self.path!r} is not an MFA model: ':{self.conditional}' applies to MFA models only."
                )
            model.conditional = self.conditional
        return model


def parse_model_spec(text):
    """`path`, `path:paper`, `path:exact`, `diagonal`, `gaussian[:R]` or
    `knn[:N]` -> `ModelSpec`.

    Raises:
        ValueError: a baseline option that is not a number of the right kind.
    """
    name, colon, option = text.partition(":")
    if name in BASELINES:
        if not colon:
            return ModelSpec(name)
        if name == "diagonal":
            raise ValueError(f"{text!r}: the diagonal baseline takes no option; use 'diagonal'.")
        try:
            value = float(option) if name == "gaussian" else int(option)
        except ValueError:
            value = None
        if name == "gaussian" and (value is None or not 0 < value < math.inf):
            raise ValueError(
                f"{text!r}: 'gaussian:R' needs a regularisation R > 0, e.g. 'gaussian:1e-3'."
            )
        if name == "knn" and (value is None or value < 1):
            raise ValueError(
                f"{text!r}: 'knn:N' needs a whole number N >= 1 of training images, e.g. 'knn:10000'."
            )
        return ModelSpec(name, option=value)
    path, _, conditional = text.rpartition(":")
    if path and conditional in ("paper", "exact"):
        return ModelSpec(path, conditional)
    return ModelSpec(text)


def comparison_table(rows):
    """Markdown tables of summaries: rows of (label, {metric: summary,
    "calibration": calibration}). The calibration table follows the metrics
    table when any row has calibration results."""
    lines = [
        "| model | NLL mean ± std | NLL median | MSE mean ± std | PSNR (dB) | SSIM |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def fmt(summary, digits, spread=True, key="mean"):
        if summary is None or summary[key] is None:
            return "n/a"
        text = f"{summary[key]:.{digits}f}"
        return text + (f" ± {summary['std']:.{digits}f}" if spread else "")

    for label, summary in rows:
        lines.append(
            f"| {label} | {fmt(summary['nll'], 2)} | {fmt(summary['nll'], 2, False, 'median')} | "
            f"{fmt(summary['squared_error'], 2)} | {fmt(summary['psnr'], 2, False)} | "
            f"{fmt(summary['ssim'], 4, False)} |"
        )
    if not any("calibration" in summary for _, summary in rows):
        return "\n".join(lines)

    def share(value, digits=1):
        return "n/a" if value is None else f"{100 * value:.{digits}f}%"

    lines += [
        "",
        "| model | 50% interval coverage | 90% interval coverage | PIT deciles (ideal 0.100 each) "
        "| χ² < 1st pct. | χ² > 99th pct. |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for label, summary in rows:
        result = summary.get("calibration")
        if result is None:
            lines.append(f"| {label} | n/a | n/a | n/a | n/a | n/a |")
            continue
        deciles = result["pit_deciles"]
        deciles = "n/a" if deciles is None else " ".join(f"{v:.3f}" for v in deciles)
        lines.append(
            f"| {label} | {share(result['coverage_50'])} | {share(result['coverage_90'])} | "
            f"{deciles} | {share(result['mahalanobis_below_p1'])} | "
            f"{share(result['mahalanobis_above_p99'])} |"
        )
        recalibrated = result.get("recalibrated")
        if recalibrated:
            deciles = " ".join(f"{v:.3f}" for v in recalibrated["pit_deciles"])
            fitted_for = f" ({recalibrated['map_mask']} map)" if recalibrated.get("map_mask") else ""
            lines.append(
                f"| {label}, recalibrated intervals{fitted_for} | {share(recalibrated['coverage_50'])} | "
                f"{share(recalibrated['coverage_90'])} | {deciles} | – | – |"
            )
    steps = {
        (summary.get("calibration") or {}).get("dequantization_step") for _, summary in rows
    } - {None}
    if any(steps):
        q = max(steps)
        lines += [
            "",
            f"Calibration measured at the dequantized missing values x + (v - 1/2) q, "
            f"q = 1/{round(1 / q)}, v ~ U(0, 1) seeded per image (dmfa_tf.data.dequantization); "
            "evaluate.py --dequantize=off measures it at the stored values.",
        ]
    return "\n".join(lines)


write_text = files.write_text  # atomic (dmfa_tf.files)


def write_csv(path, scores, labels=None):
    """Per-image scores as CSV (index, label if known, the number of missing
    values, every metric), atomically. An empty cell is a metric the model
    does not have (NaN: the NLL and Mahalanobis distance of the KNN baseline)."""
    out = io.StringIO()
    writer = csv.writer(out)
    keys = ["missing"] + list(METRICS)
    writer.writerow(["index"] + (["label"] if labels is not None else []) + keys)
    for i in range(len(scores["nll"])):
        row = [i] + ([int(labels[i])] if labels is not None else [])
        values = [float(scores[k][i]) for k in METRICS]
        row += [int(scores["missing"][i])] + ["" if math.isnan(v) else repr(v) for v in values]
        writer.writerow(row)
    write_text(path, out.getvalue())


write_json = files.write_json  # atomic (dmfa_tf.files)


def timed_score(model, images, mask, seed, batch_size, verbose, dequantize="auto", **kwargs):
    """`score` (`kwargs`: its other arguments) plus the seconds it took (the
    first batch includes tracing)."""
    # Each model traces its own functions; after a few models TensorFlow warns
    # about retracing, which is expected here and only noise.
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        started = time.time()
        scores = score(model, images, mask, seed=seed, batch_size=batch_size, verbose=verbose,
                       dequantize=dequantize, **kwargs)
        return scores, time.time() - started
    finally:
        logger.setLevel(level)
