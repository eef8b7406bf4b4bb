"""Export: SavedModels for TF Serving and TFLite files with builtin ops only.

Any model with the common interface (`model({"image", "mask"}, training=False)
-> {"logits", "loc", "factors", "diag"}` and an `image_shape` property: DMFA
networks, the classical MFA, `baselines.DiagonalGaussian`) exports the same
way. The math is `MaskedFactorMixture.from_images` (`distribution.py`) on the
model's outputs; nothing here derives it again.

Glossary: `B` batch (dynamic), `H, W, C` the model's image shape,
`N = H * W * C`, `K` components, `L` factors, `S` samples.

#### SavedModel (TF Serving)

`export_saved_model(model, "serving/mnist")` writes TF Serving's layout
`serving/mnist/<version>/` (the next free integer version unless `version` is
given; an existing version is never overwritten). Inputs of every signature:
`image` float32 `[B, H, W, C]` in [0, 1] and `mask` float32 `[B, H, W, 1]`
(or `[B, H, W, C]` when `C > 1`): 1 observed, 0 missing, -1 absent (filled in
but not scored).

| signature | extra inputs | outputs |
|---|---|---|
| `serving_default` | | `imputation` `[B, H, W, C]` (observed pixels kept, missing ones the mean of the most probable component), `variance` `[B, H, W, C]` (the mixture's predictive variance, 0 where observed), `mixture_weights` `[B, K]` |
| `log_prob` | | `log_prob` `[B]`: `log p(x_missing \\| x_observed)` in nats (-NLL) |
| `sample` | `num_samples` int32 `[]`, `seed` int32 `[2]` | `samples` `[S, B, H, W, C]`, observed pixels kept; the same seed gives the same samples; `S * B * H * W * C` at most `MAX_SAMPLE_VALUES` (2**28) |
| `parameters` | | `logits` `[B, K]`, `loc` `[B, K, N]`, `factors` `[B, K, N, L]`, `diag` `[B, K, N]` |
| `intervals` | `level` float32 `[]` in (0, 1) | `lower`, `upper` `[B, H, W, C]`: each pixel's central `level` interval (`recalibration.interval`), recalibrated when the export was given a `recalibration.Recalibration` (the CLI uses the model folder's first map); observed pixels: their value |

Bad input stops a SavedModel call with an `InvalidArgumentError` that names
the problem and shows the bad values: mask values other than 1, 0, -1; NaN,
inf or values outside [0, 1] at observed pixels; for `log_prob`, NaN or inf at
missing (scored) pixels; a mask with neither 1 nor `C` channels. Values at
missing pixels are never read by the other signatures. A mask with no missing
pixel is valid: `log_prob` is 0, the imputation equals the input, the variance
is 0 and every sample equals the input.

#### TFLite

`export_tflite(model, "model.tflite")` writes a file with two signatures,
`impute` (`imputation`, `variance`, `mixture_weights`, `valid`) and
`log_prob` (`log_prob`, `valid`), converted with TFLite builtin ops only (no
Select TF ops: the small Cholesky factorisations are unrolled by
`dmfa_tf.core.linalg`). TFLite has no assertions, so the input checks above become
the `valid` output (bool `[B]`), and every output of an image that fails them
is NaN: bad input is never silently scored. The graph is traced with the
`ObservedInput` layers' assertions switched off, so none reaches the file.
`quantize="float16"` stores the weights as float16; `"dynamic_range"` stores
them as int8, with float activations.
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile

import numpy as np
import tensorflow as tf

from dmfa_tf.core import checks
from dmfa_tf.core.checks import check_positive_int
from dmfa_tf.core.distribution import (
    MaskedFactorMixture,
    checked_sample_count,
    flatten_images,
    unflatten_images,
)
from dmfa_tf import files as files_lib
from dmfa_tf.core import recalibration as recalibration_lib
from dmfa_tf.layers import ObservedInput
from dmfa_tf.models import float32_copy

__all__ = [
    "QUANTIZATIONS",
    "SERVING_SIGNATURES",
    "TFLITE_SIGNATURES",
    "export_saved_model",
    "export_tflite",
    "next_version",
    "run_tflite",
    "tflite_interpreter",
    "tflite_ops",
]

SERVING_SIGNATURES = ("serving_default", "log_prob", "sample", "parameters", "intervals")
TFLITE_SIGNATURES = ("impute", "log_prob")
QUANTIZATIONS = ("float16", "dynamic_range")
PARAMETER_KEYS = ("logits", "loc", "factors", "diag")

# Operators that must never be in an exported TFLite file: Select TF ops show
# up as custom "Flex..." operators; resource variables mean the weights were
# not frozen.
_FORBIDDEN_TFLITE_OPS = ("CUSTOM", "VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE")

_VERSION_NAME = re.compile(r"[0-9]+")


# === Models ===


def model_image_shape(model, image_shape=None):
    """`(H, W, C)` of the images `model` takes: `image_shape` if given, else the
    model's `image_shape` property.

    Raises:
        ValueError: neither is known, or it is not three positive integers.
    """
    shape = image_shape if image_shape is not None else getattr(model, "image_shape", None)
    if shape is None:
        raise ValueError(
            f"The model ({type(model).__name__}) has no `image_shape` property; pass "
            "image_shape=(height, width, channels)."
        )
    try:
        shape = tuple(int(v) for v in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(
            "`image_shape` must be three positive integers (height, width, channels). "
            f"Received: image_shape={shape!r}"
        ) from None
    return shape


def _model_variables(model):
    """The `tf.Variable`s behind a model's variables (Keras 3 wraps them)."""
    found = []
    for variable in getattr(model, "variables", None) or []:
        if not isinstance(variable, tf.Variable):
            variable = getattr(variable, "value", variable)
        if isinstance(variable, tf.Variable):
            found.append(variable)
    return found


