"""Deprecated: the MFA baseline moved to `dmfa_tf.baselines.mfa`."""

import warnings

from dmfa_tf.baselines import mfa as _moved

warnings.warn(
    "dmfa_tf.mfa moved to dmfa_tf.baselines.mfa; import from there.",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = list(_moved.__all__)


def __getattr__(name):
    if name in __all__:
        return getattr(_moved, name)
    raise AttributeError(f"module 'dmfa_tf.mfa' has no attribute {name!r}")
