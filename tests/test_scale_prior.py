"""The scale prior (`dmfa_tf.core.scales`): each component's covariance times a
scale `c_j` with weight `w_j`. The density, marginals, variance and samples
are checked against the same mixture written out as `K * J` dense Gaussians;
the chi-squared test and the EM fit against SciPy and hand-computed values."""

import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import reference
from dmfa_tf import evaluation, saving
from dmfa_tf.core import scales as scales_lib
from dmfa_tf.core.distribution import MaskedFactorMixture
from dmfa_tf.core.recalibration import marginal_cdf
from dmfa_tf.models import ScalePrior, build_model, with_scale_prior

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALES = np.array([0.25, 1.0, 3.0])
WEIGHTS = np.array([0.2, 0.5, 0.3])


def _parameters(seed=0, batch=3, k=2, n=7, l=2):
    rng = np.random.default_rng(seed)
    return dict(
        logits=rng.normal(size=(batch, k)),
        loc=rng.normal(size=(batch, k, n)),
        factors=0.5 * rng.normal(size=(batch, k, n, l)),
        diag=rng.uniform(0.1, 0.6, size=(batch, k, n)),
    )


def _mask(batch=3, n=7):
    mask = np.ones((batch, n))
    mask[0, 2:6] = 0
    mask[1, :3] = 0
    mask[1, 5] = -1  # absent: neither given nor scored
    mask[2, ::2] = 0
    return mask


def _expanded(p):
    """The same mixture as `K * J` plain components (J fastest)."""
    k = p["logits"].shape[-1]
    j = len(SCALES)
    logits = (p["logits"][:, :, None] + np.log(WEIGHTS)).reshape(-1, k * j)
    loc = np.repeat(p["loc"], j, axis=1)
    factors = (p["factors"][:, :, None] * np.sqrt(SCALES)[:, None, None]).reshape(
        len(loc), k * j, *p["factors"].shape[2:])
    diag = (p["diag"][:, :, None] * SCALES[:, None]).reshape(len(loc), k * j, -1)
    return logits, loc, factors, diag


def _dist(p, mask, dtype=tf.float64, **kwargs):
    batch = len(mask)
    return MaskedFactorMixture(
        p["logits"], p["loc"], p["factors"], p["diag"], tf.constant(mask, dtype),
        scales=tf.constant(np.tile(SCALES, (batch, 1)), dtype),
        scale_logits=tf.constant(np.tile(np.log(WEIGHTS) + 1.7, (batch, 1)), dtype),  # unnormalised
        **kwargs,
    )


def test_log_prob_is_the_dense_mixture_of_scaled_components():
    p, mask = _parameters(), _mask()
    x = np.random.default_rng(1).normal(size=mask.shape)
    got = _dist(p, mask).log_prob(x).numpy()
    want = reference.mixture_log_prob(*_expanded(p), mask, x)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-9)
    # float32 too
    got32 = _dist({k: v.astype(np.float32) for k, v in p.items()}, mask, tf.float32).log_prob(
        x.astype(np.float32)).numpy()
    np.testing.assert_allclose(got32, want, rtol=2e-5, atol=2e-4)


def test_component_values_at_scale_one_and_the_prior_removed():
    p, mask = _parameters(), _mask()
    x = np.random.default_rng(2).normal(size=mask.shape)
    dist = _dist(p, mask)
    plain = dist.without_scale_prior()
    assert plain.scales is None and plain.without_scale_prior() is plain
    want = reference.component_mahalanobis(p["loc"], p["factors"], p["diag"], mask, x)
    np.testing.assert_allclose(dist.component_mahalanobis(x).numpy(), want, rtol=1e-10)
    np.testing.assert_allclose(
        plain.log_prob(x).numpy(), reference.mixture_log_prob(p["logits"], p["loc"], p["factors"], p["diag"], mask, x),
        rtol=1e-10)


