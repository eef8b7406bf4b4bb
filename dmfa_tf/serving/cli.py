"""The command line: `python -m dmfa_tf.serving --model=DIR --output=BASE`.

Loads a saved model folder (`dmfa_tf.saving.load`), exports it with
`export_saved_model` (the `intervals` signature recalibrated by the folder's
first map, when it has one) and, with `--tflite` or `--quantize`, reports each
TFLite file's size, its largest error against the SavedModel and its
operators. Exit status 0, or 2 with the reason on stderr.
"""

import argparse
import os
import sys

import numpy as np
import tensorflow as tf

from dmfa_tf.core import recalibration as recalibration_lib
from dmfa_tf.serving.saved_model import export_saved_model
from dmfa_tf.serving.signatures import SERVING_SIGNATURES, model_image_shape
from dmfa_tf.serving.tflite import QUANTIZATIONS, tflite_ops, tflite_parity

__all__ = ["main", "parse_args"]

PROG = "python -m dmfa_tf.serving"


def _random_batch(image_shape, count=4, seed=0):
    """Images in [0, 1] with a centred rectangular hole covering a quarter."""
    height, width, channels = image_shape
    rng = np.random.default_rng(seed)
    image = rng.uniform(size=(count, height, width, channels)).astype(np.float32)
    mask = np.ones((count, height, width, 1), np.float32)
    mask[:, height // 4 : height // 4 + max(1, height // 2), width // 4 : width // 4 + max(1, width // 2)] = 0
    return image, mask


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog=PROG,
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
        print(f"{PROG}: error: {error}", file=sys.stderr)
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
