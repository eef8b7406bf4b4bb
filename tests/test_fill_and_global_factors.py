"""`ObservedInput(fill="mean")` against hand-computed inputs, and global
factors (`build_model(global_factors=G)`) against a dense float64 Gaussian
mixture whose covariances are `A(x) A(x)^T + G G^T + diag(d)`."""

import os

import numpy as np
import pytest
from scipy import stats

from dmfa_tf.core import colour


def _batch(seed=0, count=3, size=6):
    from dmfa_tf import masks

    rng = np.random.default_rng(seed)
    image = rng.uniform(size=(count, size, size, 3)).astype(np.float32)
    mask = np.stack([masks.Rectangle(3, 3)(size, size, [seed, i]).numpy() for i in range(count)])
    return image, mask.astype(np.float32)


def test_mean_fill_hand_computed():
    from dmfa_tf.models.layers import ObservedInput

    rng = np.random.default_rng(5)
    image = rng.uniform(size=(3, 4, 5, 3)).astype(np.float32)
    mask = (rng.uniform(size=(3, 4, 5, 1)) > 0.5).astype(np.float32)
    mask[1] = -1.0  # an image with no known pixel: its fill is 0
    mask[2, 0, 0] = 0.0
    image[2, 0, 0] = np.nan  # an unknown NaN is ignored, not averaged
    shift, scale = [0.7, 0.1, -0.05], [0.3, 0.05, 0.4]
    out = ObservedInput(colour_basis="opponent", shift=shift, scale=scale, fill="mean")(
        image, mask).numpy()
    r, g, b = (image[..., i].astype(np.float64) for i in range(3))
    std = (np.stack([(r + g + b) / np.sqrt(3), (r - g) / np.sqrt(2),
                     (r + g - 2 * b) / np.sqrt(6)], axis=-1) - shift) / scale
    for i in range(3):
        known = mask[i, ..., 0] == 1
        fill = std[i][known].mean(axis=0) if known.any() else np.zeros(3)
        want = np.where(known[..., None], std[i], fill)
        np.testing.assert_allclose(out[i, ..., :3], want, atol=3e-5)
        np.testing.assert_array_equal(out[i, ..., 3:], np.repeat(known[..., None], 3, -1))
    # Without standardising: the raw pixels' mean.
    plain = ObservedInput(fill="mean")(image[:1], mask[:1]).numpy()
    known = mask[0, ..., 0] == 1
    want = np.where(known[..., None], image[0], image[0][known].mean(axis=0))
    np.testing.assert_allclose(plain[0, ..., :3], want, atol=1e-6)
    with pytest.raises(ValueError, match="`fill` must be one of.*Received: fill='median'"):
        ObservedInput(fill="median")


def _dense_log_prob(params, mask, x):
    """log p(x_M | x_O) of each image from the parameters, in float64 (RGB)."""
    params = {key: np.asarray(value, np.float64) for key, value in params.items()}
    out = np.zeros(len(x))
    for b in range(len(x)):
        missing = mask[b] == 0
        log_w = params["logits"][b] - np.logaddexp.reduce(params["logits"][b])
        terms = []
        for k in range(len(log_w)):
            a = params["factors"][b, k]
            cov = a @ a.T + np.diag(params["diag"][b, k])
            terms.append(log_w[k] + stats.multivariate_normal(
                params["loc"][b, k][missing], cov[np.ix_(missing, missing)]).logpdf(x[b, missing]))
        out[b] = np.logaddexp.reduce(terms)
    return out


