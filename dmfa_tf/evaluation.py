"""Batched scoring of models on a test set with seeded masks: the paper's metrics.

Per image (all on the [0, 1] pixel scale, summed over the missing pixels of
every channel; lower is better for the first two):

| metric | definition |
|---|---|
| `nll` | `-log p(x_missing | x_observed)` in nats, the paper's NLL |
| `squared_error` | the paper's "MSE": sum of squared errors of the most probable imputation |
| `psnr` | PSNR of the inpainted image (observed pixels kept) against the original, dB, peak 1 |
| `ssim` | SSIM of the inpainted image against the original (`tf.image.ssim`, peak 1, Gaussian window of size min(11, H, W), sigma 1.5; colour images: mean over channels) |

Image `i` gets the mask seeded `(seed, i)`: every model scored with the same seed
and mask spec sees the same masks, so comparisons are paired.
"""

import csv
import io
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from dmfa_tf import masks as masks_lib
from dmfa_tf.distribution import MISSING, MaskedFactorMixture, flatten_images, unflatten_images

__all__ = [
    "METRICS",
    "ModelSpec",
    "comparison_table",
    "parse_model_spec",
    "score",
    "summarize",
    "write_csv",
    "write_json",
    "write_text",
]

METRICS = ("nll", "squared_error", "psnr", "ssim")


def score(model, images, mask, seed=0, batch_size=256, verbose=0):
    """Per-image scores of `model` on `images` with seeded masks.

    Args:
        model: a DMFA model, or any callable from `{"image", "mask"}` to the
            mixture parameters (MFA models, the baselines).
        images: `[n, H, W, C]` float images in [0, 1].
        mask: a mask spec or `MaskGenerator`.
        seed: mask seed: image `i` gets the mask seeded `(seed, i)`.
        batch_size: images per batch.
        verbose: 1 shows a progress bar.

    Returns:
        dict of `[n]` float64 arrays: `nll`, `squared_error`, `psnr`, `ssim`,
        and `missing` (the number of scored coordinates per image).
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or not len(images):
        raise ValueError(f"`images` must be a non-empty [n, H, W, C] array. Received: shape={images.shape}")
    image_shape = tuple(images.shape[1:])
    model_shape = getattr(model, "image_shape", None)
    if model_shape is not None and tuple(model_shape) != image_shape:
        raise ValueError(
            f"The model takes images of shape {tuple(model_shape)}, the data set has "
            f"{image_shape}. Evaluate it on the data set (and image size) it was trained for."
        )
    data = masks_lib.with_masks(tf.data.Dataset.from_tensor_slices(images), mask, seed)
    data = data.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    window = min(11, image_shape[0], image_shape[1])

    @tf.function(reduce_retracing=True)
    def step(batch):
        image, batch_mask = batch["image"], batch["mask"]
        params = model(batch, training=False)
        dist = MaskedFactorMixture.from_images(params, batch_mask, image)
        target = flatten_images(image)  # [B, N]
        imputation = dist.imputation()  # [B, N], observed pixels kept
        scored = dist.mask == MISSING  # [B, N]
        error = tf.where(scored, tf.square(imputation - target), tf.zeros_like(target))
        inpainted = tf.clip_by_value(unflatten_images(imputation, image_shape), 0.0, 1.0)
        return {
            "nll": -dist.log_prob(target),
            "squared_error": tf.reduce_sum(error, axis=-1),
            "psnr": tf.image.psnr(inpainted, image, max_val=1.0),
            "ssim": tf.image.ssim(inpainted, image, max_val=1.0, filter_size=window),
            "missing": tf.reduce_sum(tf.cast(scored, tf.float32), axis=-1),
        }

    steps = -(-len(images) // batch_size)
    progress = keras.utils.Progbar(steps, verbose=verbose, unit_name="batch")
    results = {key: [] for key in METRICS + ("missing",)}
    for i, batch in enumerate(data):
        for key, value in step(batch).items():
            results[key].append(value.numpy())
        progress.update(i + 1)
    return {key: np.concatenate(values).astype(np.float64) for key, values in results.items()}


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


class ModelSpec:
    """A model named on the command line: a saved model folder, `.keras` file,
    an MFA folder with `:paper` / `:exact` (its conditional), or `diagonal`
    (the diagonal-Gaussian baseline, fitted to the training split)."""

    def __init__(self, path, conditional=None):
        self.path = path
        self.conditional = conditional

    @property
    def label(self):
        if self.path == "diagonal":
            return "diagonal Gaussian"
        name = os.path.basename(os.path.normpath(self.path))
        return f"{name} ({self.conditional})" if self.conditional else name

    def load(self, train_images=None, variance_floor=1e-4):
        if self.path == "diagonal":
            from dmfa_tf.baselines import DiagonalGaussian

            if train_images is None:
                raise ValueError("The diagonal baseline needs the training images.")
            return DiagonalGaussian.fit(train_images, variance_floor=variance_floor)
        from dmfa_tf import saving

        model = saving.load(self.path)
        if self.conditional is not None:
            if not hasattr(model, "conditional"):
                raise ValueError(
                    f"{self.path!r} is not an MFA model: ':{self.conditional}' applies to MFA models only."
                )
            model.conditional = self.conditional
        return model


def parse_model_spec(text):
    """`path`, `path:paper`, `path:exact` or `diagonal` -> `ModelSpec`."""
    path, _, conditional = text.rpartition(":")
    if path and conditional in ("paper", "exact"):
        return ModelSpec(path, conditional)
    return ModelSpec(text)


def comparison_table(rows):
    """A markdown table of summaries: rows of (label, {metric: summary})."""
    lines = [
        "| model | NLL mean ± std | NLL median | MSE mean ± std | PSNR (dB) | SSIM |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def fmt(summary, digits, spread=True):
        if summary["mean"] is None:
            return "n/a"
        text = f"{summary['mean']:.{digits}f}"
        return text + (f" ± {summary['std']:.{digits}f}" if spread else "")

    for label, summary in rows:
        lines.append(
            f"| {label} | {fmt(summary['nll'], 2)} | {summary['nll']['median']:.2f} | "
            f"{fmt(summary['squared_error'], 2)} | {fmt(summary['psnr'], 2, False)} | "
            f"{fmt(summary['ssim'], 4, False)} |"
        )
    return "\n".join(lines)


def write_text(path, text):
    """Writes `text` to `path` atomically (a temporary file, then a rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = f"{path}.partial-{os.getpid()}"
    try:
        with open(partial, "w", newline="") as f:
            f.write(text)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def write_csv(path, scores, labels=None):
    """Per-image scores as CSV (index, label if known, every metric), atomically."""
    out = io.StringIO()
    writer = csv.writer(out)
    keys = ["missing"] + list(METRICS)
    writer.writerow(["index"] + (["label"] if labels is not None else []) + keys)
    for i in range(len(scores["nll"])):
        row = [i] + ([int(labels[i])] if labels is not None else [])
        row += [int(scores["missing"][i])] + [repr(float(scores[k][i])) for k in METRICS]
        writer.writerow(row)
    write_text(path, out.getvalue())


def write_json(path, content):
    write_text(path, json.dumps(content, indent=2) + "\n")


def timed_score(model, images, mask, seed, batch_size, verbose):
    """`score` plus the seconds it took (the first batch includes tracing)."""
    # Each model traces its own functions; after a few models TensorFlow warns
    # about retracing, which is expected here and only noise.
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        started = time.time()
        scores = score(model, images, mask, seed=seed, batch_size=batch_size, verbose=verbose)
        return scores, time.time() - started
    finally:
        logger.setLevel(level)
