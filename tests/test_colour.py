"""A mixture in a colour basis (`dmfa_tf.core.colour`) against dense float64
Gaussians built in RGB: covariance `B^T (A A^T + diag(d)) B`, `B` the basis
applied to every pixel."""

import os

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from dmfa_tf.core import colour, recalibration
from dmfa_tf.core.distribution import MaskedFactorMixture

PIXELS, CHANNELS, K, L = 5, 3, 2, 2
N = PIXELS * CHANNELS


def _problem(seed=0, batch=3):
    rng = np.random.default_rng(seed)
    params = {
        "logits": rng.normal(size=(batch, K)),
        "loc": rng.uniform(0.2, 0.8, size=(batch, K, N)),
        "factors": rng.normal(0, 0.2, size=(batch, K, N, L)),
        "diag": rng.uniform(0.001, 0.05, size=(batch, K, N)),
    }
    pixel_mask = rng.choice([1.0, 0.0, -1.0], p=[0.4, 0.45, 0.15], size=(batch, PIXELS))
    pixel_mask[:, 0] = 0.0  # at least one missing pixel
    pixel_mask[-1] = 1.0  # the last example has none
    mask = np.repeat(pixel_mask, CHANNELS, axis=1)
    x = rng.uniform(size=(batch, N))
    return params, mask, x


def _dense(params, basis, b, k):
    """Component k of example b in RGB: mean [N], covariance [N, N]."""
    block = np.kron(np.eye(PIXELS), basis)  # y = block @ x
    cov_y = params["factors"][b, k] @ params["factors"][b, k].T + np.diag(params["diag"][b, k])
    return block.T @ params["loc"][b, k], block.T @ cov_y @ block


def _dense_log_prob(params, basis, mask, x):
    out = np.zeros(len(x))
    for b in range(len(x)):
        missing = mask[b] == 0
        if not missing.any():
            continue
        log_w = params["logits"][b] - np.logaddexp.reduce(params["logits"][b])
        terms = []
        for k in range(K):
            mean, cov = _dense(params, basis, b, k)
            terms.append(log_w[k] + stats.multivariate_normal(
                mean[missing], cov[np.ix_(missing, missing)]).logpdf(x[b, missing]))
        out[b] = np.logaddexp.reduce(terms)
    return out


@pytest.fixture(params=["batched", "shared"])
def case(request):
    params, mask, x = _problem()
    basis = colour.basis_matrix("opponent", CHANNELS)
    batched = np.broadcast_to(basis, (len(x), CHANNELS, CHANNELS))
    dist = MaskedFactorMixture(
        **params, mask=mask, observed=x, validate_args=True,
        basis=batched if request.param == "batched" else basis,
    )
    return dist, params, basis, mask, x


def test_log_prob_and_mahalanobis_match_dense_rgb_gaussians(case):
    dist, params, basis, mask, x = case
    np.testing.assert_allclose(
        dist.log_prob(x).numpy(), _dense_log_prob(params, basis, mask, x), rtol=1e-10, atol=1e-9
    )
    d2 = dist.component_mahalanobis(x).numpy()
    for b in range(2):
        missing = mask[b] == 0
        for k in range(K):
            mean, cov = _dense(params, basis, b, k)
            r = (x[b] - mean)[missing]
            assert d2[b, k] == pytest.approx(r @ np.linalg.solve(cov[np.ix_(missing, missing)], r),
                                             rel=1e-10)


def test_moments_imputation_and_marginals_in_rgb(case):
    dist, params, basis, mask, x = case
    probs = np.exp(params["logits"] - np.logaddexp.reduce(params["logits"], axis=1, keepdims=True))
    missing = mask == 0
    cdf = recalibration.marginal_cdf(dist, x).numpy()
    for b in range(len(x)):
        means, covs = zip(*(_dense(params, basis, b, k) for k in range(K)))
        mean = sum(p * m for p, m in zip(probs[b], means))
        second = sum(p * (c + np.outer(m, m)) for p, m, c in zip(probs[b], means, covs))
        variance = np.diag(second - np.outer(mean, mean))
        observed = mask[b] == 1
        np.testing.assert_allclose(dist.mean().numpy()[b], np.where(observed, x[b], mean), atol=1e-12)
        np.testing.assert_allclose(dist.variance().numpy()[b], np.where(observed, 0, variance),
                                   atol=1e-12)
        best = means[int(np.argmax(params["logits"][b]))]
        np.testing.assert_allclose(dist.imputation().numpy()[b], np.where(observed, x[b], best),
                                   atol=1e-12)
        want = sum(p * stats.norm.cdf(x[b], m, np.sqrt(np.diag(c)))
                   for p, m, c in zip(probs[b], means, covs))
        np.testing.assert_allclose(cdf[b][missing[b]], want[missing[b]], atol=1e-12)


