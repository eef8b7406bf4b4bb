"""Recalibrated intervals (`dmfa_tf.core.recalibration`) against hand-computed maps,
SciPy quantiles of the mixture marginal, and coverage on held-out draws."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from scipy import optimize, stats

import reference
from dmfa_tf import evaluation
from dmfa_tf.core import recalibration
from dmfa_tf.core.distribution import MaskedFactorMixture
from dmfa_tf.core.recalibration import Recalibration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _z_band():
    """PITs whose z = Phi^-1(u) spreads evenly over [-2, 2] (bins 3 and 4 of
    8 over [-8, 8]): R(Phi(z)) = (z + 2) / 4 there."""
    counts = np.zeros(8)
    counts[3:5] = 1.0
    return Recalibration.from_counts(counts)


def test_map_and_inverse_by_hand():
    r = _z_band()
    z = np.array([-9.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 9.0])
    u = stats.norm.cdf(z)
    np.testing.assert_allclose(r(u), [0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1], atol=1e-12)
    np.testing.assert_allclose(r(tf.constant(u)).numpy(), r(u), atol=1e-9)
    np.testing.assert_allclose(
        r.inverse([0.05, 0.25, 0.5, 0.95]), [stats.norm.cdf([-1.8, -1.0, 0.0, 1.8])], rtol=1e-9
    )
    # Where R is flat (z in [-8, -2] and [2, 8]), R^-1 is the middle of the flat part.
    np.testing.assert_allclose(r.inverse([0.0, 1.0]), [stats.norm.cdf([-5.0, 5.0])], rtol=1e-9)
    assert r.fitted_on["pixels"] == 2 and r.groups == 1
    copy = Recalibration.from_dict(json.loads(json.dumps(r.to_dict())))
    np.testing.assert_allclose(copy.cdfs, r.cdfs)


def test_groups_by_predictive_sd_by_hand():
    """Two sd cells of equal weight: two groups, each with its own map, split
    at the grid edge above the first cell."""
    cells = len(recalibration.SD_GRID) - 1
    counts = np.zeros((cells, 4))  # 4 PIT bins: z in [-8, -4), ..., [4, 8]
    counts[100, 0] = 6  # sd in [10^-2, 10^-1.99): every z in [-8, -4)
    counts[200, 3] = 6  # sd in [10^-1, 10^-0.99): every z in [4, 8]
    r = Recalibration.from_counts(counts, groups=2, min_group_pixels=1)
    assert r.groups == 2
    np.testing.assert_allclose(r.sd_bounds, [10 ** recalibration.SD_GRID[101]])
    np.testing.assert_allclose(r.cdfs, [[0, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    sd = np.array([10 ** -1.995, 10 ** -0.995])
    u = stats.norm.cdf([-6.0, 6.0])  # the middle of each group's bin
    np.testing.assert_allclose(r(u, sd), [0.5, 0.5])
    np.testing.assert_allclose(r(tf.constant(u), tf.constant(sd)).numpy(), [0.5, 0.5])
    np.testing.assert_allclose(r.inverse(0.5), u)
    with pytest.raises(ValueError, match="pass `sd`"):
        r(np.array([0.5]))
    # Too few pixels for two groups (min_group_pixels): one map of everything.
    one = Recalibration.from_counts(counts, groups=2, min_group_pixels=7)
    assert one.groups == 1 and one(np.array([0.5]))[0] == pytest.approx(0.5)
    # The pixels' cells, as TensorFlow bins them.
    np.testing.assert_array_equal(recalibration.sd_bin(tf.constant(sd)).numpy(), [100, 200])
    assert Recalibration.from_dict(json.loads(json.dumps(r.to_dict()))).groups == 2


@pytest.mark.parametrize("cdfs, bounds, message", [
    ([0.0, 0.6, 0.5, 1.0], (), "without falling"),
    ([0.1, 1.0], (), "from 0 to 1"),
    ([0.0, np.nan, 1.0], (), "finite"),
    ([[0.0, 1.0], [0.0, 1.0]], (), "2 maps need 1 increasing positive sd bounds"),
    ([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]], (0.2, 0.1), "increasing positive"),
])
def test_bad_maps_are_refused(cdfs, bounds, message):
    with pytest.raises(ValueError, match=message):
        Recalibration(cdfs, bounds)


def test_no_pits_cannot_be_fitted():
    with pytest.raises(ValueError, match="no missing pixels were scored"):
        Recalibration.from_counts(np.zeros(16))


def _random_mixture(seed=0, batch=3, n=5):
    rng = np.random.default_rng(seed)
    params = {
        "logits": rng.normal(size=(batch, 2)),
        "loc": rng.uniform(0.2, 0.8, size=(batch, 2, n)),
        "factors": rng.normal(0, 0.15, size=(batch, 2, n, 2)),
        "diag": rng.uniform(0.001, 0.02, size=(batch, 2, n)),
    }
    dist = MaskedFactorMixture(**params, mask=np.zeros((batch, n)))
    return dist, params


def _scipy_quantile(params, b, i, p):
    def cdf(x):
        values = np.full((1, params["loc"].shape[-1]), x)
        one = {key: value[b:b + 1] for key, value in params.items()}
        return reference.marginal_cdf(one["logits"], one["loc"], one["factors"], one["diag"], values)[0, i]
    return optimize.brentq(lambda x: cdf(x) - p, -10.0, 10.0, xtol=1e-12)


def test_quantiles_match_scipy_root_finding():
    dist, params = _random_mixture()
    for p in (0.05, 0.5, 0.9):
        got = recalibration.quantile(dist, p).numpy()
        want = np.array([[_scipy_quantile(params, b, i, p) for i in range(5)] for b in range(3)])
        np.testing.assert_allclose(got, want, atol=1e-8)


def test_recalibrated_interval_ends_have_the_recalibrated_levels():
    dist, params = _random_mixture(seed=1)
    r = _z_band()
    lower, upper = recalibration.interval(dist, 0.9, r)
    args = (params["logits"], params["loc"], params["factors"], params["diag"])
    np.testing.assert_allclose(r(reference.marginal_cdf(*args, lower.numpy())), 0.05, atol=1e-7)
    np.testing.assert_allclose(r(reference.marginal_cdf(*args, upper.numpy())), 0.95, atol=1e-7)
    # Without a recalibration: the model's own central interval.
    lower, upper = recalibration.interval(dist, 0.5)
    np.testing.assert_allclose(reference.marginal_cdf(*args, lower.numpy()), 0.25, atol=1e-7)
    np.testing.assert_allclose(reference.marginal_cdf(*args, upper.numpy()), 0.75, atol=1e-7)
    with pytest.raises(ValueError, match="level"):
        recalibration.interval(dist, 1.0)


class TooWide:
    """Every pixel N(0.5, 0.2^2), while the data are N(0.5, 0.05^2): the
    model's intervals cover far too much."""

    image_shape = (8, 8, 1)

    def __call__(self, inputs, training=False):
        batch = tf.shape(inputs["image"])[0]
        return {
            "logits": tf.zeros([batch, 1]),
            "loc": tf.fill([batch, 1, 64], 0.5),
            "factors": tf.zeros([batch, 1, 64, 1]),
            "diag": tf.fill([batch, 1, 64], 0.04),
        }


