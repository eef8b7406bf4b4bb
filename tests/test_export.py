"""Export: SavedModel signatures (in process, in a fresh process, through
`saved_model_cli`), TFLite with builtin ops only, versions, the CLI, bad input.

The fast part exports one small `mlp` model (8x8x1, K = 2, L = 4) once per
module; the `fullconv` colour model and `saved_model_cli` runs are `slow`.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import dmfa_tf
from dmfa_tf import masks, serving
from dmfa_tf.core import recalibration
from dmfa_tf.baselines import DiagonalGaussian
from dmfa_tf.core.distribution import MaskedFactorMixture, flatten_images, unflatten_images
from dmfa_tf.serving.signatures import _tflite_functions
from dmfa_tf.serving.tflite import _assertions_off

SAMPLE_SEED = (3, 7)
NUM_SAMPLES = 3
LEVEL = 0.9  # the `intervals` signature's level in these tests


# === Helpers ===


def _batch(shape, count=4, seed=0, mask_channels=1):
    """Images in [0, 1] with one rectangular hole each; image 1 also has absent
    (-1) pixels and image 2 has no missing pixel."""
    height, width, channels = shape
    rng = np.random.default_rng(seed)
    image = rng.uniform(size=(count, height, width, channels)).astype(np.float32)
    hole = masks.Rectangle(height // 2, width // 2)
    mask = np.stack([hole(height, width, [seed, i]).numpy() for i in range(count)])
    mask[1, 0, :] = -1.0
    mask[2] = 1.0
    if mask_channels > 1:
        mask = np.repeat(mask, mask_channels, axis=-1)
    return image, mask.astype(np.float32)


def _reference(model, image, mask):
    """What the in-memory model gives, through the same library code."""
    shape = tuple(image.shape[1:])
    params = model({"image": tf.constant(image), "mask": tf.constant(mask)}, training=False)
    dist = MaskedFactorMixture.from_images(params, mask, image)
    samples = dist.sample(NUM_SAMPLES, seed=tf.constant(SAMPLE_SEED, tf.int32))
    flat = flatten_images(image).numpy()
    ends = [np.where(dist.mask.numpy() == 1, flat, end.numpy())
            for end in recalibration.interval(dist, LEVEL)]
    return {
        "serving_default": {
            "imputation": unflatten_images(dist.imputation(), shape).numpy(),
            "variance": unflatten_images(dist.variance(), shape).numpy(),
            "mixture_weights": tf.math.softmax(params["logits"], axis=-1).numpy(),
        },
        "log_prob": {"log_prob": dist.log_prob(flatten_images(image)).numpy()},
        "sample": {"samples": unflatten_images(samples, shape).numpy()},
        "parameters": {key: np.asarray(value) for key, value in params.items()},
        "intervals": {"lower": ends[0].reshape(image.shape), "upper": ends[1].reshape(image.shape)},
    }


def _call_signature(signatures, name, image, mask):
    inputs = {"image": tf.constant(image), "mask": tf.constant(mask)}
    if name == "sample":
        inputs["num_samples"] = tf.constant(NUM_SAMPLES, tf.int32)
        inputs["seed"] = tf.constant(SAMPLE_SEED, tf.int32)
    if name == "intervals":
        inputs["level"] = tf.constant(LEVEL, tf.float32)
    return {key: value.numpy() for key, value in signatures[name](**inputs).items()}


def _assert_matches(outputs, expected, atol=1e-5, rtol=1e-5):
    for name, values in expected.items():
        assert sorted(outputs[name]) == sorted(values), name
        for key, value in values.items():
            np.testing.assert_allclose(
                outputs[name][key], value, atol=atol, rtol=rtol, err_msg=f"{name}/{key}"
            )


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    path, inputs, outputs, num_samples, seed0, seed1 = sys.argv[1:]
    loaded = tf.saved_model.load(path)
    data = np.load(inputs)
    image, mask = tf.constant(data["image"]), tf.constant(data["mask"])
    results = {}
    for name in ("serving_default", "log_prob", "parameters"):
        for key, value in loaded.signatures[name](image=image, mask=mask).items():
            results[name + "/" + key] = value.numpy()
    sampled = loaded.signatures["sample"](
        image=image, mask=mask, num_samples=tf.constant(int(num_samples)),
        seed=tf.constant([int(seed0), int(seed1)]))
    results["sample/samples"] = sampled["samples"].numpy()
    for key, value in loaded.signatures["intervals"](
            image=image, mask=mask, level=tf.constant(0.9)).items():
        results["intervals/" + key] = value.numpy()
    np.savez(outputs, **results)
    print(json.dumps({
        "signatures": sorted(loaded.signatures),
        "dmfa_tf": "dmfa_tf" in sys.modules,
        "tensorflow_probability": "tensorflow_probability" in sys.modules,
    }))
    """
)


