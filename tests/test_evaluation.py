"""evaluate.py and the scoring it uses, against hand-computed metrics."""

import csv
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import reference
from dmfa_tf import evaluation, masks
from dmfa_tf.core.distribution import MaskedFactorMixture, flatten_mask
from dmfa_tf.config import TrainConfig
from dmfa_tf.training import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ConstantModel:
    """Predicts 0.5 with variance 0.25 for every pixel, no factors."""

    def __init__(self, image_shape):
        self.image_shape = image_shape

    def __call__(self, inputs, training=False):
        batch = tf.shape(inputs["image"])[0]
        n = int(np.prod(self.image_shape))
        return {
            "logits": tf.zeros([batch, 1]),
            "loc": tf.fill([batch, 1, n], 0.5),
            "factors": tf.zeros([batch, 1, n, 1]),
            "diag": tf.fill([batch, 1, n], 0.25),
        }


class FixedMixture:
    """The same two-component mixture of factor analysers for every image."""

    def __init__(self, image_shape, seed=0):
        rng = np.random.default_rng(seed)
        n = int(np.prod(image_shape))
        self.image_shape = image_shape
        self.traces = 0
        self.params = {
            "logits": np.array([0.4, -0.3], np.float32),
            "loc": rng.uniform(0.2, 0.8, size=(2, n)).astype(np.float32),
            "factors": rng.uniform(-0.2, 0.2, size=(2, n, 3)).astype(np.float32),
            "diag": rng.uniform(0.01, 0.1, size=(2, n)).astype(np.float32),
        }

    def __call__(self, inputs, training=False):
        self.traces += 1  # inside `score`'s tf.function: once per trace
        batch = tf.shape(inputs["image"])[0]
        return {
            key: tf.tile(value[None], tf.concat([[batch], tf.ones([value.ndim], tf.int32)], 0))
            for key, value in self.params.items()
        }


def _gaussian_window(size, sigma=1.5):
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _ssim_reference(a, b, size):
    """SSIM with a Gaussian window, 'valid' positions, mean over positions and
    channels (Wang et al. 2004, K1 = 0.01, K2 = 0.03, peak 1)."""
    g = _gaussian_window(size)

    def blur(x):  # separable valid convolution of [H, W]
        rows = np.array([np.convolve(r, g, mode="valid") for r in x])
        return np.array([np.convolve(c, g, mode="valid") for c in rows.T]).T

    c1, c2 = 0.01**2, 0.03**2
    values = []
    for ch in range(a.shape[-1]):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)
        mx, my = blur(x), blur(y)
        sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        ssim = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
        values.append(ssim.mean())
    return float(np.mean(values))


@pytest.mark.parametrize("shape", [(16, 16, 1), (12, 14, 3), (8, 8, 1)])
def test_scores_hand_computed(shape):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(5,) + shape).astype(np.float32)
    spec = "5x6"
    scores = evaluation.score(ConstantModel(shape), images, spec, seed=3, batch_size=2)
    for i, image in enumerate(images):
        mask = masks.parse(spec)(shape[0], shape[1], [3, i]).numpy()
        missing = np.broadcast_to(mask == 0, shape)
        x = image[missing].astype(np.float64)
        nll = np.sum(0.5 * np.log(2 * np.pi * 0.25) + (x - 0.5) ** 2 / (2 * 0.25))
        assert scores["nll"][i] == pytest.approx(nll, rel=1e-5)
        assert scores["squared_error"][i] == pytest.approx(np.sum((x - 0.5) ** 2), rel=1e-5)
        assert scores["missing"][i] == missing.sum() == 30 * shape[2]
        inpainted = np.where(missing, np.float32(0.5), image)
        mse = np.mean((inpainted.astype(np.float64) - image) ** 2)
        assert scores["psnr"][i] == pytest.approx(10 * np.log10(1.0 / mse), rel=1e-4)
        size = min(11, shape[0], shape[1])
        assert scores["ssim"][i] == pytest.approx(_ssim_reference(inpainted, image, size), abs=2e-4)