def test_marginals_variance_and_imputation():
    p, mask = _parameters(), _mask()
    dist = _dist(p, mask)
    logits, loc, factors, diag = _expanded(p)
    x = np.random.default_rng(3).normal(size=mask.shape)
    probs = np.exp(logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True))
    sd = np.sqrt(np.einsum("bknl,bknl->bkn", factors, factors) + diag)
    want_cdf = np.sum(probs[:, :, None] * stats.norm.cdf((x[:, None] - loc) / sd), axis=1)
    np.testing.assert_allclose(marginal_cdf(dist, x).numpy(), want_cdf, rtol=1e-10, atol=1e-12)
    missing = mask != 1
    for b in range(len(mask)):
        _, cov = reference.mixture_moments(logits[b], loc[b], factors[b], diag[b])
        np.testing.assert_allclose(dist.variance().numpy()[b][missing[b]], np.diag(cov)[missing[b]], rtol=1e-10)
    # The imputation is the most probable component's mean: the prior moves no mean.
    np.testing.assert_allclose(dist.imputation().numpy(), dist.without_scale_prior().imputation().numpy())
    np.testing.assert_allclose(dist.mean().numpy(), dist.without_scale_prior().mean().numpy())


def test_sample_moments_match_the_scaled_mixture():
    p, mask = _parameters(batch=1, k=2, n=5), np.array([[0, 0, 1, 0, 0]], np.float64)
    dist = _dist(p, mask)
    draws = dist.sample(40000, seed=[4, 5]).numpy()[:, 0]  # [S, N]
    logits, loc, factors, diag = _expanded(p)
    mean, cov = reference.mixture_moments(logits[0], loc[0], factors[0], diag[0])
    missing = mask[0] == 0
    np.testing.assert_allclose(draws[:, missing].mean(0), mean[missing], atol=0.04)
    np.testing.assert_allclose(np.cov(draws[:, missing].T), cov[np.ix_(missing, missing)], atol=0.08)
    # Seeded: the same draws again.
    np.testing.assert_array_equal(dist.sample(3, seed=[4, 5]).numpy(), dist.sample(3, seed=[4, 5]).numpy())


def test_the_chi_squared_test_is_uniform_on_the_models_own_draws():
    # Draws of the mixture with its scale prior, the component drawn from its
    # posterior: the distance's distribution function is uniform (module docstring).
    p = _parameters(seed=6, batch=1, k=2, n=40, l=3)
    mask = np.zeros((1, 40))
    dist = _dist(p, mask)
    draws = dist.sample(4000, seed=[7, 8]).numpy()[:, 0]  # [S, N]
    batch = {k: np.repeat(v, len(draws), axis=0) for k, v in p.items()}
    many = _dist(batch, np.zeros((len(draws), 40)))
    d2 = many.component_mahalanobis(draws).numpy()  # [S, K]
    cdf = scales_lib.mahalanobis_cdf(
        tf.constant(d2), tf.fill([len(draws)], 40.0), many.scales, many.scale_logits).numpy()
    posterior = tf.math.softmax(many.component_log_prob(draws) + tf.math.log_softmax(many.logits)).numpy()
    pit = np.sum(posterior * cdf, axis=-1)  # the expected PIT over the posterior
    assert stats.kstest(pit, "uniform").pvalue > 1e-3
    high = np.sum(posterior * (cdf > 0.99), axis=-1).mean()
    assert 0.005 < high < 0.016  # 1% (binomial sd 0.16% over 4000 draws)


def test_mahalanobis_cdf_against_scipy():
    d2 = np.array([[30.0, 55.0], [80.0, 4.0]])
    dof = np.array([40.0, 10.0])
    plain = scales_lib.mahalanobis_cdf(tf.constant(d2), tf.constant(dof)).numpy()
    np.testing.assert_allclose(plain, stats.chi2.cdf(d2, dof[:, None]), rtol=1e-10)
    scales = np.tile(SCALES, (2, 1))
    mixed = scales_lib.mahalanobis_cdf(
        tf.constant(d2), tf.constant(dof), tf.constant(scales), tf.constant(np.log(WEIGHTS) * np.ones((2, 1)))).numpy()
    want = sum(w * stats.chi2.cdf(d2 / c, dof[:, None]) for c, w in zip(SCALES, WEIGHTS))
    np.testing.assert_allclose(mixed, want, rtol=1e-10)
    # [B] distances too; no scored coordinate gives 0.5.
    one = scales_lib.mahalanobis_cdf(tf.constant([0.0, 12.0], tf.float64), tf.constant([0.0, 12.0])).numpy()
    np.testing.assert_allclose(one, [0.5, stats.chi2.cdf(12.0, 12.0)], rtol=1e-10)