def _run_fresh_process(path, image, mask, tmp_path):
    inputs, outputs = tmp_path / "inputs.npz", tmp_path / "outputs.npz"
    np.savez(inputs, image=image, mask=mask)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(path), str(inputs), str(outputs),
         str(NUM_SAMPLES), *map(str, SAMPLE_SEED)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    data = np.load(outputs)
    results = {}
    for key in data.files:
        name, output = key.split("/")
        results.setdefault(name, {})[output] = data[key]
    return report, results


def _tflite_outputs(path, image, mask, level=LEVEL):
    interpreter = serving.tflite_interpreter(path)
    return {
        name: serving.run_tflite(
            interpreter, name, image=image, mask=mask,
            **({"level": level} if name == "intervals" else {}),
        )
        for name in serving.TFLITE_SIGNATURES
    }


def _assert_tflite_matches(tflite, saved, atol=1e-4):
    for key in ("imputation", "variance", "mixture_weights"):
        np.testing.assert_allclose(
            tflite["impute"][key], saved["serving_default"][key], atol=atol, rtol=1e-5, err_msg=key
        )
    np.testing.assert_allclose(
        tflite["log_prob"]["log_prob"], saved["log_prob"]["log_prob"], atol=atol, rtol=1e-5
    )
    # The intervals: the same ends, from TFLite builtins only.
    for key in ("lower", "upper"):
        np.testing.assert_allclose(
            tflite["intervals"][key], saved["intervals"][key], atol=atol, rtol=1e-5, err_msg=key
        )
    assert all(tflite[name]["valid"].all() for name in serving.TFLITE_SIGNATURES)


def _saved_model_cli():
    path = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if not os.path.exists(path):
        pytest.skip(f"saved_model_cli not found next to {sys.executable}")
    return path


# === Fixtures ===

SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def mlp_model():
    keras.utils.set_random_seed(1)
    return dmfa_tf.build_model(SHAPE, "mlp", components=2, factors=4)


@pytest.fixture(scope="module")
def exported(mlp_model, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving") / "digits"
    return dmfa_tf.export_saved_model(mlp_model, str(base), tflite=True)


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported)


@pytest.fixture(scope="module")
def batch():
    return _batch(SHAPE)


# === SavedModel ===


def test_layout_signatures_and_metadata(exported):
    assert os.path.basename(exported) == "1"
    files = sorted(os.listdir(exported))
    assert {"saved_model.pb", "variables", "model.tflite", "export.json"} <= set(files)
    assert not [f for f in os.listdir(os.path.dirname(exported)) if f.startswith(".partial")]
    info = json.loads(open(os.path.join(exported, "export.json")).read())
    assert info["image_shape"] == list(SHAPE)
    assert (info["components"], info["factors"]) == (2, 4)
    assert info["tflite"] == {"model.tflite": "float32"}


