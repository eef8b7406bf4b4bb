"""Tables: reading, standardising, baselines, the table model, training, the
impute command and the rows SavedModel, against independent float64
references (tests/reference.py, SciPy) and hand-computed values."""

import json
import os
import warnings

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import evaluate
import impute
import train
from dmfa_tf import tabular
from dmfa_tf.baselines import tabular as tabular_baselines
from dmfa_tf.data import tables
from dmfa_tf.serving import tabular as tabular_serving
from dmfa_tf.config import TrainConfig
from dmfa_tf.models import build_model
from tests import reference

# === Reading and preparing tables ===


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def test_read_csv_reads_missing_cells_as_nan(tmp_path):
    path = _write(tmp_path / "t.csv", "a,b,c\n1,,3\nNA,2.5,nan\n-1e3, ? ,7\n")
    table = tables.read_csv(path)
    assert table.columns == ["a", "b", "c"]
    expected = np.array([[1, np.nan, 3], [np.nan, 2.5, np.nan], [-1000, np.nan, 7]])
    np.testing.assert_array_equal(table.values, expected)
    assert table.missing_share == pytest.approx(4 / 9)


def test_read_csv_names_non_numeric_columns_and_bad_shapes(tmp_path):
    path = _write(tmp_path / "t.csv", "id,x,colour\nA7,1,red\nB2,2,blue\n")
    with pytest.raises(ValueError, match=r"'id' \(line 2: 'A7'\).*'colour' \(line 2: 'red'\)"):
        tables.read_csv(path)
    path = _write(tmp_path / "short.csv", "x,y\n1,2\n3\n")
    with pytest.raises(ValueError, match="line 3 has 1 cells; the header has 2"):
        tables.read_csv(path)
    with pytest.raises(ValueError, match="header and no rows"):
        tables.read_csv(_write(tmp_path / "h.csv", "x,y\n"))
    with pytest.raises(ValueError, match="infinite"):
        tables.read_csv(_write(tmp_path / "inf.csv", "x,y\n1,inf\n"))
    with pytest.raises(FileNotFoundError):
        tables.read_csv(str(tmp_path / "nothing.csv"))


def test_standardizer_ignores_missing_cells():
    values = np.array([[1.0, 5.0, 2.0], [3.0, np.nan, 2.0], [np.nan, 9.0, 2.0]])
    s = tables.Standardizer.fit(values)
    np.testing.assert_allclose(s.mean, [2.0, 7.0, 2.0])
    np.testing.assert_allclose(s.scale, [1.0, 2.0, 1.0])  # constant column: scale 1
    np.testing.assert_allclose(s.inverse(s.transform(values)), values)
    with pytest.raises(ValueError, match=r"Columns \[1\] have no observed value"):
        tables.Standardizer.fit(np.array([[1.0, np.nan], [2.0, np.nan]]))


def test_split_rows_is_seeded_disjoint_and_complete():
    train_rows, val, test = tables.split_rows(150, seed=3)
    assert (len(train_rows), len(val), len(test)) == (90, 30, 30)
    joined = np.concatenate([train_rows, val, test])
    np.testing.assert_array_equal(np.sort(joined), np.arange(150))
    again = tables.split_rows(150, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train_rows, val, test), again))
    assert not np.array_equal(tables.split_rows(150, seed=4)[2], test)
    with pytest.raises(ValueError, match="too few"):
        tables.split_rows(3, seed=0)


def test_mcar_mask_rate_and_absent_cells():
    values = np.zeros((2000, 10))
    values[0, 0] = np.nan
    mask = tables.mcar_mask(values, 0.2, seed=(1, 2))
    assert mask[0, 0] == -1
    assert set(np.unique(mask)) == {-1.0, 0.0, 1.0}
    assert np.mean(mask == 0) == pytest.approx(0.2, abs=0.01)
    np.testing.assert_array_equal(mask, tables.mcar_mask(values, 0.2, seed=(1, 2)))


# === Baselines against SciPy ===


def _correlated(n, seed=0):
    rng = np.random.default_rng(seed)
    cov = np.array([[1.0, 0.8, 0.2], [0.8, 1.0, 0.5], [0.2, 0.5, 1.0]])
    return rng.multivariate_normal(np.zeros(3), cov, size=n)


