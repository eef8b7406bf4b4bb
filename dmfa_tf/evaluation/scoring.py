"""`score`: a model's per-image metrics on a split with seeded masks, batch by batch."""

import contextlib
import logging
import math
import time

import keras
import numpy as np
import tensorflow as tf

from dmfa_tf import masks as masks_lib
from dmfa_tf.core.distribution import (
    MISSING,
    OBSERVED,
    MaskedFactorMixture,
    flatten_images,
    flatten_mask,
)
from dmfa_tf.core import scales as scales_lib
from dmfa_tf.core.recalibration import marginal_cdf
from dmfa_tf.data import dequantization, sources
from dmfa_tf.evaluation.metrics import CHI2_TAILS, _batch_metrics


class _RetracingNoise(logging.Filter):
    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def _expected_retracing():
    """Drops TensorFlow's retracing warning, and only it, while scoring.

    Every `score` call traces a step function of its own (for its model and
    options: a function cannot be reused across models, whose Python state,
    such as an MFA's `conditional`, is read when tracing). TensorFlow counts
    the traces of functions made from the same code together and warns about
    "retracing" after a few calls, which here is expected."""
    logger = tf.get_logger()
    noise = _RetracingNoise()
    logger.addFilter(noise)
    try:
        yield
    finally:
        logger.removeFilter(noise)


def _mixture_step(model, window, recalibration=None, pit_histogram_bins=None, components=False):
    """The traced scoring step of a model that returns mixture parameters
    (`recalibration`, `pit_histogram_bins`, `components`: as `score`)."""

    def step(batch):
        image, batch_mask = batch["image"], batch["mask"]
        params = model({"image": image, "mask": batch_mask}, training=False)
        dist = MaskedFactorMixture.from_images(params, batch_mask, image)
        target = tf.cast(flatten_images(image), dist.dtype)  # [B, N]
        # Calibration at the dequantized values (dmfa_tf.data.dequantization).
        calibrated = tf.cast(flatten_images(batch["calibration_image"]), dist.dtype)
        # [B, K] each: log densities (with the scale prior), distances at scale 1
        component_log_prob, distances = dist.component_log_prob_and_mahalanobis(calibrated)
        best = dist.most_probable_component()  # [B]: the imputation's component
        distance = tf.gather(distances, best, axis=-1, batch_dims=1)
        missing = tf.reduce_sum(tf.cast(tf.equal(dist.mask, MISSING), dist.dtype), axis=-1)  # [B]
        predictions = {
            "imputation": dist.imputation(),
            "mixture_mean": dist.mean(),
            "nll": -dist.log_prob(target),
            "pit": marginal_cdf(dist, calibrated),
            "mahalanobis": distance,
        }
        # The distances' distribution functions under their components (with
        # the scale prior): of the most probable one, and the share of the
        # component's posterior given the whole image beyond each tail.
        cdfs = scales_lib.mahalanobis_cdf(distances, missing, dist.scales, dist.scale_logits)  # [B, K]
        predictions["mahalanobis_cdf"] = tf.gather(cdfs, best, axis=-1, batch_dims=1)
        posterior = tf.math.softmax(
            component_log_prob + tf.math.log_softmax(dist.logits, axis=-1), axis=-1
        )  # [B, K]
        low, high = CHI2_TAILS
        for key, beyond in (("low", cdfs < low), ("high", cdfs > high)):
            predictions[f"mahalanobis_posterior_{key}"] = tf.reduce_sum(
                posterior * tf.cast(beyond, posterior.dtype), axis=-1)
        if recalibration is not None or pit_histogram_bins:
            predictions["sd"] = dist.stddev()  # the recalibration groups pixels by it
        if recalibration is not None:
            predictions["pit_recalibrated"] = recalibration(predictions["pit"], predictions["sd"])
        if pit_histogram_bins:
            predictions["pit_histogram_bins"] = int(pit_histogram_bins)
        out = _batch_metrics(image, tf.cast(dist.mask, tf.float32), predictions, window)
        if components:  # at scale 1, at the stored values (those of the NLL)
            unit = dist.without_scale_prior()
            out["component_log_prob"], out["component_mahalanobis"] = (
                unit.component_log_prob_and_mahalanobis(target))  # [B, K] each
            out["logits"] = unit.logits  # [B, K]
        return out

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
    keys = {
        "log_prob": "nll", "imputation": "imputation", "mean": "mixture_mean", "pit": "pit",
        "mahalanobis": "mahalanobis",
    }

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
          recalibration=None, pit_histogram_bins=None, components=False):
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
        components: also return, at the stored values and without the scale
            prior, `component_log_prob` and `component_mahalanobis` `[n, K]`
            and the mixture `logits` `[n, K]` (what `scales.fit_weights` fits).

    Returns:
        dict of `[n]` float64 arrays: `nll`, `squared_error` (of the most
        probable imputation), `squared_error_mixture_mean` (of the mixture
        mean; for a baseline with `predict_missing`, of its `mean` output, NaN
        without one), `psnr`, `ssim`,
        `mahalanobis` (under the most probable component, at scale 1),
        `mahalanobis_cdf` (its distribution function under that component
        with its scale prior, `scales.mahalanobis_cdf`), `missing` (the number of scored coordinates per image),
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
    if predictor and (recalibration is not None or pit_histogram_bins or components):
        raise ValueError(
            "Recalibrated intervals are for models that return mixture parameters "
            "(DMFA, MFA), not for scikit-learn style baselines."
        )
    if predictor:
        step = _predictor_step(model, window)
    else:
        step = _mixture_step(model, window, recalibration, pit_histogram_bins, components)

    steps = -(-count // batch_size)
    progress = keras.utils.Progbar(steps, verbose=verbose, unit_name="batch")
    results, pit_histogram = {}, None
    with _expected_retracing():
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


def timed_score(model, images, mask, seed, batch_size, verbose, dequantize="auto", **kwargs):
    """`score` (`kwargs`: its other arguments) plus the seconds it took (the
    first batch includes tracing)."""
    started = time.time()
    scores = score(model, images, mask, seed=seed, batch_size=batch_size, verbose=verbose,
                   dequantize=dequantize, **kwargs)
    return scores, time.time() - started
