"""DMFA networks: `build_model`, the backbones it knows, and what they train on.

| module | owns |
|---|---|
| `backbones/` | one file per architecture and the registry (`BACKBONES`) |
| `layers` | the masked input (`ObservedInput`), the mixture heads and the scale prior |
| `losses` | the masked NLL, the squared error, training objectives |
| `optimizers` | the fused Adam update |
| `device` | precision and XLA per device; float32 copies for exports |
| `dmfa_model` | `DMFAModel`: the functional model that trains on its masked NLL |
| `build` | `build_model`, `with_scale_prior` |

Rows of a table are events of shape `(1, D, 1)`; their models are built with
`bounded_inputs=False` (cells are not pixels in [0, 1]): `dmfa_tf.tabular`.
"""

from dmfa_tf.models import optimizers
from dmfa_tf.models.backbones import ARCHITECTURES, BACKBONES, CPU_BF16, CPU_XLA, width_kwargs
from dmfa_tf.models.build import build_model, with_scale_prior
from dmfa_tf.models.device import (
    AUTO_XLA_MIN_STEPS,
    PRECISIONS,
    architecture_of,
    auto_jit_compile,
    cpu_has_bfloat16,
    float32_copy,
    precision_of,
    resolve_precision,
)
from dmfa_tf.models.dmfa_model import DMFAModel
from dmfa_tf.models.layers import ConvMixtureHead, DenseMixtureHead, ObservedInput, ScalePrior
from dmfa_tf.models.losses import MaskedNLL, Objective, negative_log_likelihood, squared_error

__all__ = [
    "ARCHITECTURES", "AUTO_XLA_MIN_STEPS", "BACKBONES", "CPU_BF16", "CPU_XLA", "ConvMixtureHead",
    "DMFAModel", "DenseMixtureHead", "MaskedNLL", "Objective", "ObservedInput", "PRECISIONS", "ScalePrior",
    "architecture_of", "auto_jit_compile", "build_model", "cpu_has_bfloat16", "float32_copy",
    "negative_log_likelihood", "optimizers", "precision_of", "resolve_precision", "squared_error",
    "width_kwargs", "with_scale_prior",
]
