"""The DMFA training loss and the per-image scores of the paper.

Both scores are per image, on the [0, 1] pixel scale, summed over the missing
coordinates (every channel of every pixel whose mask is 0):

- NLL: `-log p(x_missing | x_observed)` in nats, the paper's definition (no
  dequantisation; negative when the model is confident);
- squared error: the paper's "MSE", the sum of squared errors of the most
  probable imputation (the mean of the component with the largest weight).

Pixels whose mask is -1 (absent) are in neither score.
"""

import keras
import tensorflow as tf

from dmfa_tf.distribution import MISSING, MaskedFactorMixture, flatten_images, flatten_mask

__all__ = ["MaskedNLL", "negative_log_likelihood", "squared_error"]


def negative_log_likelihood(params, image, mask, validate_args=False):
    """Per-image NLL `[B]` of the missing pixels given the observed ones.

    Args:
        params: dict of the network's outputs (`logits`, `loc`, `factors`, `diag`).
        image: `[B, H, W, C]` complete images (the targets).
        mask: `[B, H, W, 1 or C]` mask, 1 observed / 0 missing / -1 absent.
        validate_args: run the distribution's argument checks.

    An image with no missing pixel has NLL 0.
    """
    dist = MaskedFactorMixture.from_images(params, mask, validate_args=validate_args)
    return -dist.log_prob(flatten_images(tf.cast(image, dist.dtype)))


def squared_error(params, image, mask):
    """Per-image sum of squared errors `[B]` of the most probable imputation
    over the missing pixels (the paper's "MSE")."""
    loc = tf.convert_to_tensor(params["loc"])  # [B, K, N]
    best = tf.one_hot(tf.argmax(params["logits"], axis=-1), tf.shape(loc)[-2], dtype=loc.dtype)
    imputation = tf.reduce_sum(best[..., None] * loc, axis=-2)  # [B, N]
    target = flatten_images(tf.cast(image, loc.dtype))  # [B, N]
    missing = flatten_mask(mask, loc.shape[-1]) == MISSING  # [B, N]
    error = tf.where(missing, tf.square(imputation - target), tf.zeros_like(target))
    return tf.reduce_sum(error, axis=-1)


@keras.saving.register_keras_serializable(package="dmfa_tf")
class MaskedNLL(keras.losses.Loss):
    """`-log p(x_missing | x_observed)`, nats per image, averaged over the batch.

    `y_true` is a dict `{"image": [B, H, W, C], "mask": [B, H, W, 1 or C]}`
    and `y_pred` the dict of mixture parameters a DMFA network returns.
    `DMFAModel` uses it in `compute_loss`, so `model.fit` needs no `loss`
    argument; call it directly in custom training loops:

    ```python
    loss = MaskedNLL()({"image": image, "mask": mask}, model({"image": image, "mask": mask}))
    ```
    """

    def __init__(self, name="masked_nll", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        image, mask = unpack_images(y_true)
        return negative_log_likelihood(y_pred, image, mask)


def unpack_images(data):
    """`(image, mask)` from a dict with those keys or a pair."""
    if isinstance(data, dict):
        missing = {"image", "mask"} - set(data)
        if missing:
            raise ValueError(
                f"Expected a dict with keys 'image' and 'mask'; missing {sorted(missing)}. "
                f"Received keys: {sorted(data)}"
            )
        return data["image"], data["mask"]
    if isinstance(data, (list, tuple)) and len(data) == 2:
        return data[0], data[1]
    raise ValueError(
        "Expected {'image': ..., 'mask': ...} or (image, mask). "
        f"Received: {type(data).__name__}"
    )
