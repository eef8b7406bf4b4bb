"""DMFA networks: parameter counts, save/load, the loss, K > 1 training."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference
import dmfa_tf
from dmfa_tf import masks


def _batch(shape, count=4, seed=0, mask_channels=1):
    rng = np.random.default_rng(seed)
    image = rng.uniform(size=(count,) + shape).astype(np.float32)
    mask = np.stack(
        [masks.Rectangle(shape[0] // 2, shape[1] // 2)(shape[0], shape[1], [seed, i]).numpy() for i in range(count)]
    )
    if mask_channels > 1:
        mask = np.repeat(mask, mask_channels, axis=-1)
    return {"image": image, "mask": mask}


def test_linear_heads_parameter_count_is_the_papers():
    model = dmfa_tf.build_model((28, 28, 1), "linear_heads", components=1, factors=4)
    assert model.count_params() == 118_127_121


def test_linear_heads_count_by_hand_for_a_small_image():
    h, w, c, k, l = 8, 8, 1, 2, 3
    model = dmfa_tf.build_model((h, w, c), "linear_heads", components=k, factors=l)
    convs = (5 * 5 * 2 * 16 + 16) + (5 * 5 * 16 * 32 + 32) + (5 * 5 * 32 * 64 + 64) + (3 * 3 * 64 * 32 + 32)
    flat, n = h * w * 32, h * w * c
    heads = (flat + 1) * k + (flat + 1) * k * n * 2 + (flat + 1) * k * n * l
    assert model.count_params() == convs + heads
    assert model.head.variance_floor == 1e-10 and model.head.factor_amplitude == 0.5


def test_fullconv_weight_count_does_not_depend_on_image_size():
    counts = {
        shape: dmfa_tf.build_model(shape, "fullconv", components=2).count_params()
        for shape in [(28, 28, 3), (32, 32, 3), (64, 64, 3), (30, 45, 3), (128, 96, 3)]
    }
    assert len(set(counts.values())) == 1, counts


def test_fullconv_blocks_count_by_hand():
    """`blocks` 3x3 convolutions per level and side: with width w, depth 1 and
    grey images, the weights are counted by hand."""
    w, k, l = 4, 1, 2

    def conv(cin, cout, size=3):
        return size * size * cin * cout + cout

    def expected(blocks):
        enc0 = conv(2, w) + (blocks - 1) * conv(w, w)
        down = conv(w, 2 * w) + blocks * conv(2 * w, 2 * w)
        context = (2 * w) * (2 * w) + 2 * w
        up = 2 * 2 * (2 * w) * w + w  # Conv2DTranspose 2x2, 2w -> w
        dec0 = conv(2 * w, w) + (blocks - 1) * conv(w, w)
        heads = conv(w, k) * 2 + conv(w, k * l) + (w * k + k)
        return enc0 + down + context + up + dec0 + heads

    for blocks in (1, 2, 3):
        model = dmfa_tf.build_model((8, 8, 1), "fullconv", components=k, factors=l,
                                    width=w, depth=1, blocks=blocks)
        assert model.count_params() == expected(blocks), blocks
    with pytest.raises(ValueError, match="blocks.*0"):
        dmfa_tf.build_model((8, 8, 1), "fullconv", blocks=0)


@pytest.mark.parametrize(
    "architecture, shape",
    [("linear_heads", (8, 8, 1)), ("fullconv", (12, 10, 3)), ("mlp", (8, 8, 1)), ("mlp", (4, 6, 3))],
)
@pytest.mark.parametrize("mask_channels", [1, 3])
def test_output_shapes(architecture, shape, mask_channels):
    if mask_channels > shape[2]:
        mask_channels = shape[2]
    model = dmfa_tf.build_model(shape, architecture, components=2, factors=3)
    out = model(_batch(shape, mask_channels=mask_channels))
    n = int(np.prod(shape))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "logits": (4, 2),
        "loc": (4, 2, n),
        "factors": (4, 2, n, 3),
        "diag": (4, 2, n),
    }
    assert np.all(out["diag"].numpy() >= model.head.variance_floor)
    assert np.all(np.abs(out["factors"].numpy()) <= model.head.factor_amplitude / 2)


@pytest.mark.parametrize("architecture, shape", [("linear_heads", (8, 8, 1)), ("fullconv", (8, 8, 3)), ("mlp", (8, 8, 1))])
def test_keras_file_round_trip(tmp_path, architecture, shape):
    model = dmfa_tf.build_model(shape, architecture, components=2, factors=2, variance_activation="softplus")
    model.compile(keras.optimizers.Adam(1e-3))
    batch = _batch(shape)
    model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, dmfa_tf.DMFAModel)
    as_json = lambda m: json.dumps(m.get_config(), sort_keys=True)  # noqa: E731
    assert as_json(loaded) == as_json(model)
    before, after = model(batch), loaded(batch)
    for key in before:
        np.testing.assert_array_equal(before[key].numpy(), after[key].numpy())
    # compiled again with the optimizer's state: training continues
    assert int(loaded.optimizer.iterations.numpy()) == 1
    loaded.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations.numpy()) == 2


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_mixture_and_impute_take_other_float_dtypes(dtype):
    shape = (6, 6, 1)
    model = dmfa_tf.build_model(shape, "mlp", components=2, factors=2, hidden=(8, 8))
    batch = _batch(shape, count=3)
    image = batch["image"].astype(dtype)
    expected_image = image.astype(np.float32)  # float16: the rounded values
    expected = model.impute(expected_image, batch["mask"]).numpy()
    np.testing.assert_array_equal(model.impute(image, batch["mask"].astype(dtype)).numpy(), expected)
    dist = model.mixture(image, batch["mask"])
    np.testing.assert_allclose(
        dist.log_prob(dmfa_tf.flatten_images(expected_image)).numpy(),
        model.mixture(expected_image, batch["mask"]).log_prob(
            dmfa_tf.flatten_images(expected_image)).numpy(),
    )
    with pytest.raises(ValueError, match="`image` must hold numbers"):
        model.mixture(np.full(shape, "a")[None], batch["mask"][:1])


def test_compute_loss_is_the_dense_reference_nll():
    shape = (4, 4, 2)
    model = dmfa_tf.build_model(shape, "mlp", components=3, factors=2)
    batch = _batch(shape, count=5, mask_channels=1)
    batch["mask"][0] = 1.0  # nothing missing in the first image
    out = {k: v.numpy().astype(np.float64) for k, v in model(batch).items()}
    flat_mask = np.broadcast_to(batch["mask"], batch["image"].shape).reshape(5, -1)
    expected = -reference.mixture_log_prob(**out, mask=flat_mask, x=batch["image"].reshape(5, -1))
    assert expected[0] == 0.0
    loss = model.compute_loss(x=batch, y=None, y_pred=model(batch))
    np.testing.assert_allclose(loss.numpy(), expected.mean(), rtol=1e-4)
    # the standalone Loss gives the same, and per image with reduction=None
    per_image = dmfa_tf.MaskedNLL(reduction=None)(batch, model(batch)).numpy()
    np.testing.assert_allclose(per_image, expected, rtol=1e-4, atol=1e-3)


def test_mixture_and_impute_keep_observed_pixels():
    shape = (6, 6, 1)
    model = dmfa_tf.build_model(shape, "mlp", components=2)
    batch = _batch(shape)
    filled = model.impute(batch["image"], batch["mask"]).numpy()
    observed = batch["mask"] == 1
    np.testing.assert_array_equal(filled[observed], batch["image"][observed])
    dist = model.mixture(batch["image"], batch["mask"])
    samples = dmfa_tf.unflatten_images(dist.sample(2, seed=[0, 1]), shape).numpy()
    np.testing.assert_array_equal(samples[:, observed], np.broadcast_to(batch["image"][observed], (2, observed.sum())))


def test_mixture_components_learn_a_bimodal_conditional():
    """The hidden half of each 4x4 image is all 0.1 or all 0.9 (even odds),
    independent of the visible half. With variance floor f = 0.01:

    - K = 2 can put one component on each mode: NLL = log 2 + 8 * log(2 pi f) / 2
      = -10.36 nats.
    - No single Gaussian does better than the best fit, whose variance along the
      mode direction u = 1 / sqrt(8) is E[((x - 0.5) . u)^2] = 8 * 0.4^2 = 1.28:
      NLL >= log(2 pi 1.28) / 2 + 1/2 + 7 * log(2 pi f) / 2 = -8.13 nats.

    So a trained K = 2 model must beat every possible K = 1 model.
    """
    rng = np.random.default_rng(0)
    images = rng.uniform(0.0, 1.0, size=(2048, 4, 4, 1)).astype(np.float32)
    value = np.where(rng.uniform(size=2048) < 0.5, 0.1, 0.9).astype(np.float32)
    images[:, :, 2:, 0] = value[:, None, None]
    data = tf.data.Dataset.from_tensor_slices(images)
    data = masks.with_masks(data, masks.Halves("right"), seed=0).repeat().batch(64)
    test = next(iter(data))
    results = {}
    for k in (1, 2):
        keras.utils.set_random_seed(1)
        model = dmfa_tf.build_model(
            (4, 4, 1), "mlp", components=k, factors=1, hidden=(64, 64), variance_floor=0.01
        )
        model.compile(keras.optimizers.Adam(1e-3))
        model.fit(data, epochs=1, steps_per_epoch=600, verbose=0)
        results[k] = float(model.compute_loss(x=test, y_pred=model(test)))
        if k == 2:
            weights = tf.nn.softmax(model(test)["logits"]).numpy().mean(0)
    assert results[1] > -8.2, results  # no K = 1 model can beat -8.13
    assert results[2] < -10.0, results  # near the K = 2 optimum, -10.36
    assert weights.min() > 0.3, weights


def test_compile_rejects_a_loss():
    model = dmfa_tf.build_model((4, 4, 1), "mlp")
    with pytest.raises(ValueError, match="masked negative log-likelihood"):
        model.compile("adam", loss="mse")


def test_wrong_image_size_is_a_clear_error():
    model = dmfa_tf.build_model((8, 8, 1), "mlp")
    batch = _batch((8, 6, 1))
    with pytest.raises(ValueError, match=r"expected shape=\(None, 8, 8, 1\)"):
        model(batch)


def test_nan_at_observed_pixel_is_an_error_and_at_missing_pixel_ignored():
    model = dmfa_tf.build_model((8, 8, 1), "mlp")
    batch = _batch((8, 8, 1))
    missing = np.argwhere(batch["mask"][0, ..., 0] == 0)[0]
    batch["image"][0, missing[0], missing[1], 0] = np.nan
    assert all(np.all(np.isfinite(v.numpy())) for v in model(batch).values())
    observed = np.argwhere(batch["mask"][0, ..., 0] == 1)[0]
    batch["image"][0, observed[0], observed[1], 0] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or inf at observed"):
        model(batch)


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(image_shape=(8, 8, 1), architecture="resnet"), "Unknown architecture 'resnet'"),
        (dict(image_shape=(8, 8)), r"image_shape.*\(8, 8\)"),
        (dict(image_shape=(8, 8, 1), architecture="fullconv", width=0), "width.*0"),
        (dict(image_shape=(8, 8, 1), architecture="mlp", colour=3), "Bad option for architecture 'mlp'"),
        (dict(image_shape=(8, 8, 1), components=0), "components.*0"),
    ],
)
def test_build_model_errors(args, message):
    with pytest.raises(ValueError, match=message):
        dmfa_tf.build_model(**args)


@pytest.mark.parametrize("architecture,options", [("fullconv", dict(width=8)), ("mlp", {})])
def test_mixed_bfloat16_backbone_computes_the_float32_function(tmp_path, architecture, options):
    from dmfa_tf import models

    shape = (12, 12, 1)
    fast = dmfa_tf.build_model(shape, architecture, components=2, factors=2,
                               precision="mixed_bfloat16", **options)
    exact = dmfa_tf.build_model(shape, architecture, components=2, factors=2,
                                precision="float32", **options)
    exact.set_weights(fast.get_weights())  # the weights are float32 in both
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left alone
    dtypes = {layer.name: layer.compute_dtype for layer in fast.layers}
    assert dtypes["mixture_head"] == "float32" and dtypes["observed_input"] == "float32"
    assert "bfloat16" in dtypes.values()
    assert all(w.dtype == "float32" for w in fast.weights)
    assert models.precision_of(fast) == "mixed_bfloat16" and models.precision_of(exact) == "float32"
    assert models.auto_jit_compile(fast) is False  # XLA on CPU has no oneDNN bfloat16

    batch = _batch(shape, count=3)
    image, mask = batch["image"], batch["mask"]
    a, b = fast.mixture(image, mask), exact.mixture(image, mask)
    assert a.dtype == tf.float32
    x = np.reshape(image, (3, -1))
    # bfloat16 keeps 8 bits of mantissa: the parameters agree to about 1%.
    np.testing.assert_allclose(a.loc.numpy(), b.loc.numpy(), atol=0.02)
    np.testing.assert_allclose(a.log_prob(x).numpy(), b.log_prob(x).numpy(), rtol=0.05, atol=1.0)

    path = tmp_path / "m.keras"
    fast.save(path)
    loaded = keras.saving.load_model(path)
    assert models.precision_of(loaded) == "mixed_bfloat16"
    np.testing.assert_allclose(loaded.mixture(image, mask).log_prob(x).numpy(),
                               a.log_prob(x).numpy(), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="precision.*float16"):
        dmfa_tf.build_model(shape, architecture, precision="float16", **options)


@pytest.mark.parametrize("how", ["environment", "keras.json"])
def test_another_keras_backend_is_refused_at_import(tmp_path, how):
    """Keras on JAX or PyTorch: `import dmfa_tf` fails at once, naming the
    backend and where it was set, before Keras or TensorFlow is imported."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "KERAS_HOME")}
    if how == "environment":
        env["KERAS_BACKEND"] = "jax"
        where = "KERAS_BACKEND environment variable"
    else:
        (tmp_path / "keras.json").write_text('{"backend": "torch"}')
        env["KERAS_HOME"] = str(tmp_path)
        where = "keras.json"
    code = "import sys\ntry:\n    import dmfa_tf\nexcept ImportError as e:\n    print(e)\n"
    code += "print('keras' in sys.modules, 'tensorflow' in sys.modules)\n"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], cwd=root, env=env,
                            capture_output=True, text=True, timeout=120)
    lines = result.stdout.strip().splitlines()
    assert "runs on Keras's TensorFlow backend only" in lines[0] and where in lines[0]
    assert lines[-1] == "False False"