def test_signature_specs(loaded):
    assert set(loaded.signatures) == set(serving.SERVING_SIGNATURES)
    default = loaded.signatures["serving_default"]
    _, inputs = default.structured_input_signature
    assert inputs["image"].shape.as_list() == [None, 8, 8, 1]
    assert inputs["mask"].shape.as_list() == [None, 8, 8, 1]
    assert inputs["image"].dtype == tf.float32
    outputs = default.structured_outputs
    assert sorted(outputs) == ["imputation", "mixture_weights", "variance"]
    assert outputs["mixture_weights"].shape.as_list() == [None, 2]
    _, sample_inputs = loaded.signatures["sample"].structured_input_signature
    assert sample_inputs["num_samples"].shape.as_list() == []
    assert sample_inputs["num_samples"].dtype == tf.int32
    assert sample_inputs["seed"].shape.as_list() == [2]
    assert loaded.signatures["sample"].structured_outputs["samples"].shape.as_list() == [
        None, None, 8, 8, 1
    ]
    params = loaded.signatures["parameters"].structured_outputs
    assert params["factors"].shape.as_list() == [None, 2, 64, 4]


def test_saved_model_matches_the_model_in_process(mlp_model, loaded, batch):
    image, mask = batch
    outputs = {name: _call_signature(loaded.signatures, name, image, mask)
               for name in serving.SERVING_SIGNATURES}
    _assert_matches(outputs, _reference(mlp_model, image, mask))


def test_fresh_process_without_dmfa_tf(mlp_model, exported, batch, tmp_path):
    image, mask = batch
    report, outputs = _run_fresh_process(exported, image, mask, tmp_path)
    assert report == {
        "signatures": sorted(serving.SERVING_SIGNATURES),
        "dmfa_tf": False,
        "tensorflow_probability": False,
    }
    _assert_matches(outputs, _reference(mlp_model, image, mask))


def test_dynamic_batch_and_reproducible_samples(loaded, batch):
    image, mask = batch
    one = _call_signature(loaded.signatures, "serving_default", image[:1], mask[:1])
    four = _call_signature(loaded.signatures, "serving_default", image, mask)
    np.testing.assert_allclose(one["imputation"], four["imputation"][:1], atol=1e-6)
    first = _call_signature(loaded.signatures, "sample", image, mask)["samples"]
    again = _call_signature(loaded.signatures, "sample", image, mask)["samples"]
    np.testing.assert_array_equal(first, again)
    other = loaded.signatures["sample"](
        image=image, mask=mask, num_samples=tf.constant(NUM_SAMPLES), seed=tf.constant([3, 8])
    )["samples"].numpy()
    assert not np.allclose(first, other)
    observed = np.broadcast_to(mask == 1, first.shape)
    np.testing.assert_array_equal(first[observed], np.broadcast_to(image, first.shape)[observed])


def test_mask_with_no_missing_pixel_is_a_documented_result(loaded, batch):
    image, _ = batch
    mask = np.ones_like(image)
    outputs = _call_signature(loaded.signatures, "serving_default", image, mask)
    np.testing.assert_array_equal(outputs["imputation"], image)
    np.testing.assert_array_equal(outputs["variance"], 0.0)
    log_prob = _call_signature(loaded.signatures, "log_prob", image, mask)["log_prob"]
    np.testing.assert_array_equal(log_prob, 0.0)
    samples = _call_signature(loaded.signatures, "sample", image, mask)["samples"]
    np.testing.assert_array_equal(samples, np.broadcast_to(image, samples.shape))


def test_values_at_missing_pixels_are_ignored(loaded, batch):
    image, mask = batch
    noisy = np.where(mask == 1, image, np.nan).astype(np.float32)
    clean = _call_signature(loaded.signatures, "serving_default", image, mask)
    dirty = _call_signature(loaded.signatures, "serving_default", noisy, mask)
    for key in clean:
        np.testing.assert_array_equal(clean[key], dirty[key])