def _parameters(model, image, mask):
    """The model's mixture parameters as a dict of float32 tensors."""
    params = model({"image": image, "mask": mask}, training=False)
    missing = [key for key in PARAMETER_KEYS if key not in params]
    if missing:
        raise ValueError(
            f"The model must return a dict with {list(PARAMETER_KEYS)}; missing {missing}. "
            f"Received keys: {sorted(params)}"
        )
    return {key: tf.cast(params[key], tf.float32) for key in PARAMETER_KEYS}


def _describe(model, image_shape):
    """Runs the model once on a dummy image; returns `(K, L)` and checks `N`."""
    height, width, channels = image_shape
    image = tf.zeros([1, height, width, channels])
    mask = tf.zeros([1, height, width, 1])
    params = _parameters(model, image, mask)
    event_size = height * width * channels
    expected = {
        "logits": (1, None),
        "loc": (1, None, event_size),
        "factors": (1, None, event_size, None),
        "diag": (1, None, event_size),
    }
    for key, shape in expected.items():
        got = tuple(params[key].shape)
        if len(got) != len(shape) or any(e is not None and e != g for e, g in zip(shape, got)):
            raise ValueError(
                f"The model's `{key}` has shape {got} for one image of shape {image_shape}; "
                f"expected {tuple('?' if e is None else e for e in shape)}."
            )
    return int(params["logits"].shape[-1]), int(params["factors"].shape[-1])


@contextlib.contextmanager
def _assertions_off(model):
    """Switches off the run-time checks of the model's `ObservedInput` layers
    while the TFLite graph is traced (TFLite has no assertion ops)."""
    layers = []

    def visit(layer):
        if isinstance(layer, ObservedInput) and layer.validate:
            layers.append(layer)
        for child in getattr(layer, "layers", None) or []:
            visit(child)

    visit(model)
    for layer in layers:
        layer.validate = False
    try:
        yield
    finally:
        for layer in layers:
            layer.validate = True


