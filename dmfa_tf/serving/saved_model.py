"""SavedModels for TF Serving: `export_saved_model`, versions, publishing.

`export_saved_model(model, "serving/mnist")` writes TF Serving's layout
`serving/mnist/<version>/` (the next free integer version unless `version` is
given; an existing version is never overwritten): the SavedModel with the
signatures of `dmfa_tf.serving.signatures`, `export.json` and, on request, the
TFLite files of `dmfa_tf.serving.tflite`. A version is written to a hidden
`.partial-*` folder (ignored by TF Serving) and renamed only when complete.
"""

import json
import os
import re
import shutil
import tempfile

import tensorflow as tf

from dmfa_tf import files as files_lib
from dmfa_tf.core.checks import check_positive_int
from dmfa_tf.models import float32_copy
from dmfa_tf.serving.signatures import (
    SERVING_SIGNATURES,
    _describe,
    _module,
    _serving_functions,
    model_image_shape,
)
from dmfa_tf.serving.tflite import _check_quantize, export_tflite

__all__ = ["export_saved_model", "next_version"]

_VERSION_NAME = re.compile(r"[0-9]+")


# === Versions ===


def _versions(path):
    if not os.path.isdir(path):
        return []
    return sorted(
        int(name)
        for name in os.listdir(path)
        if _VERSION_NAME.fullmatch(name) and os.path.isdir(os.path.join(path, name))
    )


def next_version(path):
    """The next free TF Serving version under `path`: 1 + the largest integer
    folder name, or 1."""
    versions = _versions(path)
    return versions[-1] + 1 if versions else 1


def _check_version(version):
    return check_positive_int(version, "version")


# === SavedModel ===


def export_saved_model(
    model,
    path,
    version=None,
    image_shape=None,
    tflite=False,
    quantize=(),
    diagonal_noise=True,
    recalibration=None,
):
    """Exports `model` as a TF Serving SavedModel in `<path>/<version>/`.

    Args:
        model: a DMFA network, an MFA model or any callable with the same
            interface (module docstring); `dmfa_tf.saving.load` returns one.
        path: the model's base path (TF Serving's `--model_base_path`), e.g.
            `serving/mnist`; created if needed.
        version: a positive integer; default the next free one. An existing
            version is never overwritten.
        image_shape: `(H, W, C)` for a model without an `image_shape` property.
        tflite: also write `model.tflite` into the version folder
            (`export_tflite`).
        quantize: quantised TFLite variants to add, from `QUANTIZATIONS`:
            `model_float16.tflite`, `model_dynamic_range.tflite`.
        diagonal_noise: whether the `sample` signature adds the
            `sqrt(diag) * eps` noise (a sample of the density) or leaves it out
            (smoother pictures).
        recalibration: a `recalibration.Recalibration` for the `intervals`
            signatures of the SavedModel and the TFLite files (None: the
            model's own intervals).

    Returns:
        The version folder's path.

    Raises:
        FileExistsError: `version` already exists under `path`.
        ValueError: a bad argument, or a model without the common interface.
    """
    model = float32_copy(model)  # TFLite has no bfloat16 kernels; serving computes in float32
    image_shape = model_image_shape(model, image_shape)
    quantize = _check_quantize(quantize)
    if quantize and not tflite:
        raise ValueError(f"`quantize` needs tflite=True. Received: quantize={quantize!r}")
    if version is not None:
        version = _check_version(version)
        _publish(None, path, version)  # fails now, before any work, if it exists
    components, factors = _describe(model, image_shape)
    os.makedirs(path, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".partial-", dir=path)  # ignored by TF Serving
    # mkdtemp makes it 0700: readable by a TF Serving process of another user once
    # published, as `tf.saved_model.save`'s own files are (the umask still applies).
    os.chmod(staging, 0o777 & ~files_lib.umask())
    try:
        functions = _serving_functions(model, image_shape, diagonal_noise, recalibration)
        signatures = {name: fn.get_concrete_function() for name, fn in functions.items()}
        tf.saved_model.save(_module(model, functions), staging, signatures=signatures)
        files = {}
        if tflite:
            for variant in (None,) + quantize:
                name = "model.tflite" if variant is None else f"model_{variant}.tflite"
                export_tflite(
                    model, os.path.join(staging, name), variant, image_shape,
                    recalibration=recalibration,
                )
                files[name] = variant or "float32"
        info = {
            "model": type(model).__name__,
            "image_shape": list(image_shape),
            "components": components,
            "factors": factors,
            "signatures": list(SERVING_SIGNATURES),
            "sample_diagonal_noise": bool(diagonal_noise),
            "intervals_recalibration": None if recalibration is None else recalibration.fitted_on,
            "tflite": files,
            "tensorflow": tf.__version__,
        }
        return _publish(staging, path, version, info)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging, path, version, info=None):
    """Writes `info` as the finished `staging` folder's `export.json`, then
    renames the folder to `<path>/<version>`, never over an existing one; with
    no `version`, takes the next free one. With `staging` None, only checks
    that `version` is free."""
    if staging is not None and info is not None:
        with open(os.path.join(staging, "export.json"), "w") as f:
            json.dump(info, f, indent=2)
            f.write("\n")
    for _ in range(100):
        chosen = next_version(path) if version is None else version
        target = os.path.join(path, str(chosen))
        if os.path.exists(target):
            if version is not None:
                raise FileExistsError(
                    f"{target} already exists; exported versions are never overwritten. "
                    f"Leave `version` out for the next free one ({next_version(path)})."
                )
            continue
        if staging is None:
            return target
        try:
            os.rename(staging, target)  # fails if `target` appeared meanwhile
        except OSError:
            if version is not None:
                raise FileExistsError(f"{target} already exists.") from None
            continue
        return target
    raise RuntimeError(f"Could not find a free version under {path}.")