@pytest.fixture(scope="module")
def global_model():
    import keras

    import dmfa_tf

    keras.utils.set_random_seed(1)
    model = dmfa_tf.build_model((6, 6, 3), "fullconv", components=2, factors=2, width=4,
                                global_factors=3, fill="mean", precision="float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    return model


def test_global_factors_are_shared_columns_and_the_density_is_exact(global_model):
    image, mask = _batch()
    params = {k: v.numpy() for k, v in global_model({"image": image, "mask": mask}).items()}
    assert params["factors"].shape == (3, 2, 108, 5)  # L + G columns
    shared = global_model.head.global_loadings.numpy()  # [K, N, G]
    for b in range(3):  # the last G columns are the same weights for every image
        np.testing.assert_array_equal(params["factors"][b, :, :, 2:], shared)
    assert np.abs(params["factors"][0, :, :, :2] - params["factors"][1, :, :, :2]).max() > 0
    flat_mask = np.repeat(mask, 3, axis=-1).reshape(3, -1)
    x = image.reshape(3, -1).astype(np.float64)
    got = global_model.mixture(image, mask).log_prob(x.astype(np.float32)).numpy()
    np.testing.assert_allclose(got, _dense_log_prob(params, flat_mask, x), rtol=2e-5, atol=2e-3)


def test_global_factors_train_save_and_convert(global_model, tmp_path):
    import tensorflow as tf

    from dmfa_tf import saving, serving

    image, mask = _batch(seed=2, count=8)
    before = global_model.head.global_loadings.numpy().copy()
    global_model.fit(tf.data.Dataset.from_tensor_slices({"image": image, "mask": mask}).batch(4),
                     epochs=1, verbose=0)
    assert np.abs(global_model.head.global_loadings.numpy() - before).max() > 1e-4
    global_model.save(str(tmp_path / "model.keras"))
    reloaded = saving.load(str(tmp_path))
    assert reloaded.head.global_factors == 3
    assert reloaded.get_layer("observed_input").fill == "mean"
    want = global_model.mixture(image, mask)
    np.testing.assert_allclose(reloaded.mixture(image, mask).log_prob(
        image.reshape(8, -1)).numpy(), want.log_prob(image.reshape(8, -1)).numpy(), rtol=1e-6)
    path = serving.export_saved_model(global_model, str(tmp_path / "serving"), tflite=True)
    lite = serving.run_tflite(os.path.join(path, "model.tflite"), "log_prob", image=image,
                              mask=mask)
    np.testing.assert_allclose(lite["log_prob"], want.log_prob(image.reshape(8, -1)), rtol=1e-4)


def test_global_factors_in_the_opponent_basis_match_the_dense_rgb_gaussian():
    import keras

    import dmfa_tf

    keras.utils.set_random_seed(4)
    model = dmfa_tf.build_model((4, 4, 3), "fullconv", components=2, factors=1, width=4,
                                global_factors=2, colour_basis="opponent", precision="float32")
    image, mask = _batch(seed=6, size=4)
    params = {k: v.numpy().astype(np.float64)
              for k, v in model({"image": image, "mask": mask}).items()}
    block = np.kron(np.eye(16), colour.basis_matrix("opponent", 3))  # y = block @ x
    rgb = dict(params, loc=params["loc"] @ block, factors=np.einsum(
        "nm,bknl->bkml", block, params["factors"]))
    # diag(d) in the basis is block^T diag(d) block in RGB: add it as N more factors.
    root = np.einsum("nm,bkn->bkmn", block, np.sqrt(params["diag"]))
    rgb["factors"] = np.concatenate([rgb["factors"], root], axis=-1)
    rgb["diag"] = np.zeros_like(params["diag"])
    flat_mask = np.repeat(mask, 3, axis=-1).reshape(3, -1)
    x = image.reshape(3, -1).astype(np.float64)
    got = model.mixture(image, mask).log_prob(image.reshape(3, -1)).numpy()
    np.testing.assert_allclose(got, _dense_log_prob(rgb, flat_mask, x), rtol=2e-5, atol=2e-3)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_global_factors_are_clear_errors(bad):
    import dmfa_tf
    from dmfa_tf.config import TrainConfig

    with pytest.raises(ValueError, match="`global_factors` must be an integer >= 0"):
        dmfa_tf.build_model((6, 6, 1), "fullconv", width=4, global_factors=bad)
    with pytest.raises(ValueError, match="`global_factors` must be an integer >= 0"):
        TrainConfig(dataset="mnist", global_factors=bad).resolved()


def test_fill_and_global_factors_config():
    from dmfa_tf.config import FILLS, TrainConfig
    from dmfa_tf.models.layers import FILLS as LAYER_FILLS

    assert FILLS == LAYER_FILLS
    config = TrainConfig(dataset="mnist").resolved()
    assert (config.fill, config.global_factors) == ("zero", 0)
    config = TrainConfig(dataset="celeb_a").resolved()  # the README's study
    assert (config.fill, config.global_factors, config.global_scale) == ("mean", 96, "pixel")
    config = TrainConfig(dataset="celeb_a", fill="zero", global_factors=0,
                         global_scale="none").resolved()
    assert (config.fill, config.global_factors, config.global_scale) == ("zero", 0, "none")
    # Without global factors the data set's default scale does not apply; given, it is an error.
    assert TrainConfig(dataset="celeb_a", global_factors=0).resolved().global_scale == "none"
    with pytest.raises(ValueError, match="needs `global_factors` > 0"):
        TrainConfig(dataset="celeb_a", global_factors=0, global_scale="pixel").resolved()
    config = TrainConfig(dataset="mnist", fill="mean", global_factors=8).resolved()
    assert (config.fill, config.global_factors) == ("mean", 8)
    with pytest.raises(ValueError, match="`fill` must be one of.*Received: fill='avg'"):
        TrainConfig(dataset="mnist", fill="avg").resolved()
    with pytest.raises(ValueError, match="--fill applies to images, not to the table iris"):
        TrainConfig(dataset="iris", fill="mean").resolved()
    with pytest.raises(ValueError, match="--global-factors applies to DMFA networks"):
        TrainConfig(dataset="mnist", model="mfa", global_factors=4).resolved()


def test_more_factors_than_unrolled_convert_to_builtin_tflite(tmp_path):
    """L + G above `linalg.MAX_UNROLLED`: training uses tf.linalg's kernels,
    the TFLite file the column-by-column factorisation; both score like a
    dense float64 Gaussian."""
    import keras

    import dmfa_tf
    from dmfa_tf import serving
    from dmfa_tf.core import linalg

    keras.utils.set_random_seed(2)
    model = dmfa_tf.build_model((6, 6, 3), "fullconv", components=2, factors=4, width=4,
                                global_factors=linalg.MAX_UNROLLED, precision="float32")
    image, mask = _batch(seed=4)
    params = {k: v.numpy() for k, v in model({"image": image, "mask": mask}).items()}
    assert params["factors"].shape[-1] == 4 + linalg.MAX_UNROLLED
    flat_mask = np.repeat(mask, 3, axis=-1).reshape(3, -1)
    want = _dense_log_prob(params, flat_mask, image.reshape(3, -1).astype(np.float64))
    got = model.mixture(image, mask).log_prob(image.reshape(3, -1)).numpy()
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-3)
    path = serving.export_saved_model(model, str(tmp_path / "serving"), tflite=True)
    lite_file = os.path.join(path, "model.tflite")
    assert not [op for op in serving.tflite_ops(lite_file) if op.startswith("Flex")]
    lite = serving.run_tflite(lite_file, "log_prob", image=image, mask=mask)
    np.testing.assert_allclose(lite["log_prob"], want, rtol=1e-4, atol=2e-3)
    imputed = serving.run_tflite(lite_file, "impute", image=image, mask=mask)["imputation"]
    np.testing.assert_allclose(imputed, model.impute(image, mask), atol=1e-5)


