"""DMFA networks: `build_model` and the architectures it knows.

A model is a Keras 3 functional model with inputs `image` `[B, H, W, C]` (in
[0, 1]) and `mask` `[B, H, W, 1 or C]` (1 observed, 0 missing, -1 absent) and a
dict of mixture parameters as output. `DMFAModel` adds the masked negative
log-likelihood as its loss, so training is `model.compile(optimizer)` then
`model.fit(data)` on a data set of `{"image", "mask"}` dicts.

| architecture | network | defaults |
|---|---|---|
| `linear_heads` | the paper's: 4 convolutions (5x5, 5x5, 5x5, 3x3; 16, 32, 64, 32 or 24 channels), dense heads on the flattened features | `a = 0.5`, floor `1e-10` (the paper's) |
| `fullconv` | U-Net encoder-decoder (3 levels, 32 base channels, global context) with convolutional heads; the weight count does not depend on the image size | `a = 0.5`, floor `1e-4` |
| `mlp` | two dense layers of 256 units, dense heads; for small inputs (8x8 digits) | `a = 0.5`, floor `1e-4` |
| `tabular` | for table rows (`[B, 1, D, 1]`, standardised cells): a dense layer of 256 units (tables' default: 128), 2 residual blocks (layer norm, two dense layers, dropout), dense heads that also see the network input | `a = 4`, floor `1e-3` |

Rows of a table are events of shape `(1, D, 1)`; their models are built with
`bounded_inputs=False` (cells are not pixels in [0, 1]): `dmfa_tf.tabular`.
"""

import keras
import tensorflow as tf

from dmfa_tf.core.checks import check_positive_int
from dmfa_tf import optimizers
from dmfa_tf.core.distribution import MaskedFactorMixture, unflatten_images
from dmfa_tf.layers import ConvMixtureHead, DenseMixtureHead, ObservedInput
from dmfa_tf.losses import Objective, objective_loss, squared_error, unpack_images

__all__ = ["ARCHITECTURES", "AUTO_XLA_MIN_STEPS", "CPU_XLA", "DMFAModel", "auto_jit_compile", "build_model"]


# === Architectures ===
# Each takes the `[B, H, W, 2C]` network input and returns (features, head
# class, architecture-specific head defaults).


def _linear_heads(inputs, image_shape, last_channels=None):
    """The paper's network (DESIGN.md section 2); `last_channels` defaults to the
    paper's 32 for grey images and 24 for colour ones."""
    if last_channels is None:
        last_channels = 32 if image_shape[2] == 1 else 24
    x = inputs
    for filters, kernel in ((16, 5), (32, 5), (64, 5), (last_channels, 3)):
        x = keras.layers.Conv2D(filters, kernel, padding="same", activation="relu")(x)
    features = keras.layers.Flatten()(x)
    return features, DenseMixtureHead, dict(factor_amplitude=0.5, variance_floor=1e-10)


def _conv_block(x, filters, name, convs=2):
    for i in range(convs):
        x = keras.layers.Conv2D(
            filters, 3, padding="same", activation="relu", name=f"{name}_conv{i}"
        )(x)
    return x


def _fullconv(inputs, image_shape, width=32, depth=3, blocks=2):
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


def _mlp(inputs, image_shape, hidden=(256, 256)):
    """Dense layers on the flattened input."""
    x = keras.layers.Flatten()(inputs)
    for i, units in enumerate(hidden):
        x = keras.layers.Dense(units, activation="relu", name=f"hidden{i}")(x)
    return x, DenseMixtureHead, dict(factor_amplitude=0.5, variance_floor=1e-4)


def _tabular(inputs, image_shape, width=256, blocks=2, dropout=0.0, skip=True):
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


ARCHITECTURES = {
    "linear_heads": _linear_heads,
    "fullconv": _fullconv,
    "mlp": _mlp,
    "tabular": _tabular,
}


def width_kwargs(architecture, width, dropout=None):
    """`build_model` keyword arguments for one `width` flag: fullconv's base
    channels, the units of both of mlp's hidden layers, or tabular's units
    (None: none); and tabular's `dropout` rate."""
    if dropout is not None:
        if architecture != "tabular":
            raise ValueError(
                "`dropout` applies to the tabular architecture only. "
                f"Received: architecture={architecture!r}, dropout={dropout!r}"
            )
        return {"dropout": dropout, **width_kwargs(architecture, width)}
    if width is None:
        return {}
    if architecture == "fullconv":
        return {"width": width}
    if architecture == "mlp":
        return {"hidden": (width, width)}
    if architecture == "tabular":
        return {"width": width}
    raise ValueError(
        "`width` applies to the fullconv, mlp and tabular architectures only. "
        f"Received: architecture={architecture!r}, width={width!r}"
    )