def test_fit_weights_recovers_a_known_scale_mixture():
    rng = np.random.default_rng(9)
    m, count = 60, 4000
    truth = rng.choice(len(SCALES), size=count, p=WEIGHTS)
    d2 = SCALES[truth] * rng.chisquare(m, size=count)  # one component, unit covariance
    unit = -0.5 * (d2 + m * np.log(2 * np.pi))
    fit = scales_lib.fit_weights(unit[:, None], d2[:, None], np.zeros((count, 1)), np.full(count, m),
                                 scales=[0.125, 0.25, 0.5, 1.0, 2.0, 3.0, 6.0])
    weights = dict(zip(np.round(fit["scales"], 3), fit["weights"]))
    for c, w in zip(SCALES, WEIGHTS):
        assert weights[round(c, 3)] == pytest.approx(w, abs=0.03)
    assert sum(weights.get(c, 0.0) for c in (0.125, 0.5, 2.0, 6.0)) < 0.03
    # The mean log density it reports, by hand from the kept scales.
    c, w = np.array(fit["scales"]), np.array(fit["weights"])
    by_hand = np.logaddexp.reduce(
        np.log(w) - 0.5 * m * np.log(2 * np.pi * c)
        - 0.5 * d2[:, None] / c, axis=1).mean()
    assert fit["mean_log_prob"] == pytest.approx(by_hand, rel=1e-10)
    assert fit["unit_mean_log_prob"] == pytest.approx(unit.mean(), rel=1e-12)
    assert fit["mean_log_prob"] > fit["unit_mean_log_prob"] and fit["images"] == count


def test_fit_weights_errors():
    with pytest.raises(ValueError, match="no image has a missing coordinate"):
        scales_lib.fit_weights(np.zeros((3, 1)), np.zeros((3, 1)), np.zeros((3, 1)), np.zeros(3))
    with pytest.raises(ValueError, match="positive numbers. Received: \\[1.0, -2.0\\]"):
        scales_lib.fit_weights(np.zeros((3, 1)), np.ones((3, 1)), np.zeros((3, 1)), np.ones(3), scales=[1.0, -2.0])
    with pytest.raises(ValueError, match="NaN or inf"):
        scales_lib.fit_weights(np.full((3, 1), np.nan), np.ones((3, 1)), np.zeros((3, 1)), np.ones(3))


