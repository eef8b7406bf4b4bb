"""The loss and the paper's per-image scores, on hand-computed examples."""

import numpy as np
import pytest
import tensorflow as tf

import reference
from dmfa_tf.losses import MaskedNLL, negative_log_likelihood, squared_error


def _params_2x2():
    """K = 2 components over a 2 x 2 grey image (N = 4), L = 1."""
    return {
        "logits": np.array([[0.0, 1.0]], np.float32),  # component 1 is the most probable
        "loc": np.array([[[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]], np.float32),
        "factors": np.zeros((1, 2, 4, 1), np.float32),
        "diag": np.full((1, 2, 4), 0.25, np.float32),
    }


def test_squared_error_hand_computed():
    params = _params_2x2()
    image = np.array([1.0, 0.0, 0.5, 0.5], np.float32).reshape(1, 2, 2, 1)
    mask = np.array([1, 0, -1, 0], np.float32).reshape(1, 2, 2, 1)
    # scored pixels 1 and 3 against component 1's means 0.6 and 0.8
    expected = (0.0 - 0.6) ** 2 + (0.5 - 0.8) ** 2
    np.testing.assert_allclose(squared_error(params, image, mask).numpy(), [expected], rtol=1e-6)


def test_nll_hand_computed_diagonal_mixture():
    params = _params_2x2()
    image = np.array([1.0, 0.0, 0.5, 0.5], np.float32).reshape(1, 2, 2, 1)
    mask = np.array([1, 0, -1, 0], np.float32).reshape(1, 2, 2, 1)

    def gauss(x, m, v):
        return np.exp(-((x - m) ** 2) / (2 * v)) / np.sqrt(2 * np.pi * v)

    weights = np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()
    density = weights[0] * gauss(0.0, 0.2, 0.25) * gauss(0.5, 0.4, 0.25) + weights[1] * gauss(
        0.0, 0.6, 0.25
    ) * gauss(0.5, 0.8, 0.25)
    got = negative_log_likelihood(params, image, mask).numpy()
    np.testing.assert_allclose(got, [-np.log(density)], rtol=1e-5)


def test_masked_nll_loss_reductions_and_input_forms():
    rng = np.random.default_rng(0)
    b, h, w, c, k, l = 3, 3, 3, 2, 2, 2
    n = h * w * c
    params = {
        "logits": rng.normal(size=(b, k)).astype(np.float32),
        "loc": rng.uniform(size=(b, k, n)).astype(np.float32),
        "factors": rng.uniform(-0.2, 0.2, size=(b, k, n, l)).astype(np.float32),
        "diag": rng.uniform(0.01, 0.5, size=(b, k, n)).astype(np.float32),
    }
    image = rng.uniform(size=(b, h, w, c)).astype(np.float32)
    mask = (rng.uniform(size=(b, h, w, 1)) > 0.4).astype(np.float32)
    mask[2] = 1.0  # nothing missing: NLL 0
    flat_mask = np.broadcast_to(mask, image.shape).reshape(b, -1)
    expected = -reference.mixture_log_prob(**params, mask=flat_mask, x=image.reshape(b, -1))
    assert expected[2] == 0.0
    per_image = MaskedNLL(reduction=None)({"image": image, "mask": mask}, params).numpy()
    np.testing.assert_allclose(per_image, expected, rtol=1e-4, atol=1e-4)
    assert per_image[2] == 0.0
    mean = MaskedNLL()((image, mask), params).numpy()
    np.testing.assert_allclose(mean, expected.mean(), rtol=1e-4)
    weighted = MaskedNLL()((image, mask), params, sample_weight=np.array([1.0, 0.0, 0.0])).numpy()
    np.testing.assert_allclose(weighted, expected[0] / 3, rtol=1e-4)
    assert MaskedNLL.from_config(MaskedNLL(name="x").get_config()).name == "x"


def test_masked_nll_rejects_bad_targets():
    with pytest.raises(ValueError, match=r"missing \['mask'\]"):
        MaskedNLL()({"image": np.zeros((1, 2, 2, 1))}, _params_2x2())
    with pytest.raises(ValueError, match="Expected"):
        MaskedNLL()(np.zeros((1, 2, 2, 1)), _params_2x2())


def test_scores_are_zero_when_nothing_is_missing():
    params = _params_2x2()
    image = np.zeros((1, 2, 2, 1), np.float32)
    mask = np.ones((1, 2, 2, 1), np.float32)
    assert negative_log_likelihood(params, image, mask).numpy()[0] == 0.0
    assert squared_error(params, image, mask).numpy()[0] == 0.0
    # absent pixels are not scored either
    assert squared_error(params, image, -mask).numpy()[0] == 0.0
    assert negative_log_likelihood(params, tf.constant(image), -mask).numpy()[0] == 0.0