def test_gaussian_baseline_is_the_exact_conditional():
    train_rows = _correlated(500)
    model = tabular_baselines.make("gaussian", train_rows, regularization=1e-3)
    mean = train_rows.mean(axis=0)
    cov = np.cov(train_rows.T, bias=True) + 1e-3 * np.eye(3)
    x = np.array([[0.5, -1.0, 2.0], [1.0, 0.2, -0.3], [0.1, 0.1, 0.1]])
    mask = np.array([[1, 0, 0], [0, 1, -1], [0, 0, 0]], np.float32)
    prediction = model.predict(x, mask)
    for b in range(3):
        h, cond_mean, cond_cov, log_prob, cdf, _ = reference.gaussian_conditional(mean, cov, x[b], mask[b])
        np.testing.assert_allclose(prediction["mean"][b, h], cond_mean, rtol=1e-8)
        np.testing.assert_allclose(prediction["cdf"][b, h], cdf, rtol=1e-8)
        assert prediction["log_prob"][b] == pytest.approx(log_prob, rel=1e-8)


def test_mean_baseline_and_scores_by_hand():
    train_rows = np.array([[0.0, 1.0], [2.0, 3.0]])
    model = tabular_baselines.make("mean", train_rows, regularization=0.0)
    x = np.array([[3.0, 2.0]])
    mask = np.array([[0.0, 1.0]], np.float32)
    prediction = model.predict(x, mask)
    # column 0: mean 1, variance 1
    assert prediction["log_prob"][0] == pytest.approx(stats.norm.logpdf(3.0, 1.0, 1.0))
    scores = tabular.score_predictions(prediction, x, mask, scale=np.array([10.0, 1.0]))
    assert scores["rmse"] == pytest.approx(20.0)  # (1 - 3) * 10
    assert scores["mae"] == pytest.approx(20.0)
    assert scores["rmse_std"] == pytest.approx(2.0)
    assert scores["nll_per_cell"] == pytest.approx(-stats.norm.logpdf(3.0, 1.0, 1.0))
    # Phi(2) = 0.977: outside the central 90% interval, and the 50% one
    assert scores["coverage_90"] == 0.0 and scores["coverage_50"] == 0.0
    assert scores["cells"] == 1


def test_knn_and_iterative_baselines_impute_like_scikit_learn():
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer, KNNImputer

    train_rows = _correlated(200)
    x = _correlated(20, seed=1)
    mask = tables.mcar_mask(x, 0.3, seed=0)
    hidden = np.where(mask == 1, x, np.nan)
    knn = tabular_baselines.make("knn", train_rows).predict(x, mask)["mean"]
    np.testing.assert_allclose(knn, KNNImputer(n_neighbors=5).fit(train_rows).transform(hidden))
    iterative = tabular_baselines.make("iterative", train_rows, seed=0).predict(x, mask)["mean"]
    # Fitted to complete rows alone, scikit-learn's imputer stops after one
    # round; ours learns from a copy with hidden cells and is closer to the truth.
    plain = IterativeImputer(max_iter=10, random_state=0).fit(train_rows).transform(hidden)
    scored = mask == 0
    assert np.mean((iterative - x)[scored] ** 2) < np.mean((plain - x)[scored] ** 2)
    np.testing.assert_array_equal(iterative[mask == 1], x[mask == 1])
    with pytest.raises(ValueError, match="Unknown table baseline 'forest'"):
        tabular_baselines.make("forest", train_rows)


# === The table model against a dense float64 mixture ===


@pytest.fixture(scope="module")
def random_table_model():
    keras_model = build_model(
        (1, 5, 1), architecture="tabular", components=2, factors=2, width=16, blocks=1,
        bounded_inputs=False,
    )
    rng = np.random.default_rng(0)
    keras_model.set_weights([rng.normal(0, 0.3, w.shape) for w in keras_model.get_weights()])
    standardizer = tables.Standardizer(np.array([1.0, -2.0, 0.0, 10.0, 0.5]),
                                       np.array([2.0, 0.5, 1.0, 4.0, 0.1]))
    return tabular.TabularModel(keras_model, list("abcde"), standardizer)


