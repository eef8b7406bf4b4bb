"""The full-covariance Gaussian and KNN baselines against independent references:
dense float64 conditioning (tests/reference.py) and scikit-learn's KNNImputer."""

import numpy as np
import pytest
from sklearn.impute import KNNImputer

import reference
from dmfa_tf import baselines, evaluation, masks
from dmfa_tf.core.distribution import flatten_mask

SHAPE = (3, 4, 1)  # N = 12
N = 12


def mixed_masks(rng, batch=9):
    """1 observed / 0 missing / -1 absent, with the corner cases: nothing
    missing, nothing observed, only absent hidden coordinates."""
    rows = [np.ones(N), np.zeros(N), np.where(np.arange(N) < 3, -1.0, 1.0)]
    while len(rows) < batch:
        rows.append(rng.choice([1.0, 0.0, -1.0], size=N, p=[0.5, 0.35, 0.15]))
    return np.stack(rows)


@pytest.fixture(scope="module")
def gaussian_case():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(N, N)) * 0.3
    train = rng.normal(size=(200, N)) @ mixing.T + 0.5
    train[:, 5] = 0.25  # a constant pixel: the regularisation keeps it proper
    return rng, train.reshape((-1,) + SHAPE)


def test_full_gaussian_fit_is_the_regularised_ml_estimate(gaussian_case):
    _, train = gaussian_case
    model = baselines.FullGaussian.fit(train, regularization=1e-3, batch_size=64)
    flat = train.reshape(len(train), -1)
    np.testing.assert_allclose(model.mean, flat.mean(0), rtol=1e-12, atol=1e-12)
    expected = np.cov(flat, rowvar=False, bias=True) + 1e-3 * np.eye(N)
    np.testing.assert_allclose(model.covariance, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.precision @ expected, np.eye(N), atol=1e-8)
    assert model.image_shape == SHAPE and model.covariance[5, 5] == pytest.approx(1e-3)