@pytest.mark.parametrize(
    "signature, corrupt, message",
    [
        ("serving_default", "nan_observed", "NaN or inf at observed pixels"),
        ("log_prob", "inf_observed", "NaN or inf at observed pixels"),
        ("sample", "outside_observed", r"outside \[0, 1\] at observed pixels"),
        ("serving_default", "half_mask", r"must hold only 1 \(observed\), 0 \(missing\)"),
        ("parameters", "two_mask", r"Received values:\] \[2\]"),
        ("log_prob", "nan_missing", "NaN or inf at missing pixels"),
    ],
)
def test_bad_values_are_clear_errors(loaded, batch, signature, corrupt, message):
    image, mask = (np.array(a) for a in batch)
    observed = np.argwhere(mask[0, ..., 0] == 1)[0]
    missing = np.argwhere(mask[0, ..., 0] == 0)[0]
    if corrupt == "nan_observed":
        image[0, observed[0], observed[1]] = np.nan
    elif corrupt == "inf_observed":
        image[0, observed[0], observed[1]] = np.inf
    elif corrupt == "outside_observed":
        image[0, observed[0], observed[1]] = 1.5
    elif corrupt == "half_mask":
        mask[0, 0, 0] = 0.5
    elif corrupt == "two_mask":
        mask[0, 0, 0] = 2.0
    elif corrupt == "nan_missing":
        image[0, missing[0], missing[1]] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        _call_signature(loaded.signatures, signature, image, mask)