def test_samples_have_the_rgb_moments():
    params, mask, x = _problem(seed=1, batch=1)
    mask[:] = 0.0  # all missing: the samples follow the whole mixture
    basis = colour.basis_matrix("opponent", CHANNELS)
    dist = MaskedFactorMixture(**params, mask=mask, basis=basis)
    draws = dist.sample(40000, seed=[1, 2]).numpy()[:, 0]
    means, covs = zip(*(_dense(params, basis, 0, k) for k in range(K)))
    probs = np.exp(params["logits"][0] - np.logaddexp.reduce(params["logits"][0]))
    mean = sum(p * m for p, m in zip(probs, means))
    cov = sum(p * (c + np.outer(m, m)) for p, m, c in zip(probs, means, covs)) - np.outer(mean, mean)
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.01)
    np.testing.assert_allclose(np.cov(draws.T), cov, atol=0.01)
    # The colour correlation within a pixel is there (a diagonal in RGB has none).
    assert np.abs(cov[0, 1]) > 0.01


def test_named_bases_and_bad_masks():
    q = colour.basis_matrix("opponent", 3)
    np.testing.assert_allclose(q @ q.T, np.eye(3), atol=1e-15)
    assert colour.basis_matrix("rgb", 3) is None
    with pytest.raises(ValueError, match="needs 3 channels; the images have 1"):
        colour.basis_matrix("opponent", 1)
    with pytest.raises(ValueError, match="Unknown colour basis 'hsv'"):
        colour.basis_matrix("hsv", 3)
    params, mask, x = _problem()
    mask[0, 1] = 1.0 - mask[0, 1]  # channel 1 of pixel 0 differs from its channel 0
    with pytest.raises(tf.errors.InvalidArgumentError, match="same mask code"):
        MaskedFactorMixture(**params, mask=mask, basis=q, validate_args=True).log_prob(x)
    # from_images, eager: refused even without validate_args.
    batched = {**params, "basis": np.broadcast_to(q, (len(x), 3, 3))}
    with pytest.raises(tf.errors.InvalidArgumentError, match="same mask code"):
        MaskedFactorMixture.from_images(batched, mask.reshape(len(x), PIXELS, 1, CHANNELS))


# === A network with a colour basis ===


@pytest.fixture(scope="module")
def colour_model():
    import keras

    import dmfa_tf

    keras.utils.set_random_seed(0)
    return dmfa_tf.build_model((6, 6, 3), "fullconv", components=2, factors=2, width=4,
                               colour_basis="opponent", precision="float32")


def _colour_batch(seed=0, count=4):
    from dmfa_tf import masks

    rng = np.random.default_rng(seed)
    image = rng.uniform(size=(count, 6, 6, 3)).astype(np.float32)
    mask = np.stack([masks.Rectangle(3, 3)(6, 6, [seed, i]).numpy() for i in range(count)])
    return image, mask.astype(np.float32)


