"""Deprecated: the MFA baseline moved to `dmfa_tf.baselines.mfa`."""

import warnings

from dmfa_tf.baselines.mfa import (  # noqa: F401
    CONDITIONALS,
    FILENAME,
    INITS,
    KMEANS_ITERATIONS,
    MFA,
    MIN_RESPONSIBILITY,
    NOISE_TYPES,
    RANDOM_FACTOR_SCALE,
    WEIGHT_FLOOR,
)

warnings.warn(
    "dmfa_tf.mfa moved to dmfa_tf.baselines.mfa; import from there.",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "CONDITIONALS",
    "FILENAME",
    "INITS",
    "KMEANS_ITERATIONS",
    "MFA",
    "MIN_RESPONSIBILITY",
    "NOISE_TYPES",
    "RANDOM_FACTOR_SCALE",
    "WEIGHT_FLOOR",
]