def _two_draws(seed, count):
    """Two sets of 8x8 images with pixels N(0.5, 0.05^2) (clipped to [0, 1])."""
    rng = np.random.default_rng(seed)
    return [np.clip(rng.normal(0.5, 0.05, size=(count, 8, 8, 1)), 0, 1).astype(np.float32)
            for _ in range(2)]


def _pit_counts(model, images, mask):
    scores = evaluation.score(model, images, mask, seed=0, dequantize=0,
                              pit_histogram_bins=recalibration.BINS)
    return scores["pit_histogram"]


def test_recalibration_fitted_on_one_draw_calibrates_another():
    model = TooWide()
    fit_images, test_images = _two_draws(0, 150)
    scores = {"pit_histogram": _pit_counts(model, fit_images, "6x6")}
    assert scores["pit_histogram"].shape == (len(recalibration.SD_GRID) - 1, recalibration.BINS)
    assert scores["pit_histogram"].sum() == 150 * 36
    fitted = Recalibration.from_counts(scores["pit_histogram"])
    assert fitted.groups == 1  # every pixel has the same sd
    result = evaluation.calibration(
        evaluation.score(model, test_images, "6x6", seed=1, dequantize=0, recalibration=fitted)
    )
    # The model's own 50% interval (0.5 +- 0.135) holds nearly every value (|z| < 2.7).
    assert result["coverage_50"] > 0.98
    assert result["recalibrated"]["coverage_50"] == pytest.approx(0.5, abs=0.03)
    assert result["recalibrated"]["coverage_90"] == pytest.approx(0.9, abs=0.02)
    np.testing.assert_allclose(result["recalibrated"]["pit_deciles"], 0.1, atol=0.025)
    table = evaluation.comparison_table([("wide", {
        "nll": None, "squared_error": None, "psnr": None, "ssim": None, "calibration": result,
    })])
    assert "| wide, recalibrated intervals |" in table