# === Input checks ===


def _assert_inputs(image, mask, image_shape, scored=False):
    """`(image, mask)` behind checks of their shapes and of the input rule
    (`dmfa_tf.core.checks`: mask codes, observed pixels, and with `scored` the
    missing ones, which `log_prob` scores). A restored signature does not check
    the shapes it is fed by itself, so they are checked here."""
    height, width, channels = image_shape
    image = tf.ensure_shape(image, [None, height, width, channels], name="image")
    mask = tf.ensure_shape(mask, [None, height, width, 1 if channels == 1 else None], name="mask")
    mask_channels = tf.shape(mask)[-1]
    allowed = "1" if channels == 1 else f"1 or {channels}"
    check = tf.debugging.Assert(
        (tf.equal(mask_channels, 1) | tf.equal(mask_channels, channels))
        & tf.equal(tf.shape(mask)[0], tf.shape(image)[0]),
        [f"dmfa_tf: `mask` must have the shape [batch, {height}, {width}, {allowed}] "
         "and the same batch size as `image`. Received image and mask shapes:",
         tf.shape(image), tf.shape(mask)],
        summarize=4,
    )
    with tf.control_dependencies([check]):
        mask = tf.identity(mask)
    with tf.control_dependencies(checks.input_assertions(image, mask, scored=scored)):
        return tf.identity(image), tf.identity(mask)


def _nan_unless(valid, values):
    """`values` `[B, ...]` with the rows of invalid images set to NaN."""
    for _ in range(values.shape.rank - 1):
        valid = tf.expand_dims(valid, -1)  # [B, 1, ...]
    return tf.where(valid, values, tf.constant(np.nan, values.dtype))


# === Signatures ===


def _specs(image_shape):
    height, width, channels = image_shape
    image = tf.TensorSpec([None, height, width, channels], tf.float32, name="image")
    mask = tf.TensorSpec(
        [None, height, width, 1 if channels == 1 else None], tf.float32, name="mask"
    )
    return image, mask


def _serving_functions(model, image_shape, diagonal_noise=True, recalibration=None):
    """The SavedModel signatures (see the module docstring), as `tf.function`s."""
    image_spec, mask_spec = _specs(image_shape)

    def mixture(image, mask, scored=False):
        image, mask = _assert_inputs(image, mask, image_shape, scored=scored)
        params = _parameters(model, image, mask)
        return params, MaskedFactorMixture.from_images(params, mask, image)

    @tf.function(input_signature=[image_spec, mask_spec])
    def serving_default(image, mask):
        params, dist = mixture(image, mask)
        return {
            "imputation": unflatten_images(dist.imputation(), image_shape),  # [B, H, W, C]
            "variance": unflatten_images(dist.variance(), image_shape),  # [B, H, W, C]
            "mixture_weights": tf.math.softmax(params["logits"], axis=-1),  # [B, K]
        }

    @tf.function(input_signature=[image_spec, mask_spec])
    def log_prob(image, mask):
        _, dist = mixture(image, mask, scored=True)
        return {"log_prob": dist.log_prob(flatten_images(image))}  # [B]

    @tf.function(
        input_signature=[
            image_spec,
            mask_spec,
            tf.TensorSpec([], tf.int32, name="num_samples"),
            tf.TensorSpec([2], tf.int32, name="seed"),
        ]
    )
    def sample(image, mask, num_samples, seed):
        num_samples = tf.ensure_shape(num_samples, [], name="num_samples")
        seed = tf.ensure_shape(seed, [2], name="seed")
        num_samples = checked_sample_count(
            num_samples, tf.size(image, out_type=tf.int32)
        )  # an assertion: >= 0, and S x B x N at most MAX_SAMPLE_VALUES
        _, dist = mixture(image, mask)
        draws = dist.sample(num_samples, seed=seed, diagonal_noise=diagonal_noise)  # [S, B, N]
        return {"samples": unflatten_images(draws, image_shape)}  # [S, B, H, W, C]

    @tf.function(input_signature=[image_spec, mask_spec])
    def parameters(image, mask):
        params, _ = mixture(image, mask)
        return params

    @tf.function(
        input_signature=[image_spec, mask_spec, tf.TensorSpec([], tf.float32, name="level")]
    )
    def intervals(image, mask, level):
        level = tf.ensure_shape(level, [], name="level")
        _, dist = mixture(image, mask)
        ends = recalibration_lib.interval(dist, level, recalibration)  # an assertion: 0 < level < 1
        observed = checks.is_observed(dist.mask)
        value = tf.cast(flatten_images(image), dist.dtype)
        return {
            name: unflatten_images(tf.where(observed, value, end), image_shape)
            for name, end in zip(("lower", "upper"), ends)
        }

    return {
        "serving_default": serving_default,
        "log_prob": log_prob,
        "sample": sample,
        "parameters": parameters,
        "intervals": intervals,
    }