def test_distribution_argument_errors():
    p, mask = _parameters(), _mask()
    with pytest.raises(ValueError, match="pass both or neither"):
        MaskedFactorMixture(p["logits"], p["loc"], p["factors"], p["diag"], mask, scales=np.ones((3, 2)))
    with pytest.raises(ValueError, match="number of scales J"):
        MaskedFactorMixture(p["logits"], p["loc"], p["factors"], p["diag"], mask,
                            scales=np.ones((3, 2)), scale_logits=np.zeros((3, 4)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="scale prior"):
        MaskedFactorMixture(p["logits"], p["loc"], p["factors"], p["diag"], mask,
                            scales=-np.ones((3, 2)), scale_logits=np.zeros((3, 2)), validate_args=True)


def test_scale_prior_layer_errors():
    with pytest.raises(ValueError, match="same length"):
        ScalePrior([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="positive and finite. Received: -1.0"):
        ScalePrior([1.0, -1.0], [0.5, 0.5])


def test_with_scale_prior_outputs_save_and_reload(tmp_path):
    model = build_model((6, 6, 1), "fullconv", components=2, factors=2, width=4, precision="float32")
    fitted = with_scale_prior(model, SCALES, 2 * WEIGHTS)  # weights are normalised
    rng = np.random.default_rng(10)
    image = rng.uniform(size=(2, 6, 6, 1)).astype(np.float32)
    mask = np.ones((2, 6, 6, 1), np.float32)
    mask[:, 1:4, 2:5] = 0
    params = fitted({"image": image, "mask": mask})
    np.testing.assert_allclose(params["scales"].numpy(), np.tile(SCALES, (2, 1)), rtol=1e-6)
    np.testing.assert_allclose(np.exp(params["scale_logits"].numpy()), np.tile(WEIGHTS, (2, 1)), rtol=1e-6)
    plain = model({"image": image, "mask": mask})
    for key in ("logits", "loc", "factors", "diag"):
        np.testing.assert_array_equal(params[key].numpy(), plain[key].numpy())
    flat = image.reshape(2, -1).astype(np.float64)
    want = reference.mixture_log_prob(
        *_expanded({k: plain[k].numpy().astype(np.float64) for k in ("logits", "loc", "factors", "diag")}),
        mask.reshape(2, -1), flat)
    np.testing.assert_allclose(fitted.mixture(image, mask).log_prob(flat).numpy(), want, rtol=2e-5, atol=2e-3)
    path = str(tmp_path / "m.keras")
    fitted.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.mixture(image, mask).log_prob(flat).numpy(),
                               fitted.mixture(image, mask).log_prob(flat).numpy(), rtol=1e-6)
    assert loaded.get_layer("scale_prior").scales == SCALES.tolist()
    # Replaced, and removed.
    again = with_scale_prior(loaded, [1.0], [1.0])
    assert again.get_layer("scale_prior").scales == [1.0]
    removed = with_scale_prior(again, None, None)
    assert sorted(removed.output) == ["diag", "factors", "loc", "logits"]


def test_evaluate_py_fits_the_scale_prior_and_refits_the_maps(tmp_path, capsys):
    import evaluate

    folder = tmp_path / "digits"
    shutil.copytree(os.path.join(ROOT, "saved_models", "digits"), folder)
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([f"--model={folder}", "--hole=4x4", "--fit-scale-prior", "--quiet"])
    assert exit_info.value.code == 2 and "--split=val" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main([f"--model={folder}", "--split=val", "--fit-scale-prior", "--fit-recalibration"])
    assert evaluate.main(["--model=gaussian", "--dataset=digits", "--split=val",
                          "--fit-scale-prior", "--hole=4x4", "--quiet"]) == 2
    assert "needs a DMFA model folder" in capsys.readouterr().err

    # The shipped digits model has a prior (train.py fits one): start from it without.
    plain = with_scale_prior(saving.load(str(folder)), None, None)
    plain.save(str(folder / "model.keras"))
    before = evaluate.evaluate(evaluate.parse_args([
        f"--model={folder}", "--hole=4x4", "--quiet", f"--output={tmp_path / 'before'}"]))
    maps_before = json.loads((folder / "recalibration.json").read_text())["maps"]
    result = evaluate.evaluate(evaluate.parse_args([
        f"--model={folder}", "--split=val", "--hole=4x4", "--fit-scale-prior", "--quiet"]))
    record = result["scale_prior"]
    assert record["nll"] <= record["nll_without"] and record["images"] == 180
    assert json.loads((folder / "metrics.json").read_text())["scale_prior"]["weights"] == record["weights"]
    maps = json.loads((folder / "recalibration.json").read_text())["maps"]
    assert [m["fitted_on"]["mask"] for m in maps] == [m["fitted_on"]["mask"] for m in maps_before]
    model = saving.load(str(folder))
    assert model.get_layer("scale_prior").scales == pytest.approx(record["scales"])
    after = evaluate.evaluate(evaluate.parse_args([
        f"--model={folder}", "--hole=4x4", "--quiet", f"--output={tmp_path / 'after'}"]))
    old, new = before["models"]["digits"], after["models"]["digits"]
    # The imputation is unchanged, the density is the model's with the prior.
    assert new["squared_error"]["mean"] == pytest.approx(old["squared_error"]["mean"], rel=1e-6)
    assert new["nll"]["mean"] < old["nll"]["mean"]  # fitted on the validation digits
    calibration = new["calibration"]
    for key in ("mahalanobis_below_p1", "mahalanobis_above_p99",
                "mahalanobis_posterior_below_p1", "mahalanobis_posterior_above_p99"):
        assert 0.0 <= calibration[key] <= 1.0


def test_posterior_shares_equal_the_most_probable_ones_for_one_component():
    from dmfa_tf import baselines

    images = np.random.default_rng(11).random((40, 6, 6, 1), dtype=np.float32)
    model = baselines.DiagonalGaussian.fit(images)
    scores = evaluation.score(model, images, "3x3")
    calibration = evaluation.calibration(scores)
    assert calibration["mahalanobis_posterior_below_p1"] == pytest.approx(calibration["mahalanobis_below_p1"])
    assert calibration["mahalanobis_posterior_above_p99"] == pytest.approx(calibration["mahalanobis_above_p99"])
    # The distribution function is chi-squared's without a scale prior.
    np.testing.assert_allclose(
        scores["mahalanobis_cdf"], stats.chi2.cdf(scores["mahalanobis"], scores["missing"]), rtol=2e-4, atol=1e-6)


def test_savedmodel_and_tflite_carry_the_scale_prior(tmp_path):
    import dmfa_tf
    from dmfa_tf import serving

    keras.utils.set_random_seed(3)
    model = with_scale_prior(build_model((8, 8, 1), "mlp", components=2, factors=2), SCALES, WEIGHTS)
    path = dmfa_tf.export_saved_model(model, str(tmp_path / "digits"), tflite=True)
    rng = np.random.default_rng(12)
    image = rng.uniform(size=(3, 8, 8, 1)).astype(np.float32)
    mask = np.ones((3, 8, 8, 1), np.float32)
    mask[:, 2:6, 1:5] = 0
    dist = model.mixture(image, mask)
    flat = image.reshape(3, -1)
    want = dist.log_prob(flat).numpy()
    assert np.all(np.abs(want - dist.without_scale_prior().log_prob(flat).numpy()) > 1e-3)
    loaded = tf.saved_model.load(path)
    got = loaded.signatures["log_prob"](image=tf.constant(image), mask=tf.constant(mask))["log_prob"].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    params = loaded.signatures["parameters"](image=tf.constant(image), mask=tf.constant(mask))
    np.testing.assert_allclose(params["scales"].numpy(), np.tile(SCALES, (3, 1)), rtol=1e-6)
    lite = serving.run_tflite(os.path.join(path, "model.tflite"), "log_prob", image=image, mask=mask)
    np.testing.assert_allclose(lite["log_prob"], want, rtol=1e-5, atol=1e-3)
    impute = serving.run_tflite(os.path.join(path, "model.tflite"), "impute", image=image, mask=mask)
    np.testing.assert_allclose(impute["variance"].reshape(3, -1), dist.variance().numpy(), rtol=1e-4, atol=1e-6)


def test_train_fits_the_prior_by_default_and_off_leaves_it_out(tmp_path):
    from dmfa_tf.config import TrainConfig
    from dmfa_tf.training import train_and_evaluate

    def run(name, **overrides):
        config = TrainConfig.preset("tiny", epochs=1, output=str(tmp_path / name / "digits"),
                                    workdir=str(tmp_path / name / "runs"), **overrides)
        return train_and_evaluate(config, verbose=0), saving.load(str(tmp_path / name / "digits"))

    metrics, model = run("on")
    prior = metrics["scale_prior"]
    assert prior["images"] == 180 and prior["mask"] == "4x4" and prior["nll"] <= prior["nll_without"]
    assert model.get_layer("scale_prior").scales == pytest.approx(prior["scales"])
    assert sum(prior["weights"]) == pytest.approx(1.0)
    assert set(prior["scales"]) <= set(scales_lib.DEFAULT_SCALES)
    metrics, model = run("off", scale_prior="off")
    assert metrics["scale_prior"] is None and "scales" not in model.output
    with pytest.raises(ValueError, match="`scale_prior` must be one of \\('on', 'off'\\). Received: scale_prior='yes'"):
        TrainConfig.preset("tiny", scale_prior="yes").resolved()
    with pytest.raises(ValueError, match="--scale-prior applies to DMFA networks"):
        TrainConfig(dataset="digits", model="mfa", scale_prior="off").resolved()