class TwoKinds(TooWide):
    """The left half of each image N(0.5, 0.2^2) (too wide for the data's
    N(0.5, 0.05^2)), the right half N(0.5, 0.02^2) (too narrow)."""

    def __call__(self, inputs, training=False):
        params = super().__call__(inputs, training)
        column = np.tile(np.arange(8), 8)
        diag = np.where(column < 4, 0.04, 0.0004).astype(np.float32)
        params["diag"] = tf.broadcast_to(diag, tf.shape(params["diag"]))
        return params


def test_groups_calibrate_each_kind_of_pixel_where_one_map_cannot():
    model = TwoKinds()
    fit_images, test_images = _two_draws(1, 200)
    counts = _pit_counts(model, fit_images, "8x8")
    grouped = Recalibration.from_counts(counts)
    single = Recalibration.from_counts(counts.sum(0))
    assert grouped.groups == 2 and 0.02 < grouped.sd_bounds[0] <= 0.2
    # PITs of the test images under the model, by half (SciPy's normal CDF).
    x = test_images.reshape(200, 64).astype(np.float64)
    sd = np.where(np.tile(np.arange(8), 8) < 4, 0.2, 0.02)[None].repeat(200, 0)
    u = stats.norm.cdf(x, 0.5, sd)
    for half in (sd == 0.2, sd == 0.02):
        inside = lambda v, a: np.mean(np.abs(v[half] - 0.5) <= a / 2)  # noqa: E731
        assert inside(grouped(u, sd), 0.5) == pytest.approx(0.5, abs=0.03)
        assert inside(grouped(u, sd), 0.9) == pytest.approx(0.9, abs=0.02)
        assert abs(inside(single(u), 0.5) - 0.5) > 0.2  # one map: one half far off
    # evaluate's pooled recalibrated coverage agrees.
    result = evaluation.calibration(
        evaluation.score(model, test_images, "8x8", seed=1, dequantize=0, recalibration=grouped)
    )
    assert result["recalibrated"]["coverage_90"] == pytest.approx(0.9, abs=0.02)


