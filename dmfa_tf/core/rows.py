"""The event's coordinates: images flattened to `N` values, and the rows of
the scored coordinates that `MaskedFactorMixture`'s density gathers.

The density gathers each batch member's scored (missing) coordinates, padded to
the batch's largest count, and runs its algebra on those rows only
(`scored_rows`, `take`). Where shapes must be static it works on all `N` rows
instead: in a function traced for XLA, inside `linalg.builtins_only()` (the
TFLite export) and inside `static_shapes()`.
"""

import contextlib
import threading

import tensorflow as tf

from dmfa_tf.core import linalg

try:  # TensorFlow's own test for "traced for XLA" (not a public API)
    from tensorflow.python.ops.control_flow_util import GraphOrParentsInXlaContext as _in_xla
except ImportError:  # pragma: no cover - then the density always keeps static shapes
    _in_xla = None

__all__ = [
    "flatten_images",
    "flatten_mask",
    "scored_rows",
    "static_shapes",
    "take",
    "unflatten_images",
]

_STATE = threading.local()


@contextlib.contextmanager
def static_shapes():
    """Within this context, `MaskedFactorMixture`'s density works on all `N`
    rows with the unscored ones zeroed instead of gathering the scored ones:
    what it does under XLA and in `linalg.builtins_only()`. The numbers are
    the same; for comparisons and debugging."""
    previous = getattr(_STATE, "static_shapes", False)
    _STATE.static_shapes = True
    try:
        yield
    finally:
        _STATE.static_shapes = previous


def scored_rows(scored):
    """The scored coordinates, first, per batch member.

    Args:
        scored: `[B, N]` bool, True on the scored coordinates.

    Returns:
        `(index, valid)`, each `[B, 1, M]` with `M` the batch's largest number
        of scored coordinates: `index` int32, `valid` False on the padding. None
        where shapes must stay static (module docstring).
    """
    if (
        _in_xla is None
        or getattr(_STATE, "static_shapes", False)
        or linalg.is_builtins_only()
        or _in_xla(tf.compat.v1.get_default_graph())
    ):
        return None
    count = tf.reduce_sum(tf.cast(scored, tf.int32), axis=-1, keepdims=True)  # [B, 1]
    # A stable sort of "not scored" puts the scored coordinates first, in order.
    order = tf.argsort(tf.cast(~scored, tf.int32), axis=-1, stable=True)  # [B, N]
    size = tf.reduce_max(count)
    index = order[..., :size]  # [B, M]
    valid = tf.range(size) < count  # [B, M]
    return tf.expand_dims(index, -2), tf.expand_dims(valid, -2)


def take(values, index, axis):
    """`values`' entries at `index` along `axis` (-1 or -2), per batch member.

    `values` is `[..., N]` (axis -1) or `[..., N, L]` (axis -2), `index`
    `[..., M]`; their batch dimensions (those before `axis`, and before `M`)
    broadcast against each other."""
    axis %= values.shape.rank
    values_batch, index_batch = values.shape[:axis], index.shape[:-1]
    batch_rank = max(values_batch.rank, index_batch.rank)
    batch = tf.broadcast_dynamic_shape(tf.shape(values)[:axis], tf.shape(index)[:-1])
    if values_batch.rank != batch_rank or not (
        values_batch.is_fully_defined()
        and values_batch == tf.broadcast_static_shape(values_batch, index_batch)
    ):
        values = tf.broadcast_to(values, tf.concat([batch, tf.shape(values)[axis:]], 0))
    index = tf.broadcast_to(index, tf.concat([batch, tf.shape(index)[-1:]], 0))
    return tf.gather(values, index, axis=batch_rank, batch_dims=batch_rank)


def flatten_images(images):
    """`[..., H, W, C]` -> `[..., H * W * C]` (row-major, the event order)."""
    images = tf.convert_to_tensor(images)
    if images.shape.rank is not None and images.shape.rank < 3:
        raise ValueError(
            f"Images must have shape [..., H, W, C]. Received: shape={images.shape}"
        )
    return tf.reshape(images, tf.concat([tf.shape(images)[:-3], [-1]], 0))


def flatten_mask(mask, event_size):
    """`[..., H, W, 1 or C]` mask -> `[..., N]`, broadcast over the channels.

    Args:
        mask: the mask; a single channel applies to every channel.
        event_size: `N = H * W * C`, which fixes `C`.
    """
    mask = tf.convert_to_tensor(mask)
    if mask.shape.rank is not None and mask.shape.rank < 3:
        raise ValueError(f"A mask must have shape [..., H, W, 1 or C]. Received: shape={mask.shape}")
    height, width, mask_channels = (tf.compat.dimension_value(d) for d in mask.shape[-3:])
    if None in (height, width, event_size):
        raise ValueError("`flatten_mask` needs static H, W and event size.")
    channels, remainder = divmod(int(event_size), height * width)
    if remainder or mask_channels not in (None, 1, channels):
        raise ValueError(
            f"A mask of shape {mask.shape} does not fit images of {event_size} values "
            f"(expected [..., {height}, {width}, 1 or {channels}])."
        )
    shape = tf.concat([tf.shape(mask)[:-1], [channels]], 0)
    return flatten_images(tf.broadcast_to(mask, shape))


def unflatten_images(values, image_shape):
    """`[..., N]` -> `[..., H, W, C]`."""
    values = tf.convert_to_tensor(values)
    return tf.reshape(values, tf.concat([tf.shape(values)[:-1], list(image_shape)], 0))