def test_table_model_density_and_moments_match_a_dense_mixture(random_table_model):
    model = random_table_model
    rng = np.random.default_rng(1)
    rows = model.standardizer.inverse(rng.normal(size=(6, 5)))
    mask = np.array([[1, 0, 1, 0, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 0],
                     [1, -1, 0, 1, 1], [1, 1, 1, 1, 1], [0, 1, -1, 0, 1]], np.float32)
    params, std, _ = model.parameters(rows, mask)
    expected = reference.mixture_log_prob(
        params["logits"], params["loc"], params["factors"], params["diag"], mask, std
    ) - (mask == 0) @ np.log(model.standardizer.scale)
    np.testing.assert_allclose(model.log_prob(rows, mask), expected, rtol=1e-5, atol=1e-5)
    # predict: NaN cells missing; per-cell mean and sd of the dense mixture.
    hidden = np.where(mask == 1, rows, np.nan)
    prediction = model.predict(hidden)
    params, _, _ = model.parameters(hidden)
    for b in range(len(rows)):
        mean, cov = reference.mixture_moments(
            params["logits"][b], params["loc"][b], params["factors"][b], params["diag"][b])
        missing = mask[b] != 1
        np.testing.assert_allclose(
            prediction["imputation"][b, missing],
            model.standardizer.inverse(mean)[missing], rtol=1e-5)
        np.testing.assert_allclose(
            prediction["sd"][b, missing],
            (np.sqrt(np.diag(cov)) * model.standardizer.scale)[missing], rtol=1e-5)
        np.testing.assert_array_equal(prediction["imputation"][b, ~missing], rows[b, ~missing])
        assert np.all(prediction["sd"][b, ~missing] == 0)


def test_table_model_samples_keep_observed_cells(random_table_model):
    model = random_table_model
    rows = np.array([[1.0, np.nan, 0.5, np.nan, 0.4]] * 2000)
    draws = model.sample(rows, 1, seed=(3, 4))[0]
    np.testing.assert_array_equal(draws[:, [0, 2, 4]], rows[:, [0, 2, 4]])
    prediction = model.predict(rows[:1])
    # Monte Carlo: mean and sd of the draws against the exact moments.
    np.testing.assert_allclose(draws[:, [1, 3]].mean(axis=0), prediction["imputation"][0, [1, 3]],
                               atol=4 * prediction["sd"][0, [1, 3]].max() / np.sqrt(2000))
    np.testing.assert_allclose(draws[:, [1, 3]].std(axis=0), prediction["sd"][0, [1, 3]], rtol=0.08)
    np.testing.assert_array_equal(model.sample(rows[:3], 2, seed=(3, 4)),
                                  model.sample(rows[:3], 2, seed=(3, 4)))