def test_grouped_interval_ends_have_their_groups_levels():
    dist, params = _random_mixture(seed=2, batch=4, n=6)
    sd = dist.stddev().numpy()
    bound = float(np.median(sd))
    r = Recalibration([np.linspace(0, 1, 5) ** 2, np.sqrt(np.linspace(0, 1, 5))], [bound])
    lower, upper = recalibration.interval(dist, 0.8, r)
    args = (params["logits"], params["loc"], params["factors"], params["diag"])
    # These maps put the ends at z = -7.2 and 7.1: 1 - F = 7e-13 there, known
    # to float64's 1e-16, which moves z by 2e-5.
    np.testing.assert_allclose(r(reference.marginal_cdf(*args, lower.numpy()), sd), 0.1, atol=1e-4)
    np.testing.assert_allclose(r(reference.marginal_cdf(*args, upper.numpy()), sd), 0.9, atol=1e-4)
    # The two groups' intervals differ: each pixel used its own group's map.
    assert len(set(np.round(r.inverse(0.1)[r.group(sd)].ravel(), 12))) == 2


def test_elementary_normal_cdf_against_scipy():
    """The TFLite-safe normal CDF (a Chebyshev fit of erfc) against SciPy:
    relative error below 1.2e-7 in the lower tail, absolute error below 6e-8
    everywhere (the upper half is 1 - Phi(-z))."""
    z = np.linspace(-12.0, 12.0, 4801)
    got = recalibration.normal_cdf(tf.constant(z), elementary=True).numpy()
    lower = z <= 0
    want = stats.norm.cdf(z)
    np.testing.assert_array_less(np.abs(got - want)[lower], 1.2e-7 * want[lower])
    np.testing.assert_allclose(got, want, atol=6e-8, rtol=0)
    exact = recalibration.normal_cdf(tf.constant(z)).numpy()
    np.testing.assert_allclose(exact, stats.norm.cdf(z), rtol=1e-14, atol=1e-300)
    # float32 (the TFLite file's type): within float32 rounding of the truth.
    got32 = recalibration.normal_cdf(tf.constant(z, tf.float32), elementary=True).numpy()
    np.testing.assert_allclose(got32, stats.norm.cdf(z), atol=3e-7, rtol=0)


def test_elementary_intervals_equal_the_exact_ones():
    """`elementary=True` (TFLite builtins: the fitted normal CDF, counting in
    place of searchsorted, no assertion) gives the same interval ends, with one
    map and with groups, and the same groups and map inverse as NumPy."""
    dist, params = _random_mixture(seed=3, batch=4, n=6)
    sd = dist.stddev().numpy()
    bound = float(np.median(sd))
    grouped = Recalibration([np.linspace(0, 1, 5) ** 2, np.sqrt(np.linspace(0, 1, 5))], [bound])
    for fitted in (None, _z_band(), grouped):
        for level in (0.5, 0.9):
            exact = recalibration.interval(dist, level, fitted)
            fast = recalibration.interval(dist, tf.constant(level, tf.float64), fitted,
                                          elementary=True)
            for a, b in zip(exact, fast):
                np.testing.assert_allclose(b.numpy(), a.numpy(), atol=2e-6)
    np.testing.assert_array_equal(grouped.group_tf(tf.constant(sd), sd.shape).numpy(),
                                  grouped.group(sd))
    # In float32 (the exported files' type) the grouped map's upper level,
    # Phi(7.1) = 1 - 6e-13, rounds to 1; the upper end is found from its
    # upper-tail probability, so it still matches float64.
    dist32 = MaskedFactorMixture(
        **{key: value.astype(np.float32) for key, value in params.items()},
        mask=np.zeros((4, 6), np.float32),
    )
    exact = recalibration.interval(dist, 0.8, grouped)
    for elementary in (False, True):
        ends = recalibration.interval(dist32, 0.8, grouped, elementary=elementary)
        for a, b in zip(exact, ends):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=2e-5, atol=1e-6)
    # The counting search agrees with NumPy's searchsorted, ties included.
    levels = np.array([0.0, 0.0625, 0.1, 0.25, 0.5, 0.99, 1.0])
    for fitted in (_z_band(), grouped):
        for side in ("left", "right"):
            count = (fitted.cdfs[:, None, :] < levels[None, :, None]).sum(-1)
            if side == "right":
                count = (fitted.cdfs[:, None, :] <= levels[None, :, None]).sum(-1)
            want = np.stack([np.searchsorted(c, levels, side=side) for c in fitted.cdfs])
            np.testing.assert_array_equal(count, want)
        np.testing.assert_allclose(
            fitted.inverse_tf(tf.constant(levels), elementary=True).numpy(),
            fitted.inverse(levels), rtol=2e-6, atol=1e-12,
        )


