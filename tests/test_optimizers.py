"""The fused Adam update: Keras's Adam math in one kernel, installed by compile."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import dmfa_tf
from dmfa_tf import models
from dmfa_tf.models import optimizers


def numpy_adam(w, grads, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None):
    """Adam as the Keras 3 docs define it, by hand in float64."""
    w = np.array(w, np.float64)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        if weight_decay is not None:
            w = w - w * weight_decay * lr
        m += (g - m) * (1 - beta_1)
        v += (g * g - v) * (1 - beta_2)
        alpha = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        w = w - alpha * m / (np.sqrt(v) + epsilon)
    return w


def run_optimizer(optimizer, w0, grads, jit=False):
    w = keras.Variable(w0.astype(np.float32))
    optimizer.build([w])

    @tf.function(jit_compile=jit)
    def step(g):
        optimizer.apply([g], [w])

    for g in grads:
        step(tf.constant(g, tf.float32))
    return w.numpy()


@pytest.mark.parametrize("jit", [False, True])
def test_fused_adam_matches_the_math_by_hand(jit):
    rng = np.random.RandomState(0)
    w0 = rng.randn(257)
    grads = [rng.randn(257) for _ in range(6)]
    optimizer = optimizers.fuse(keras.optimizers.Adam(0.05))
    assert optimizers.is_fused(optimizer)
    got = run_optimizer(optimizer, w0, grads, jit=jit)
    want = numpy_adam(w0, grads, 0.05)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the same steps moved the weights far: the check is not vacuous
    assert np.abs(want - w0).max() > 0.2
    assert int(optimizer.iterations.numpy()) == 6


def test_fused_adamw_keeps_the_weight_decay():
    rng = np.random.RandomState(1)
    w0 = rng.randn(64)
    grads = [rng.randn(64) for _ in range(4)]
    optimizer = optimizers.fuse(keras.optimizers.AdamW(0.01, weight_decay=0.5))
    assert optimizers.is_fused(optimizer)
    got = run_optimizer(optimizer, w0, grads)
    np.testing.assert_allclose(got, numpy_adam(w0, grads, 0.01, weight_decay=0.5), rtol=1e-5, atol=1e-6)


def test_fuse_leaves_other_optimizers_alone():
    sgd = keras.optimizers.SGD(0.1)
    assert optimizers.fuse(sgd) is sgd and not optimizers.is_fused(sgd)
    amsgrad = keras.optimizers.Adam(amsgrad=True)
    assert not optimizers.is_fused(optimizers.fuse(amsgrad))
    adam = keras.optimizers.Adam()
    assert optimizers.fuse(adam) is adam
    assert optimizers.fuse(adam) is adam  # idempotent
    assert type(adam) is keras.optimizers.Adam


def _tiny_model():
    return dmfa_tf.build_model((6, 6, 1), "mlp", hidden=(8,))


def test_compile_fuses_adam_unless_asked_not_to_or_under_xla():
    model = _tiny_model()
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=False)
    assert optimizers.is_fused(model.optimizer)
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=False, fuse_optimizer=False)
    assert not optimizers.is_fused(model.optimizer)
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=True)
    assert not optimizers.is_fused(model.optimizer)  # XLA fuses the update itself
    with pytest.raises(ValueError, match="fuse_optimizer"):
        model.compile("adam", fuse_optimizer="yes")


def test_auto_jit_compile_follows_the_measured_table_and_the_run_length():
    assert not tf.config.list_physical_devices("GPU")  # these machines have none
    for architecture, shape in (("mlp", (6, 6, 1)), ("fullconv", (8, 8, 1)), ("linear_heads", (6, 6, 1))):
        model = dmfa_tf.build_model(shape, architecture, precision="float32")
        assert models.architecture_of(model) == architecture
        renamed = dmfa_tf.build_model(shape, architecture, precision="float32", name="mine")
        assert models.architecture_of(renamed) == architecture  # read from the layers
        model.compile("adam")
        xla = models.CPU_XLA[architecture]
        # The default precision ("auto") computes in bfloat16 where the CPU has
        # it, and then XLA (no bfloat16 kernels on CPU) stays off.
        default = dmfa_tf.build_model(shape, architecture)
        bfloat16 = models.CPU_BF16[architecture] and models.cpu_has_bfloat16()
        assert models.precision_of(default) == ("mixed_bfloat16" if bfloat16 else "float32")
        default.compile("adam")
        assert default.jit_compile == (xla and not bfloat16), architecture
        assert model.jit_compile == xla, architecture
        assert optimizers.is_fused(model.optimizer) == (not xla)
        # a short run is not worth XLA's compile time: fit turns it off ...
        image = np.random.RandomState(0).rand(8, *shape).astype(np.float32)
        mask = np.ones_like(image[..., :1])
        mask[:, 1:3, 1:3] = 0
        data = tf.data.Dataset.from_tensors({"image": image, "mask": mask})
        model.fit(data.repeat(3), epochs=1, verbose=0)
        assert not model.jit_compile and optimizers.is_fused(model.optimizer), architecture
        # ... and a planned long run turns it back on where it pays
        assert models.dmfa_model._planned_steps(data.repeat(), epochs=3, steps_per_epoch=100) == 300
        assert models.dmfa_model._planned_steps(data.repeat()) is None
        assert models.dmfa_model._planned_steps(data.repeat(5), epochs=4, initial_epoch=1) == 15
        assert models.dmfa_model._planned_steps(image, batch_size=3, epochs=2) == 6
    explicit = dmfa_tf.build_model((6, 6, 1), "mlp")
    explicit.compile("adam", jit_compile=True)
    explicit.fit(data.repeat(2), epochs=1, verbose=0)
    assert explicit.jit_compile  # only "auto" is decided by fit


def _batches(n_batches, seed=0):
    rng = np.random.RandomState(seed)
    image = rng.rand(n_batches * 8, 6, 6, 1).astype(np.float32)
    mask = np.ones_like(image)
    mask[:, 1:4, 2:5] = 0
    return tf.data.Dataset.from_tensor_slices({"image": image, "mask": mask}).batch(8)


def test_fused_training_equals_keras_training_and_resumes_after_save(tmp_path):
    def train(fuse):
        keras.utils.set_random_seed(3)
        model = _tiny_model()
        model.compile(keras.optimizers.Adam(1e-2), jit_compile=False, fuse_optimizer=fuse)
        model.fit(_batches(4), epochs=2, verbose=0)
        return model

    fused, stock = train(True), train(False)
    for a, b in zip(fused.get_weights(), stock.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

    path = str(tmp_path / "m.keras")
    fused.save(path)
    loaded = keras.saving.load_model(path)
    assert optimizers.is_fused(loaded.optimizer)
    assert int(loaded.optimizer.iterations.numpy()) == 8
    # one more epoch from the saved state equals one more epoch in memory
    loaded.fit(_batches(4, seed=1), epochs=1, verbose=0)
    fused.fit(_batches(4, seed=1), epochs=1, verbose=0)
    for a, b in zip(loaded.get_weights(), fused.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fused_update_under_a_two_replica_mirrored_strategy():
    # Logical devices must be set before TensorFlow starts: a fresh process.
    script = textwrap.dedent(
        """
        import numpy as np, keras, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from dmfa_tf.models import optimizers
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        rng = np.random.RandomState(0)
        w0 = rng.randn(33).astype(np.float32)
        grads = [rng.randn(33).astype(np.float32) for _ in range(3)]
        with strategy.scope():
            w = keras.Variable(w0)
            opt = optimizers.fuse(keras.optimizers.Adam(0.1))
            opt.build([w])
        @tf.function
        def step(g):
            def replica_fn():
                opt.apply([g / 2.0], [w])  # each replica holds half the gradient
            strategy.run(replica_fn)
        for g in grads:
            step(tf.constant(g))
        m = np.zeros(33); v = np.zeros(33); ref = w0.astype(np.float64)
        for t, g in enumerate(grads, 1):
            m += (g - m) * 0.1; v += (g * g - v) * 0.001
            ref -= 0.1 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + 1e-7)
        for value in strategy.experimental_local_results(w.value):
            np.testing.assert_allclose(value.numpy(), ref, rtol=1e-5, atol=1e-5)
        print("OK")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def test_saved_model_remembers_auto_and_the_fuse_choice(tmp_path):
    model = _tiny_model()
    model.compile(keras.optimizers.Adam(1e-3))
    model.fit(_batches(1), epochs=1, verbose=0)
    model.save(tmp_path / "auto.keras")
    loaded = keras.saving.load_model(tmp_path / "auto.keras")
    assert loaded.get_compile_config()["jit_compile"] == "auto"
    assert optimizers.is_fused(loaded.optimizer)

    model.compile(keras.optimizers.Adam(1e-3), jit_compile=False, fuse_optimizer=False)
    model.fit(_batches(1), epochs=1, verbose=0)
    model.save(tmp_path / "plain.keras")
    loaded = keras.saving.load_model(tmp_path / "plain.keras")
    assert loaded.get_compile_config()["jit_compile"] is False
    assert not optimizers.is_fused(loaded.optimizer)