PRECISIONS = ("float32", "mixed_bfloat16", "auto")


def cpu_has_bfloat16():
    """Whether this CPU has bfloat16 arithmetic that oneDNN uses (the Linux
    `avx512_bf16` or `amx_bf16` flags); False where that cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


# `precision="auto"` on a CPU with bfloat16 arithmetic, per architecture, from
# benchmarks/bench_training.py and bench_quality.py (README, "Speed").
CPU_BF16 = {"fullconv": True, "linear_heads": True, "mlp": False}


def resolve_precision(precision, architecture="fullconv"):
    """`"auto"` made concrete: `"mixed_bfloat16"` for the architectures where
    it was measured to pay (`CPU_BF16`: the U-Net and the paper's network;
    the width-16 U-Net trained 1.8x the images per second of float32 with
    XLA, and a better model in the same minutes) on a machine without a GPU
    whose CPU has bfloat16 arithmetic, else `"float32"` (GPUs are not
    measured here). Other values are returned as they are."""
    if precision != "auto":
        return precision
    if not CPU_BF16.get(architecture, False) or tf.config.list_physical_devices("GPU"):
        return "float32"
    return "mixed_bfloat16" if cpu_has_bfloat16() else "float32"


# `jit_compile="auto"` on CPU, per architecture, from benchmarks/bench_training.py
# (README, "Speed"): XLA where the whole step, compile time included, is faster.
CPU_XLA = {"linear_heads": True, "fullconv": True, "mlp": False, "tabular": False}


# With jit_compile="auto", `fit` compiles with XLA only runs of at least this
# many steps: XLA's compile (10-30 s on 2 CPU cores) must be paid back.
AUTO_XLA_MIN_STEPS = 200


def _planned_steps(x=None, y=None, batch_size=None, epochs=1, verbose="auto",
                   callbacks=None, validation_split=0.0, validation_data=None, shuffle=True,
                   class_weight=None, sample_weight=None, initial_epoch=0,
                   steps_per_epoch=None, **unused):
    """The number of training steps `fit(...)` will run, or None if unknown
    (an endless or unsized data set without `steps_per_epoch`)."""
    epochs = max(0, int(epochs) - int(initial_epoch))
    if steps_per_epoch is None:
        if isinstance(x, tf.data.Dataset):
            cardinality = int(x.cardinality())
            if cardinality < 0:  # infinite or unknown
                return None
            steps_per_epoch = cardinality
        elif x is not None and hasattr(x, "__len__"):
            size = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
            steps_per_epoch = -(-size // (batch_size or 32))
        else:
            return None
    return epochs * int(steps_per_epoch)


def architecture_of(model):
    """`"linear_heads"`, `"fullconv"` or `"mlp"`: what `build_model` built
    `model` as, read from its layers (None for other networks)."""
    layers = {layer.name: layer for layer in model.layers}
    head = layers.get("mixture_head")
    if isinstance(head, ConvMixtureHead):
        return "fullconv"
    if isinstance(head, DenseMixtureHead):
        if any(isinstance(layer, keras.layers.Conv2D) for layer in model.layers):
            return "linear_heads"
        return "mlp"
    return None


def auto_jit_compile(model):
    """What `jit_compile="auto"` means for `model` on this machine.

    On a GPU, XLA (as Keras). On CPU, XLA for the architectures where it was
    measured to pay (`CPU_XLA`), not for the others nor for networks that
    `build_model` did not make. Never under a `tf.distribute` strategy with
    several replicas, where Keras does not support it.
    """
    strategy = getattr(model, "_distribute_strategy", None)
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        return False
    if any(d.device_type != "CPU" for d in tf.config.list_physical_devices()):
        return True
    if precision_of(model) != "float32":
        return False  # XLA's CPU code does not use oneDNN's bfloat16 kernels
    return CPU_XLA.get(architecture_of(model), False)


def float32_copy(model):
    """`model` itself if it computes in float32; else an uncompiled copy with
    the same (float32) weights whose every layer computes in float32. Exports
    use it: TFLite has no bfloat16 kernels."""
    if precision_of(model) == "float32":
        return model

    def to_float32(value):
        if isinstance(value, dict):
            if value.get("class_name") == "DTypePolicy" and value.get("config", {}).get(
                "name"
            ) != "float32":
                return "float32"
            return {key: to_float32(item) for key, item in value.items()}
        if isinstance(value, list):
            return [to_float32(item) for item in value]
        return "float32" if value == "mixed_bfloat16" else value

    copy = model.__class__.from_config(to_float32(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def precision_of(model):
    """`"mixed_bfloat16"` if some layer of `model` computes in bfloat16, else
    `"float32"` (see `build_model`'s `precision`)."""
    for layer in getattr(model, "layers", ()):
        if getattr(layer, "compute_dtype", "float32") == "bfloat16":
            return "mixed_bfloat16"
    return "float32"


def build_model(
    image_shape,
    architecture="fullconv",
    components=1,
    factors=4,
    factor_amplitude=None,
    factor_activation="sigmoid",
    variance_floor=None,
    variance_activation="sigmoid",
    name=None,
    precision="auto",
    bounded_inputs=True,
    **architecture_kwargs,
):
    """Builds a DMFA network.

    Args:
        image_shape: `(H, W, C)`.
        architecture: `"linear_heads"`, `"fullconv"` or `"mlp"` (module docstring).
        components: K, mixture components.
        factors: L, factors per component.
        factor_amplitude: `a` in `A = a * sigmoid(z) - a / 2`; None for the
            architecture's default.
        factor_activation: `"sigmoid"`, `"tanh"` or `"linear"`.
        variance_floor: smallest variance, `d = floor + sigmoid(z)`; None for the
            architecture's default.
        variance_activation: `"sigmoid"` or `"softplus"`.
        name: the model's name (default `dmfa_<architecture>`).
        precision: `"auto"` (default; `resolve_precision`: bfloat16 for
            `fullconv` and `linear_heads` on CPUs that have it, else float32),
            `"float32"` or `"mixed_bfloat16"`. Mixed: the backbone's
            layers compute in bfloat16 (weights kept in float32), while the
            input layer, the mixture head and the density stay float32. On
            CPUs with AVX512-BF16 / AMX, oneDNN runs bfloat16 convolutions and
            matmuls about 1.5-2x faster (README, "Speed"); XLA on CPU does not,
            so `jit_compile="auto"` leaves it off for such a model.
        bounded_inputs: observed values are pixels in [0, 1], checked by the
            input layer (True); False for unbounded values (table cells).
        **architecture_kwargs: `last_channels` (linear_heads), `width` and
            `depth` (fullconv), `hidden` (mlp), `width`, `blocks` and `dropout` (tabular).

    Returns:
        A `DMFAModel`.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"Unknown architecture {architecture!r}; choose one of {sorted(ARCHITECTURES)}."
        )
    image_shape = tuple(image_shape)
    if len(image_shape) != 3 or not all(isinstance(v, int) and v > 0 for v in image_shape):
        raise ValueError(
            "`image_shape` must be (height, width, channels), positive integers. "
            f"Received: image_shape={image_shape!r}"
        )
    if precision not in PRECISIONS:
        raise ValueError(
            f"`precision` must be one of {PRECISIONS}. Received: precision={precision!r}"
        )
    precision = resolve_precision(precision, architecture)
    image = keras.Input(shape=image_shape, name="image")
    mask = keras.Input(shape=image_shape[:2] + (None,), name="mask")
    network_input = ObservedInput(bounded=bounded_inputs, name="observed_input")(image, mask)
    # The backbone's layers take the dtype policy in force when they are made
    # (and save it in their config); the head below is made after, in float32.
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        features, head_class, defaults = ARCHITECTURES[architecture](
            network_input, image_shape, **architecture_kwargs
        )
    except TypeError as error:
        raise ValueError(
            f"Bad option for architecture {architecture!r}: {error}"
        ) from None
    finally:
        keras.config.set_dtype_policy(previous_policy)
    head = head_class(
        image_shape,
        dtype="float32",
        components=components,
        factors=factors,
        factor_amplitude=defaults["factor_amplitude"]
        if factor_amplitude is None
        else factor_amplitude,
        factor_activation=factor_activation,
        variance_floor=defaults["variance_floor"] if variance_floor is None else variance_floor,
        variance_activation=variance_activation,
        name="mixture_head",
    )
    outputs = head(features)
    return DMFAModel(
        inputs={"image": image, "mask": mask},
        outputs=outputs,
        name=name or f"dmfa_{architecture}",
    )


@keras.saving.register_keras_serializable(package="dmfa_tf")
class DMFAModel(keras.Model):
    """A functional DMFA network that trains on its masked NLL.

    `compile(optimizer)` needs no loss: `compute_loss` scores the network's
    mixture on the missing pixels (`MaskedNLL`). `fit` takes a data set of
    `{"image", "mask"}` dicts (the image is the target) or of
    `({"image", "mask"}, target)` pairs. Metrics: `nll` (nats per image) and
    `mse` (sum of squared errors of the most probable imputation per image).

    `model.objective = "nll+mse:1"` (or `"beta_nll:0.5"`, `"mse_mean"`) trains
    on another objective (`dmfa_tf.losses`); the default is `"nll"`. It is
    saved with the model; the `nll` and `mse` metrics stay the plain scores.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.nll_tracker = keras.metrics.Mean(name="nll")
        self.mse_tracker = keras.metrics.Mean(name="mse")
        self._dmfa_objective = Objective.parse("nll")

    @property
    def objective(self):
        """The training objective's spec, e.g. `"nll"` or `"nll+mse:1"`.

        Setting it (a spec or a `dmfa_tf.losses.Objective`) takes effect at the
        next `fit` / `evaluate` call: the traced step functions are dropped.
        Inside `fit` (a callback), also call `make_train_function(force=True)`.
        """
        return str(self._dmfa_objective)

    @objective.setter
    def objective(self, spec):
        objective = Objective.parse(spec)
        if objective != self._dmfa_objective:
            self._dmfa_objective = objective
            self.train_function = self.test_function = None

    def get_config(self):
        return {**super().get_config(), "objective": self.objective}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        objective = config.pop("objective", "nll")
        model = super().from_config(config, custom_objects=custom_objects)
        model.objective = objective
        return model

    @property
    def image_shape(self):
        """`(H, W, C)` of the images the model takes."""
        return tuple(self.input["image"].shape[1:])

    @property
    def head(self):
        return self.get_layer("mixture_head")

    @property
    def num_components(self):
        return self.head.components

    @property
    def num_factors(self):
        return self.head.factors

    def compile(self, optimizer="adam", loss=None, jit_compile="auto", fuse_optimizer=True, **kwargs):
        """As `keras.Model.compile`, without `loss`: the loss is the masked NLL.

        Two speed defaults differ from Keras's; both were measured
        (README, "Speed"; `benchmarks/bench_training.py`):

        - `jit_compile="auto"` turns XLA on where it pays for this model on
          this device (`auto_jit_compile`), not only on GPUs. Since XLA's
          compile time counts, `fit` keeps it off for runs of fewer than
          `AUTO_XLA_MIN_STEPS` steps (when it knows the number).
        - `fuse_optimizer=True` gives an `Adam` (or `AdamW`) the fused update
          of `dmfa_tf.optimizers.fuse` (the same math in one kernel) whenever
          the step is not compiled by XLA, which fuses the update by itself.
          `False` keeps Keras's own update.
        """
        if loss is not None:
            raise ValueError(
                "DMFAModel trains on its masked negative log-likelihood (MaskedNLL); "
                f"pass no `loss` to compile(). Received: loss={loss!r}"
            )
        if not isinstance(fuse_optimizer, bool):
            raise ValueError(
                f"`fuse_optimizer` must be True or False. Received: fuse_optimizer={fuse_optimizer!r}"
            )
        self._dmfa_auto_jit = isinstance(jit_compile, str) and jit_compile == "auto"
        self._dmfa_fuse_optimizer = fuse_optimizer
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)
        self._sync_fused_optimizer()

    def _sync_fused_optimizer(self):
        # The fused kernel where the step is not XLA-compiled; Keras's update,
        # which XLA fuses better, where it is.
        if getattr(self, "optimizer", None) is not None:
            wanted = getattr(self, "_dmfa_fuse_optimizer", True) and not self.jit_compile
            if wanted or optimizers.is_fused(self.optimizer):
                optimizers.fuse(self.optimizer, enabled=wanted)

    def _resolve_auto_jit_compile(self):
        # Keras's own rule is "XLA on GPUs only"; ours is measured per device
        # and architecture (`auto_jit_compile`).
        if self.run_eagerly:
            return False
        return auto_jit_compile(self)

    def fit(self, *args, **kwargs):
        """As `keras.Model.fit`. With `jit_compile="auto"`, a run of fewer than
        `AUTO_XLA_MIN_STEPS` planned steps is not XLA-compiled: compiling
        would take longer than it saves."""
        if getattr(self, "_dmfa_auto_jit", False):
            steps = _planned_steps(*args, **kwargs)
            jit = auto_jit_compile(self) and (steps is None or steps >= AUTO_XLA_MIN_STEPS)
            if bool(self.jit_compile) != jit:
                self.jit_compile = jit
                self.train_function = self.test_function = self.predict_function = None
                self._sync_fused_optimizer()
        return super().fit(*args, **kwargs)

    def _multi_worker(self):
        return isinstance(
            getattr(self, "_distribute_strategy", None), tf.distribute.MultiWorkerMirroredStrategy
        )

    def _reducible_logs(self, logs):
        # Keras (3.15) reduces each replica's logs with `strategy.reduce("MEAN",
        # value, axis=0)` under MultiWorkerMirroredStrategy, which fails on the
        # scalar metric values ("Invalid reduction dimension 0"): give them a
        # leading axis of one. The reduced value is the mean over replicas.
        if self._multi_worker():
            return {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def train_step(self, data):
        return self._reducible_logs(super().train_step(data))

    def test_step(self, data):
        return self._reducible_logs(super().test_step(data))

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras (3.15) peeks at one batch to build the metrics and reduces it
        # with a single `strategy.reduce` over the whole `{"image", "mask"}`
        # dict, which MultiWorkerMirroredStrategy refuses ("Attempt to convert
        # a value ({'image': PerReplica ...}) to a Tensor"; keras-team/keras
        # #20585). Reduce each tensor on its own instead; only shapes matter.
        strategy = getattr(self, "_distribute_strategy", None)
        if iterator is not None and self._multi_worker():
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda value: strategy.reduce("MEAN", value, axis=None)
                    if isinstance(value, tf.distribute.DistributedValues) else value,
                    next(batches),
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def get_compile_config(self):
        # Keras records the resolved `jit_compile`; record "auto" when that was
        # asked for, so a loaded model decides again on its new machine.
        config = super().get_compile_config()
        if config:
            if getattr(self, "_dmfa_auto_jit", False):
                config["jit_compile"] = "auto"
            config["fuse_optimizer"] = getattr(self, "_dmfa_fuse_optimizer", True)
        return config

    def compile_from_config(self, config):
        # Called by `keras.saving.load_model`: compile again, optimizer state included.
        config = dict(keras.saving.deserialize_keras_object(config))
        config.pop("loss", None)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def _targets(self, x, y):
        image, mask = unpack_images(x)
        return (image if y is None else y), mask

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        target, mask = self._targets(x, y)
        # `per_image` is `nll` itself with the default objective "nll".
        per_image, nll = objective_loss(self._dmfa_objective, y_pred, target, mask)  # [B]
        self.nll_tracker.update_state(nll, sample_weight=sample_weight)
        if sample_weight is not None:
            per_image = per_image * tf.cast(tf.reshape(sample_weight, [-1]), per_image.dtype)
        loss = tf.reduce_mean(per_image)
        if self.losses:
            loss += tf.add_n([tf.cast(l, loss.dtype) for l in self.losses])
        # Keras sums per-replica losses; scale as its own losses do.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return loss / replicas if replicas > 1 else loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        target, mask = self._targets(x, y)
        self.mse_tracker.update_state(
            squared_error(y_pred, target, mask), sample_weight=sample_weight
        )
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    # === Inference helpers (eager) ===

    def mixture(self, image, mask, **kwargs):
        """The `MaskedFactorMixture` of the missing pixels of `image` (observed
        pixels kept in its samples and means); `kwargs` go to its constructor.
        Images and masks of any float dtype (float16, float64) are taken in
        the model's dtype."""
        image, mask = self._as_model_dtype(image, "image"), self._as_model_dtype(mask, "mask")
        params = self({"image": image, "mask": mask}, training=False)
        return MaskedFactorMixture.from_images(params, mask, image, **kwargs)

    def _as_model_dtype(self, value, name):
        value = tf.convert_to_tensor(value)
        if not (value.dtype.is_floating or value.dtype.is_integer):
            raise ValueError(
                f"`{name}` must hold numbers (an image in [0, 1], a mask of 1 / 0 / -1). "
                f"Received dtype {value.dtype.name}."
            )
        return tf.cast(value, self.compute_dtype)

    def impute(self, image, mask):
        """Images with the missing pixels replaced by the most probable imputation."""
        return unflatten_images(self.mixture(image, mask).imputation(), self.image_shape)