def test_baselines_without_mixture_parameters_are_refused():
    from dmfa_tf import baselines

    images = np.random.default_rng(0).random((20, 8, 8, 1), dtype=np.float32)
    knn = baselines.KNNImputation.fit(images)
    with pytest.raises(ValueError, match="mixture parameters"):
        evaluation.score(knn, images, "3x3", recalibration=_z_band())


def test_evaluate_py_fits_saves_and_reports_the_recalibration(tmp_path, capsys):
    import evaluate

    folder = tmp_path / "digits"
    shutil.copytree(os.path.join(ROOT, "saved_models", "digits"), folder)
    with pytest.raises(SystemExit) as exit_info:  # an argparse error
        evaluate.main([f"--model={folder}", "--hole=4x4", "--fit-recalibration", "--quiet"])
    assert exit_info.value.code == 2 and "--split=val" in capsys.readouterr().err
    assert evaluate.main(["--model=gaussian", "--dataset=digits", "--split=val",
                          "--fit-recalibration", "--hole=4x4", "--quiet"]) == 2
    assert "needs a DMFA model folder" in capsys.readouterr().err

    evaluate.main([f"--model={folder}", "--split=val", "--hole=4x4", "--fit-recalibration", "--quiet",
                   f"--output={tmp_path / 'fit'}"])
    fitted = recalibration.load(str(folder))
    assert fitted.fitted_on["split"] == "val" and fitted.fitted_on["pixels"] == 180 * 16
    result = evaluate.evaluate(evaluate.parse_args([
        f"--model={folder}", "--hole=4x4", "--quiet", f"--output={tmp_path / 'out'}",
    ]))
    info = result["models"]["digits"]
    assert info["recalibration"]["split"] == "val"
    recalibrated = info["calibration"]["recalibrated"]
    assert 0 < recalibrated["coverage_50"] < recalibrated["coverage_90"] < 1
    assert sum(recalibrated["pit_deciles"]) == pytest.approx(1.0)
    assert recalibrated["map_mask"] == "4x4"
    # A map fitted at other values than those measured is named as not applying.
    content = json.loads((folder / recalibration.FILE).read_text())
    content["maps"][0]["fitted_on"]["dequantization_step"] = 1 / 255
    (folder / recalibration.FILE).write_text(json.dumps(content))
    capsys.readouterr()
    evaluate.main([f"--model={folder}", "--hole=4x4", "--quiet", f"--output={tmp_path / 'step'}"])
    assert "was fitted at dequantization step 0.00392157" in capsys.readouterr().err
    # The density and the imputation are the model's own: the same NLL as without the map.
    os.remove(folder / recalibration.FILE)
    plain = evaluate.evaluate(evaluate.parse_args([
        f"--model={folder}", "--hole=4x4", "--quiet", f"--output={tmp_path / 'plain'}",
    ]))["models"]["digits"]
    assert plain["nll"] == info["nll"] and "recalibrated" not in plain["calibration"]


def test_a_corrupt_recalibration_file_is_named(tmp_path):
    (tmp_path / recalibration.FILE).write_text("{not json")
    with pytest.raises(ValueError, match="recalibration.json is not a readable recalibration"):
        recalibration.load(str(tmp_path))
    assert recalibration.load(str(tmp_path / "nothing")) is None
