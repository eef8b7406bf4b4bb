"""`DMFAModel`: a functional Keras model that trains on its masked NLL.

A model is a Keras 3 functional model with inputs `image` `[B, H, W, C]` (in
[0, 1]) and `mask` `[B, H, W, 1 or C]` (1 observed, 0 missing, -1 absent) and a
dict of mixture parameters as output. `DMFAModel` adds the masked negative
log-likelihood as its loss, so training is `model.compile(optimizer)` then
`model.fit(data)` on a data set of `{"image", "mask"}` dicts.
"""

import keras
import tensorflow as tf

from dmfa_tf.core.distribution import MaskedFactorMixture, unflatten_images
from dmfa_tf.models import optimizers
from dmfa_tf.models.device import AUTO_XLA_MIN_STEPS, auto_jit_compile
from dmfa_tf.models.losses import Objective, objective_loss, squared_error, unpack_images

__all__ = ["DMFAModel"]


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


@keras.saving.register_keras_serializable(package="dmfa_tf")
class DMFAModel(keras.Model):
    """A functional DMFA network that trains on its masked NLL.

    `compile(optimizer)` needs no loss: `compute_loss` scores the network's
    mixture on the missing pixels (`MaskedNLL`). `fit` takes a data set of
    `{"image", "mask"}` dicts (the image is the target) or of
    `({"image", "mask"}, target)` pairs. Metrics: `nll` (nats per image) and
    `mse` (sum of squared errors of the most probable imputation per image).

    `model.objective = "nll+mse:1"` (or `"beta_nll:0.5"`, `"mse_mean"`) trains
    on another objective (`dmfa_tf.models.losses`); the default is `"nll"`. It is
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

        Setting it (a spec or a `dmfa_tf.models.losses.Objective`) takes effect at the
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
          of `dmfa_tf.models.optimizers.fuse` (the same math in one kernel) whenever
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
