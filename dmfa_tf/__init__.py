"""dmfa_tf: Deep Mixture of Factor Analyzers in TensorFlow, Keras 3 and TFP.

The network returns the conditional density of an image's missing pixels given
its observed ones: a Gaussian mixture whose covariances are `A A^T + diag(d)`.
"""

import os as _os

# TensorFlow Probability imports `tf_keras` for its Keras-2 layers; make sure
# `keras` means Keras 3 for this package before anything imports TensorFlow.
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "0")



def _keras_backend():
    """The backend Keras will use, as Keras chooses it: the KERAS_BACKEND
    environment variable, else `keras.json` in KERAS_HOME (~/.keras)."""
    backend = _os.environ.get("KERAS_BACKEND")
    if backend:
        return backend, "the KERAS_BACKEND environment variable"
    import json

    home = _os.environ.get("KERAS_HOME") or _os.path.join(_os.path.expanduser("~"), ".keras")
    path = _os.path.join(home, "keras.json")
    try:
        with open(path) as f:
            return json.load(f).get("backend") or "tensorflow", path
    except (OSError, ValueError, AttributeError):
        return "tensorflow", None


# The density, the layers and the export are TensorFlow code: under another
# Keras backend they would fail later, deep inside Keras (or Keras itself fails
# to import without that backend's package). Say so before anything runs.
_backend, _source = _keras_backend()
if _backend != "tensorflow":
    raise ImportError(
        f"dmfa_tf runs on Keras's TensorFlow backend only, and Keras is set to the "
        f"{_backend!r} backend by {_source}. Set KERAS_BACKEND=tensorflow."
    )

from dmfa_tf import masks  # noqa: E402
from dmfa_tf.core.distribution import (  # noqa: E402
    ABSENT,
    MISSING,
    OBSERVED,
    MaskedFactorMixture,
    flatten_images,
    flatten_mask,
    unflatten_images,
)
from dmfa_tf.models.layers import ConvMixtureHead, DenseMixtureHead, ObservedInput  # noqa: E402
from dmfa_tf.models.losses import MaskedNLL, negative_log_likelihood, squared_error  # noqa: E402
from dmfa_tf.models import ARCHITECTURES, DMFAModel, build_model  # noqa: E402

__version__ = "0.1.0"


def __getattr__(name):
    # `export_saved_model` and `export_tflite` load `dmfa_tf.serving` on first
    # use, so that `import dmfa_tf` does not load the export code.
    if name in ("export_saved_model", "export_tflite"):
        from dmfa_tf import serving

        return getattr(serving, name)
    raise AttributeError(f"module 'dmfa_tf' has no attribute {name!r}")


__all__ = [
    "ABSENT",
    "ARCHITECTURES",
    "ConvMixtureHead",
    "DMFAModel",
    "DenseMixtureHead",
    "MISSING",
    "MaskedFactorMixture",
    "MaskedNLL",
    "OBSERVED",
    "ObservedInput",
    "build_model",
    "export_saved_model",
    "export_tflite",
    "flatten_images",
    "flatten_mask",
    "masks",
    "negative_log_likelihood",
    "squared_error",
    "unflatten_images",
]
