"""evaluate.py and the scoring it uses, against hand-computed metrics."""

import csv
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from dmfa_tf import evaluation, masks
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


def test_nothing_missing_gives_zero_errors_and_infinite_psnr():
    images = np.random.default_rng(1).uniform(size=(3, 8, 8, 1)).astype(np.float32)
    scores = evaluation.score(ConstantModel((8, 8, 1)), images, "dropout:0", seed=0)
    np.testing.assert_array_equal(scores["nll"], 0.0)
    np.testing.assert_array_equal(scores["squared_error"], 0.0)
    assert np.all(np.isinf(scores["psnr"]))
    np.testing.assert_allclose(scores["ssim"], 1.0, atol=1e-6)
    summary = evaluation.summarize(scores["psnr"])
    assert summary["count"] == 0 and summary["excluded"] == 3 and summary["mean"] is None


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


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    train_and_evaluate(
        TrainConfig(
            dataset="digits", epochs=1, max_train_images=256, max_test_images=32,
            output=str(folder / "digits"), workdir=str(folder / "runs"),
        ),
        verbose=0,
    )
    return str(folder / "digits")


def test_evaluate_end_to_end(tiny_model, tmp_path):
    import evaluate

    output = tmp_path / "out"
    result = evaluate.evaluate(evaluate.parse_args([
        f"--model={tiny_model}", "--compare", "diagonal", "--hole=3x3", "--limit=50",
        f"--output={output}", f"--mosaic={tmp_path / 'mosaic.png'}", "--mosaic-images=3",
        "--quiet",
    ]))
    assert result["images"] == 50 and result["mask"] == "3x3" and result["dataset"] == "digits"
    assert sorted(os.listdir(output)) == [
        "comparison.md", "per_image_diagonal_Gaussian.csv", "per_image_digits.csv", "summary.json",
    ]
    summary = json.loads((output / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result))
    rows = {}
    for name in ("digits", "diagonal_Gaussian"):
        with open(output / f"per_image_{name}.csv") as f:
            rows[name] = list(csv.DictReader(f))
        assert len(rows[name]) == 50
    # paired: the same masks for both models
    assert [r["missing"] for r in rows["digits"]] == [r["missing"] for r in rows["diagonal_Gaussian"]]
    assert all(r["missing"] == "9" for r in rows["digits"])
    nll = np.array([float(r["nll"]) for r in rows["digits"]])
    assert summary["models"]["digits"]["nll"]["mean"] == pytest.approx(nll.mean())
    assert summary["models"]["digits"]["nll"]["median"] == pytest.approx(np.median(nll))
    table = (output / "comparison.md").read_text()
    assert "| digits |" in table and "| diagonal Gaussian |" in table
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
    ],
)
def test_evaluate_errors_exit_2(tiny_model, tmp_path, shared_data, capsys, args, message):
    import evaluate

    args = [a.format(mnist=os.path.join(shared_data, "mnist"), model=tiny_model) for a in args]
    code = evaluate.main([f"--model={tiny_model}", f"--output={tmp_path}", "--quiet", "--limit=8"] + args)
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
