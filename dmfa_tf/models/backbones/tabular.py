"""Table rows (`[B, 1, D, 1]`, standardised cells): a dense embedding, pre-norm
residual blocks with dropout, dense heads that also see the network input."""

import keras

from dmfa_tf.models.layers import DenseMixtureHead

NAME = "tabular"
CPU_XLA = False
CPU_BF16 = False
TAKES_DROPOUT = True  # the `--dropout` flag applies


def width_kwargs(width):
    """The build options of one `--width` flag: the units of every dense layer."""
    return {"width": width}


def build(inputs, image_shape, width=256, blocks=2, dropout=0.0, skip=True):
    """Table rows: a dense layer of `width` units, then `blocks` pre-norm
    residual blocks (layer norm, dense + ReLU, dropout, dense, added back);
    with `skip`, the network input (observed cells, observed flags) is also
    given to the heads, so that they hold a linear regression on the observed
    cells (a full Gaussian's conditional mean is one per mask).
    Heads default to factor loadings in [-2, 2] and a variance floor of 1e-3,
    on the scale of standardised cells."""
    for value, what, least in ((width, "width", 1), (blocks, "blocks", 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"`{what}` must be an integer >= {least}. Received: {what}={value!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(width, name="embed")(x)
    for i in range(blocks):
        h = keras.layers.LayerNormalization(name=f"block{i}_norm")(x)
        h = keras.layers.Dense(width, activation="relu", name=f"block{i}_dense0")(h)
        if dropout:
            h = keras.layers.Dropout(dropout, name=f"block{i}_dropout")(h)
        h = keras.layers.Dense(width, name=f"block{i}_dense1")(h)
        x = keras.layers.Add(name=f"block{i}_add")([x, h])
    x = keras.layers.Activation("relu", name="features")(x)
    if skip:
        x = keras.layers.Concatenate(name="skip")([x, keras.layers.Flatten(name="flat_input")(inputs)])
    return x, DenseMixtureHead, dict(factor_amplitude=4.0, variance_floor=1e-3)