def _tflite_functions(model, image_shape):
    """The TFLite signatures: no assertions, a `valid` output instead."""
    image_spec, mask_spec = _specs(image_shape)

    @tf.function(input_signature=[image_spec, mask_spec])
    def impute(image, mask):
        valid = checks.valid_per_example(image, mask)  # [B]
        params = _parameters(model, image, mask)
        dist = MaskedFactorMixture.from_images(params, mask, image)
        outputs = {
            "imputation": unflatten_images(dist.imputation(), image_shape),
            "variance": unflatten_images(dist.variance(), image_shape),
            "mixture_weights": tf.math.softmax(params["logits"], axis=-1),
        }
        outputs = {key: _nan_unless(valid, value) for key, value in outputs.items()}
        outputs["valid"] = valid
        return outputs

    @tf.function(input_signature=[image_spec, mask_spec])
    def log_prob(image, mask):
        valid = checks.valid_per_example(image, mask, scored=True)  # [B]
        params = _parameters(model, image, mask)
        dist = MaskedFactorMixture.from_images(params, mask, image)
        return {
            "log_prob": _nan_unless(valid, dist.log_prob(flatten_images(image))),
            "valid": valid,
        }

    return {"impute": impute, "log_prob": log_prob}


def _module(model, functions):
    """A `tf.Module` that holds the model's variables and the functions."""
    module = tf.Module()
    module.model_variables = _model_variables(model)
    for name, function in functions.items():
        setattr(module, name, function)
    return module


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
            signature (None: the model's own intervals).

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
                export_tflite(model, os.path.join(staging, name), variant, image_shape)
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
        with open(os.path.join(staging, "export.json"), "w") as f:
            json.dump(info, f, indent=2)
            f.write("\n")
        return _publish(staging, path, version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging, path, version):
    """Renames the finished `staging` folder to `<path>/<version>`, never over an
    existing one; with no `version`, takes the next free one. With `staging`
    None, only checks that `version` is free."""
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


# === TFLite ===


def _check_quantize(quantize):
    if quantize is None:
        return ()
    values = (quantize,) if isinstance(quantize, str) else tuple(quantize)
    for value in values:
        if value not in QUANTIZATIONS:
            raise ValueError(
                f"Unknown quantisation {value!r}; choose from {QUANTIZATIONS}. "
                f"Received: quantize={quantize!r}"
            )
    return tuple(dict.fromkeys(values))


def export_tflite(model, path, quantize=None, image_shape=None, overwrite=False):
    """Writes a TFLite file with `impute` and `log_prob` signatures, builtin ops only.

    Args:
        model: as in `export_saved_model`.
        path: the `.tflite` file to write.
        quantize: None (float32), `"float16"` or `"dynamic_range"`.
        image_shape: `(H, W, C)` for a model without an `image_shape` property.
        overwrite: replace an existing file.

    Returns:
        `path`.

    Raises:
        FileExistsError: `path` exists and `overwrite` is False.
        RuntimeError: the converted file holds an operator that is not a TFLite
            builtin (which would need the Flex delegate).
    """
    model = float32_copy(model)  # TFLite has no bfloat16 kernels; serving computes in float32
    image_shape = model_image_shape(model, image_shape)
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(
            f"`quantize` must be None or one of {QUANTIZATIONS}. Received: quantize={quantize!r}"
        )
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it.")
    with tempfile.TemporaryDirectory(prefix="dmfa_tflite_") as folder:
        functions = _tflite_functions(model, image_shape)
        with _assertions_off(model):
            signatures = {name: fn.get_concrete_function() for name, fn in functions.items()}
        tf.saved_model.save(_module(model, functions), folder, signatures=signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            folder, signature_keys=list(TFLITE_SIGNATURES)
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        content = converter.convert()
    ops = tflite_ops(content)
    forbidden = [op for op in ops if op in _FORBIDDEN_TFLITE_OPS or op.startswith("Flex")]
    if forbidden:
        raise RuntimeError(
            f"The TFLite conversion produced operators that are not TFLite builtins: "
            f"{forbidden} (all operators: {ops})."
        )
    files_lib.write_bytes(path, content)
    return path


def _tflite_schema():
    try:
        from tensorflow.lite.python import schema_py_generated as schema
    except ImportError:  # pragma: no cover - other TensorFlow builds
        from ai_edge_litert import schema_py_generated as schema
    return schema


def tflite_ops(model):
    """Sorted names of the operators used in every subgraph (signature) of a
    TFLite model: builtins by name (`"FULLY_CONNECTED"`), custom operators by
    their code (Select TF ops are `"Flex..."`).

    Args:
        model: the file's path or its bytes.
    """
    if isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as f:
            model = f.read()
    schema = _tflite_schema()
    names = {
        value: name
        for name, value in vars(schema.BuiltinOperator).items()
        if not name.startswith("_")
    }
    root = schema.Model.GetRootAs(bytearray(model), 0)
    codes = []
    for i in range(root.OperatorCodesLength()):
        code = root.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            codes.append(custom.decode() if custom else "CUSTOM")
        else:
            codes.append(names.get(builtin, f"BUILTIN_{builtin}"))
    used = set()
    for s in range(root.SubgraphsLength()):
        subgraph = root.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            used.add(codes[subgraph.Operators(o).OpcodeIndex()])
    return sorted(used)


def tflite_interpreter(model):
    """A TFLite interpreter for a file path or bytes: LiteRT's
    (`ai_edge_litert`) when installed, else the one in TensorFlow."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    if isinstance(model, (bytes, bytearray)):
        return Interpreter(model_content=bytes(model))
    return Interpreter(model_path=os.fspath(model))


def run_tflite(model, signature, **inputs):
    """Runs one signature of a TFLite model (path, bytes or interpreter) on
    NumPy inputs; the batch size may be anything, 0 included (a bare LiteRT
    runner needs at least 1). Returns a dict of arrays."""
    interpreter = model if hasattr(model, "get_signature_runner") else tflite_interpreter(model)
    runner = interpreter.get_signature_runner(signature)
    inputs = {key: np.asarray(value, np.float32) for key, value in inputs.items()}
    if inputs and all(value.ndim and len(value) == 0 for value in inputs.values()):
        # An empty batch crashes the TFLite runtime (its Unpack kernel): run one
        # neutral image (all observed) for the output shapes and return none.
        one = {
            key: (np.ones if key == "mask" else np.zeros)((1,) + value.shape[1:], np.float32)
            for key, value in inputs.items()
        }
        return {key: value[:0] for key, value in runner(**one).items()}
    return runner(**inputs)


# === Command line ===


def _random_batch(image_shape, count=4, seed=0):
    """Images in [0, 1] with a centred rectangular hole covering a quarter."""
    height, width, channels = image_shape
    rng = np.random.default_rng(seed)
    image = rng.uniform(size=(count, height, width, channels)).astype(np.float32)
    mask = np.ones((count, height, width, 1), np.float32)
    mask[:, height // 4 : height // 4 + max(1, height // 2), width // 4 : width // 4 + max(1, width // 2)] = 0
    return image, mask


def tflite_parity(saved_model, tflite_file, image, mask):
    """Largest absolute differences between a TFLite file and the SavedModel it
    was exported beside, on one batch: `{"imputation", "variance",
    "mixture_weights", "log_prob"}`."""
    loaded = tf.saved_model.load(saved_model) if isinstance(saved_model, str) else saved_model
    serving = loaded.signatures["serving_default"](image=tf.constant(image), mask=tf.constant(mask))
    log_prob = loaded.signatures["log_prob"](image=tf.constant(image), mask=tf.constant(mask))
    interpreter = tflite_interpreter(tflite_file)
    impute = run_tflite(interpreter, "impute", image=image, mask=mask)
    scored = run_tflite(interpreter, "log_prob", image=image, mask=mask)
    errors = {
        key: float(np.max(np.abs(impute[key] - serving[key].numpy())))
        for key in ("imputation", "variance", "mixture_weights")
    }
    errors["log_prob"] = float(np.max(np.abs(scored["log_prob"] - log_prob["log_prob"].numpy())))
    return errors


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m dmfa_tf.export",
        description="Export a saved model (model.keras or mfa.npz folder) as a TF Serving "
        "SavedModel in <output>/<version>/, optionally with TFLite files.",
    )
    parser.add_argument("--model", required=True, help="saved model folder, e.g. saved_models/mnist")
    parser.add_argument(
        "--output", required=True, help="model base path, e.g. serving/mnist (versions go below it)"
    )
    parser.add_argument("--version", type=int, help="version number (default: the next free one)")
    parser.add_argument("--tflite", action="store_true", help="also write model.tflite")
    parser.add_argument(
        "--quantize",
        action="append",
        choices=QUANTIZATIONS,
        default=[],
        help="also write a quantised TFLite variant (repeatable; implies --tflite)",
    )
    parser.add_argument(
        "--no-diagonal-noise",
        dest="diagonal_noise",
        action="store_false",
        help="`sample` leaves out the sqrt(diag) noise",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from dmfa_tf import saving

    try:
        model = saving.load(args.model)
        fitted = recalibration_lib.load(args.model)  # the first map: the model's test mask
        target = export_saved_model(
            model,
            args.output,
            version=args.version,
            tflite=args.tflite or bool(args.quantize),
            quantize=args.quantize,
            diagonal_noise=args.diagonal_noise,
            recalibration=fitted,
        )
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        print(f"python -m dmfa_tf.export: error: {error}", file=sys.stderr)
        return 2
    print(f"Exported SavedModel {target} (signatures: {', '.join(SERVING_SIGNATURES)})")
    if fitted is not None:
        print(f"  intervals: recalibrated by the map fitted on {fitted.fitted_on.get('mask')} "
              f"holes of the {fitted.fitted_on.get('split')} split")
    files = sorted(name for name in os.listdir(target) if name.endswith(".tflite"))
    if files:
        image, mask = _random_batch(model_image_shape(model))
        loaded = tf.saved_model.load(target)
        for name in files:
            file = os.path.join(target, name)
            errors = tflite_parity(loaded, file, image, mask)
            worst = ", ".join(f"{key} {value:.2g}" for key, value in errors.items())
            print(f"  {name}: {os.path.getsize(file):,} bytes; largest error vs the SavedModel: {worst}")
        print(f"  TFLite operators: {', '.join(tflite_ops(os.path.join(target, files[0])))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