def test_squared_errors_of_the_imputation_and_of_the_mixture_mean():
    # The most probable imputation is component 0's mean (logit 0.4 > -0.3);
    # the mixture mean weighs both by softmax(logits).
    shape = (6, 5, 2)
    model = FixedMixture(shape, seed=4)
    images = np.random.default_rng(2).uniform(size=(3,) + shape).astype(np.float32)
    scores = evaluation.score(model, images, "3x4", seed=1, batch_size=2)
    logits = model.params["logits"].astype(np.float64)
    weights = np.exp(logits) / np.exp(logits).sum()
    loc = model.params["loc"].astype(np.float64)  # [2, N]
    for i, image in enumerate(images):
        mask = masks.parse("3x4")(shape[0], shape[1], [1, i]).numpy()
        missing = np.broadcast_to(mask == 0, shape).reshape(-1)
        x = image.reshape(-1).astype(np.float64)[missing]
        best = loc[0, missing]
        mean = weights @ loc[:, missing]
        assert scores["squared_error"][i] == pytest.approx(np.sum((x - best) ** 2), rel=1e-5)
        assert scores["squared_error_mixture_mean"][i] == pytest.approx(
            np.sum((x - mean) ** 2), rel=1e-5
        )
    assert not np.allclose(scores["squared_error"], scores["squared_error_mixture_mean"])


def test_nothing_missing_gives_zero_errors_and_infinite_psnr():
    images = np.random.default_rng(1).uniform(size=(3, 8, 8, 1)).astype(np.float32)
    scores = evaluation.score(ConstantModel((8, 8, 1)), images, "dropout:0", seed=0)
    np.testing.assert_array_equal(scores["nll"], 0.0)
    np.testing.assert_array_equal(scores["squared_error"], 0.0)
    assert np.all(np.isinf(scores["psnr"]))
    np.testing.assert_allclose(scores["ssim"], 1.0, atol=1e-6)
    summary = evaluation.summarize(scores["psnr"])
    assert summary["count"] == 0 and summary["excluded"] == 3 and summary["mean"] is None


def test_marginal_cdf_matches_scipy_mixture():
    rng = np.random.default_rng(3)
    batch, k, n, l = 4, 3, 7, 2
    params = dict(
        logits=rng.normal(size=(batch, k)),
        loc=rng.uniform(size=(batch, k, n)),
        factors=rng.normal(size=(batch, k, n, l)) * 0.2,
        diag=rng.uniform(0.001, 0.05, size=(batch, k, n)),
    )
    x = rng.uniform(size=(batch, n))
    expected = reference.marginal_cdf(**params, x=x)
    dist = MaskedFactorMixture(**params, mask=np.zeros((batch, n)))
    np.testing.assert_allclose(evaluation.marginal_cdf(dist, x).numpy(), expected, rtol=1e-10, atol=1e-12)
    dist32 = MaskedFactorMixture(**{key: v.astype(np.float32) for key, v in params.items()},
                                 mask=np.zeros((batch, n), np.float32))
    np.testing.assert_allclose(evaluation.marginal_cdf(dist32, x).numpy(), expected, atol=2e-6)


def test_calibration_against_references():
    """PIT, coverage, deciles and the chi-squared tails against scipy and the
    dense Mahalanobis distance under the most probable component."""
    shape = (6, 6, 1)
    model = FixedMixture(shape)
    rng = np.random.default_rng(4)
    images = rng.uniform(size=(9,) + shape).astype(np.float32)
    spec = "dropout:0.4|3x3*1"
    scores = evaluation.score(model, images, spec, seed=2, batch_size=4)
    assert model.traces == 1  # the last, smaller batch is padded: traced once
    mask = np.stack([
        flatten_mask(masks.parse(spec)(6, 6, [2, i])[None], 36).numpy()[0] for i in range(9)
    ])
    x = images.reshape(9, -1)
    tiled = {key: np.broadcast_to(v, (9,) + v.shape) for key, v in model.params.items()}
    pit = reference.marginal_cdf(**tiled, x=x)[mask == 0]
    best = int(np.argmax(model.params["logits"]))
    distance = reference.component_mahalanobis(tiled["loc"], tiled["factors"], tiled["diag"], mask, x)[:, best]
    np.testing.assert_allclose(scores["mahalanobis"], distance, rtol=1e-4)
    np.testing.assert_array_equal(scores["missing"], (mask == 0).sum(1))

    result = evaluation.calibration(scores)
    assert result["pixels"] == pit.size == (mask == 0).sum()
    assert result["coverage_50"] == pytest.approx(np.mean((pit >= 0.25) & (pit <= 0.75)))
    assert result["coverage_90"] == pytest.approx(np.mean((pit >= 0.05) & (pit <= 0.95)))
    deciles = np.histogram(pit, bins=np.linspace(0, 1, 11))[0] / pit.size
    assert result["pit_deciles"] == pytest.approx(deciles.tolist())
    dof = (mask == 0).sum(1)
    assert result["mahalanobis_images"] == 9
    assert result["mahalanobis_below_p1"] == pytest.approx(np.mean(distance < stats.chi2.ppf(0.01, dof)))
    assert result["mahalanobis_above_p99"] == pytest.approx(np.mean(distance > stats.chi2.ppf(0.99, dof)))