def test_network_outputs_its_basis_and_scores_in_rgb(colour_model):
    from dmfa_tf.models.losses import squared_error

    image, mask = _colour_batch()
    params = colour_model({"image": image, "mask": mask}, training=False)
    np.testing.assert_allclose(params["basis"][1].numpy(), colour.basis_matrix("opponent", 3),
                               atol=1e-7)
    dist = colour_model.mixture(image, mask)
    flat_x = image.reshape(len(image), -1)
    flat_mask = np.repeat(mask.reshape(len(image), -1), 3, axis=1)
    host = {key: np.asarray(value, np.float64) for key, value in params.items()}
    global PIXELS
    pixels, PIXELS = PIXELS, 36
    try:
        want = _dense_log_prob(host, colour.basis_matrix("opponent", 3), flat_mask, flat_x)
    finally:
        PIXELS = pixels
    np.testing.assert_allclose(dist.log_prob(flat_x).numpy(), want, rtol=1e-4)
    # The training MSE is the RGB squared error of the RGB imputation.
    error = np.where(flat_mask == 0, (dist.imputation().numpy() - flat_x) ** 2, 0).sum(-1)
    np.testing.assert_allclose(squared_error(params, image, mask).numpy(), error, rtol=1e-4)
    colour_model.compile("adam", jit_compile=False)
    history = colour_model.fit({"image": image, "mask": mask}, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_saved_exported_and_tflite_models_keep_the_basis(colour_model, tmp_path):
    import json

    from dmfa_tf import saving, serving

    colour_model.save(str(tmp_path / "model.keras"))
    reloaded = saving.load(str(tmp_path))
    assert reloaded.head.colour_basis == "opponent"
    image, mask = _colour_batch(seed=1)
    want = colour_model.mixture(image, mask)
    np.testing.assert_allclose(reloaded.mixture(image, mask).mean().numpy(), want.mean().numpy(),
                               atol=1e-6)
    path = serving.export_saved_model(colour_model, str(tmp_path / "serving"), tflite=True)
    loaded = tf.saved_model.load(path)
    out = loaded.signatures["serving_default"](image=tf.constant(image), mask=tf.constant(mask))
    np.testing.assert_allclose(out["variance"].numpy().reshape(len(image), -1),
                               want.variance().numpy(), atol=1e-6)
    lite = serving.run_tflite(os.path.join(path, "model.tflite"), "log_prob", image=image,
                              mask=mask)
    np.testing.assert_allclose(lite["log_prob"], want.log_prob(image.reshape(len(image), -1)),
                               rtol=1e-4)
    assert serving.tflite_parity(loaded, os.path.join(path, "model.tflite"), image, mask)[
        "upper"] < 1e-4
    # A mask that differs between the channels of a pixel cannot be rotated.
    split = np.repeat(mask, 3, axis=-1)
    split[0, 0, 0, 1] = 0.0
    with pytest.raises(tf.errors.InvalidArgumentError, match="colour basis"):
        loaded.signatures["log_prob"](image=tf.constant(image), mask=tf.constant(split))
    lite = serving.run_tflite(os.path.join(path, "model.tflite"), "impute", image=image,
                              mask=split)
    assert lite["valid"].tolist() == [False, True, True, True]
    assert json.loads(open(os.path.join(path, "export.json")).read())["components"] == 2


def test_config_defaults_and_bad_values():
    from dmfa_tf.config import COLOUR_BASES, TrainConfig

    assert COLOUR_BASES == colour.BASES
    assert TrainConfig(dataset="celeb_a").resolved().colour_basis == "opponent"
    assert TrainConfig(dataset="mnist").resolved().colour_basis == "rgb"
    with pytest.raises(ValueError, match="colour_basis.*Received: colour_basis='lab'"):
        TrainConfig(dataset="celeb_a", colour_basis="lab").resolved()
    with pytest.raises(ValueError, match="--colour-basis applies to DMFA networks"):
        TrainConfig(dataset="celeb_a", model="mfa", colour_basis="rgb").resolved()


def test_mosaic_shows_a_colour_basis_model_in_rgb(colour_model, tmp_path):
    from dmfa_tf import visualization

    image, mask = _colour_batch(seed=2, count=2)
    path = visualization.mosaic(str(tmp_path / "mosaic.png"), colour_model, image, mask)
    assert os.path.getsize(path or str(tmp_path / "mosaic.png")) > 1000


# === Standardised channels (`build_model(standardize=...)`) ===


def test_channel_statistics_hand_computed():
    # Two finite pixels, white (1, 1, 1) and red (1, 0, 0), and one with a NaN.
    images = np.array([[[[1, 1, 1], [1, 0, 0], [np.nan, 0.5, 0.5]]]])
    # Opponent rows (1,1,1)/sqrt3, (1,-1,0)/sqrt2, (1,1,-2)/sqrt6:
    # white -> (sqrt3, 0, 0), red -> (1/sqrt3, 1/sqrt2, 1/sqrt6).
    s3, s2, s6 = np.sqrt(3), np.sqrt(2), np.sqrt(6)
    shift, scale = colour.channel_statistics(images, "opponent")
    np.testing.assert_allclose(shift, [(s3 + 1 / s3) / 2, 1 / (2 * s2), 1 / (2 * s6)], atol=1e-12)
    np.testing.assert_allclose(scale, [(s3 - 1 / s3) / 2, 1 / (2 * s2), 1 / (2 * s6)], atol=1e-12)
    shift, scale = colour.channel_statistics(images, "rgb")
    np.testing.assert_allclose(shift, [1, 0.5, 0.5])
    np.testing.assert_allclose(scale, [1e-3, 0.5, 0.5])  # a constant channel: the 1e-3 floor
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]. Received: shape \(3, 3\)"):
        colour.channel_statistics(np.ones((3, 3)))
    with pytest.raises(ValueError, match="no pixel whose channels are all finite"):
        colour.channel_statistics(np.full((1, 2, 2, 3), np.nan))
    with pytest.raises(ValueError, match="opponent colour basis needs 3 channels"):
        colour.channel_statistics(np.ones((1, 2, 2, 1)), "opponent")


