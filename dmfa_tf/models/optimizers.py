"""A fused Adam update for Keras 3 on TensorFlow: the same math, one pass.

Keras 3's `Adam.update_step` is written with `keras.ops`, so on the TensorFlow
backend one update runs about a dozen separate element-wise kernels, each
reading and writing whole weight-sized tensors (`m`, `v`, the gradient and the
weights). For a network whose weights do not fit in cache (the paper's MNIST
network has 118 M of them, 472 MB), the update is memory bound and takes as
long as the forward and backward passes together.

TensorFlow has had a fused kernel for exactly this update for years,
`ResourceApplyAdam`: one multithreaded loop that reads `var, m, v, grad` once
and writes `var, m, v` once. Its math is Keras 3's, term for term:

```none
t      = iterations + 1
alpha  = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
m     += (g - m) * (1 - beta_1)
v     += (g^2 - v) * (1 - beta_2)
var   -= alpha * m / (sqrt(v) + epsilon)
```

`fuse(optimizer)` makes a Keras `Adam` (or `AdamW`: its weight decay is applied
before the update, unchanged) use that kernel. The optimizer stays the same
object and the same class, so it saves, loads and resumes as before; only the
arithmetic of `update_step` is done in one kernel instead of many. It works
under XLA too (XLA compiles the op) and under `tf.distribute` strategies (the
update runs per replica on the local copies, as Keras's own does).

Optimizers it does not apply to are returned unchanged: other classes, Adam
with `amsgrad=True`, and other backends. Sparse gradients (`IndexedSlices`)
and non-float32/float64 variables fall back to Keras's own update.
"""

import types

import keras

__all__ = ["fuse", "is_fused"]

_FUSED_MARK = "_dmfa_fused_update"


def is_fused(optimizer):
    """Whether `optimizer` runs the fused update (`fuse` installed and enabled it)."""
    return bool(getattr(optimizer, _FUSED_MARK, False))


def fuse(optimizer, enabled=True):
    """Installs the fused Adam update on `optimizer` (in place) and returns it.

    Args:
        optimizer: a Keras optimizer. `keras.optimizers.Adam` and its subclasses
            (`AdamW`) without `amsgrad` get the fused update; anything else is
            returned as it is.
        enabled: False switches an installed fused update back to Keras's own
            (for functions traced from then on), e.g. for a step that XLA
            compiles: XLA fuses Keras's update by itself, and better than it
            compiles the fused op.

    Returns:
        `optimizer`.
    """
    if not _fusable(optimizer):
        return optimizer
    if not hasattr(optimizer, "_dmfa_stock_update_step"):
        stock = optimizer.update_step
        fused = types.MethodType(_make_fused_update_step(stock), optimizer)
        optimizer._dmfa_stock_update_step = stock
        optimizer._dmfa_fused_update_step = fused
    optimizer.update_step = (
        optimizer._dmfa_fused_update_step if enabled else optimizer._dmfa_stock_update_step
    )
    setattr(optimizer, _FUSED_MARK, bool(enabled))
    return optimizer


def _fusable(optimizer):
    if keras.backend.backend() != "tensorflow":
        return False
    inner = getattr(optimizer, "inner_optimizer", None)  # LossScaleOptimizer
    if inner is not None:
        return False
    return isinstance(optimizer, keras.optimizers.Adam) and not optimizer.amsgrad


def _make_fused_update_step(stock_update_step):
    import tensorflow as tf

    def update_step(self, gradient, variable, learning_rate):
        # `variable` is the tf.Variable (TFOptimizer unwraps Keras variables
        # before calling update_step); `m` and `v` are Keras variables.
        dtype = variable.dtype
        if isinstance(gradient, tf.IndexedSlices) or dtype not in (tf.float32, tf.float64):
            return stock_update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        m = self._momentums[index]
        v = self._velocities[index]
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        return tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=_tf_variable(m).handle,
            v=_tf_variable(v).handle,
            beta1_power=tf.pow(beta_1, local_step),
            beta2_power=tf.pow(beta_2, local_step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
            use_locking=False,
        )

    return update_step


def _tf_variable(variable):
    """The TensorFlow variable behind a Keras variable."""
    return variable.value if isinstance(variable, keras.Variable) else variable
