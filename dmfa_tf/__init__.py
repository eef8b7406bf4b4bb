"""dmfa_tf: Deep Mixture of Factor Analyzers in TensorFlow, Keras 3 and TFP.

The network returns the conditional density of an image's missing pixels given
its observed ones: a Gaussian mixture whose covariances are `A A^T + diag(d)`.
"""

import os as _os

# TensorFlow Probability imports `tf_keras` for its Keras-2 layers; make sure
# `keras` means Keras 3 for this package before anything imports TensorFlow.
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "0")

from dmfa_tf import masks  # noqa: E402
from dmfa_tf.distribution import (  # noqa: E402
    ABSENT,
    MISSING,
    OBSERVED,
    MaskedFactorMixture,
    flatten_images,
    flatten_mask,
    unflatten_images,
)
from dmfa_tf.layers import ConvMixtureHead, DenseMixtureHead, ObservedInput  # noqa: E402
from dmfa_tf.losses import MaskedNLL, negative_log_likelihood, squared_error  # noqa: E402
from dmfa_tf.models import ARCHITECTURES, DMFAModel, build_model  # noqa: E402

__version__ = "0.1.0"


def __getattr__(name):
    # `export_saved_model` and `export_tflite` load `dmfa_tf.export` on first
    # use, so that `python -m dmfa_tf.export` does not import it twice.
    if name in ("export_saved_model", "export_tflite"):
        from dmfa_tf import export

        return getattr(export, name)
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
