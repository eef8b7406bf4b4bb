"""U-Net encoder-decoder (3 levels, 32 base channels, global context) with
convolutional heads; the weight count does not depend on the image size."""

import keras

from dmfa_tf.core.checks import check_positive_int
from dmfa_tf.models.layers import ConvMixtureHead

NAME = "fullconv"
CPU_XLA = True
CPU_BF16 = True


def width_kwargs(width):
    """The build options of one `--width` flag: the base channels."""
    return {"width": width}


def _conv_block(x, filters, name, convs=2):
    for i in range(convs):
        x = keras.layers.Conv2D(
            filters, 3, padding="same", activation="relu", name=f"{name}_conv{i}"
        )(x)
    return x


def build(inputs, image_shape, width=32, depth=3, blocks=2):
    """U-Net: `depth` stride-2 levels with channels doubling per level, a
    global-context vector added at the bottom, skip connections; `blocks`
    3x3 convolutions per level and side. Inputs are zero-padded to a multiple
    of `2**depth` and the output cropped back, so any image size works and the
    weight count does not depend on it."""
    height, image_width, _ = image_shape
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"`depth` must be a non-negative integer. Received: depth={depth!r}")
    check_positive_int(width, "width")
    check_positive_int(blocks, "blocks")
    multiple = 2**depth
    pad_h, pad_w = (-height) % multiple, (-image_width) % multiple
    padding = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
    x = inputs
    if pad_h or pad_w:
        x = keras.layers.ZeroPadding2D(padding, name="pad")(x)
    x = _conv_block(x, width, "enc0", blocks)
    skips = []
    for level in range(1, depth + 1):
        skips.append(x)
        filters = width * 2**level
        x = keras.layers.Conv2D(
            filters, 3, strides=2, padding="same", activation="relu", name=f"down{level}"
        )(x)
        x = _conv_block(x, filters, f"enc{level}", blocks)
    context = keras.layers.GlobalAveragePooling2D(name="context_pool")(x)
    context = keras.layers.Dense(x.shape[-1], activation="relu", name="context")(context)
    x = keras.layers.Add(name="add_context")([x, keras.layers.Reshape((1, 1, -1))(context)])
    for level in reversed(range(depth)):
        filters = width * 2**level
        x = keras.layers.Conv2DTranspose(
            filters, 2, strides=2, padding="same", name=f"up{level}"
        )(x)
        x = keras.layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _conv_block(x, filters, f"dec{level}", blocks)
    if pad_h or pad_w:
        x = keras.layers.Cropping2D(padding, name="crop")(x)
    return x, ConvMixtureHead, dict(factor_amplitude=0.5, variance_floor=1e-4)