def test_full_gaussian_conditional_matches_dense_reference(gaussian_case):
    rng, train = gaussian_case
    model = baselines.FullGaussian.fit(train, regularization=1e-3)
    mask = mixed_masks(rng, 12)
    x = rng.normal(size=mask.shape) * 0.3 + 0.5
    out = model.predict_missing(x, mask)
    for b in range(len(mask)):
        h, mean, cov, log_prob, cdf, distance = reference.gaussian_conditional(
            model.mean, model.covariance, x[b], mask[b]
        )
        assert out["log_prob"][b] == pytest.approx(log_prob, rel=1e-9, abs=1e-9)
        assert out["mahalanobis"][b] == pytest.approx(distance, rel=1e-9, abs=1e-9)
        np.testing.assert_allclose(out["imputation"][b, h], mean, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(out["pit"][b, h], cdf, rtol=1e-9, atol=1e-12)
        assert np.all(np.isnan(out["pit"][b, mask[b] != 0]))
        observed = mask[b] == 1
        np.testing.assert_array_equal(out["imputation"][b, observed], x[b, observed])
        index, cond_mean, chol = model.conditional(x[b], mask[b])
        np.testing.assert_array_equal(index, h)
        np.testing.assert_allclose(cond_mean, mean, rtol=1e-9, atol=1e-9)
        if len(h):
            np.testing.assert_allclose(np.linalg.inv(chol @ chol.T), cov, rtol=1e-8, atol=1e-12)
    # nothing missing: NLL 0 (also when the hidden coordinates are all absent)
    assert out["log_prob"][0] == 0.0 and out["log_prob"][2] == 0.0
    assert out["mahalanobis"][0] == 0.0 and out["mahalanobis"][2] == 0.0
    # absent pixels are filled in with the conditional mean given the observed ones
    h, mean, *_ = reference.gaussian_conditional(
        model.mean, model.covariance, x[2], np.where(mask[2] == -1, 0.0, mask[2])
    )
    np.testing.assert_allclose(out["imputation"][2, h], mean, rtol=1e-9, atol=1e-9)
    # nothing observed: the marginal
    np.testing.assert_allclose(out["imputation"][1], model.mean, rtol=1e-9, atol=1e-12)


def test_full_gaussian_scores_through_evaluation(gaussian_case):
    """`evaluation.score` reports the baseline's own numbers on the seeded masks."""
    rng, train = gaussian_case
    model = baselines.FullGaussian.fit(np.clip(train, 0, 1), regularization=1e-3)
    images = rng.uniform(size=(5,) + SHAPE).astype(np.float32)
    scores = evaluation.score(model, images, "2x2", seed=4, batch_size=3)
    mask = np.stack([
        flatten_mask(masks.parse("2x2")(3, 4, [4, i])[None], N).numpy()[0] for i in range(5)
    ])
    direct = model.predict_missing(images.reshape(5, -1), mask)
    np.testing.assert_allclose(scores["nll"], -direct["log_prob"], rtol=1e-6)
    np.testing.assert_allclose(scores["mahalanobis"], direct["mahalanobis"], rtol=1e-6)
    pit = direct["pit"][mask == 0]
    result = evaluation.calibration(scores)
    assert result["pixels"] == 20
    assert result["coverage_90"] == pytest.approx(np.mean((pit >= 0.05) & (pit <= 0.95)))
    assert result["pit_deciles"] == pytest.approx(np.bincount(np.minimum(pit * 10, 9).astype(int), minlength=10) / 20)


def test_full_gaussian_bad_input():
    with pytest.raises(ValueError, match="not positive definite"):
        baselines.FullGaussian(np.zeros(2), np.zeros((2, 2)), (1, 2, 1), regularization=0.0)
    with pytest.raises(ValueError, match="regularization"):
        baselines.FullGaussian(np.zeros(2), np.eye(2), (1, 2, 1), regularization=-1.0)
    with pytest.raises(ValueError, match=r"\[n, H, W, C\]"):
        baselines.FullGaussian.fit(np.zeros((1, 2, 2, 1)))


@pytest.mark.parametrize("candidates, chunk", [(64, 8192), (5, 7)])
def test_knn_matches_sklearn_knn_imputer(candidates, chunk):
    rng = np.random.default_rng(1)
    train = rng.uniform(size=(60, N)).astype(np.float32).astype(np.float64)  # stored as float32
    mask = mixed_masks(rng, 10)
    test = rng.uniform(size=mask.shape)
    expected = KNNImputer(n_neighbors=5).fit(train).transform(np.where(mask == 1, test, np.nan))
    model = baselines.KNNImputation(train, SHAPE, candidates=candidates, chunk=chunk)
    got = model.predict_missing(test, mask)["imputation"]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    # nothing observed: the training mean, as KNNImputer
    np.testing.assert_allclose(got[1], train.mean(0), rtol=1e-12)
    assert set(model.predict_missing(test, mask)) == {"imputation"}


def test_knn_scores_without_density():
    rng = np.random.default_rng(2)
    train = rng.uniform(size=(30,) + SHAPE).astype(np.float32)
    images = rng.uniform(size=(4,) + SHAPE).astype(np.float32)
    model = baselines.KNNImputation.fit(train, max_rows=20)
    assert len(model.train) == 20
    scores = evaluation.score(model, images, "2x2", seed=0)
    assert np.all(np.isnan(scores["nll"])) and np.all(np.isnan(scores["mahalanobis"]))
    assert np.all(np.isfinite(scores["squared_error"])) and np.all(scores["missing"] == 4)
    assert evaluation.calibration(scores) is None
    with pytest.raises(ValueError, match="at least `neighbors` = 5 training images; received 3"):
        baselines.KNNImputation.fit(train, max_rows=3)
    with pytest.raises(ValueError, match="complete"):
        baselines.KNNImputation(np.full((6, N), np.nan), SHAPE)