def test_calibration_of_a_calibrated_model_is_nominal():
    """Images drawn from the model itself: coverage and deciles near nominal."""
    shape = (8, 8, 1)
    model = FixedMixture(shape, seed=1)
    n = 400
    dist = MaskedFactorMixture(**{k: np.broadcast_to(v, (n,) + v.shape) for k, v in model.params.items()},
                               mask=np.zeros((n, 64), np.float32))
    draws = dist.sample(seed=[3, 4]).numpy().reshape((n,) + shape)
    # scored as drawn (values outside [0, 1] are fine for the density; the
    # pipeline checks images, so score the scaled copy against a scaled model)
    low, high = draws.min(), draws.max()
    scale = high - low
    model.params["loc"] = (model.params["loc"] - low) / scale
    model.params["factors"] = model.params["factors"] / scale
    model.params["diag"] = model.params["diag"] / scale**2
    scores = evaluation.score(model, (draws - low) / scale, "dropout:0.5", seed=0, batch_size=200)
    result = evaluation.calibration(scores)
    assert result["coverage_50"] == pytest.approx(0.5, abs=0.03)
    assert result["coverage_90"] == pytest.approx(0.9, abs=0.02)
    np.testing.assert_allclose(result["pit_deciles"], 0.1, atol=0.02)


class BranchingModel(ConstantModel):
    """Python control flow on a tensor: traced only with autograph."""

    def __call__(self, inputs, training=False):
        params = super().__call__(inputs, training)
        if tf.reduce_mean(inputs["image"]) > 2.0:  # never true
            params["loc"] = params["loc"] * 0.0
        return params


def test_models_that_need_autograph_are_scored():
    images = np.random.default_rng(6).uniform(size=(3, 8, 8, 1)).astype(np.float32)
    expected = evaluation.score(ConstantModel((8, 8, 1)), images, "3x3", seed=1)
    got = evaluation.score(BranchingModel((8, 8, 1)), images, "3x3", seed=1)
    np.testing.assert_array_equal(got["nll"], expected["nll"])


def test_nothing_missing_has_no_calibration_pixels():
    images = np.random.default_rng(1).uniform(size=(3, 8, 8, 1)).astype(np.float32)
    result = evaluation.calibration(evaluation.score(ConstantModel((8, 8, 1)), images, "dropout:0"))
    assert result["pixels"] == 0 and result["coverage_50"] is None and result["mahalanobis_images"] == 0


@pytest.mark.parametrize("shape, window", [((16, 16, 1), 11), ((12, 14, 3), 11), ((8, 8, 1), 8)])
def test_ssim_equals_tf_image_ssim(shape, window):
    rng = np.random.default_rng(5)
    a = rng.uniform(size=(4,) + shape).astype(np.float32)
    b = np.clip(a + rng.normal(scale=0.2, size=a.shape), 0, 1).astype(np.float32)
    expected = tf.image.ssim(a, b, max_val=1.0, filter_size=window).numpy()
    np.testing.assert_allclose(evaluation.ssim(tf.constant(a), tf.constant(b), window).numpy(), expected, atol=1e-6)


