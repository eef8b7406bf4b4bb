"""The paper's network (DESIGN.md section 2): 4 convolutions (5x5, 5x5, 5x5,
3x3; 16, 32, 64, 32 or 24 channels), dense heads on the flattened features."""

import keras

from dmfa_tf.models.layers import DenseMixtureHead

NAME = "linear_heads"
CPU_XLA = True  # XLA pays on CPU (benchmarks/bench_training.py)
CPU_BF16 = True  # bfloat16 pays on CPUs that have it (README, "Speed")


def build(inputs, image_shape, last_channels=None):
    """The paper's network (DESIGN.md section 2); `last_channels` defaults to the
    paper's 32 for grey images and 24 for colour ones."""
    if last_channels is None:
        last_channels = 32 if image_shape[2] == 1 else 24
    x = inputs
    for filters, kernel in ((16, 5), (32, 5), (64, 5), (last_channels, 3)):
        x = keras.layers.Conv2D(filters, kernel, padding="same", activation="relu")(x)
    features = keras.layers.Flatten()(x)
    return features, DenseMixtureHead, dict(factor_amplitude=0.5, variance_floor=1e-10)