def test_column_factorisation_matches_numpy():
    import tensorflow as tf

    from dmfa_tf.core import linalg

    rng = np.random.default_rng(0)
    size = linalg.MAX_UNROLLED + 7
    a = rng.normal(size=(2, 3, size, size))
    matrix = a @ np.swapaxes(a, -1, -2) + size * np.eye(size)
    rhs = rng.normal(size=(3, size, 5))  # batch shapes broadcast
    chol = np.linalg.cholesky(matrix)
    with linalg.builtins_only():
        got = linalg.cholesky(tf.constant(matrix)).numpy()
        lower = linalg.solve_lower(tf.constant(chol), tf.constant(rhs)).numpy()
        upper = linalg.solve_upper(tf.constant(chol), tf.constant(rhs)).numpy()
        log_det = linalg.cholesky_log_det(tf.constant(chol)).numpy()
    np.testing.assert_allclose(got, chol, atol=1e-12)
    np.testing.assert_allclose(chol @ lower, np.broadcast_to(rhs, lower.shape), atol=1e-12)
    np.testing.assert_allclose(np.swapaxes(chol, -1, -2) @ upper,
                               np.broadcast_to(rhs, upper.shape), atol=1e-12)
    np.testing.assert_allclose(log_det, np.linalg.slogdet(matrix)[1], rtol=1e-12)
    assert not getattr(linalg._STATE, "builtins_only", False)  # the context restores


