"""Keras layers: hand-computed outputs, contracts and error messages."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dmfa_tf.models.layers import (
    ConvMixtureHead,
    DenseMixtureHead,
    ObservedInput,
    constrain_diag,
    constrain_factors,
)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_constraints_hand_computed():
    z = np.array([-30.0, -1.0, 0.0, 2.0, 30.0], np.float32)
    np.testing.assert_allclose(
        constrain_factors(z, 0.5).numpy(), 0.5 * _sigmoid(z) - 0.25, atol=1e-7
    )
    np.testing.assert_allclose(constrain_factors(np.float32(0.0), 0.5).numpy(), 0.0)
    np.testing.assert_allclose(constrain_factors(z, 2.0, "tanh").numpy(), np.tanh(z), atol=1e-6)
    np.testing.assert_allclose(constrain_factors(z, 2.0, "linear"), z)
    np.testing.assert_allclose(
        constrain_diag(z, 1e-4).numpy(), 1e-4 + _sigmoid(z), rtol=1e-6
    )
    softplus = constrain_diag(z, 1e-3, "softplus").numpy()
    np.testing.assert_allclose(softplus, 1e-3 + np.log1p(np.exp(z)), rtol=1e-5)
    assert constrain_diag(np.float32(-100.0), 1e-4).numpy() >= 1e-4


def test_observed_input_hand_computed():
    image = np.array([[0.2, np.nan], [0.7, 0.9]], np.float32).reshape(1, 2, 2, 1)
    image = np.concatenate([image, image * 0 + 0.5], axis=-1)  # 2 channels
    mask = np.array([[1, 0], [-1, 1]], np.float32).reshape(1, 2, 2, 1)
    out = ObservedInput()(image, mask).numpy()
    assert out.shape == (1, 2, 2, 4)
    known = np.array([[1, 0], [0, 1]], np.float32)
    np.testing.assert_array_equal(out[0, ..., 2], known)
    np.testing.assert_array_equal(out[0, ..., 3], known)
    np.testing.assert_array_equal(out[0, ..., 0], np.float32([[0.2, 0.0], [0.0, 0.9]]))
    np.testing.assert_array_equal(out[0, ..., 1], [[0.5, 0.0], [0.0, 0.5]])


@pytest.mark.parametrize(
    "image_value, mask_value, message",
    [
        (np.nan, 1.0, "NaN or inf at observed"),
        (np.inf, 1.0, "NaN or inf at observed"),
        (1.5, 1.0, r"outside \[0, 1\]"),
        (-0.1, 1.0, r"outside \[0, 1\]"),
        (0.5, 0.5, "mask"),
        (0.5, 2.0, "mask"),
    ],
)
def test_observed_input_rejects_bad_values(image_value, mask_value, message):
    image = np.full((2, 3, 3, 1), 0.5, np.float32)
    mask = np.ones((2, 3, 3, 1), np.float32)
    image[1, 2, 0, 0] = image_value
    mask[1, 2, 0, 0] = mask_value
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        ObservedInput()(image, mask)
    # the same values at a missing pixel are fine, except a bad mask code
    if mask_value == 1.0:
        mask[1, 2, 0, 0] = 0.0
        assert np.all(np.isfinite(ObservedInput()(image, mask).numpy()))
    # validate=False skips the checks
    ObservedInput(validate=False)(np.nan_to_num(image), mask)


@pytest.mark.parametrize(
    "image_shape, mask_shape",
    [((2, 4, 4, 1), (2, 4, 4, 3)), ((2, 4, 4, 3), (2, 4, 4, 2)), ((2, 4, 4, 1), (3, 4, 4, 1)),
     ((2, 4, 4, 1), (2, 4, 5, 1)), ((2, 4, 4, 1), (2, 4, 4))],
)
def test_observed_input_names_a_mask_that_does_not_fit(image_shape, mask_shape):
    image, mask = np.zeros(image_shape, np.float32), np.ones(mask_shape, np.float32)
    with pytest.raises(ValueError, match=r"`mask` must be \[B, H, W, 1\] or \[B, H, W, C\]") as info:
        ObservedInput()(image, mask)
    assert str(image_shape) in str(info.value) and str(mask_shape) in str(info.value)


def test_model_names_a_mask_that_does_not_fit():
    import dmfa_tf

    model = dmfa_tf.build_model((4, 4, 1), "mlp", hidden=(4, 4))
    image = np.zeros((2, 4, 4, 1), np.float32)
    for mask in (np.ones((2, 4, 4, 3), np.float32), np.ones((3, 4, 4, 1), np.float32)):
        with pytest.raises(ValueError, match="`mask` must be"):
            model.impute(image, mask)


def _head_kwargs(**overrides):
    return dict(
        components=2,
        factors=3,
        factor_amplitude=0.5,
        variance_floor=1e-4,
        **overrides,
    )


def test_dense_head_hand_computed():
    h, w, c, k, l = 2, 2, 1, 2, 3
    n = h * w * c
    head = DenseMixtureHead((h, w, c), **_head_kwargs())
    features = np.array([[1.0, 2.0]], np.float32)
    head.build(features.shape)
    # zero kernels, known biases: outputs are the biases, reshaped [K, N(, L)]
    for dense, size in (
        (head.logits_dense, k),
        (head.loc_dense, k * n),
        (head.factors_dense, k * n * l),
        (head.diag_dense, k * n),
    ):
        dense.set_weights([np.zeros((2, size)), np.arange(size, dtype=np.float32) / size])
    out = {key: v.numpy() for key, v in head(features).items()}
    np.testing.assert_allclose(out["logits"], [[0.0, 0.5]])
    np.testing.assert_allclose(out["loc"][0], np.arange(k * n).reshape(k, n) / (k * n))
    raw_factors = np.arange(k * n * l).reshape(k, n, l) / (k * n * l)
    np.testing.assert_allclose(out["factors"][0], 0.5 * _sigmoid(raw_factors) - 0.25, atol=1e-6)
    raw_diag = np.arange(k * n).reshape(k, n) / (k * n)
    np.testing.assert_allclose(out["diag"][0], 1e-4 + _sigmoid(raw_diag), rtol=1e-6)


def test_conv_head_pixel_order_matches_flatten():
    """Per-pixel outputs land at N index (h * W + w) * C + c, the flatten order."""
    h, w, c, k, l = 3, 4, 2, 2, 3
    head = ConvMixtureHead((h, w, c), kernel_size=1, **_head_kwargs(factor_activation="linear"))
    pixel = np.arange(h * w, dtype=np.float32).reshape(1, h, w, 1) / 10.0  # one feature
    head.build(pixel.shape)
    rng = np.random.default_rng(0)
    weights = {}
    for name, layer, size in (
        ("loc", head.loc_conv, k * c),
        ("factors", head.factors_conv, k * c * l),
        ("diag", head.diag_conv, k * c),
    ):
        kernel = rng.normal(size=(1, 1, 1, size)).astype(np.float32)
        bias = rng.normal(size=size).astype(np.float32)
        layer.set_weights([kernel, bias])
        weights[name] = (kernel[0, 0, 0], bias)
    out = {key: v.numpy()[0] for key, v in head(pixel).items()}
    p = pixel[0, ..., 0]
    for kk in range(k):
        for i in range(h):
            for j in range(w):
                for cc in range(c):
                    n = (i * w + j) * c + cc
                    kernel, bias = weights["loc"]
                    assert out["loc"][kk, n] == pytest.approx(p[i, j] * kernel[kk * c + cc] + bias[kk * c + cc], abs=1e-5)
                    kernel, bias = weights["diag"]
                    z = p[i, j] * kernel[kk * c + cc] + bias[kk * c + cc]
                    assert out["diag"][kk, n] == pytest.approx(1e-4 + _sigmoid(z), rel=1e-5)
                    kernel, bias = weights["factors"]
                    for ll in range(l):
                        index = (kk * c + cc) * l + ll
                        assert out["factors"][kk, n, ll] == pytest.approx(p[i, j] * kernel[index] + bias[index], abs=1e-5)
    # logits come from the mean feature
    assert out["logits"].shape == (k,)


@pytest.mark.parametrize("cls", [DenseMixtureHead, ConvMixtureHead])
def test_head_config_round_trip(cls):
    head = cls((4, 4, 3), **_head_kwargs(variance_activation="softplus", factor_activation="tanh"))
    config = head.get_config()
    clone = cls.from_config(config)
    assert clone.get_config() == config
    assert config["image_shape"] == [4, 4, 3] and config["components"] == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(components=0), "components.*Received: components=0"),
        (dict(factors=2.5), "factors.*Received: factors=2.5"),
        (dict(factor_activation="relu"), "factor_activation.*relu"),
        (dict(variance_activation="exp"), "variance_activation.*exp"),
        (dict(variance_floor=-1.0), "variance_floor.*-1.0"),
        (dict(factor_amplitude=0.0), "factor_amplitude.*0.0"),
    ],
)
def test_head_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DenseMixtureHead((4, 4, 1), **kwargs)


def test_head_image_shape_error():
    with pytest.raises(ValueError, match=r"image_shape.*\(4, 4\)"):
        DenseMixtureHead((4, 4))
    head = ConvMixtureHead((4, 4, 1))
    with pytest.raises(ValueError, match="features of size 4x4"):
        head(keras.ops.zeros((1, 5, 4, 8)))
