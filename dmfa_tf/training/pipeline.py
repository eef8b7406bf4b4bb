"""The training and evaluation input pipelines, and the `tf.distribute` strategies.

Image `i` of an epoch gets a fresh mask seeded from the run's seed; validation
and test images get the masks seeded `(eval_seed, i)`, the same for every model."""

import numpy as np
import tensorflow as tf

from dmfa_tf import evaluation
from dmfa_tf import masks as masks_lib
from dmfa_tf.data import sources

# Training masks are seeded (seed + TRAIN_MASK_OFFSET, i), so they never repeat
# the evaluation masks (eval_seed, i) of small seeds.
TRAIN_MASK_OFFSET = 2**31


# `train_absent` masks are seeded (seed + ABSENT_MASK_OFFSET, i), i the image's index.
ABSENT_MASK_OFFSET = 2**32


def make_absent(images, spec, seed):
    """`images` made incomplete: the pixels where the mask spec `spec` gives 0
    (image `i`: seeded `(seed + ABSENT_MASK_OFFSET, i)`) become NaN, for
    training with `nonfinite="absent"`. Returns `(images, absent share)`."""
    absent = evaluation.seeded_masks(images, spec, seed + ABSENT_MASK_OFFSET) == 0
    absent = np.broadcast_to(absent, images.shape)
    return np.where(absent, np.float32(np.nan), images).astype(np.float32), float(absent.mean())


_STRATEGIES = {}  # one instance per name and process: see `make_strategy`


def make_strategy(name):
    """The `tf.distribute` strategy called `name` (see `config.STRATEGIES`).

    Each is made once per process and then reused: two instances of a
    collective strategy in one process would share collective keys, and a
    multi-worker strategy must exist before TensorFlow runs anything
    (`train.py` makes it first thing).
    """
    if name not in _STRATEGIES:
        _STRATEGIES[name] = _new_strategy(name)
    return _STRATEGIES[name]


def _new_strategy(name):
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # Every GPU; without GPUs, every CPU device (one unless logical CPU
        # devices were configured, as the tests do to run two replicas).
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as error:
            raise RuntimeError(f"--strategy=tpu: no TPU could be reached ({error}).") from None
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"Unknown strategy {name!r}.")


def _workers(strategy):
    """The number of worker processes of a multi-worker strategy (else 1)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    return max(1, int(strategy.extended._num_workers))


def worker_index(strategy):
    """None for the process that writes the outputs (the chief of a
    multi-worker run, or the only process); else the worker's index in
    TF_CONFIG (`task.index`)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return None
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return None if (task_type == "worker" and task_id == 0 and not has_chief) else int(task_id)


def training_data(images, mask, batch_size, seed, nonfinite="error", input_context=None,
                  bounded=True):
    """An endless, shuffled, masked, batched data set of `{"image", "mask"}`.

    `images` is an array or a `sources.ImageSource` (a memory-mapped cache, photo
    files): the images are read by index and stay in their stored type (uint8)
    until the last map, so the stream holds no float copy of the split.

    The shuffle order and the masks are seeded; masks are drawn per element of
    the endless stream (element `p` gets the mask seeded `(seed + 1, p)`), so
    every epoch sees new masks. Pass `e` of the stream is the permutation
    `stateless_shuffle(range(n), seed=(seed, e))`: the stream is the same however
    many iterators are made of it (a `tf.distribute` strategy makes its own, and
    a stateful `shuffle` would then give each replica set another order).
    `nonfinite="absent"` makes NaN / inf pixels absent (mask -1: neither seen nor
    scored), which trains on incomplete images (`masks.with_masks`).

    With `input_context` (a `tf.distribute.InputContext`, as
    `strategy.distribute_datasets_from_function` passes it) this input pipeline
    reads only its share of every global batch of `batch_size`: rows
    `[j b / P, (j + 1) b / P)` for pipeline `j` of `P`, batched per replica. The
    elements keep their positions in the whole stream, so the workers together
    train on exactly the batches (images and masks) of one process.
    `bounded=False`: values are not pixels in [0, 1] (table cells).
    """
    source = sources.as_source(images)
    count = len(source)
    seed_tensor = tf.constant(int(seed), tf.int64)

    def permutation(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64), seed=tf.stack([seed_tensor, epoch])
        )
        return tf.data.Dataset.from_tensor_slices(order)

    # An endless stream of (position, index) pairs, pass after pass.
    stream = tf.data.Dataset.zip(
        tf.data.Dataset.counter(), tf.data.Dataset.counter().flat_map(permutation)
    )
    out_batch = batch_size
    if input_context is not None and input_context.num_input_pipelines > 1:
        pipelines, pipeline = input_context.num_input_pipelines, input_context.input_pipeline_id
        if batch_size % pipelines:
            raise ValueError(
                f"The batch size ({batch_size}) must be a multiple of the number of workers "
                f"({pipelines}): each reads an equal share of every batch."
            )
        rows = batch_size // pipelines
        share = slice(pipeline * rows, (pipeline + 1) * rows)
        stream = stream.batch(batch_size).map(lambda p, i: (p[share], i[share])).unbatch()
        out_batch = input_context.get_per_replica_batch_size(batch_size)
    data = source.read(stream.map(lambda p, i: {"position": p, "index": i}))
    data = data.map(lambda element: (element["position"], element["image"]))
    data = masks_lib.with_masks(
        data, mask, seed + TRAIN_MASK_OFFSET, nonfinite=nonfinite, indexed=True, bounded=bounded
    )
    return data.batch(out_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def evaluation_data(images, mask, batch_size, seed, nonfinite="error", bounded=True):
    """The images (an array or a `sources.ImageSource`) in order, image `i` with
    the mask seeded `(seed, i)`, batched (`nonfinite`, `bounded`: as
    `masks.with_masks`)."""
    source = sources.as_source(images)
    data = masks_lib.with_masks(source.images(), mask, seed, nonfinite=nonfinite, bounded=bounded)
    # A stated cardinality lets Keras size the validation pass; without it the
    # first pass ends in a StopIteration that Keras reports as "Your input ran
    # out of data; interrupting training", although nothing was cut short.
    batches = -(-len(source) // batch_size)
    data = data.batch(batch_size).apply(tf.data.experimental.assert_cardinality(batches))
    return data.prefetch(tf.data.AUTOTUNE)
