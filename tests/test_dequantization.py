"""Dequantization: the step found from the data, seeded jitter, training
targets, and calibration measured at dequantized values (against scipy)."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import reference
from dmfa_tf import baselines, evaluation, masks
from dmfa_tf.data import dequantization
from dmfa_tf.core.distribution import flatten_mask


def eight_bit(rng, shape):
    return (rng.integers(0, 256, size=shape) / 255.0).astype(np.float32)


def test_quantization_step_of_8_bit_and_other_data():
    rng = np.random.default_rng(0)
    assert dequantization.quantization_step(eight_bit(rng, (50, 4, 4, 1))) == pytest.approx(1 / 255)
    assert dequantization.quantization_step(rng.uniform(size=(50, 4, 4, 1))) == 0.0
    # one value off the grid is enough
    images = eight_bit(rng, (5000, 3, 3, 1))
    images[4999, 1, 1, 0] = 0.5
    assert dequantization.quantization_step(images) == 0.0
    # NaN (absent pixels) are ignored; nothing finite: nothing to dequantize
    with_nan = eight_bit(rng, (3, 2, 2, 1))
    with_nan[0, 0, 0, 0] = np.nan
    assert dequantization.quantization_step(with_nan) == pytest.approx(1 / 255)
    assert dequantization.quantization_step(np.full((2, 2), np.nan)) == 0.0
    with pytest.raises(ValueError, match="floats"):
        dequantization.quantization_step(np.zeros((2, 2), np.uint8))


def test_jitter_is_uniform_and_seeded_per_row():
    a = dequantization.jitter((300, 5, 5, 1), seed=7)
    assert a.dtype == np.float32 and a.shape == (300, 5, 5, 1)
    assert a.min() >= -0.5 and a.max() < 0.5
    # uniform: a Kolmogorov-Smirnov test at a generous level
    assert stats.kstest(a.ravel() + 0.5, "uniform").pvalue > 1e-3
    # row i depends on (seed, i) only
    np.testing.assert_array_equal(dequantization.jitter((10, 5, 5, 1), seed=7), a[:10])
    assert not np.array_equal(dequantization.jitter((10, 5, 5, 1), seed=8), a[:10])


def test_dequantized_targets_keep_the_input_and_spread_the_target_over_the_bin():
    rng = np.random.default_rng(1)
    images = eight_bit(rng, (64, 6, 6, 1))
    data = tf.data.Dataset.from_tensor_slices(
        {"image": images, "mask": np.zeros((64, 6, 6, 1), np.float32)}
    ).batch(16)
    step = 1 / 255
    pairs = list(dequantization.dequantize_targets(data, step, seed=3))
    again = list(dequantization.dequantize_targets(data, step, seed=3))
    assert len(pairs) == 4
    offsets = []
    for (batch, target), (_, target_again), start in zip(pairs, again, range(0, 64, 16)):
        np.testing.assert_array_equal(batch["image"], images[start : start + 16])
        np.testing.assert_array_equal(target, target_again)  # seeded
        offsets.append((target.numpy() - images[start : start + 16]) / step)
    offsets = np.concatenate(offsets).ravel()
    assert offsets.min() >= -0.5 - 1e-3 and offsets.max() <= 0.5 + 1e-3
    assert stats.kstest(offsets + 0.5, "uniform").pvalue > 1e-3
    # step 0: the data set is returned as it is
    assert dequantization.dequantize_targets(data, 0.0, seed=3) is data


class DiagonalModel:
    """A fixed diagonal Gaussian per pixel: loc 0.3, variance 0.04."""

    def __init__(self, shape):
        self.image_shape = shape

    def __call__(self, inputs, training=False):
        batch = tf.shape(inputs["image"])[0]
        n = int(np.prod(self.image_shape))
        return {
            "logits": tf.zeros([batch, 1]),
            "loc": tf.fill([batch, 1, n], 0.3),
            "factors": tf.zeros([batch, 1, n, 1]),
            "diag": tf.fill([batch, 1, n], 0.04),
        }


def test_calibration_is_measured_at_the_dequantized_values():
    shape = (6, 6, 1)
    rng = np.random.default_rng(2)
    images = eight_bit(rng, (7,) + shape)
    spec = "3x4"
    scores = evaluation.score(DiagonalModel(shape), images, spec, seed=5, batch_size=3)
    raw = evaluation.score(DiagonalModel(shape), images, spec, seed=5, batch_size=3, dequantize=0)
    assert scores["dequantization_step"][0] == pytest.approx(1 / 255)
    assert raw["dequantization_step"][0] == 0.0
    mask = np.stack([flatten_mask(masks.parse(spec)(6, 6, [5, i])[None], 36).numpy()[0] for i in range(7)])
    x = images.reshape(7, -1).astype(np.float64)
    v = np.stack([np.random.default_rng([5, i, 0x6A17]).random(36, np.float32) for i in range(7)])
    xq = x + (v - 0.5) / 255  # the dequantized values, computed here independently
    for values, result in ((xq, scores), (x, raw)):
        missing = mask == 0
        pit = stats.norm.cdf(values, 0.3, 0.2)[missing]
        distance = np.sum(np.where(missing, (values - 0.3) ** 2 / 0.04, 0.0), axis=1)
        np.testing.assert_allclose(result["mahalanobis"], distance, rtol=1e-4)
        summary = evaluation.calibration(result)
        assert summary["coverage_50"] == pytest.approx(np.mean((pit >= 0.25) & (pit <= 0.75)))
        deciles = np.histogram(pit, bins=np.linspace(0, 1, 11))[0] / pit.size
        assert summary["pit_deciles"] == pytest.approx(deciles.tolist())
    assert evaluation.calibration(scores)["dequantization_step"] == pytest.approx(1 / 255)
    # NLL and squared error are those of the stored values either way
    np.testing.assert_array_equal(scores["nll"], raw["nll"])
    np.testing.assert_array_equal(scores["squared_error"], raw["squared_error"])
    nll = np.sum(np.where(mask == 0, 0.5 * np.log(2 * np.pi * 0.04) + (x - 0.3) ** 2 / 0.08, 0), 1)
    np.testing.assert_allclose(scores["nll"], nll, rtol=1e-5)


def test_bad_dequantize_value():
    images = np.zeros((2, 4, 4, 1), np.float32)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="dequantize"):
            evaluation.score(DiagonalModel((4, 4, 1)), images, "2x2", dequantize=bad)


def test_full_gaussian_calibration_at_dequantized_values_matches_dense_reference():
    rng = np.random.default_rng(3)
    shape = (3, 3, 1)
    train = eight_bit(rng, (300,) + shape)
    model = baselines.FullGaussian.fit(train, regularization=1e-3)
    images = eight_bit(rng, (4,) + shape)
    scores = evaluation.score(model, images, "2x2", seed=1, batch_size=3)
    mask = np.stack([flatten_mask(masks.parse("2x2")(3, 3, [1, i])[None], 9).numpy()[0] for i in range(4)])
    x = images.reshape(4, -1).astype(np.float64)
    v = np.stack([np.random.default_rng([1, i, 0x6A17]).random(9, np.float32) for i in range(4)])
    # as the scorer computes them, in float32
    xq = (images.reshape(4, -1) + np.float32(1 / 255) * (v - np.float32(0.5))).astype(np.float64)
    pits = []
    for b in range(4):
        *_, log_prob, _, _ = reference.gaussian_conditional(model.mean, model.covariance, x[b], mask[b])
        # conditioned on the stored observed values, measured at the dequantized missing ones
        hybrid = np.where(mask[b] == 0, xq[b], x[b])
        *_, cdf, distance = reference.gaussian_conditional(model.mean, model.covariance, hybrid, mask[b])
        assert scores["nll"][b] == pytest.approx(-log_prob, rel=1e-6)
        assert scores["mahalanobis"][b] == pytest.approx(distance, rel=1e-6)
        pits.append(cdf)
    pit = np.concatenate(pits)
    assert evaluation.calibration(scores)["coverage_90"] == pytest.approx(
        np.mean((pit >= 0.05) & (pit <= 0.95))
    )