def test_table_model_rejects_bad_rows(random_table_model):
    model = random_table_model
    with pytest.raises(ValueError, match=r"Rows must be \[n, 5\]"):
        model.predict(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="infinite"):
        model.predict(np.array([[np.inf, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="needs values at the scored cells"):
        model.log_prob(np.full((1, 5), np.nan), np.zeros((1, 5)))
    with pytest.raises(ValueError, match="only 1"):
        model.log_prob(np.zeros((1, 5)), np.full((1, 5), 2.0))


# === Configuration ===


def test_table_settings_are_checked(tmp_path):
    config = TrainConfig(dataset="iris").resolved()
    assert (config.architecture, config.mask, config.components, config.factors) == (
        "tabular", "dropout:0.2", 3, 4)
    assert (config.val_fraction, config.test_fraction) == (0.2, 0.2)
    assert TrainConfig(dataset="digits").resolved().components == 1
    with pytest.raises(ValueError, match="--hole applies to images, not to the table iris"):
        TrainConfig(dataset="iris", hole="2x2").resolved()
    with pytest.raises(ValueError, match="--model=mfa applies to images"):
        TrainConfig(dataset="wine", model="mfa").resolved()
    with pytest.raises(ValueError, match="--val-fraction applies to tables, not to digits"):
        TrainConfig(dataset="digits", val_fraction=0.1).resolved()
    with pytest.raises(ValueError, match="`test_fraction` must be in"):
        TrainConfig(dataset="iris", test_fraction=1.5).resolved()
    with pytest.raises(ValueError, match="Tables take MCAR masks"):
        tabular.mcar_rate("4x4")
    with pytest.raises(ValueError, match="no validation rows.*--select=last"):
        tabular.train_and_evaluate(TrainConfig(
            dataset="iris", val_fraction=0.0, output=str(tmp_path / "m"),
            workdir=str(tmp_path / "r")), verbose=0)
    assert not os.path.exists(tmp_path / "m")


# === Training, evaluate.py, impute.py and the SavedModel ===


_IRIS_WARNINGS = []  # what training the fixture's model warned


@pytest.fixture(scope="module")
def trained_iris(tmp_path_factory):
    folder = tmp_path_factory.mktemp("iris")
    config = TrainConfig(
        dataset="iris", epochs=2, width=32, output=str(folder / "model"),
        workdir=str(folder / "run"),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = tabular.train_and_evaluate(config, verbose=0)
    _IRIS_WARNINGS[:] = [str(w.message) for w in caught]
    return str(folder / "model"), metrics


def test_training_on_iris_writes_a_model_that_beats_the_column_mean(trained_iris):
    path, metrics = trained_iris
    # The finite validation stream states its size: Keras's "ran out of data" is not raised.
    assert not [w for w in _IRIS_WARNINGS if "ran out of data" in w]
    assert sorted(os.listdir(path)) == ["config.json", "metrics.json", "model.keras", "table.json"]
    assert metrics["rows"] == {"train": 90, "val": 30, "test": 30}
    scores = metrics["scores"]
    assert scores["DMFA"]["nll_per_cell"] < scores["column mean"]["nll_per_cell"] - 0.3
    assert scores["DMFA"]["rmse"] < scores["column mean"]["rmse"]
    model = tabular.TabularModel.load(path)
    assert model.columns == tables.load_table("iris").columns


def test_evaluate_py_scores_a_table_model(trained_iris, tmp_path):
    path, metrics = trained_iris
    results = evaluate.evaluate(evaluate.parse_args([
        f"--model={path}", "--compare", "mean", "knn", "iterative", "gaussian",
        f"--output={tmp_path}",
    ]))
    assert set(results) == {"DMFA", "column mean", "KNNImputer (k=5)", "IterativeImputer",
                            "full Gaussian"}
    # The same seeded masks as training's own test scores.
    assert results["DMFA"]["nll_per_cell"] == pytest.approx(metrics["scores"]["DMFA"]["nll_per_cell"])
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["rows"] == 30 and summary["repeats"] == tabular.TEST_REPEATS
    with pytest.raises(ValueError, match="compares with"):
        evaluate.evaluate(evaluate.parse_args([f"--model={path}", "--compare", "diagonal"]))


def test_impute_py_fills_a_csv_and_writes_multiple_imputations(trained_iris, tmp_path):
    path, _ = trained_iris
    model = tabular.TabularModel.load(path)
    columns = model.columns[::-1]  # another column order than the model's
    rows = np.array([[0.2, 1.4, np.nan, 5.1], [np.nan, np.nan, 3.0, 6.0], [1.8, 5.1, 3.0, 5.9]])
    text = ",".join(columns) + "\n" + "\n".join(
        ",".join("" if np.isnan(v) else str(v) for v in row) for row in rows)
    source = _write(tmp_path / "in.csv", text + "\n")
    out = str(tmp_path / "out.csv")
    assert impute.main([f"--model={path}", f"--input={source}", f"--output={out}",
                        "--num-imputations=4", "--seed=1"]) == 0
    completed = tables.read_csv(out)
    assert completed.columns == columns + [f"{c}_sd" for c in columns]
    values, sd = completed.values[:, :4], completed.values[:, 4:]
    known = ~np.isnan(rows)
    np.testing.assert_allclose(values[known], rows[known])
    assert np.all(sd[known] == 0) and np.all(sd[~known] > 0)
    expected = model.predict(rows[:, ::-1])
    np.testing.assert_allclose(values[:, ::-1], expected["imputation"], rtol=1e-5)
    draws = tables.read_csv(str(tmp_path / "out.imputations.csv"))
    assert draws.columns == ["row", "imputation"] + columns
    assert len(draws) == 12
    np.testing.assert_array_equal(draws.values[:, 0], np.repeat([0, 1, 2], 4))
    np.testing.assert_array_equal(draws.values[:, 1], np.tile([1, 2, 3, 4], 3))
    np.testing.assert_allclose(draws.values[:, 2:][np.repeat(known, 4, axis=0)],
                               np.repeat(rows, 4, axis=0)[np.repeat(known, 4, axis=0)])
    assert np.isfinite(draws.values).all()
    # Wrong columns: named, and nothing written.
    bad = _write(tmp_path / "bad.csv", "a,b\n1,2\n")
    assert impute.main([f"--model={path}", f"--input={bad}", f"--output={tmp_path / 'x.csv'}"]) == 2
    assert not os.path.exists(tmp_path / "x.csv")


def test_train_py_on_a_csv_with_missing_cells(tmp_path):
    rng = np.random.default_rng(0)
    values = _correlated(120) * [1.0, 10.0, 0.1] + [0.0, 100.0, 5.0]
    values[rng.random(values.shape) < 0.1] = np.nan
    tables.write_csv(str(tmp_path / "data.csv"), ["u", "v", "w"], values.tolist())
    assert train.main([
        "--dataset=csv", f"--data-dir={tmp_path / 'data.csv'}", "--epochs=1", "--width=16",
        f"--output={tmp_path / 'model'}", f"--workdir={tmp_path / 'run'}", "--quiet",
        f"--export={tmp_path / 'serving'}",
    ]) == 0
    metrics = json.load(open(tmp_path / "model" / "metrics.json"))
    export_info = json.load(open(tmp_path / "serving" / "csv" / "1" / "export.json"))
    assert export_info["columns"] == ["u", "v", "w"]
    assert metrics["missing_in_data"] == pytest.approx(np.isnan(values).mean())
    assert metrics["scores"]["DMFA"]["cells"] > 0
    assert train.main(["--dataset=csv", f"--data-dir={tmp_path / 'none.csv'}", "--quiet",
                       f"--output={tmp_path / 'm2'}", f"--workdir={tmp_path / 'r2'}"]) == 2


def test_rows_saved_model_matches_the_model_and_takes_json_nan(trained_iris, tmp_path):
    path, _ = trained_iris
    model = tabular.TabularModel.load(path)
    folder = tabular_serving.export_rows(model, str(tmp_path / "serving"))
    assert folder.endswith(os.path.join("serving", "1"))
    loaded = tf.saved_model.load(folder)
    # A TF Serving REST body, as Python's json writes NaN.
    body = json.dumps({"instances": [[5.1, float("nan"), 1.4, 0.2], [6.0, 3.0, float("nan"), float("nan")]]})
    assert "NaN" in body
    rows = np.array(json.loads(body)["instances"], np.float32)
    out = loaded.signatures["serving_default"](rows=tf.constant(rows))
    expected = model.predict(rows)
    np.testing.assert_allclose(out["imputation"].numpy(), expected["imputation"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["sd"].numpy(), expected["sd"], rtol=1e-4, atol=1e-6)
    truth = np.array([[5.1, 3.5, 1.4, 0.2], [6.0, 3.0, 4.8, 1.8]], np.float32)
    mask = np.array([[1, 0, 1, 1], [1, 1, 0, -1]], np.float32)
    log_prob = loaded.signatures["log_prob"](rows=tf.constant(truth), mask=tf.constant(mask))
    np.testing.assert_allclose(log_prob["log_prob"].numpy(), model.log_prob(truth, mask), rtol=1e-4)
    samples = loaded.signatures["sample"](
        rows=tf.constant(rows), num_samples=tf.constant(3), seed=tf.constant([1, 2]))["samples"]
    assert samples.shape == (3, 2, 4)
    np.testing.assert_array_equal(samples.numpy()[:, ~np.isnan(rows)],
                                  np.broadcast_to(rows[~np.isnan(rows)], (3, 5)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="infinite"):
        loaded.signatures["serving_default"](rows=tf.constant([[np.inf, 1, 1, 1]], tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN at cells marked"):
        loaded.signatures["log_prob"](rows=tf.constant(rows), mask=tf.ones_like(rows))
