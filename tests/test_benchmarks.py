"""The benchmark scripts: log_prob end to end on tiny sizes; the chi-squared
component study on data drawn from a known mixture; the colour-basis change of
variables against a rotation-invariant model."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_log_prob.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_log_prob", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_log_prob_tiny(tmp_path, capsys):
    bench = load_benchmark()
    out = tmp_path / "bench.json"
    results = bench.main([
        "--batch", "4", "--components", "2", "--factors", "3", "--size", "8",
        "--hole", "4x4", "--repeats", "2", "--dense-repeats", "1", "--warmup", "1",
        "--accuracy", "--acc-batch", "6", "--acc-size", "6", "--acc-hole", "3x3",
        "--json", str(out),
    ])
    printed = capsys.readouterr().out

    agreement = results["agreement"]
    assert agreement["passed"], agreement["failures"]
    assert set(agreement["max_abs_diff_nats"]) == {"ours_static", "tfp_direct", "dense"}
    assert max(agreement["max_abs_diff_nats"].values()) < 1e-3
    assert "agreement check passed" in printed

    timings = results["timings"]
    assert set(timings) == {"ours", "ours_static", "tfp_direct", "dense"}
    for cases in timings.values():
        for case in ("forward", "gradient"):
            assert cases[case]["median_ms"] > 0
            assert cases[case]["q25_ms"] <= cases[case]["median_ms"] <= cases[case]["q75_ms"]
    assert timings["dense"]["forward"]["repeats"] == 1
    assert "| implementation | forward ms (median) | forward+grad ms (median)" in printed

    errors = results["accuracy"]["errors"]
    assert errors["ours"]["worst_rel"] < 1e-3
    assert errors["ours"]["median_rel"] <= errors["ours"]["worst_rel"]
    assert errors["tfp_direct"]["worst_rel"] < 1.0  # finite and sane; it is the less accurate one
    assert errors["dense"]["worst_rel"] < 1e-2

    written = json.loads(out.read_text())
    assert written["agreement"]["passed"]
    assert written["config"]["hole"] == [4, 4]


def test_bench_serving_tiny(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "bench_serving", SCRIPT.parent / "bench_serving.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "serving.json"
    results = bench.main(["--repeats", "3", "--warmup", "1", "--images", "4", "--json", str(out)])
    printed = capsys.readouterr().out
    sizes = results["sizes_bytes"]
    assert set(sizes) == {"saved_model", "tflite_float32", "tflite_float16", "tflite_dynamic_range"}
    assert all(size > 0 for size in sizes.values())
    assert sizes["tflite_float16"] < sizes["tflite_float32"]
    assert set(results["latency_batch1"]) == {
        "in_memory", "saved_model", "tflite_float32", "tflite_float16", "tflite_dynamic_range",
    }
    for cases in results["latency_batch1"].values():
        for case in ("impute", "log_prob", "intervals"):
            t = cases[case]
            assert 0 < t["q25_ms"] <= t["median_ms"] <= t["q75_ms"] and t["repeats"] == 3
    errors = results["tflite_error_vs_saved_model"]
    assert errors["float32"]["log_prob_max_rel"] < 1e-4
    assert errors["float32"]["imputation_max_abs"] < 1e-4
    assert errors["float32"]["intervals_max_abs"] < 1e-4
    assert "intervals ms" in printed and "90% interval ends max abs" in printed
    # Quantised weights do change the outputs, a little.
    assert 0 < errors["dynamic_range"]["imputation_max_abs"] < 0.5
    assert not any(op.startswith("Flex") for op in results["tflite_ops"])
    assert "| runtime | impute ms |" in printed
    assert json.loads(out.read_text())["sizes_bytes"] == sizes


def load_training_benchmark():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_training.py"
    spec = importlib.util.spec_from_file_location("bench_training", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_training_counts_the_papers_flops_by_hand():
    bench = load_training_benchmark()
    model = bench.Case("linear_heads:28x28x1:24").build()
    # convolutions 2->16 (5x5), 16->32 (5x5), 32->64 (5x5), 64->32 (3x3) at 28x28,
    # then dense heads 25,088 -> 4 * 784 + 784 + 784 + 1, multiply-adds x 2
    convs = 28 * 28 * (25 * 2 * 16 + 25 * 16 * 32 + 25 * 32 * 64 + 9 * 64 * 32)
    heads = 28 * 28 * 32 * (4 * 784 + 784 + 784 + 1)
    assert bench.forward_flops(model) == 2 * (convs + heads)
    # DESIGN: forward and backward cost 1.10 GFLOP an image
    assert abs(3 * bench.forward_flops(model) / 1e9 - 1.10) < 0.01


def test_bench_training_tiny_run(tmp_path, capsys):
    bench = load_training_benchmark()
    out = tmp_path / "bench.json"
    results = bench.main([
        "--cases", "mlp:6x6x1:4:8", "--paths", "plain", "default", "bf16",
        "--rounds", "2", "--steps", "1", "--warmup", "1", "--json", str(out),
    ])
    printed = capsys.readouterr().out
    rows = {row["path"]: row for row in results["rows"]}
    assert set(rows) == {"plain", "default", "bf16"}
    for row in rows.values():
        assert "error" not in row, row
        assert row["timed_steps"] == 2
        assert row["images_per_s"] > 0 and row["peak_rss_mb"] > 100
        assert 0 < row["share_of_limit"] < 1
    assert not rows["plain"]["jit_compile"] and not rows["plain"]["fused_optimizer"]
    assert rows["default"]["fused_optimizer"]  # mlp on CPU: no XLA, fused Adam
    assert rows["bf16"]["fused_optimizer"] and not rows["bf16"]["jit_compile"]
    assert results["machine"]["bandwidth_gb_s"] > 0
    assert "| mlp:6x6x1:4:8 | default |" in printed
    assert json.loads(out.read_text())["rows"][0]["case"] == "mlp:6x6x1:4:8"


def test_bench_quality_tiny(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "bench_quality", SCRIPT.parent / "bench_quality.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.parse_candidate("fullconv width=16 objective=nll+mse:1 components=3 blocks=1") == (
        "fullconv",
        dict(objective="nll+mse:1", components=3, factors=4, batch=64, lr=1e-3, floor=None,
             dequantize=False),
        dict(width=16, blocks=1),
    )
    out = tmp_path / "quality.json"
    rows = bench.main([
        "--dataset", "digits", "--data-dir", "", "--hole", "4x4", "--minutes", "0.02",
        "--chunk", "3", "--val-images", "40", "--save", str(tmp_path / "models"),
        "--json", str(out), "--candidates", "mlp hidden=(16,16) batch=16",
    ])
    assert len(rows) == 1
    row = rows[0]
    assert row["candidate"] == "mlp hidden=(16,16) batch=16" and row["val_images"] == 40
    assert row["weights"] > 0 and row["images_per_second"] > 0
    assert row["images_seen"] % (3 * 16) == 0 and row["images_seen"] >= 3 * 16
    assert 0 <= row["coverage_50"] <= row["coverage_90"] <= 1
    assert row["dequantization_step"] == 0.0  # digits are not 8-bit
    assert json.loads(out.read_text()) == rows
    assert (tmp_path / "models" / "mlp_hidden_16_16_batch_16" / "model.keras").exists()
    assert "| `mlp hidden=(16,16) batch=16` |" in capsys.readouterr().out


def test_calibration_scaling_measures_the_model_it_rescales(tmp_path):
    # On the shipped digits model: the NLL "before" any rescaling is the model's
    # own, as evaluation.score computes it on the same images and masks.
    import numpy as np

    from dmfa_tf import data as datasets
    from dmfa_tf import evaluation

    spec = importlib.util.spec_from_file_location(
        "calibration_scaling", SCRIPT.parent / "calibration_scaling.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model_dir = Path(__file__).resolve().parents[1] / "saved_models" / "digits"
    result = module.main([
        f"--model={model_dir}", "--dataset=digits", "--hole=4x4", "--images=40", "--steps=20",
        "--json", str(tmp_path / "out.json"),
    ])
    import keras

    model = keras.saving.load_model(model_dir / "model.keras")
    images = datasets.load("digits", verbose=0, splits=("val",)).val[:40]
    scores = evaluation.score(model, images, "4x4", seed=0)
    np.testing.assert_allclose(result["before"]["nll"], np.mean(scores["nll"][20:]), rtol=1e-4)
    assert np.shape(result["alpha"]) == (model.num_components, model.num_factors)
    assert result["fit_nll_after"] < result["fit_nll_before"]  # the fit half's NLL went down
    for row in (result["before"], result["after"]):
        assert 0 <= row["coverage_50"] <= row["coverage_90"] <= 1
    assert json.loads((tmp_path / "out.json").read_text())["held_out_images"] == 20


def test_chi2_components_on_data_drawn_from_the_mixture():
    # Images drawn from a two-component mixture: the distance under a component
    # drawn from its posterior is chi-squared(|M|) (about 1% above the 99th
    # percentile); under the most probable component (equal weights: always
    # component 0) half the images, those made by component 1, are far out.
    import numpy as np

    from dmfa_tf import MaskedFactorMixture

    spec = importlib.util.spec_from_file_location(
        "chi2_components", SCRIPT.parent / "chi2_components.py")
    chi2 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chi2)
    rng = np.random.default_rng(0)
    batch, n, rank = 2000, 16, 2
    loc = np.stack([np.zeros(n), np.full(n, 3.0)])[None].repeat(batch, 0)  # [B, 2, N]
    factors = rng.normal(scale=0.5, size=(1, 2, n, rank)).repeat(batch, 0)
    diag = rng.uniform(0.2, 0.5, size=(1, 2, n)).repeat(batch, 0)
    mask = np.zeros((batch, n))
    mask[:, :6] = -1  # absent: neither given nor scored, so the draws are unconditional
    dist = MaskedFactorMixture(
        np.zeros((batch, 2)), loc, factors, diag, mask)
    values = dist.sample(seed=[3, 4])  # [B, N]
    shares = chi2.chi2_tails(dist, values, rng)
    assert shares["posterior_draw"]["above_p99"] < 0.025
    assert shares["posterior_draw"]["below_p1"] < 0.025
    assert 0.4 < shares["most_probable"]["above_p99"] < 0.6


def test_colour_basis_change_of_variables_is_exact():
    # The opponent basis is a scaled rotation of each pixel: a full Gaussian,
    # rotation invariant, must score the same NLL and MSE in both bases once
    # converted to RGB units (a check of the Jacobian term and of the floor's
    # scaling); a diagonal Gaussian gains a lot on images whose three channels
    # are nearly equal.
    import numpy as np

    spec = importlib.util.spec_from_file_location(
        "colour_basis", SCRIPT.parent / "colour_basis.py")
    colour = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(colour)
    corners = np.array(np.meshgrid([0, 1], [0, 1], [0, 1])).reshape(3, -1).T.reshape(1, 2, 4, 3)
    rotated = colour.to_opponent(corners)
    assert rotated.min() >= 0.0 and rotated.max() <= 1.0
    np.testing.assert_allclose(colour.from_opponent(rotated), corners, atol=1e-6)
    rng = np.random.default_rng(0)
    grey = rng.uniform(0.2, 0.8, size=(500, 6, 6, 1))
    images = np.clip(grey + rng.normal(0, 0.01, size=(500, 6, 6, 3)), 0, 1).astype(np.float32)
    results = colour.compare(images[:400], images[400:], "3x3", floor=1e-4,
                             models=("full_gaussian", "diagonal_gaussian"))
    found = {(r["model"], r["basis"]): r for r in results}
    rgb, opp = found["full_gaussian", "rgb"], found["full_gaussian", "opponent"]
    assert abs(rgb["nll_mean"] - opp["nll_mean"]) < 1e-6 * abs(rgb["nll_mean"])
    assert abs(rgb["mse"] - opp["mse"]) < 1e-6 * rgb["mse"]
    # 27 missing values per image, 18 of them colour differences of variance
    # 1e-4 instead of the grey level's 0.03: tens of nats per image.
    gain = found["diagonal_gaussian", "rgb"]["nll_mean"] - found["diagonal_gaussian", "opponent"]["nll_mean"]
    assert gain > 20.0, gain


def test_gaussian_gap_terms_against_dense_references():
    # block_terms against SciPy's multivariate normal on a sub-block; compare()
    # on a tiny image against dense references: the Gaussian's "all" NLL is
    # the FullGaussian's own conditional NLL, the DMFA's is the dense NLL of
    # its most probable component (an orthonormal rotation changes neither),
    # and an RGB model's brightness marginal is that of its rotated component.
    import numpy as np
    from scipy import stats

    from dmfa_tf.baselines.gaussian import FullGaussian
    from dmfa_tf.core import colour

    spec = importlib.util.spec_from_file_location("gaussian_gap", SCRIPT.parent / "gaussian_gap.py")
    gap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gap)
    rng = np.random.default_rng(0)
    root = rng.normal(size=(9, 9))
    covariance = root @ root.T + 0.5 * np.eye(9)
    residual = rng.normal(size=9)
    index = np.array([1, 4, 5, 8])
    nll, half_log_det, mahalanobis, squared = gap.block_terms(covariance, residual, index)
    assert abs(squared - np.sum(residual[[1, 4, 5, 8]] ** 2)) < 1e-12
    block = covariance[np.ix_(index, index)]
    assert abs(nll + stats.multivariate_normal(np.zeros(4), block).logpdf(residual[index])) < 1e-10
    assert abs(half_log_det - 0.5 * np.linalg.slogdet(block)[1]) < 1e-10
    assert abs(mahalanobis - residual[index] @ np.linalg.solve(block, residual[index])) < 1e-10
    sets = gap.channel_sets(6, 3)
    assert [list(sets[k]) for k in ("all", "brightness", "colour")] == [
        [0, 1, 2, 3, 4, 5], [0, 3], [1, 2, 4, 5]]

    train = rng.uniform(size=(200, 2, 2, 3))
    train[..., 1:] = 0.7 * train[..., :1] + 0.3 * train[..., 1:]
    gaussian = FullGaussian.fit(train, regularization=1e-3)
    image = rng.uniform(size=12)
    mask = np.array([1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0])  # pixels 1 and 3 missing
    k_, n, l_ = 2, 12, 2
    params = {"logits": np.array([0.1, 0.7]), "loc": rng.uniform(size=(k_, n)),
              "factors": rng.normal(scale=0.2, size=(k_, n, l_)),
              "diag": rng.uniform(0.01, 0.05, size=(k_, n))}
    basis = np.asarray(colour.basis_matrix("opponent", 3), np.float64)
    out = gap.compare(gaussian, params, image, mask, basis, params_in_basis=False)
    missing = np.flatnonzero(mask == 0)
    reference = gaussian.predict_missing(image[None], mask[None])
    assert abs(out["all"]["gaussian"][0] + reference["log_prob"][0]) < 1e-8
    factors = params["factors"][1][missing]
    dense = stats.multivariate_normal(params["loc"][1][missing],
                                      factors @ factors.T + np.diag(params["diag"][1][missing]))
    assert abs(out["all"]["dmfa"][0] + dense.logpdf(image[missing])) < 1e-8
    assert abs(out["all"]["dmfa"][3] - np.sum((image[missing] - dense.mean) ** 2)) < 1e-10
    assert abs(out["all"]["gaussian"][3] - np.sum((image - reference["imputation"][0])[missing] ** 2)) < 1e-10
    # The brightness values' marginal, densely: rotate the RGB component.
    rotation = np.kron(np.eye(2), basis)
    rotated = stats.multivariate_normal(rotation @ params["loc"][1][missing],
                                        rotation @ dense.cov @ rotation.T)
    bright = stats.multivariate_normal(rotated.mean[[0, 3]], rotated.cov[np.ix_([0, 3], [0, 3])])
    assert abs(out["brightness"]["dmfa"][0] + bright.logpdf((rotation @ image[missing])[[0, 3]])) < 1e-8
    # A colour-basis model: the same parameters read as opponent values.
    inside = gap.compare(gaussian, params, image, mask, basis, params_in_basis=True)
    assert abs(inside["all"]["dmfa"][0] + dense.logpdf(rotation @ image[missing])) < 1e-8
    assert inside["colour"]["gaussian"] == out["colour"]["gaussian"]


def test_hole_colour_shrinkage_and_error_split_by_hand():
    # Hole values built in the opponent basis (rows (1,1,1)/√3, (1,-1,0)/√2,
    # (1,1,-2)/√6, written out here) and rotated to RGB: imputations that
    # halve each face's hole colour about a constant have slope 0.5 and
    # correlation 1; a per-image offset is all "constant", a zero-mean
    # alternating residual all "rest".
    import numpy as np

    spec = importlib.util.spec_from_file_location("hole_colour", SCRIPT.parent / "hole_colour.py")
    hole = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hole)
    q = np.array([[1 / 3**0.5] * 3, [1 / 2**0.5, -1 / 2**0.5, 0], [1 / 6**0.5, 1 / 6**0.5, -2 / 6**0.5]])
    rng = np.random.default_rng(0)
    y = rng.normal(size=(5, 2, 2, 3))  # 5 images of 2x2 pixels, opponent values
    mask = np.ones((5, 2, 2, 1))
    mask[:, 0] = 0  # the top row (2 pixels) is missing
    images = y @ q  # x = Qᵀ y, pixel by pixel
    c = np.array([0.1, -0.2, 0.3])
    shrunk = (0.5 * y + c) @ q
    fit = hole.shrinkage(*hole.hole_values(images, mask, shrunk))
    np.testing.assert_allclose(fit["slope"], 0.5, atol=1e-12)
    np.testing.assert_allclose(fit["intercept"], c, atol=1e-12)
    np.testing.assert_allclose(fit["correlation"], 1.0, atol=1e-12)
    # Per-image offset d_i: constant part 2 |d_i|² per image (P = 2), rest 0.
    d = rng.normal(size=(5, 3))
    offset = (y + d[:, None, None, :]) @ q
    split = hole.error_split(*hole.hole_values(images, mask, offset))
    np.testing.assert_allclose(split["colour"], [2 * np.mean((d[:, 1:] ** 2).sum(1)),
                                                 2 * np.mean((d[:, 1:] ** 2).sum(1)), 0], atol=1e-12)
    np.testing.assert_allclose(split["brightness"], [2 * np.mean(d[:, 0] ** 2)] * 2 + [0],
                               atol=1e-12)
    # Residual +e on one missing pixel and -e on the other: constant 0, rest 2 e² per channel.
    e = np.array([0.3, 0.4, 0.5])
    alternating = y.copy()
    alternating[:, 0, 0] -= e
    alternating[:, 0, 1] += e
    split = hole.error_split(*hole.hole_values(images, mask, alternating @ q))
    np.testing.assert_allclose(split["colour"], [2 * (0.16 + 0.25), 0, 2 * (0.16 + 0.25)],
                               atol=1e-12)
    np.testing.assert_allclose(split["brightness"], [2 * 0.09, 0, 2 * 0.09], atol=1e-12)


def test_lowrank_bound_recovers_an_exact_factor_model_and_its_kl():
    """The KL against a dense formula (inverse and slogdet); a covariance that
    is exactly rank R + diagonal is recovered at rank R (KL ~ 0), and fewer
    columns lose nats."""
    import numpy as np

    spec = importlib.util.spec_from_file_location("lowrank_bound", SCRIPT.parent / "lowrank_bound.py")
    bound = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bound)
    rng = np.random.default_rng(0)
    n, rank = 30, 4
    true_w = rng.normal(size=(n, rank))
    true_d = rng.uniform(0.1, 0.5, size=n)
    covariance = true_w @ true_w.T + np.diag(true_d)
    w, d = rng.normal(size=(n, 2)), rng.uniform(0.2, 1.0, size=n)
    model = w @ w.T + np.diag(d)
    want = 0.5 * (np.trace(np.linalg.inv(model) @ covariance) - n
                  + np.linalg.slogdet(model)[1] - np.linalg.slogdet(covariance)[1])
    np.testing.assert_allclose(bound.kl_divergence(covariance, w, d), want, rtol=1e-10)
    fitted = bound.fit_factor_analysis(covariance, rank, iterations=2000, tolerance=1e-12)
    assert bound.kl_divergence(covariance, *fitted) < 1e-4
    np.testing.assert_allclose(fitted[0] @ fitted[0].T + np.diag(fitted[1]), covariance, atol=1e-2)
    fewer = bound.kl_divergence(covariance, *bound.fit_factor_analysis(covariance, rank - 2))
    assert fewer > 1.0


def test_scale_prior_gaussian_on_a_known_scale_mixture():
    # Images drawn from c * N(mu, S), c = 0.3 or 3 with equal odds: the full
    # Gaussian's conditional with a fitted scale prior matches a dense
    # two-scale mixture by hand, gains NLL, and its chi-squared tails close in.
    import numpy as np
    from scipy import stats

    from dmfa_tf import evaluation
    from dmfa_tf.baselines import FullGaussian

    spec = importlib.util.spec_from_file_location(
        "scale_prior_gaussian", SCRIPT.parent / "scale_prior_gaussian.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(0)
    n = 36
    root = rng.normal(scale=0.3, size=(n, n)) / np.sqrt(n)

    def draw(count):
        c = rng.choice([0.3, 3.0], size=count)
        x = 0.5 + np.sqrt(c)[:, None] * (rng.normal(size=(count, n)) @ root.T + 0.05 * rng.normal(size=(count, n)))
        return x.reshape(count, 6, 6, 1)

    train, val, test = draw(4000), draw(1500), draw(1500)
    model = FullGaussian.fit(train, regularization=0.0)
    val_masks = evaluation.seeded_masks(np.clip(val, 0, 1), "3x3", seed=0)
    test_masks = evaluation.seeded_masks(np.clip(test, 0, 1), "3x3", seed=0)
    results = bench.compare(model, val, val_masks, test, test_masks)
    weights = dict(zip(np.round(results["prior"]["scales"], 3), results["prior"]["weights"]))
    # The training covariance is 1.65 S: the scales 0.3 / 1.65 and 3 / 1.65 (grid 2^(e/4)).
    assert sum(w for c, w in weights.items() if 0.14 < c < 0.24) > 0.4
    assert sum(w for c, w in weights.items() if 1.4 < c < 2.4) > 0.4
    assert results["with"]["nll_mean"] < results["without"]["nll_mean"] - 1.0
    assert results["with"]["above_p99"] < 0.03 < results["without"]["above_p99"]
    # One image by hand: the dense conditional, each scale's Gaussian, their mixture.
    x, m = test[0].reshape(-1), test_masks[0].reshape(-1)
    o, h = m == 1, m == 0
    cov = model.covariance
    mean = model.mean[h] + cov[np.ix_(h, o)] @ np.linalg.solve(cov[np.ix_(o, o)], x[o] - model.mean[o])
    block = cov[np.ix_(h, h)] - cov[np.ix_(h, o)] @ np.linalg.solve(cov[np.ix_(o, o)], cov[np.ix_(o, h)])
    want = np.logaddexp.reduce([
        np.log(w) + stats.multivariate_normal(mean, c * block).logpdf(x[h])
        for c, w in zip(results["prior"]["scales"], results["prior"]["weights"])
    ])
    lp, d2, missing = bench.scored(model, test[:1], test_masks[:1], 0.0, 0)
    got = bench.prior_log_prob(lp, d2, missing, results["prior"]["scales"], results["prior"]["weights"])
    np.testing.assert_allclose(got[0], want, rtol=1e-9)