def test_standardized_input_hand_computed():
    import keras

    from dmfa_tf.models.layers import ObservedInput

    rng = np.random.default_rng(3)
    image = rng.uniform(size=(2, 3, 4, 3)).astype(np.float32)
    mask = (rng.uniform(size=(2, 3, 4, 1)) > 0.4).astype(np.float32)
    shift, scale = [0.8, 0.1, -0.05], [0.25, 0.04, 0.5]
    layer = ObservedInput(colour_basis="opponent", shift=shift, scale=scale)
    out = layer(image, mask).numpy()
    r, g, b = (image[..., i].astype(np.float64) for i in range(3))
    opponent = np.stack([(r + g + b) / np.sqrt(3), (r - g) / np.sqrt(2),
                         (r + g - 2 * b) / np.sqrt(6)], axis=-1)
    want = np.where(mask == 1, (opponent - shift) / scale, 0.0)
    np.testing.assert_allclose(out[..., :3], want, atol=2e-5)
    np.testing.assert_array_equal(out[..., 3:], np.repeat(mask, 3, axis=-1))
    # In RGB: per channel, no rotation.
    rgb = ObservedInput(shift=shift, scale=scale)(image, mask).numpy()
    np.testing.assert_allclose(rgb[..., :3], np.where(mask == 1, (image - shift) / scale, 0),
                               atol=2e-5)
    assert keras.layers.deserialize(keras.layers.serialize(layer)).scale == scale


@pytest.mark.parametrize(
    "standardize, message",
    [
        (([0.5, 0, 0], [0.2, 0.1]), "needs 3 shifts and scales.*3 shifts, 2 scales"),
        ([0.5, 0.1, 0.1], "must be None or \\(shift, scale\\)"),
        (([0.5, 0, 0], [0.2, 0.0, 0.1]), "`scale` finite and > 0"),
        (([np.nan, 0, 0], [0.2, 0.1, 0.1]), "`shift` must be finite"),
    ],
)
def test_bad_standardization_is_a_clear_error(standardize, message):
    import dmfa_tf

    with pytest.raises(ValueError, match=message):
        dmfa_tf.build_model((6, 6, 3), "fullconv", width=4, colour_basis="opponent",
                            standardize=standardize)
    from dmfa_tf.models.layers import ObservedInput

    with pytest.raises(ValueError, match="give both or neither"):
        ObservedInput(shift=[0.0])


def test_a_standardized_model_saves_exports_and_converts(tmp_path):
    import keras

    import dmfa_tf
    from dmfa_tf import saving, serving

    keras.utils.set_random_seed(0)
    image, mask = _colour_batch(seed=3)
    stats = colour.channel_statistics(image, "opponent")
    model = dmfa_tf.build_model((6, 6, 3), "fullconv", components=2, factors=2, width=4,
                                colour_basis="opponent", precision="float32", standardize=stats)
    # The input layer's output is the standardised image (checked by hand above).
    inputs = model.get_layer("observed_input")(image, mask).numpy()[..., :3]
    opponent = image.astype(np.float64) @ colour.basis_matrix("opponent", 3).T
    np.testing.assert_allclose(inputs, np.where(mask == 1, (opponent - stats[0]) / stats[1], 0),
                               atol=1e-5)
    model.save(str(tmp_path / "model.keras"))
    reloaded = saving.load(str(tmp_path))
    assert reloaded.get_layer("observed_input").shift == pytest.approx(list(stats[0]))
    want = model.mixture(image, mask)
    np.testing.assert_allclose(reloaded.mixture(image, mask).mean().numpy(),
                               want.mean().numpy(), atol=1e-6)
    path = serving.export_saved_model(model, str(tmp_path / "serving"), tflite=True)
    lite = serving.run_tflite(os.path.join(path, "model.tflite"), "log_prob", image=image,
                              mask=mask)
    np.testing.assert_allclose(lite["log_prob"], want.log_prob(image.reshape(len(image), -1)),
                               rtol=1e-4)


def test_standardize_config_default_and_bad_values():
    from dmfa_tf.config import STANDARDIZE, TrainConfig

    assert TrainConfig(dataset="mnist").resolved().standardize == "off"
    assert TrainConfig(dataset="celeb_a").resolved().standardize == "on"  # the README's study
    assert TrainConfig(dataset="celeb_a", standardize="off").resolved().standardize == "off"
    assert STANDARDIZE == ("off", "on")
    with pytest.raises(ValueError, match="standardize.*Received: standardize='yes'"):
        TrainConfig(dataset="celeb_a", standardize="yes").resolved()
    with pytest.raises(ValueError, match="--standardize applies to images, not to the table iris"):
        TrainConfig(dataset="iris", standardize="on").resolved()