def test_summarize_hand_computed():
    summary = evaluation.summarize([1.0, 2.0, 4.0, np.inf])
    assert summary == {
        "count": 3, "excluded": 1, "mean": 7 / 3, "std": pytest.approx(np.std([1, 2, 4])),
        "median": 2.0, "min": 1.0, "max": 4.0,
    }


def test_model_and_data_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"model takes images of shape \(8, 8, 1\).*\(16, 16, 1\)"):
        evaluation.score(ConstantModel((8, 8, 1)), np.zeros((2, 16, 16, 1), np.float32), "4x4")


def test_model_spec_parsing():
    spec = evaluation.parse_model_spec("saved_models/mnist_mfa:exact")
    assert (spec.path, spec.conditional, spec.label) == ("saved_models/mnist_mfa", "exact", "mnist_mfa (exact)")
    spec = evaluation.parse_model_spec("saved_models/mnist")
    assert (spec.path, spec.conditional, spec.label) == ("saved_models/mnist", None, "mnist")
    assert evaluation.parse_model_spec("diagonal").label == "diagonal Gaussian"
    assert evaluation.parse_model_spec("gaussian").label == "full Gaussian"
    spec = evaluation.parse_model_spec("gaussian:1e-3")
    assert (spec.path, spec.option, spec.label) == ("gaussian", 1e-3, "full Gaussian (reg. 0.001)")
    assert evaluation.parse_model_spec("knn").label == "KNN (k=5)"
    spec = evaluation.parse_model_spec("knn:10000")
    assert (spec.option, spec.label) == (10000, "KNN (k=5, first 10,000 images)")


@pytest.mark.parametrize(
    "text, message",
    [
        ("gaussian:abc", r"'gaussian:abc': 'gaussian:R' needs a regularisation R > 0"),
        ("gaussian:0", r"'gaussian:0'"),
        ("knn:0", r"'knn:0': 'knn:N' needs a whole number N >= 1"),
        ("knn:1.5", r"'knn:1.5'"),
        ("diagonal:2", r"'diagonal:2': the diagonal baseline takes no option"),
    ],
)
def test_model_spec_bad_options(text, message):
    with pytest.raises(ValueError, match=message):
        evaluation.parse_model_spec(text)


def test_baselines_need_training_images():
    for name in ("diagonal", "gaussian", "knn"):
        with pytest.raises(ValueError, match=f"'{name}' baseline is fitted to the training split, and the data set 'x'"):
            evaluation.parse_model_spec(name).load(train_images=np.zeros((0, 4, 4, 1)), dataset="x")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    train_and_evaluate(
        TrainConfig.preset(
            "tiny", epochs=1, max_test_images=32,
            output=str(folder / "digits"), workdir=str(folder / "runs"),
        ),
        verbose=0,
    )
    return str(folder / "digits")


