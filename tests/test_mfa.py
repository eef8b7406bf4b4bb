"""The classical MFA baseline (`dmfa_tf.baselines.mfa`), against dense float64 references."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import dmfa_tf
from dmfa_tf import data as datasets
from dmfa_tf import saving
from dmfa_tf.config import TrainConfig
from dmfa_tf.baselines.mfa import MFA, WEIGHT_FLOOR
from dmfa_tf.training import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# === Dense references ===


def _covariance(model, k):
    factors = model.factors[k]
    return factors @ factors.T + np.diag(model.noise[k])  # [N, N]


def _dense_conditional(model, k, x, observed):
    """Component k's conditional of the hidden coordinates, by dense Gaussian
    conditioning: mean, covariance and log N(x_o; mu_o, Sigma_oo)."""
    mu, sigma = model.means[k], _covariance(model, k)
    o, h = observed, ~observed
    if not o.any():
        return mu[h], sigma[np.ix_(h, h)], 0.0
    s_oo, s_ho = sigma[np.ix_(o, o)], sigma[np.ix_(h, o)]
    mean = mu[h] + s_ho @ np.linalg.solve(s_oo, x[o] - mu[o])
    cov = sigma[np.ix_(h, h)] - s_ho @ np.linalg.solve(s_oo, s_ho.T)
    log_marginal = multivariate_normal(mu[o], s_oo).logpdf(x[o])
    return mean, cov, log_marginal


def _dense_log_likelihood(model, images):
    """`[n]` log p(x) of complete images under the mixture, dense."""
    x = images.reshape(len(images), -1).astype(np.float64)
    per_component = np.stack(
        [
            multivariate_normal(model.means[k], _covariance(model, k)).logpdf(x)
            for k in range(model.num_components)
        ],
        axis=1,
    )  # [n, K]
    return logsumexp(per_component + np.log(model.weights), axis=1)


def _random_model(noise_type, image_shape=(3, 4, 2), components=3, factors=2, seed=0,
                  noise_range=(0.05, 0.5), **kwargs):
    rng = np.random.default_rng(seed)
    size = int(np.prod(image_shape))
    if noise_type == "isotropic":
        noise = rng.uniform(*noise_range, size=components)
    else:
        noise = rng.uniform(*noise_range, size=(components, size))
    return MFA(
        rng.uniform(0.5, 1.5, components),
        rng.uniform(0.2, 0.8, (components, size)),
        0.3 * rng.standard_normal((components, size, factors)),
        noise,
        image_shape,
        noise_type=noise_type,
        **kwargs,
    )


def _random_inputs(image_shape, batch, mask_channels, seed=1):
    """Images and masks with 1 / 0 / -1 entries; image 0 has nothing
    observed, image 1 everything."""
    rng = np.random.default_rng(seed)
    height, width, channels = image_shape
    images = rng.uniform(0, 1, (batch, height, width, channels))
    mask_shape = (batch, height, width, channels if mask_channels == "C" else 1)
    masks = rng.choice([-1.0, 0.0, 1.0], size=mask_shape, p=[0.2, 0.3, 0.5])
    masks[0] = rng.choice([-1.0, 0.0], size=mask_shape[1:])
    masks[1] = 1.0
    return images, masks


def _observed(masks, image_shape):
    """`[B, N]` bool: coordinates with mask 1, the mask broadcast over channels."""
    full = np.broadcast_to(masks, (len(masks),) + tuple(image_shape))
    return full.reshape(len(masks), -1) == 1


# === Conditionals ===


@pytest.mark.parametrize("noise_type", ["diagonal", "isotropic"])
@pytest.mark.parametrize("mask_channels", ["1", "C"])
def test_component_conditionals_match_dense_conditioning(noise_type, mask_channels):
    model = _random_model(noise_type, conditional="exact", dtype="float64")
    images, masks = _random_inputs(model.image_shape, 6, mask_channels)
    params = {k: v.numpy() for k, v in model({"image": images, "mask": masks}).items()}
    assert params["loc"].shape == (6, 3, 24) and params["factors"].shape == (6, 3, 24, 2)
    assert params["logits"].shape == (6, 3) and params["diag"].shape == (6, 3, 24)
    observed = _observed(masks, model.image_shape)
    x = images.reshape(6, -1)
    for b in range(6):
        o, h = observed[b], ~observed[b]
        for k in range(3):
            mean, cov, log_marginal = _dense_conditional(model, k, x[b], o)
            factors = params["factors"][b, k]
            np.testing.assert_allclose(params["loc"][b, k, h], mean, rtol=1e-9, atol=1e-10)
            got_cov = factors[h] @ factors[h].T + np.diag(params["diag"][b, k, h])
            np.testing.assert_allclose(got_cov, cov, rtol=1e-9, atol=1e-10)
            np.testing.assert_allclose(
                params["logits"][b, k], np.log(model.weights[k]) + log_marginal, rtol=1e-10
            )
            # observed coordinates: finite placeholders
            np.testing.assert_array_equal(params["loc"][b, k, o], x[b, o])
            np.testing.assert_array_equal(params["factors"][b, k, o], 0.0)
            np.testing.assert_array_equal(params["diag"][b, k, o], 1.0)


def test_float32_conditionals_are_accurate_with_small_variances():
    """Default float32 inference against float64, variances down to the 1e-4 floor."""
    model64 = _random_model(
        "diagonal", image_shape=(8, 8, 1), components=4, factors=4, seed=3,
        noise_range=(1e-4, 1e-2), conditional="exact", dtype="float64",
    )
    path_free = dict(
        weights=model64.weights, means=model64.means, factors=model64.factors,
        noise=model64.noise, image_shape=model64.image_shape,
    )
    model32 = MFA(**path_free, noise_type="diagonal", conditional="exact")
    images, masks = _random_inputs(model64.image_shape, 8, "1", seed=4)
    exact = model64({"image": images, "mask": masks})
    approx = model32({"image": images.astype(np.float32), "mask": masks})
    assert approx["loc"].dtype == tf.float32
    np.testing.assert_allclose(approx["loc"], exact["loc"], atol=2e-4)
    np.testing.assert_allclose(approx["diag"], exact["diag"], rtol=1e-6)
    covariance = lambda p: tf.linalg.matmul(p["factors"], p["factors"], transpose_b=True)
    np.testing.assert_allclose(covariance(approx), covariance(exact), atol=1e-5)
    nll = {
        name: -dmfa_tf.MaskedFactorMixture.from_images(p, masks).log_prob(
            dmfa_tf.flatten_images(tf.cast(images, p["loc"].dtype))
        ).numpy()
        for name, p in (("64", exact), ("32", approx))
    }
    np.testing.assert_allclose(nll["32"], nll["64"], rtol=1e-4, atol=1e-2)


def _dense_mixture_log_prob(model, x, mask_row, observed):
    """log p(x_scored | x_o) of the full mixture conditional, scored = mask 0."""
    h = ~observed
    scored_in_h = (mask_row == 0)[h]
    log_weights, log_densities = [], []
    for k in range(model.num_components):
        mean, cov, log_marginal = _dense_conditional(model, k, x, observed)
        log_weights.append(np.log(model.weights[k]) + log_marginal)
        if scored_in_h.any():
            log_densities.append(
                multivariate_normal(mean[scored_in_h], cov[np.ix_(scored_in_h, scored_in_h)])
                .logpdf(x[h][scored_in_h])
            )
        else:
            log_densities.append(0.0)
    log_weights = np.array(log_weights) - logsumexp(log_weights)
    return logsumexp(log_weights + np.array(log_densities)), np.array(log_weights), np.array(
        log_densities
    )


@pytest.mark.parametrize("noise_type", ["diagonal", "isotropic"])
def test_exact_and_paper_conditional_densities_match_dense(noise_type):
    model = _random_model(noise_type, seed=5, dtype="float64")
    images, masks = _random_inputs(model.image_shape, 8, "C", seed=6)
    x = images.reshape(8, -1)
    observed = _observed(masks, model.image_shape)
    mask_flat = np.broadcast_to(masks, images.shape).reshape(8, -1)
    outputs = {}
    for conditional in ("exact", "paper"):
        model.conditional = conditional
        params = model({"image": images, "mask": masks})
        dist = dmfa_tf.MaskedFactorMixture.from_images(params, masks, images)
        outputs[conditional] = (params, dist.log_prob(dmfa_tf.flatten_images(images)).numpy())
    assert outputs["paper"][0]["loc"].shape == (8, 1, 24)
    for b in range(8):
        expected, log_weights, log_densities = _dense_mixture_log_prob(
            model, x[b], mask_flat[b], observed[b]
        )
        np.testing.assert_allclose(outputs["exact"][1][b], expected, rtol=1e-9, atol=1e-9)
        best = int(np.argmax(log_weights))
        np.testing.assert_allclose(outputs["paper"][1][b], log_densities[best], rtol=1e-9, atol=1e-9)
        mean, _, _ = _dense_conditional(model, best, x[b], observed[b])
        h = ~observed[b]
        np.testing.assert_allclose(outputs["paper"][0]["loc"][b, 0].numpy()[h], mean, rtol=1e-9)
    # the paper conditional picks the component the exact one weighs most
    assert not np.allclose(outputs["paper"][1], outputs["exact"][1])  # they do differ
    assert np.array_equal(
        np.argmax(outputs["exact"][0]["logits"], axis=1),
        [np.argmax(_dense_mixture_log_prob(model, x[b], mask_flat[b], observed[b])[1])
         for b in range(8)],
    )


def test_call_runs_batched_under_tf_function():
    model = _random_model("isotropic", seed=7)
    images, masks = _random_inputs(model.image_shape, 5, "1", seed=8)
    images, masks = images.astype(np.float32), masks.astype(np.float32)
    for conditional in ("paper", "exact"):
        model.conditional = conditional
        eager = model({"image": images, "mask": masks})
        traced = tf.function(model, reduce_retracing=True)({"image": images, "mask": masks})
        for key in eager:
            np.testing.assert_allclose(traced[key], eager[key], rtol=1e-5, atol=1e-6)
    assert model.image_shape == (3, 4, 2)


# === EM ===


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits").train[:300]


@pytest.mark.parametrize("noise", ["diagonal", "isotropic"])
@pytest.mark.parametrize("init", ["kmeans", "random"])
def test_em_never_decreases_the_likelihood_and_records_it(digits, noise, init):
    model = MFA.fit(digits, 5, 3, iterations=12, noise=noise, init=init, seed=1, verbose=0,
                    batch_size=128)
    history = np.array(model.history)
    assert len(history) == 13
    assert np.all(np.diff(history) >= -1e-9 * np.abs(history[1:])), np.diff(history)
    assert history[-1] > history[0]
    assert np.min(model.noise) >= 1e-4 - 1e-15  # the floor holds
    if noise == "isotropic":
        assert np.all(model.noise == model.noise[:, :1])
    dense = _dense_log_likelihood(model, digits)
    np.testing.assert_allclose(history[-1], dense.mean(), rtol=1e-9)
    np.testing.assert_allclose(model.log_prob(digits), dense, rtol=1e-9, atol=1e-9)


def test_a_component_that_loses_every_image_keeps_a_finite_floored_weight(digits):
    start = MFA.fit(digits, 3, 2, iterations=2, noise="diagonal", seed=0, verbose=0)
    means = np.array(start.means)
    means[2] = 1.0  # far from every digit (whose corners are 0)
    stranded = MFA(start.weights, means, start.factors, np.full(start.noise.shape, 1e-4),
                   start.image_shape)
    model = MFA.fit(digits, 3, 2, iterations=3, noise="diagonal", init=stranded, verbose=0)
    assert np.all(np.diff(model.history) >= -1e-9 * np.abs(np.array(model.history[1:])))
    np.testing.assert_allclose(model.weights[2], WEIGHT_FLOOR, rtol=1e-6)
    np.testing.assert_array_equal(model.means[2], 1.0)  # kept, not NaN
    assert np.all(np.isfinite(model.log_prob(digits)))
    model.conditional = "exact"
    params = model({"image": digits[:4], "mask": np.ones((4, 8, 8, 1))})
    assert np.all(np.isfinite(params["logits"]))


def _planted_data(n=4000, seed=0):
    """Two well separated components on 4x4 images, L = 1, isotropic noise."""
    rng = np.random.default_rng(seed)
    size = 16
    weights = np.array([0.3, 0.7])
    means = np.stack([np.full(size, 0.3), np.full(size, 0.7)]) + rng.uniform(-0.05, 0.05, (2, size))
    factors = rng.uniform(0.03, 0.06, (2, size, 1)) * rng.choice([-1, 1], (2, size, 1))
    noise = np.array([0.02, 0.03]) ** 2
    labels = rng.choice(2, n, p=weights)
    z = rng.standard_normal((n, 1))
    x = means[labels] + np.einsum("nil,nl->ni", factors[labels], z)
    x += np.sqrt(noise[labels])[:, None] * rng.standard_normal((n, size))
    assert x.min() > 0 and x.max() < 1
    return x.reshape(n, 4, 4, 1), labels, weights, means, factors, noise


@pytest.mark.parametrize("noise_type", ["isotropic", "diagonal"])
def test_em_recovers_planted_parameters(noise_type):
    images, labels, weights, means, factors, noise = _planted_data()
    model = MFA.fit(images, 2, 1, iterations=40, noise=noise_type, seed=0, verbose=0)
    order = np.argsort(model.means.mean(axis=1))  # component 0 is the darker one
    counts = np.bincount(labels)
    sd = np.sqrt(np.einsum("kil,kil->ki", factors, factors) + noise[:, None])  # [2, 16]
    for k, j in enumerate(order):
        # means within 5 standard errors of the sample means' spread
        assert np.all(np.abs(model.means[j] - means[k]) < 5 * sd[k] / np.sqrt(counts[k]))
        if noise_type == "isotropic":
            # sigma^2 from about counts * 15 degrees of freedom
            assert abs(model.noise[j, 0] / noise[k] - 1) < 5 * np.sqrt(2 / (counts[k] * 15))
        else:
            assert np.median(np.abs(model.noise[j] / noise[k] - 1)) < 5 * np.sqrt(2 / counts[k])
        planted = factors[k] @ factors[k].T
        fitted = model.factors[j] @ model.factors[j].T
        assert np.abs(fitted - planted).max() < 0.25 * np.abs(planted).max()
    np.testing.assert_allclose(model.weights[order], weights, atol=0.03)


def test_kmeans_initialisation_is_seeded(digits):
    one = MFA.fit(digits, 4, 2, iterations=2, init="kmeans", seed=3, verbose=0)
    two = MFA.fit(digits, 4, 2, iterations=2, init="kmeans", seed=3, verbose=0)
    other = MFA.fit(digits, 4, 2, iterations=2, init="kmeans", seed=4, verbose=0)
    for key in ("weights", "means", "factors", "noise"):
        np.testing.assert_array_equal(getattr(one, key), getattr(two, key))
    assert one.history == two.history
    assert not np.array_equal(one.means, other.means)


def test_fit_prints_the_likelihood_per_iteration(digits, capsys):
    MFA.fit(digits, 3, 2, iterations=2, verbose=1)
    out = capsys.readouterr().out
    assert "iteration 2/2: mean log-likelihood per image" in out


# === Saving ===


def test_save_and_load_round_trip(tmp_path, digits):
    model = MFA.fit(digits, 3, 2, iterations=2, noise="diagonal", verbose=0)
    model.conditional = "exact"
    model.save(str(tmp_path / "mfa"))
    assert os.listdir(tmp_path / "mfa") == ["mfa.npz"]
    umask = os.umask(0)
    os.umask(umask)
    mode = os.stat(tmp_path / "mfa" / "mfa.npz").st_mode & 0o777
    assert mode == 0o666 & ~umask  # as a plain open() would make it, not mkstemp's 0600
    for restored in (MFA.load(str(tmp_path / "mfa")), saving.load(str(tmp_path / "mfa"))):
        assert isinstance(restored, MFA)
        assert restored.conditional == "exact" and restored.noise_type == "diagonal"
        assert restored.image_shape == (8, 8, 1) and restored.history == model.history
        assert restored.variance_floor == model.variance_floor and restored.info == model.info
        inputs = {"image": digits[:4], "mask": np.tile([[[[1.0]]], [[[0.0]]]], (2, 4, 8, 1))}
        for key, value in model(inputs).items():
            np.testing.assert_array_equal(restored(inputs)[key], value)
        np.testing.assert_array_equal(restored.log_prob(digits), model.log_prob(digits))


# === Bad input ===


@pytest.mark.parametrize(
    "images, kwargs, message",
    [
        (np.full((20, 4, 4, 1), 1.5), {}, r"\[0, 1\].*1\.5"),
        (np.full((20, 4, 4, 1), -0.25), {}, r"\[0, 1\].*-0\.25"),
        (np.zeros((20, 4, 4)), {}, r"shape=\(20, 4, 4\)"),
        (np.zeros((5, 4, 4, 1)), dict(components=10), r"components=10.*received 5"),
        (np.zeros((20, 4, 4, 1)), dict(noise="full"), "noise='full'"),
        (np.zeros((20, 4, 4, 1)), dict(init="pca"), "init='pca'"),
        (np.zeros((20, 4, 4, 1)), dict(factors=16), "factors=16"),
        (np.zeros((20, 4, 4, 1)), dict(variance_floor=0.0), "variance_floor=0.0"),
        (np.zeros((20, 4, 4, 1)), dict(iterations=-1), "iterations=-1"),
    ],
)
def test_bad_input_is_a_clear_error(images, kwargs, message):
    settings = dict(components=2, factors=1, iterations=1, verbose=0)
    settings.update(kwargs)
    with pytest.raises(ValueError, match=message):
        MFA.fit(images, **settings)


def test_bad_model_settings_are_clear_errors():
    model = _random_model("diagonal")
    with pytest.raises(ValueError, match="conditional='best'"):
        model.conditional = "best"
    with pytest.raises(ValueError, match=r"shape=\(2, 3, 4, 1\)"):
        model.log_prob(np.zeros((2, 3, 4, 1)))
    with pytest.raises(ValueError, match=r"image_shape=\(5, 5, 1\)"):
        MFA(model.weights, model.means, model.factors, model.noise, (5, 5, 1))


def test_the_old_module_path_is_a_deprecated_alias():
    import importlib

    from dmfa_tf.baselines import mfa as new_home

    sys.modules.pop("dmfa_tf.mfa", None)
    with pytest.warns(DeprecationWarning, match="dmfa_tf.mfa moved to dmfa_tf.baselines.mfa"):
        old = importlib.import_module("dmfa_tf.mfa")
    from dmfa_tf.mfa import MFA as aliased  # noqa: E402

    assert aliased is MFA is new_home.MFA
    for name in ("CONDITIONALS", "FILENAME", "INITS", "NOISE_TYPES", "WEIGHT_FLOOR"):
        assert getattr(old, name) is getattr(new_home, name)


# === train.py --model=mfa ===


def test_train_and_evaluate_fits_scores_and_saves_an_mfa(tmp_path):
    config = TrainConfig(
        model="mfa", dataset="digits", max_test_images=120, mfa_iterations=10,
        output=str(tmp_path / "out"), workdir=str(tmp_path / "runs"),
    )
    metrics = train_and_evaluate(config, verbose=0, command="test")
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "metrics.json", "mfa.npz"]
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["model"]["components"] == 10 and saved["model"]["factors"] == 4
    assert saved["nll"]["count"] == 120 and saved["exact"]["nll"]["count"] == 120
    assert len(saved["log_likelihood_history"]) == 11 and saved["fit_seconds"] >= 0
    # The MFA beats the diagonal Gaussian, which ignores the observed pixels. The
    # paper conditional's mean NLL is heavy-tailed on 8x8 digits (a wrongly picked
    # component costs tens of nats), so for it only the median is compared.
    baseline = saved["baseline"]
    assert saved["exact"]["nll"]["mean"] <= baseline["nll"]["mean"]
    assert saved["exact"]["nll"]["median"] <= baseline["nll"]["median"]
    assert saved["nll"]["median"] <= baseline["nll"]["median"]
    assert saved["mse"]["mean"] <= baseline["mse"]["mean"]
    assert saved["exact"]["mse"] == saved["mse"]  # same most probable component
    model = saving.load(str(tmp_path / "out"))
    assert isinstance(model, MFA) and model.conditional == "paper"
    assert TrainConfig.from_json((tmp_path / "out" / "config.json").read_text()) == config.resolved()


def test_mfa_config_defaults_and_checks():
    config = TrainConfig(model="mfa", dataset="mnist").resolved()
    assert (config.mfa_components, config.mfa_factors, config.name) == (50, 6, "mnist_mfa")
    assert TrainConfig(dataset="mnist").resolved().name == "mnist"  # DMFA runs unchanged
    for bad, message in (
        (dict(model="gmm"), "model='gmm'"),
        (dict(mfa_noise="full"), "mfa_noise='full'"),
        (dict(mfa_init="pca"), "mfa_init='pca'"),
        (dict(model="mfa", mfa_components=0), "mfa_components=0"),
        (dict(mfa_iterations=0), "mfa_iterations=0"),
    ):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad).resolved()
    # resolving is idempotent: a saved config resolves again to itself
    for raw in (TrainConfig(model="mfa", dataset="mnist"), TrainConfig(dataset="mnist")):
        assert raw.resolved().resolved() == raw.resolved()


def test_cli_fits_an_mfa(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), "--model=mfa", "--max-train-images=200",
         "--max-test-images=32", "--mfa-iterations=3", "--mfa-noise=diagonal"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("MFA paper conditional", "MFA exact conditional", "diagonal Gaussian"):
        assert row in result.stdout
    assert "iteration 3/3: mean log-likelihood per image" in result.stdout
    assert (tmp_path / "saved_models" / "digits_mfa" / "mfa.npz").exists()
