"""TFLite files with builtin ops only: conversion, operator listing, running.

`export_tflite(model, "model.tflite")` writes a file with three signatures,
`impute` (`imputation`, `variance`, `mixture_weights`, `valid`), `log_prob`
(`log_prob`, `valid`) and `intervals` (`lower`, `upper`, `valid`, for a
`level` input) (`dmfa_tf.serving.signatures`), converted
with TFLite builtin ops only (no Select TF ops: the small Cholesky
factorisations are unrolled by `dmfa_tf.core.linalg`, and done column by
column for more than `linalg.MAX_UNROLLED` factors). TFLite has no
assertions, so the input checks become the `valid` output (bool `[B]`), and
every output of an image that fails them is NaN: bad input is never silently
scored. The graph is traced with the `ObservedInput` layers' assertions
switched off, so none reaches the file. `quantize="float16"` stores the
weights as float16; `"dynamic_range"` stores them as int8, with float
activations.

`tflite_ops` lists a file's operators (read from its flatbuffer),
`tflite_interpreter` and `run_tflite` run it, and `tflite_parity` compares it
with the SavedModel it was exported beside.
"""

import contextlib
import os
import tempfile

import numpy as np
import tensorflow as tf

from dmfa_tf import files as files_lib
from dmfa_tf.core import linalg
from dmfa_tf.models import ObservedInput, float32_copy
from dmfa_tf.serving.signatures import (
    TFLITE_SIGNATURES,
    _module,
    _tflite_functions,
    model_image_shape,
)

__all__ = [
    "QUANTIZATIONS",
    "export_tflite",
    "run_tflite",
    "tflite_interpreter",
    "tflite_ops",
    "tflite_parity",
]

QUANTIZATIONS = ("float16", "dynamic_range")

# Operators that must never be in an exported TFLite file: Select TF ops show
# up as custom "Flex..." operators; resource variables mean the weights were
# not frozen.
_FORBIDDEN_TFLITE_OPS = ("CUSTOM", "VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE")


# === Conversion ===


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


def export_tflite(
    model, path, quantize=None, image_shape=None, overwrite=False, recalibration=None
):
    """Writes a TFLite file with `impute`, `log_prob` and `intervals`
    signatures, builtin ops only.

    Args:
        model: as in `export_saved_model`.
        path: the `.tflite` file to write.
        quantize: None (float32), `"float16"` or `"dynamic_range"`.
        image_shape: `(H, W, C)` for a model without an `image_shape` property.
        overwrite: replace an existing file.
        recalibration: a `recalibration.Recalibration` for the `intervals`
            signature (None: the model's own intervals).

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
        functions = _tflite_functions(model, image_shape, recalibration)
        # builtins_only: more than MAX_UNROLLED factors (L + G) factorise by columns.
        with _assertions_off(model), linalg.builtins_only():
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



# === Operators ===


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


# === Running ===


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
    NumPy inputs (`intervals` also takes `level`, a number); the batch size
    may be anything, 0 included (a bare LiteRT runner needs at least 1).
    Returns a dict of arrays."""
    interpreter = model if hasattr(model, "get_signature_runner") else tflite_interpreter(model)
    runner = interpreter.get_signature_runner(signature)
    inputs = {key: np.asarray(value, np.float32) for key, value in inputs.items()}
    batched = [value for value in inputs.values() if value.ndim]  # not `level`
    if batched and all(len(value) == 0 for value in batched):
        # An empty batch crashes the TFLite runtime (its Unpack kernel): run one
        # neutral image (all observed) for the output shapes and return none.
        one = {
            key: (np.ones if key == "mask" else np.zeros)((1,) + value.shape[1:], np.float32)
            if value.ndim else value
            for key, value in inputs.items()
        }
        return {key: value[:0] for key, value in runner(**one).items()}
    return runner(**inputs)


def tflite_parity(saved_model, tflite_file, image, mask, level=0.9):
    """Largest absolute differences between a TFLite file and the SavedModel it
    was exported beside, on one batch: `{"imputation", "variance",
    "mixture_weights", "log_prob", "lower", "upper"}` (the last two: the
    `intervals` signature at `level`, over the valid images)."""
    loaded = tf.saved_model.load(saved_model) if isinstance(saved_model, str) else saved_model
    image_t, mask_t = tf.constant(image), tf.constant(mask)
    serving = loaded.signatures["serving_default"](image=image_t, mask=mask_t)
    log_prob = loaded.signatures["log_prob"](image=image_t, mask=mask_t)
    interpreter = tflite_interpreter(tflite_file)
    impute = run_tflite(interpreter, "impute", image=image, mask=mask)
    scored = run_tflite(interpreter, "log_prob", image=image, mask=mask)
    errors = {
        key: float(np.max(np.abs(impute[key] - serving[key].numpy())))
        for key in ("imputation", "variance", "mixture_weights")
    }
    errors["log_prob"] = float(np.max(np.abs(scored["log_prob"] - log_prob["log_prob"].numpy())))
    if "intervals" in interpreter.get_signature_list() and "intervals" in loaded.signatures:
        saved = loaded.signatures["intervals"](
            image=image_t, mask=mask_t, level=tf.constant(level, tf.float32)
        )
        ends = run_tflite(interpreter, "intervals", image=image, mask=mask, level=level)
        for key in ("lower", "upper"):
            errors[key] = float(np.max(np.abs(ends[key] - saved[key].numpy())))
    return errors
