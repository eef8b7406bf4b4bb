"""Dense layers on the flattened input, dense heads; for small inputs (8x8 digits)."""

import keras

from dmfa_tf.models.layers import DenseMixtureHead

NAME = "mlp"
CPU_XLA = False
CPU_BF16 = False


def width_kwargs(width):
    """The build options of one `--width` flag: the units of both hidden layers."""
    return {"hidden": (width, width)}


def build(inputs, image_shape, hidden=(256, 256)):
    """Dense layers on the flattened input."""
    x = keras.layers.Flatten()(inputs)
    for i, units in enumerate(hidden):
        x = keras.layers.Dense(units, activation="relu", name=f"hidden{i}")(x)
    return x, DenseMixtureHead, dict(factor_amplitude=0.5, variance_floor=1e-4)