def test_pixel_global_scale_hand_computed_and_exact(tmp_path):
    """`global_scale="pixel"`: row n of component k's shared loadings times
    2 sigmoid(z_k,n), z from the head: 1 at the start; with a known bias, the
    hand-computed product; with any weights, a density equal to the dense
    float64 Gaussian mixture of the scaled columns; saved and reloaded."""
    import keras

    import dmfa_tf
    from dmfa_tf import saving

    keras.utils.set_random_seed(3)
    model = dmfa_tf.build_model((6, 6, 3), "fullconv", components=2, factors=2, width=4,
                                global_factors=3, global_scale="pixel", precision="float32")
    image, mask = _batch(seed=8)
    shared = model.head.global_loadings.numpy()  # [K, N, G]
    params = model({"image": image, "mask": mask})
    np.testing.assert_allclose(params["factors"].numpy()[:, :, :, 2:],
                               np.broadcast_to(shared, (3,) + shared.shape), rtol=1e-6)
    conv = model.head.scale_conv
    kernel, bias = (w.numpy() for w in conv.weights)
    rng = np.random.default_rng(0)
    bias = rng.normal(size=bias.shape).astype(np.float32)  # [K * C], channel k * C + c
    conv.set_weights([kernel, bias])
    factors = model({"image": image, "mask": mask})["factors"].numpy()
    channel = np.arange(shared.shape[1]) % 3  # N in (H, W, C) order
    scale = 2.0 / (1.0 + np.exp(-bias.reshape(2, 3)[:, channel]))  # [K, N]
    for b in range(3):
        np.testing.assert_allclose(factors[b, :, :, 2:], scale[..., None] * shared, rtol=1e-5)
    conv.set_weights([rng.normal(scale=0.5, size=kernel.shape).astype(np.float32), bias])
    params = {k: v.numpy() for k, v in model({"image": image, "mask": mask}).items()}
    ratio = params["factors"][:, :, :, 2:] / shared  # the scale each image gives each row
    assert np.abs(ratio[0] - ratio[1]).max() > 1e-2  # per image, not shared
    assert ratio.min() > 0 and ratio.max() < 2
    flat_mask = np.repeat(mask, 3, axis=-1).reshape(3, -1)
    x = image.reshape(3, -1).astype(np.float64)
    got = model.mixture(image, mask).log_prob(image.reshape(3, -1)).numpy()
    np.testing.assert_allclose(got, _dense_log_prob(params, flat_mask, x), rtol=2e-5, atol=2e-3)
    model.save(str(tmp_path / "model.keras"))
    reloaded = saving.load(str(tmp_path))
    assert reloaded.head.global_scale == "pixel"
    np.testing.assert_allclose(reloaded.mixture(image, mask).log_prob(image.reshape(3, -1)),
                               got, rtol=1e-6)


def test_pixel_global_scale_of_the_dense_head_hand_computed():
    """The dense head (mlp): S = 1 at the start; with a known bias, row n of
    component k scaled by 2 sigmoid(b[k * N + n])."""
    import keras

    import dmfa_tf

    keras.utils.set_random_seed(5)
    model = dmfa_tf.build_model((4, 4, 1), "mlp", components=2, factors=1, hidden=(8,),
                                global_factors=2, global_scale="pixel", precision="float32")
    image = np.random.default_rng(1).uniform(size=(2, 4, 4, 1)).astype(np.float32)
    mask = np.ones((2, 4, 4, 1), np.float32)
    mask[:, 1:3, 1:3] = 0
    shared = model.head.global_loadings.numpy()  # [K, N, G]
    factors = model({"image": image, "mask": mask})["factors"].numpy()
    np.testing.assert_allclose(factors[:, :, :, 1:], np.broadcast_to(shared, (2,) + shared.shape),
                               rtol=1e-6)
    kernel, bias = (w.numpy() for w in model.head.scale_dense.weights)
    bias = np.random.default_rng(2).normal(size=bias.shape).astype(np.float32)  # [K * N]
    model.head.scale_dense.set_weights([kernel, bias])
    factors = model({"image": image, "mask": mask})["factors"].numpy()
    scale = 2.0 / (1.0 + np.exp(-bias.reshape(2, 16)))
    np.testing.assert_allclose(factors[1, :, :, 1:], scale[..., None] * shared, rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(global_factors=2, global_scale="row"), "`global_scale` must be one of"),
    (dict(global_scale="pixel"), "needs `global_factors` > 0. Received: global_factors=0"),
])
def test_bad_global_scale_is_a_clear_error(kwargs, message):
    import dmfa_tf
    from dmfa_tf.config import GLOBAL_SCALES, TrainConfig
    from dmfa_tf.models.layers import GLOBAL_SCALES as LAYER_SCALES

    assert GLOBAL_SCALES == LAYER_SCALES
    with pytest.raises(ValueError, match=message):
        dmfa_tf.build_model((6, 6, 1), "fullconv", width=4, **kwargs)
    with pytest.raises(ValueError, match=message):
        TrainConfig(dataset="mnist", **kwargs).resolved()
    config = TrainConfig(dataset="mnist", global_factors=8, global_scale="pixel").resolved()
    assert (config.global_factors, config.global_scale) == (8, "pixel")
    assert TrainConfig(dataset="mnist").resolved().global_scale == "none"
    with pytest.raises(ValueError, match="--global-scale applies to DMFA networks"):
        TrainConfig(dataset="mnist", model="mfa", global_scale="pixel").resolved()