def test_evaluate_end_to_end(tiny_model, tmp_path):
    import evaluate

    output = tmp_path / "out"
    result = evaluate.evaluate(evaluate.parse_args([
        f"--model={tiny_model}", "--compare", "diagonal", "gaussian", "knn", "--hole=3x3", "--limit=50",
        f"--output={output}", f"--mosaic={tmp_path / 'mosaic.png'}", "--mosaic-images=3",
        "--mosaic-baseline=gaussian",
        "--quiet",
    ]))
    assert result["images"] == 50 and result["mask"] == "3x3" and result["dataset"] == "digits"
    assert sorted(os.listdir(output)) == [
        "comparison.md", "per_image_KNN_k_5.csv", "per_image_diagonal_Gaussian.csv",
        "per_image_digits.csv", "per_image_full_Gaussian.csv", "summary.json",
    ]
    summary = json.loads((output / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result))
    rows = {}
    for name in ("digits", "diagonal_Gaussian", "full_Gaussian", "KNN_k_5"):
        with open(output / f"per_image_{name}.csv") as f:
            rows[name] = list(csv.DictReader(f))
        assert len(rows[name]) == 50
        # paired: the same masks for every model
        assert [r["missing"] for r in rows[name]] == [r["missing"] for r in rows["digits"]]
    assert all(r["missing"] == "9" for r in rows["digits"])
    assert all(float(r["mahalanobis"]) > 0 for r in rows["full_Gaussian"])
    # KNN has no density: empty cells, null summaries, n/a in the table
    assert all(r["nll"] == "" and r["mahalanobis"] == "" and float(r["ssim"]) > 0 for r in rows["KNN_k_5"])
    assert all(r["squared_error_mixture_mean"] == "" for r in rows["KNN_k_5"])
    # one Gaussian: its mean is its imputation
    assert all(r["squared_error_mixture_mean"] == r["squared_error"] for r in rows["full_Gaussian"])
    knn = summary["models"]["KNN (k=5)"]
    assert knn["nll"]["mean"] is None and knn["calibration"] is None and knn["squared_error"]["count"] == 50
    for label in ("digits", "diagonal Gaussian", "full Gaussian"):
        calibration = summary["models"][label]["calibration"]
        assert calibration["pixels"] == 450 and calibration["mahalanobis_images"] == 50
        assert 0 <= calibration["coverage_50"] <= calibration["coverage_90"] <= 1
        assert sum(calibration["pit_deciles"]) == pytest.approx(1.0)
    nll = np.array([float(r["nll"]) for r in rows["digits"]])
    assert summary["models"]["digits"]["nll"]["mean"] == pytest.approx(nll.mean())
    assert summary["models"]["digits"]["nll"]["median"] == pytest.approx(np.median(nll))
    table = (output / "comparison.md").read_text()
    assert "| digits |" in table and "| diagonal Gaussian |" in table
    assert "| KNN (k=5) | n/a | n/a | " in table and "| KNN (k=5) | n/a | n/a | n/a | n/a | n/a |" in table
    assert "50% interval coverage" in table
    with open(tmp_path / "mosaic.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_evaluate_scores_match_training_run(tiny_model, tmp_path):
    """The training driver and evaluate.py score the same masks the same way."""
    import evaluate

    metrics = json.loads(open(os.path.join(tiny_model, "metrics.json")).read())
    result = evaluate.evaluate(evaluate.parse_args([
        f"--model={tiny_model}", "--limit=32", f"--output={tmp_path}", "--quiet",
    ]))
    assert result["mask"] == "4x4"
    assert result["models"]["digits"]["nll"]["mean"] == pytest.approx(metrics["nll"]["mean"], rel=1e-5)
    assert result["models"]["digits"]["squared_error"]["mean"] == pytest.approx(metrics["mse"]["mean"], rel=1e-5)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset=mnist", "--data-dir={mnist}"], r"model takes images of shape \(8, 8, 1\)"),
        (["--hole=9x9"], "9x9 hole does not fit in a 8x8 image"),
        (["--compare", "{model}:exact"], "not an MFA model"),
        (["--compare", "nosuchmodel"], r"No saved model at 'nosuchmodel', and it is not a baseline name \(diagonal, gaussian, knn\)"),
        (["--compare", "knn:zero"], r"'knn:zero': 'knn:N' needs a whole number"),
    ],
)
def test_evaluate_errors_exit_2(tiny_model, tmp_path, shared_data, capsys, args, message):
    import evaluate

    args = [a.format(mnist=os.path.join(shared_data, "mnist"), model=tiny_model) for a in args]
    code = evaluate.main([f"--model={tiny_model}", f"--output={tmp_path}", "--quiet", "--limit=8"] + args)
    assert code == 2
    assert re.search(message, capsys.readouterr().err)


def test_corrupt_model_file_is_named_as_such(tiny_model, tmp_path, capsys):
    """A truncated or garbage model.keras is reported as not a Keras file, not as
    missing (Keras's own message is "File not found")."""
    import shutil

    import evaluate

    folder = tmp_path / "broken"
    shutil.copytree(tiny_model, folder)
    data = (folder / "model.keras").read_bytes()
    (folder / "model.keras").write_bytes(data[: len(data) // 3])  # a killed copy
    code = evaluate.main([f"--model={folder}", f"--output={tmp_path / 'out'}", "--quiet", "--limit=8"])
    assert code == 2
    err = capsys.readouterr().err
    assert "is not a Keras model file" in err and "truncated or corrupt" in err
    assert "File not found" not in err