def test_wrong_shape_dtype_and_sample_count_are_rejected(loaded, batch):
    image, mask = batch
    serving = loaded.signatures["serving_default"]
    shape_error = r"Shape of tensor (image|mask) \[.*\] is not compatible with expected shape"
    for bad_image, bad_mask in [
        (tf.zeros([2, 9, 8, 1]), tf.zeros([2, 9, 8, 1])),
        (tf.constant(image), tf.zeros([4, 8, 8, 2])),
        (tf.constant(image[0]), tf.constant(mask[0])),
    ]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=shape_error):
            serving(image=bad_image, mask=bad_mask)
    with pytest.raises(tf.errors.InvalidArgumentError, match="same batch size as `image`"):
        serving(image=tf.constant(image), mask=tf.constant(mask[:3]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a float tensor"):
        serving(image=tf.zeros([2, 8, 8, 1], tf.float64), mask=tf.constant(mask[:2]))
    sample = loaded.signatures["sample"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_samples"):
        sample(image=image, mask=mask, num_samples=tf.constant(-1), seed=tf.constant([1, 2]))
    # a stated bound, not an out-of-memory kill: S x B x N <= 2**28 values per call
    with pytest.raises(tf.errors.InvalidArgumentError, match="MAX_SAMPLE_VALUES = 2..28"):
        sample(image=image, mask=mask, num_samples=tf.constant(2**30), seed=tf.constant([1, 2]))
    with pytest.raises((TypeError, tf.errors.InvalidArgumentError), match="seed"):
        sample(image=image, mask=mask, num_samples=tf.constant(2), seed=tf.constant([1, 2, 3]))


# === Versions ===


def test_versions_are_never_overwritten(mlp_model, exported):
    base = os.path.dirname(exported)
    before = {f: os.path.getmtime(os.path.join(exported, f)) for f in os.listdir(exported)}
    with pytest.raises(FileExistsError, match="never overwritten"):
        serving.export_saved_model(mlp_model, base, version=1)
    assert before == {f: os.path.getmtime(os.path.join(exported, f)) for f in os.listdir(exported)}
    os.makedirs(os.path.join(base, "not-a-version"))
    os.makedirs(os.path.join(base, "7"))
    assert serving.next_version(base) == 8
    second = serving.export_saved_model(mlp_model, base)
    assert os.path.basename(second) == "8"
    os.rmdir(os.path.join(base, "7"))
    os.rmdir(os.path.join(base, "not-a-version"))
    with pytest.raises(ValueError, match="version=0"):
        serving.export_saved_model(mlp_model, base, version=0)
    with pytest.raises(ValueError, match="quantize='int4'"):
        serving.export_saved_model(mlp_model, base, tflite=True, quantize="int4")


def test_version_folders_are_readable_by_other_users(exported):
    """A TF Serving process of another user must read the version folder: the
    mode is the umask's (0755 with the usual 022), not mkdtemp's 0700."""
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(exported).st_mode & 0o777 == 0o777 & ~mask
    assert os.stat(exported).st_mode & 0o005 == 0o005 or mask & 0o005


def test_next_version_of_a_missing_folder_is_1(tmp_path):
    assert serving.next_version(str(tmp_path / "none")) == 1


# === TFLite ===


def test_tflite_builtin_ops_only_and_parity(exported, loaded, batch):
    path = os.path.join(exported, "model.tflite")
    ops = serving.tflite_ops(path)
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], ops
    assert "VAR_HANDLE" not in ops and "ASSERT" not in ops
    assert {"BATCH_MATMUL", "SQRT", "FULLY_CONNECTED"} <= set(ops)
    interpreter = serving.tflite_interpreter(path)
    assert sorted(interpreter.get_signature_list()) == sorted(serving.TFLITE_SIGNATURES)
    image, mask = batch
    saved = {name: _call_signature(loaded.signatures, name, image, mask)
             for name in ("serving_default", "log_prob", "intervals")}
    _assert_tflite_matches(_tflite_outputs(path, image, mask), saved)
    assert {"WHILE", "EXP"} <= set(ops)  # the intervals' bisection and normal CDF


def test_tflite_empty_batch_gives_empty_outputs(exported, batch):
    """An empty batch crashes the TFLite runtime's Unpack kernel; run_tflite
    returns empty outputs of the right shapes instead."""
    path = os.path.join(exported, "model.tflite")
    image, mask = (np.array(a) for a in batch)
    full = _tflite_outputs(path, image, mask)
    empty = _tflite_outputs(path, image[:0], mask[:0])
    for name, outputs in full.items():
        assert sorted(empty[name]) == sorted(outputs)
        for key, value in outputs.items():
            assert empty[name][key].shape == (0,) + value.shape[1:]
            assert empty[name][key].dtype == value.dtype


def test_tflite_bad_input_is_flagged_not_silent(exported, batch):
    path = os.path.join(exported, "model.tflite")
    image, mask = (np.array(a) for a in batch)
    clean = _tflite_outputs(path, image, mask)
    row, col = np.argwhere(mask[0, ..., 0] == 1)[0]
    image[0, row, col] = np.nan  # an observed pixel
    mask[1, 3, 3] = 0.5  # not a mask code
    image[3][mask[3] == 0] = np.inf  # missing pixels: read by log_prob only
    out = _tflite_outputs(path, image, mask)
    assert out["impute"]["valid"].tolist() == [False, False, True, True]
    assert out["intervals"]["valid"].tolist() == [False, False, True, True]
    assert out["log_prob"]["valid"].tolist() == [False, False, True, False]
    for key in ("imputation", "variance", "mixture_weights"):
        assert np.isnan(out["impute"][key][:2]).all()
        np.testing.assert_allclose(out["impute"][key][2:], clean["impute"][key][2:], atol=1e-6)
    for key in ("lower", "upper"):
        assert np.isnan(out["intervals"][key][:2]).all()
        np.testing.assert_allclose(
            out["intervals"][key][2:], clean["intervals"][key][2:], atol=1e-6
        )
    # A level outside (0, 1) makes every image invalid: NaN, never an interval.
    clean_image, clean_mask = batch
    for level in (0.0, 1.0, -0.5, 2.0, np.nan):
        bad = serving.run_tflite(
            path, "intervals", image=clean_image, mask=clean_mask, level=level
        )
        assert not bad["valid"].any(), level
        assert np.isnan(bad["lower"]).all() and np.isnan(bad["upper"]).all(), level
    assert np.isnan(out["log_prob"]["log_prob"][[0, 1, 3]]).all()
    # Image 2 has no missing pixel: log_prob 0, imputation the input.
    assert out["log_prob"]["log_prob"][2] == 0.0
    np.testing.assert_array_equal(out["impute"]["imputation"][2], image[2])
    with pytest.raises((ValueError, RuntimeError)):
        serving.run_tflite(path, "impute", image=image[:, :7], mask=mask[:, :7])


def test_tflite_trace_has_no_assertions_and_restores_the_layer(mlp_model, exported):
    # `exported` converted the TFLite file with the layer's checks switched off.
    layer = mlp_model.get_layer("observed_input")
    assert layer.validate
    with pytest.raises(FileExistsError, match="model.tflite already exists"):
        serving.export_tflite(mlp_model, os.path.join(exported, "model.tflite"))

    def op_types(graph):
        types = {op.type for op in graph.get_operations()}
        for function in graph._functions.values():
            types |= {node.op for node in function.definition.node_def}
        return types

    with_checks = _tflite_functions(mlp_model, SHAPE)["impute"]
    assert "Assert" in op_types(with_checks.get_concrete_function().graph)
    with _assertions_off(mlp_model):
        assert not layer.validate
        without = _tflite_functions(mlp_model, SHAPE)
        types = op_types(without["impute"].get_concrete_function().graph)
        types |= op_types(without["log_prob"].get_concrete_function().graph)
        types |= op_types(without["intervals"].get_concrete_function().graph)
    assert layer.validate
    assert "Assert" not in types and "Sqrt" in types  # the unrolled Cholesky


# === Other models and the CLI ===


def test_diagonal_gaussian_exports_the_same_way(tmp_path):
    images = np.random.default_rng(0).uniform(size=(32,) + SHAPE).astype(np.float32)
    baseline = DiagonalGaussian.fit(images)
    assert baseline.image_shape == SHAPE
    path = serving.export_saved_model(baseline, str(tmp_path / "baseline"), tflite=True)
    loaded = tf.saved_model.load(path)
    image, mask = _batch(SHAPE, seed=3)
    outputs = {name: _call_signature(loaded.signatures, name, image, mask)
               for name in serving.SERVING_SIGNATURES}
    expected = _reference(baseline, image, mask)
    _assert_matches(outputs, expected)
    _assert_tflite_matches(_tflite_outputs(os.path.join(path, "model.tflite"), image, mask), outputs)
    with pytest.raises(ValueError, match="image_shape"):
        serving.export_saved_model(lambda inputs, training=False: None, str(tmp_path / "x"))


@pytest.mark.slow
def test_mfa_exports_the_same_way(tmp_path):
    mfa = pytest.importorskip("dmfa_tf.baselines.mfa")
    images = np.random.default_rng(0).uniform(size=(64,) + SHAPE).astype(np.float32)
    model = mfa.MFA.fit(images, 2, 3, iterations=2, seed=0)
    path = serving.export_saved_model(model, str(tmp_path / "mfa"))
    loaded = tf.saved_model.load(path)
    image, mask = _batch(SHAPE, seed=4)
    outputs = {name: _call_signature(loaded.signatures, name, image, mask)
               for name in serving.SERVING_SIGNATURES}
    _assert_matches(outputs, _reference(model, image, mask), atol=1e-4, rtol=1e-4)


def test_cli_exports_a_saved_model_folder(mlp_model, tmp_path, capsys):
    folder = tmp_path / "saved_models" / "digits"
    folder.mkdir(parents=True)
    mlp_model.save(str(folder / "model.keras"))
    output = tmp_path / "serving" / "digits"
    assert serving.main([f"--model={folder}", f"--output={output}"]) == 0
    assert f"Exported SavedModel {output / '1'}" in capsys.readouterr().out
    assert serving.main([f"--model={folder}", f"--output={output}", "--version=1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert serving.main([f"--model={tmp_path / 'nothing'}", f"--output={output}"]) == 2
    assert "No saved model" in capsys.readouterr().err
    assert sorted(os.listdir(output)) == ["1"]


def test_intervals_signature_with_a_recalibration(mlp_model, batch, tmp_path, capsys):
    """The exported `intervals` read through the recalibration given at export
    time: equal to `recalibration.interval` in memory, each pixel with its
    group's map; a level outside (0, 1) is refused."""
    image, mask = batch
    params = mlp_model({"image": tf.constant(image), "mask": tf.constant(mask)}, training=False)
    dist = MaskedFactorMixture.from_images(params, mask, image)
    bound = float(np.median(dist.stddev().numpy()[mask.reshape(len(image), -1) == 0]))
    fitted = recalibration.Recalibration(
        [np.linspace(0, 1, 9) ** 1.5, np.sqrt(np.linspace(0, 1, 9))], [bound],
        fitted_on={"mask": "4x4", "split": "val"},
    )
    path = serving.export_saved_model(
        mlp_model, str(tmp_path / "serving"), recalibration=fitted, tflite=True
    )
    loaded = tf.saved_model.load(path)
    interpreter = serving.tflite_interpreter(os.path.join(path, "model.tflite"))
    flat = flatten_images(image).numpy()
    for level in (0.5, 0.9):
        outputs = loaded.signatures["intervals"](
            image=tf.constant(image), mask=tf.constant(mask), level=tf.constant(level))
        lite = serving.run_tflite(interpreter, "intervals", image=image, mask=mask, level=level)
        assert lite["valid"].all()
        for name, end in zip(("lower", "upper"), recalibration.interval(dist, level, fitted)):
            want = np.where(mask.reshape(len(image), -1) == 1, flat, end.numpy()).reshape(image.shape)
            np.testing.assert_allclose(outputs[name].numpy(), want, atol=1e-4, err_msg=name)
            # The TFLite file reads the same map, with builtin operators only.
            np.testing.assert_allclose(lite[name], want, atol=1e-4, err_msg=name)
    # Recalibrated intervals are not the model's own.
    own = recalibration.interval(dist, 0.9)[0].numpy().reshape(image.shape)
    assert np.abs(outputs["lower"].numpy() - own)[mask == 0].max() > 1e-3
    with pytest.raises(tf.errors.InvalidArgumentError, match="level"):
        loaded.signatures["intervals"](
            image=tf.constant(image), mask=tf.constant(mask), level=tf.constant(1.0))
    info = json.loads(open(os.path.join(path, "export.json")).read())
    assert info["intervals_recalibration"] == {"mask": "4x4", "split": "val"}
    # The CLI takes the model folder's first map.
    folder = tmp_path / "saved_models" / "digits"
    folder.mkdir(parents=True)
    mlp_model.save(str(folder / "model.keras"))
    (folder / recalibration.FILE).write_text(json.dumps(recalibration.file_content([fitted])))
    assert serving.main([f"--model={folder}", f"--output={tmp_path / 'cli'}"]) == 0
    assert "recalibrated by the map fitted on 4x4 holes" in capsys.readouterr().out
    info = json.loads(open(tmp_path / "cli" / "1" / "export.json").read())
    assert info["intervals_recalibration"]["mask"] == "4x4"


def test_config_rejects_an_empty_export_folder():
    from dmfa_tf.config import TrainConfig

    with pytest.raises(ValueError, match="export=''"):
        TrainConfig(export="").resolved()


# === Slow: saved_model_cli, a colour fullconv model, quantisation, training ===
# (and the MFA test above)


@pytest.mark.slow
def test_saved_model_cli_runs_every_signature(mlp_model, exported, batch, tmp_path):
    cli = _saved_model_cli()
    image, mask = batch
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "mask.npy", mask)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    show = subprocess.run(
        [cli, "show", "--dir", exported, "--all"], capture_output=True, text=True, env=env
    )
    assert show.returncode == 0, show.stderr[-2000:]
    for name in serving.SERVING_SIGNATURES:
        assert f"signature_def['{name}']" in show.stdout
    expected = _reference(mlp_model, image, mask)
    for name in serving.SERVING_SIGNATURES:
        outdir = tmp_path / name
        command = [
            cli, "run", "--dir", exported, "--tag_set", "serve", "--signature_def", name,
            "--inputs", f"image={tmp_path / 'image.npy'};mask={tmp_path / 'mask.npy'}",
            "--outdir", str(outdir),
        ]
        if name == "sample":
            command += ["--input_exprs", f"num_samples={NUM_SAMPLES};seed={list(SAMPLE_SEED)}"]
        if name == "intervals":
            command += ["--input_exprs", f"level={LEVEL}"]
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        outputs = {key: np.load(outdir / f"{key}.npy") for key in expected[name]}
        _assert_matches({name: outputs}, {name: expected[name]})
    bad = image.copy()
    bad[mask == 1] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    result = subprocess.run(
        [cli, "run", "--dir", exported, "--tag_set", "serve", "--signature_def", "log_prob",
         "--inputs", f"image={tmp_path / 'bad.npy'};mask={tmp_path / 'mask.npy'}"],
        capture_output=True, text=True, env=env,
    )
    assert result.returncode != 0
    assert "NaN or inf at observed pixels" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("mask_channels", [1, 3])
def test_fullconv_colour_model_everywhere(tmp_path, mask_channels):
    shape = (16, 16, 3)
    # float32: the exports compute in float32, and this compares them with the
    # model in process to 1e-5 (a bfloat16 model: test_a_mixed_bfloat16_model_...).
    model = dmfa_tf.build_model(shape, "fullconv", components=2, factors=4, width=8,
                                precision="float32")
    path = serving.export_saved_model(
        model, str(tmp_path / "colour"), tflite=True, quantize=["float16", "dynamic_range"]
    )
    image, mask = _batch(shape, mask_channels=mask_channels)
    loaded = tf.saved_model.load(path)
    outputs = {name: _call_signature(loaded.signatures, name, image, mask)
               for name in serving.SERVING_SIGNATURES}
    expected = _reference(model, image, mask)
    _assert_matches(outputs, expected)
    report, fresh = _run_fresh_process(path, image, mask, tmp_path)
    assert not report["dmfa_tf"]
    _assert_matches(fresh, expected)
    _assert_tflite_matches(_tflite_outputs(os.path.join(path, "model.tflite"), image, mask), outputs)
    for variant, tolerance in (("float16", 0.05), ("dynamic_range", 0.5)):
        file = os.path.join(path, f"model_{variant}.tflite")
        assert not [op for op in serving.tflite_ops(file) if op.startswith("Flex")]
        quantised = _tflite_outputs(file, image, mask)
        error = np.abs(quantised["impute"]["imputation"] - outputs["serving_default"]["imputation"])
        assert error.max() < tolerance, (variant, error.max())
        assert np.isfinite(quantised["log_prob"]["log_prob"]).all()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[batch, 16, 16, 1 or 3\]"):
        loaded.signatures["serving_default"](image=image, mask=np.ones((4, 16, 16, 2), np.float32))


@pytest.mark.slow
def test_training_exports_when_asked(tmp_path, capsys):
    from dmfa_tf.config import TrainConfig
    from dmfa_tf.training import train_and_evaluate

    config = TrainConfig(
        dataset="digits", epochs=1, max_train_images=128, max_test_images=32,
        output=str(tmp_path / "saved" / "digits"), workdir=str(tmp_path / "runs"),
        export=str(tmp_path / "serving"),
    )
    train_and_evaluate(config, verbose=1, command="test")
    version = tmp_path / "serving" / "digits" / "1"
    assert (version / "saved_model.pb").exists()
    assert f"Exported the SavedModel (TF Serving) to {version}" in capsys.readouterr().out


def test_a_mixed_bfloat16_model_exports_its_float32_function(tmp_path):
    # TFLite has no bfloat16 kernels: both exports compute in float32, with the
    # trained (float32) weights, and match a float32 network built by hand.
    model = dmfa_tf.build_model(SHAPE, "fullconv", width=4, components=2, factors=2,
                                precision="mixed_bfloat16")
    exact = dmfa_tf.build_model(SHAPE, "fullconv", width=4, components=2, factors=2,
                                precision="float32")
    exact.set_weights(model.get_weights())
    path = serving.export_saved_model(model, str(tmp_path / "bf16"), tflite=True)
    loaded = tf.saved_model.load(path)
    image, mask = _batch(SHAPE, seed=5)
    outputs = {name: _call_signature(loaded.signatures, name, image, mask)
               for name in serving.SERVING_SIGNATURES}
    _assert_matches(outputs, _reference(exact, image, mask), atol=1e-4, rtol=1e-4)
    _assert_tflite_matches(_tflite_outputs(os.path.join(path, "model.tflite"), image, mask), outputs)
    assert model.get_layer("enc0_conv0").compute_dtype == "bfloat16"  # the model is untouched
