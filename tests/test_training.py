"""The training driver and train.py, end to end on small runs."""

import csv
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import dmfa_tf
from dmfa_tf.config import TrainConfig
from dmfa_tf.training import train_and_evaluate, write_outputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(tmp_path, **overrides):
    values = dict(
        output=str(tmp_path / "saved" / "digits"),
        workdir=str(tmp_path / "runs" / "digits"),
    )
    values.update(overrides)
    return TrainConfig.preset("tiny", **values)


def test_tiny_preset_in_the_api_and_on_the_command_line():
    import train

    config = TrainConfig.preset("tiny", epochs=1)
    assert (config.dataset, config.epochs, config.max_train_images, config.max_test_images) == (
        "digits", 1, 256, 64)
    parsed, _ = train.parse_args(["--preset=tiny", "--max-test-images=32"])
    assert (parsed.dataset, parsed.epochs, parsed.max_train_images, parsed.max_test_images) == (
        "digits", 2, 256, 32)  # the preset fills in the flags left out; given flags win
    assert train.parse_args([])[0].epochs is None  # no preset: the data set's default later
    with pytest.raises(ValueError, match="Unknown preset 'huge'; choose one of \\['tiny'\\]"):
        TrainConfig.preset("huge")


def test_run_writes_model_config_and_metrics(tmp_path):
    config = _config(tmp_path, components=2)
    metrics = train_and_evaluate(config, verbose=0, command="test")
    output = tmp_path / "saved" / "digits"
    assert sorted(os.listdir(output)) == [
        "config.json", "metrics.json", "model.keras", "recalibration.json",
    ]
    saved = json.loads((output / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    # The interval recalibration is fitted on the validation split, with the test mask.
    from dmfa_tf.core import recalibration

    fitted = recalibration.load(str(output))
    assert fitted.fitted_on["split"] == "val" and fitted.fitted_on["mask"] == "4x4"
    assert fitted.fitted_on["images"] == 180 and fitted.fitted_on["pixels"] == 180 * 16
    assert saved["calibration"]["pixels"] == 64 * 16
    assert set(saved["calibration"]["recalibrated"]) == {"coverage_50", "coverage_90", "pit_deciles"}
    assert saved["test_images"] == 64 and saved["test_mask"] == "4x4"
    assert saved["model"]["components"] == 2 and saved["model"]["architecture"] == "mlp"
    for key in ("nll", "mse"):
        assert saved[key]["count"] == 64
        assert np.isfinite(saved[key]["mean"]) and saved[key]["min"] <= saved[key]["median"]
    assert saved["baseline"]["name"] == "diagonal Gaussian"
    restored = TrainConfig.from_json((output / "config.json").read_text())
    assert restored == config.resolved()
    model = keras.saving.load_model(str(output / "model.keras"))
    assert isinstance(model, dmfa_tf.DMFAModel) and model.num_components == 2
    workdir = tmp_path / "runs" / "digits"
    assert (workdir / "checkpoints" / "last.keras").exists()
    # The shipped file has no optimizer state; the checkpoint (for resuming) has Adam's.
    assert getattr(model, "optimizer", None) is None
    saved_size = os.path.getsize(output / "model.keras")
    assert saved_size < 0.5 * os.path.getsize(workdir / "checkpoints" / "last.keras")
    with open(workdir / "log.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1"]


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise KeyboardInterrupt


class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_interrupted_run_continues_where_it_stopped(tmp_path):
    config = _config(tmp_path, epochs=4)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config, verbose=0, callbacks=[_Interrupt(at_epoch=1)])
    assert not (tmp_path / "saved" / "digits").exists()  # nothing half-written
    recorder = _Recorder()
    train_and_evaluate(config, verbose=0, callbacks=[recorder])
    assert recorder.epochs == [2, 3]  # epochs 0 and 1 were not trained again
    with open(tmp_path / "runs" / "digits" / "log.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1", "2", "3"]
    assert not (tmp_path / "runs" / "digits" / "backup").exists()  # finished: backup removed


def test_a_backup_killed_while_written_leaves_the_previous_one(tmp_path, monkeypatch):
    """A kill in the middle of writing the backup (here: after part of the
    weights file) leaves the previous backup current: the rerun resumes from it."""
    from dmfa_tf import training

    config = _config(tmp_path, epochs=4)
    original = keras.callbacks.BackupAndRestore._save_model

    def killed_during_write(self):
        if self._current_epoch == 3:  # the backup after epoch 2
            with open(self._weights_path, "wb") as f:
                f.write(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # a truncated HDF5 file
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "_save_model", killed_during_write)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config, verbose=0)
    backup = tmp_path / "runs" / "digits" / "backup"
    assert (backup / "latest").read_text().strip() == "epoch-2"
    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "_save_model", original)
    recorder = _Recorder()
    train_and_evaluate(config, verbose=0, callbacks=[recorder])
    assert recorder.epochs == [2, 3]
    assert not backup.exists()
    assert isinstance(training.AtomicBackupAndRestore(str(backup)), keras.callbacks.BackupAndRestore)


def test_the_backup_is_kept_until_the_outputs_are_written(tmp_path, monkeypatch):
    from dmfa_tf import training

    config = _config(tmp_path, epochs=2)

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(training.outputs, "write_outputs", disk_full)
    with pytest.raises(OSError, match="No space"):
        train_and_evaluate(config, verbose=0)
    assert (tmp_path / "runs" / "digits" / "backup" / "latest").exists()
    monkeypatch.undo()
    recorder = _Recorder()
    metrics = train_and_evaluate(config, verbose=0, callbacks=[recorder])
    assert recorder.epochs == []  # nothing trained again: straight to scoring and saving
    assert (tmp_path / "saved" / "digits" / "model.keras").exists()
    assert metrics["selection"]["epoch"] in (0, 1)
    assert not (tmp_path / "runs" / "digits" / "backup").exists()


def test_resuming_with_other_settings_is_refused_or_restarted(tmp_path):
    config = _config(tmp_path, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config, verbose=0, callbacks=[_Interrupt(at_epoch=0)])
    changed = _config(tmp_path, epochs=3, seed=1, learning_rate=2e-3)
    with pytest.raises(ValueError, match=r"other settings \(--learning-rate 0.001 -> 0.002; --seed 0 -> 1\).*--restart"):
        train_and_evaluate(changed, verbose=0)
    # --epochs may change: continue the same run for longer
    recorder = _Recorder()
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(_config(tmp_path, epochs=4), verbose=0,
                           callbacks=[recorder, _Interrupt(at_epoch=1)])
    assert recorder.epochs == [1]
    # --restart starts over with the new settings
    recorder = _Recorder()
    changed.restart = True
    train_and_evaluate(changed, verbose=0, callbacks=[recorder])
    assert recorder.epochs == [0, 1, 2]
    saved = json.loads((tmp_path / "saved" / "digits" / "config.json").read_text())
    assert saved["seed"] == 1
    # a finished run's log is kept aside, not appended to, when the workdir is used again
    train_and_evaluate(_config(tmp_path, epochs=2), verbose=0)
    with open(tmp_path / "runs" / "digits" / "log.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1"]
    with open(tmp_path / "runs" / "digits" / "log.previous.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1", "2"]


def test_ctrl_c_prints_how_to_resume(tmp_path, monkeypatch, capsys):
    import train
    from dmfa_tf import training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_and_evaluate", interrupted)
    code = train.main(["--workdir", str(tmp_path / "work"), "--quiet"])
    assert code == 130
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "interrupted. Run the same command again" in err and str(tmp_path / "work" / "backup") in err


MIRRORED_SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
from dmfa_tf.config import TrainConfig
from dmfa_tf.models import build_model
from dmfa_tf.training import make_strategy, train_and_evaluate, training_data
from dmfa_tf import data as datasets

out = {}
images = datasets.load("digits", verbose=0).train[:192]
for name in ("default", "mirrored"):
    # model.fit with plain SGD: each replica's loss must be scaled by 1/2, or
    # the summed gradient (and so the weights) would be twice the one-device one.
    strategy = make_strategy(name)
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = build_model((8, 8, 1), architecture="mlp", hidden=(32, 32), components=2, factors=2)
        model.compile(keras.optimizers.SGD(0.05), jit_compile=False)
    model.fit(training_data(images, "4x4", 64, 0), steps_per_epoch=3, epochs=1, verbose=0)
    out[name] = {
        "replicas": strategy.num_replicas_in_sync,
        "weights": [w.tolist() for w in model.get_weights()],
        "metrics": train_and_evaluate(TrainConfig(
            dataset="digits", epochs=2, max_train_images=256, max_test_images=64,
            strategy=name, jit_compile="false",
            output=sys.argv[1] + "/" + name + "/out", workdir=sys.argv[1] + "/" + name + "/work",
        ), verbose=0),
    }
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_mirrored_strategy_on_two_replicas_equals_one_device(tmp_path):
    # Two logical CPU devices (set before TensorFlow starts: a fresh process)
    # make MirroredStrategy run two replicas, each on half of every batch.
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path)],
        capture_output=True, text=True, timeout=600,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT"):])
    one, two = out["default"], out["mirrored"]
    assert one["replicas"] == 1 and two["replicas"] == 2
    for a, b in zip(one["weights"], two["weights"]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
    # train.py's whole run: the same test scores from both.
    for key in ("nll", "mse"):
        np.testing.assert_allclose(
            two["metrics"][key]["mean"], one["metrics"][key]["mean"], rtol=1e-4, atol=1e-4
        )


def test_a_few_hundred_steps_on_real_mnist_lower_the_test_nll(tmp_path, shared_data):
    # 300 steps of batch 64 on real MNIST, 14x14 holes; the same test images and
    # masks scored by the untrained network (same seed, same weights at start).
    from dmfa_tf import data as datasets
    from dmfa_tf import evaluation

    config = _config(
        tmp_path, dataset="mnist", data_dir=os.path.join(shared_data, "mnist"),
        architecture="mlp", width=128, epochs=1, max_train_images=300 * 64,
        max_test_images=500,
    )
    metrics = train_and_evaluate(config, verbose=0)
    keras.utils.set_random_seed(config.seed)
    untrained = dmfa_tf.build_model((28, 28, 1), "mlp", hidden=(128, 128))
    test = datasets.load("mnist", config.data_dir).test[:500]
    before = evaluation.score(untrained, test, "14x14", seed=0)
    untrained_nll = float(np.mean(before["nll"]))
    trained_nll = metrics["nll"]["mean"]
    # The untrained head predicts variance ~0.5 everywhere: about +90 nats per image.
    assert untrained_nll > 50
    assert trained_nll < untrained_nll - 100 and trained_nll < 0
    assert trained_nll < metrics["baseline"]["nll"]["mean"]  # and beats the per-pixel Gaussian
    assert metrics["mse"]["mean"] < float(np.mean(before["squared_error"]))


def test_mnist_from_idx_files(tmp_path, shared_data):
    config = _config(
        tmp_path,
        dataset="mnist",
        data_dir=os.path.join(shared_data, "mnist"),
        epochs=1,
        max_train_images=128,
        max_test_images=32,
        width=8,
    )
    metrics = train_and_evaluate(config, verbose=0)
    assert metrics["test_mask"] == "14x14" and metrics["model"]["architecture"] == "fullconv"
    assert np.isfinite(metrics["nll"]["mean"])
    assert metrics["model"]["dequantization_step"] == 0.0  # --dequantize=off by default
    # 8-bit images: --dequantize=auto fits the density to dequantized targets
    auto = train_and_evaluate(
        _config(tmp_path, dataset="mnist", data_dir=config.data_dir, epochs=1,
                max_train_images=128, max_test_images=32, width=8, dequantize="auto",
                output=str(tmp_path / "auto"), workdir=str(tmp_path / "auto-runs")),
        verbose=0,
    )
    assert auto["model"]["dequantization_step"] == pytest.approx(1 / 255)
    assert np.isfinite(auto["nll"]["mean"])


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (dict(hole="10x10"), ValueError, "10x10 hole does not fit in a 8x8 image"),
        (dict(dataset="imagenet"), ValueError, "Unknown dataset 'imagenet'"),
        (dict(epochs=0), ValueError, "epochs.*0"),
        (dict(mask="dropout:7"), ValueError, "dropout:7"),
        (dict(dataset="mnist"), ValueError, "--data-dir"),
        (dict(dataset="mnist", data_dir="no/such/folder"), FileNotFoundError, "no/such/folder"),
        (dict(architecture="linear_heads", width=4), ValueError, "linear_heads"),
        # digits take 17 levels, not 256: nothing for --dequantize=on to do
        (dict(dequantize="on"), ValueError, "not 8-bit"),
        (dict(dequantize="yes"), ValueError, "dequantize.*yes"),
        # flags that do not apply are errors, not silently recorded
        (dict(image_size=32), ValueError, "digits images are 8x8, but image_size=32"),
        (dict(crop="aspect"), ValueError, "--crop applies to celeb_a only, not to digits"),
        (dict(data_dir="somewhere"), ValueError, "bundled with scikit-learn: data_dir"),
        (dict(model="mfa", architecture="fullconv", width=8), ValueError,
         "--architecture, --width, --epochs apply to DMFA networks, not to --model=mfa"),
        (dict(mfa_components=3), ValueError, "--mfa-components applies to --model=mfa only"),
        (dict(nonfinite="skip"), ValueError, "nonfinite.*skip"),
        (dict(train_absent="dropout:2"), ValueError, "dropout:2"),
    ],
)
def test_bad_configuration_is_a_clear_error(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        train_and_evaluate(_config(tmp_path, **overrides), verbose=0)


class _BrokenModel:
    def save(self, path):
        with open(path, "w") as f:
            f.write("partial")
        raise OSError("disk full")


def test_outputs_are_replaced_atomically(tmp_path):
    output = tmp_path / "model"
    write_outputs(str(output), files={"metrics.json": {"a": 1}, "config.json": "{}"})
    assert json.loads((output / "metrics.json").read_text()) == {"a": 1}
    with pytest.raises(OSError, match="disk full"):
        write_outputs(str(output), _BrokenModel(), {"metrics.json": {"a": 2}})
    # the old folder is intact and no partial folder is left behind
    assert json.loads((output / "metrics.json").read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["model"]
    write_outputs(str(output), files={"metrics.json": {"a": 3}})
    assert sorted(os.listdir(output)) == ["metrics.json"]


def test_output_paths_are_checked_before_training(tmp_path):
    (tmp_path / "file").write_text("x")
    notes = tmp_path / "mine"
    (notes / "sub").mkdir(parents=True)
    (notes / "notes.txt").write_text("keep me")
    cases = [
        (dict(output=str(notes)), r"holds files that are not a dmfa_tf model \(notes.txt, sub\)"),
        (dict(output=str(tmp_path / "file" / "model")), "lies below .*file, which is a file"),
        (dict(workdir=str(tmp_path / "file" / "w")), "--workdir .* lies below .*file"),
        (dict(output=str(tmp_path / "file")), "is a file; give a folder"),
        (dict(output=str(tmp_path / "x"), workdir=str(tmp_path / "x" / "work")),
         "--workdir .* lies inside --output"),
        (dict(output=str(tmp_path / "y" / "model"), workdir=str(tmp_path / "y")),
         "--output .* lies inside --workdir"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            train_and_evaluate(_config(tmp_path, **overrides), verbose=0)
    assert (notes / "notes.txt").read_text() == "keep me" and (notes / "sub").is_dir()
    assert not (tmp_path / "x").exists() and not (tmp_path / "runs").exists()  # nothing trained
    # write_outputs itself never replaces such a folder either
    with pytest.raises(ValueError, match="not a dmfa_tf model"):
        write_outputs(str(notes), files={"metrics.json": {}})
    assert (notes / "notes.txt").exists()


def test_a_full_disk_is_found_before_training(tmp_path, monkeypatch):
    import collections

    from dmfa_tf import training

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(training.outputs.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 2**20))
    with pytest.raises(ValueError, match=r"--workdir .*: 1 MiB free on its file system, and the run writes up to"):
        train_and_evaluate(_config(tmp_path), verbose=0)
    assert not (tmp_path / "runs" / "digits" / "log.csv").exists()  # no epoch ran


def test_a_killed_save_leaves_nothing_behind_for_good(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    for name in (f"model.partial-{dead}", f"model.old-{dead}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.keras").write_text("half")
    (tmp_path / f"model.partial-{os.getppid()}").mkdir()  # a live process's: kept
    write_outputs(str(tmp_path / "model"), files={"metrics.json": {"a": 1}})
    assert sorted(os.listdir(tmp_path)) == ["model", f"model.partial-{os.getppid()}"]


def _incomplete_npz(tmp_path, share=0.3):
    """A small 16x16 grey set whose training images have NaN (absent) pixels."""
    rng = np.random.default_rng(5)
    x_train = rng.uniform(size=(200, 16, 16)).astype(np.float32)
    x_train[rng.uniform(size=x_train.shape) < share] = np.nan
    path = tmp_path / "incomplete.npz"
    np.savez(path, x_train=x_train, x_test=rng.uniform(size=(20, 16, 16)).astype(np.float32),
             x_val=rng.uniform(size=(20, 16, 16)).astype(np.float32))
    return path, float(np.isnan(x_train).mean())


def test_training_on_incomplete_data(tmp_path):
    """NaN training pixels are absent with --nonfinite=absent (an error without
    it); --train-absent makes complete images incomplete, fixed per image."""
    path, share = _incomplete_npz(tmp_path)
    config = dict(dataset="cifar10", data_dir=str(path), architecture="mlp", width=8, epochs=1,
                  batch_size=16, hole="6x6", output=str(tmp_path / "out"), workdir=str(tmp_path / "w"))
    with pytest.raises(ValueError, match=r"pixels of the cifar10 training images are NaN.*--nonfinite=absent"):
        train_and_evaluate(TrainConfig(**config), verbose=0)
    metrics = train_and_evaluate(TrainConfig(**config, nonfinite="absent"), verbose=0)
    assert metrics["model"]["absent_training_pixels"] == pytest.approx(share)
    assert np.isfinite(metrics["nll"]["mean"]) and np.isfinite(metrics["baseline"]["nll"]["mean"])

    from dmfa_tf import masks
    from dmfa_tf.training import ABSENT_MASK_OFFSET, make_absent

    images = np.random.default_rng(6).uniform(size=(50, 8, 8, 1)).astype(np.float32)
    incomplete, absent = make_absent(images, "dropout:0.3", seed=4)
    for i in (0, 17, 49):  # image i's absent pixels: the mask seeded (4 + offset, i)
        expected = masks.parse("dropout:0.3")(8, 8, [4 + ABSENT_MASK_OFFSET, i]).numpy() == 0
        np.testing.assert_array_equal(np.isnan(incomplete[i]), expected)
        np.testing.assert_array_equal(incomplete[i][~expected], images[i][~expected])
    assert absent == pytest.approx(np.isnan(incomplete).mean()) and 0.2 < absent < 0.4
    run = train_and_evaluate(
        _config(tmp_path, train_absent="dropout:0.3", output=str(tmp_path / "o2"),
                workdir=str(tmp_path / "w2")),
        verbose=0,
    )
    assert 0.2 < run["model"]["absent_training_pixels"] < 0.4 and np.isfinite(run["nll"]["mean"])
    saved = json.loads((tmp_path / "o2" / "config.json").read_text())
    assert saved["nonfinite"] == "absent" and saved["train_absent"] == "dropout:0.3"


def test_npz_nan_only_in_training_images(tmp_path):
    from dmfa_tf import data as datasets

    path, _ = _incomplete_npz(tmp_path)
    data = datasets.load("cifar10", str(path))
    assert np.isnan(data.train).any() and not np.isnan(data.test).any()
    arrays = dict(np.load(path))
    arrays["x_test"][0, 0, 0] = np.nan
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="x_test holds NaN values. Only x_train may"):
        datasets.load("cifar10", str(tmp_path / "bad.npz"))


def _run_cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_trains_and_prints_the_summary(tmp_path):
    result = _run_cli(
        "--epochs=1", "--max-train-images=128", "--max-test-images=32", "--components=2",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "diagonal Gaussian" in result.stdout and "DMFA (mlp, K=2, L=4)" in result.stdout
    assert (tmp_path / "saved_models" / "digits" / "model.keras").exists()
    assert (tmp_path / "runs" / "digits" / "log.csv").exists()


def test_cli_errors_exit_2_with_a_message(tmp_path):
    result = _run_cli("--hole=20x20", cwd=tmp_path)
    assert result.returncode == 2
    assert "20x20 hole does not fit in a 8x8 image" in result.stderr
    result = _run_cli("--dataset=cifar", cwd=tmp_path)
    assert result.returncode == 2 and "invalid choice: 'cifar'" in result.stderr
    assert not (tmp_path / "saved_models").exists()


@pytest.mark.slow
def test_embedded_default_beats_the_diagonal_gaussian(tmp_path):
    """`python train.py` with no flags: DMFA must beat the baseline."""
    result = _run_cli(cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "saved_models" / "digits" / "metrics.json").read_text())
    assert metrics["nll"]["mean"] < metrics["baseline"]["nll"]["mean"] - 3.0, metrics
    assert metrics["mse"]["mean"] < metrics["baseline"]["mse"]["mean"], metrics
    assert metrics["total_seconds"] < 180


def test_inference_copy_has_the_weights_and_no_optimizer(tmp_path):
    from dmfa_tf.training import inference_copy

    keras.utils.set_random_seed(3)
    model = dmfa_tf.build_model((8, 8, 1), "mlp", components=2, factors=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    rng = np.random.default_rng(0)
    inputs = {
        "image": rng.uniform(size=(8, 8, 8, 1)).astype("float32"),
        "mask": np.ones((8, 8, 8, 1), "float32"),
    }
    inputs["mask"][:, 2:6, 1:5] = 0
    model.fit(inputs, epochs=2, batch_size=4, verbose=0)
    copy = inference_copy(model)
    assert getattr(copy, "optimizer", None) is None
    path = str(tmp_path / "copy.keras")
    copy.save(path)
    loaded = keras.saving.load_model(path)
    expected, actual = model(inputs), loaded(inputs)
    for key in ("logits", "loc", "factors", "diag"):
        np.testing.assert_array_equal(actual[key].numpy(), expected[key].numpy())


class _LearningRateAtEnd(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        self.value = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def test_cosine_schedule_and_mlp_width(tmp_path):
    recorder = _LearningRateAtEnd()
    config = _config(tmp_path, lr_schedule="cosine", learning_rate=1e-3, width=16)
    metrics = train_and_evaluate(config, verbose=0, callbacks=[recorder])
    # CosineDecay with alpha 0.01 ends at 1% of the rate after epochs * steps.
    np.testing.assert_allclose(recorder.value, 1e-5, rtol=1e-3)
    # mlp --width=16 on 8x8 digits, K=1, L=4, by hand: input 8*8*2 = 128 values;
    # hidden 128*16+16 and 16*16+16; heads logits 16+1, loc 16*64+64,
    # factors 16*256+256, diag 16*64+64.
    assert metrics["model"]["weights"] == 2064 + 272 + 17 + 1088 + 4352 + 1088
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step").resolved()


# === Training objectives and checkpoint selection ===


def _log(tmp_path):
    with open(tmp_path / "runs" / "digits" / "log.csv") as f:
        return list(csv.DictReader(f))


def _weights_equal(model, path):
    other = dmfa_tf.build_model(model.image_shape, "mlp", components=model.num_components)
    other.load_weights(str(path))
    return all(np.array_equal(a, b) for a, b in zip(model.get_weights(), other.get_weights()))


def test_shipped_model_is_the_best_epoch_by_the_criterion(tmp_path):
    config = _config(tmp_path, epochs=3, select="val_nll+10*val_mse", objective="nll+mse")
    metrics = train_and_evaluate(config, verbose=0)
    rows = _log(tmp_path)
    scores = [float(r["val_nll"]) + 10 * float(r["val_mse"]) for r in rows]
    selection = metrics["selection"]
    assert selection["criterion"] == "val_nll+10*val_mse" and selection["epochs"] == 3
    assert selection["epoch"] == int(np.argmin(scores))
    np.testing.assert_allclose(selection["score"], min(scores), rtol=1e-5)
    np.testing.assert_allclose(
        selection["val_mse"], float(rows[selection["epoch"]]["val_mse"]), rtol=1e-5
    )
    assert "validation split" in selection["reason"]
    assert metrics["model"]["objective"] == "nll+mse:1"
    output = tmp_path / "saved" / "digits"
    assert TrainConfig.from_json((output / "config.json").read_text()).objective == "nll+mse:1"
    shipped = keras.saving.load_model(str(output / "model.keras"))
    assert shipped.objective == "nll+mse:1"  # saved with the model
    checkpoints = tmp_path / "runs" / "digits" / "checkpoints"
    record = json.loads((checkpoints / "best.json").read_text())
    assert record["epoch"] == selection["epoch"]
    assert sorted(os.listdir(checkpoints)) == sorted(["best.json", record["weights"], "last.keras"])
    assert _weights_equal(shipped, checkpoints / record["weights"])
    # A new run in the same workdir (no backup: not a resumption) starts a new best.
    train_and_evaluate(_config(tmp_path, epochs=1, select="last"), verbose=0)
    assert not (checkpoints / "best.json").exists()


def test_select_last_ships_the_last_epoch(tmp_path):
    metrics = train_and_evaluate(_config(tmp_path, epochs=2, select="last"), verbose=0)
    assert metrics["selection"]["criterion"] == "last" and metrics["selection"]["epoch"] == 1
    shipped = keras.saving.load_model(str(tmp_path / "saved" / "digits" / "model.keras"))
    last = keras.saving.load_model(str(tmp_path / "runs" / "digits" / "checkpoints" / "last.keras"))
    for a, b in zip(shipped.get_weights(), last.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_interrupted_run_remembers_its_best_epoch(tmp_path):
    config = _config(tmp_path, epochs=4, select="val_nll")
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config, verbose=0, callbacks=[_Interrupt(at_epoch=1)])
    checkpoints = tmp_path / "runs" / "digits" / "checkpoints"
    record = json.loads((checkpoints / "best.json").read_text())
    assert record["epoch"] in (0, 1) and (checkpoints / record["weights"]).exists()
    # Make the best so far unbeatable: the resumed run must keep it (it reads best.json).
    record["score"] = -1e30
    (checkpoints / "best.json").write_text(json.dumps(record))
    recorder = _Recorder()
    metrics = train_and_evaluate(config, verbose=0, callbacks=[recorder])
    assert recorder.epochs == [2, 3]
    assert metrics["selection"]["epoch"] == record["epoch"]
    shipped = keras.saving.load_model(str(tmp_path / "saved" / "digits" / "model.keras"))
    assert _weights_equal(shipped, checkpoints / record["weights"])


class _ObjectiveRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.objectives = []

    def on_epoch_end(self, epoch, logs=None):
        self.objectives.append(self.model.objective)


def test_objective_switch_epoch_goes_to_the_nll(tmp_path):
    recorder = _ObjectiveRecorder()
    config = _config(tmp_path, epochs=3, objective="nll+mse:2", objective_switch_epoch=1)
    metrics = train_and_evaluate(config, verbose=0, callbacks=[recorder])
    assert recorder.objectives == ["nll+mse:2", "nll", "nll"]
    rows = _log(tmp_path)
    # The loss is the objective; after the switch it is the NLL (metrics are the plain scores).
    np.testing.assert_allclose(
        float(rows[0]["loss"]), float(rows[0]["nll"]) + 2 * float(rows[0]["mse"]), rtol=1e-3
    )
    for row in rows[1:]:
        np.testing.assert_allclose(float(row["loss"]), float(row["nll"]), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(float(row["val_loss"]), float(row["val_nll"]), rtol=1e-4, atol=1e-4)
    assert metrics["model"]["objective_switch_epoch"] == 1


@pytest.mark.parametrize("objective", ["beta_nll:0.5", "mse_mean"])
def test_other_objectives_train(tmp_path, objective):
    metrics = train_and_evaluate(_config(tmp_path, epochs=1, objective=objective), verbose=0)
    assert np.isfinite(metrics["nll"]["mean"]) and metrics["model"]["objective"] == objective + (
        "" if ":" in objective else ":1"
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(objective="mse"), "Unknown objective"),
        (dict(objective="beta_nll:-2"), ">= 0"),
        (dict(objective_switch_epoch=2), "other than nll"),
        (dict(objective="nll+mse", objective_switch_epoch=0), "objective_switch_epoch"),
        (dict(select="val_ssim"), "select"),
        (dict(select="val_nll+-1*val_mse"), "select"),
    ],
)
def test_bad_objective_or_selection(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides).resolved()


def test_cli_objective_and_selection_flags():
    import train

    config, _ = train.parse_args([
        "--objective=nll+mse:0.5", "--objective-switch-epoch=3", "--select=val_nll+20*val_mse",
    ])
    assert (config.objective, config.objective_switch_epoch, config.select) == (
        "nll+mse:0.5", 3, "val_nll+20*val_mse"
    )
    defaults, _ = train.parse_args([])
    assert (defaults.objective, defaults.objective_switch_epoch, defaults.select) == (
        None, None, "val_nll"
    )
    # Per data set (the README's study): the best validation MSE at no cost in NLL.
    resolved = {name: TrainConfig(dataset=name).resolved().objective
                for name in ("digits", "mnist", "fashion_mnist", "celeb_a")}
    assert resolved == {"digits": "nll", "mnist": "nll+mse:1", "fashion_mnist": "nll",
                        "celeb_a": "nll+mse:0.1"}
    assert TrainConfig(dataset="mnist", objective="nll").resolved().objective == "nll"
    # Batch 16 on CelebA (the README's batch-size study), 64 elsewhere; a flag overrides it.
    batches = {name: TrainConfig(dataset=name).resolved().batch_size
               for name in ("digits", "mnist", "fashion_mnist", "celeb_a")}
    assert batches == {"digits": 64, "mnist": 64, "fashion_mnist": 64, "celeb_a": 16}
    assert TrainConfig(dataset="celeb_a", batch_size=64).resolved().batch_size == 64
    assert train.parse_args(["--dataset=celeb_a"])[0].resolved().batch_size == 16


@pytest.mark.slow
def test_train_py_killed_at_any_moment_finishes_on_rerun(tmp_path):
    """SIGKILL (and SIGINT) at moments spread over a whole run (start-up,
    epochs, backups, scoring, the final save): each rerun of the same command
    continues, and the last one finishes with a complete, loadable model."""
    import signal
    import time

    args = [sys.executable, os.path.join(ROOT, "train.py"), "--epochs=6", "--max-train-images=512",
            "--max-test-images=64", f"--output={tmp_path / 'out'}", f"--workdir={tmp_path / 'work'}"]
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")

    def run(kill_after=None, sig=signal.SIGKILL):
        process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        if kill_after is not None:
            try:
                process.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                process.send_signal(sig)
        out, err = process.communicate(timeout=600)
        return process.returncode, out, err

    started = time.time()
    code, _, err = run()  # a reference run for the timing, then start over
    assert code == 0, err
    total = time.time() - started
    (tmp_path / "out").rename(tmp_path / "reference")
    shutil.rmtree(tmp_path / "work")
    rng = np.random.default_rng(0)
    moments = sorted(rng.uniform(0.2, 1.0, size=6) * total)
    for i, moment in enumerate(moments):
        sig = signal.SIGINT if i == 2 else signal.SIGKILL
        code, _, err = run(kill_after=moment, sig=sig)
        if code == 0:  # it finished before the kill; start over for the next one
            shutil.rmtree(tmp_path / "work", ignore_errors=True)
            shutil.rmtree(tmp_path / "out", ignore_errors=True)
            continue
        if sig == signal.SIGINT and code == 130:
            assert "Run the same command again" in err and "Traceback" not in err
    code, out, err = run()
    assert code == 0, err
    model = keras.saving.load_model(str(tmp_path / "out" / "model.keras"))
    assert isinstance(model, dmfa_tf.DMFAModel)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert np.isfinite(metrics["nll"]["mean"]) and metrics["selection"]["epochs"] == 6
    with open(tmp_path / "work" / "log.csv") as f:
        assert {row["epoch"] for row in csv.DictReader(f)} <= {str(e) for e in range(6)}
    assert not (tmp_path / "work" / "backup").exists()
    assert not [p for p in os.listdir(tmp_path) if ".partial-" in p or ".old-" in p]


def _free_ports(count):
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(tmp_path, flags, ports, tag):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    workers = [f"127.0.0.1:{port}" for port in ports]
    processes = []
    for index in range(len(ports)):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        ))
        log = open(tmp_path / f"{tag}-worker{index}.log", "w")
        processes.append(subprocess.Popen(
            [sys.executable, os.path.join(repo, "train.py"), *flags, "--strategy=multi_worker"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=repo,
        ))
    return processes


def _wait_all(processes, timeout):
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            process.kill()
            codes.append("timeout")
    return codes


@pytest.mark.slow
def test_two_local_workers_train_like_one_process_and_resume_after_a_kill(tmp_path):
    import time

    common = ["--dataset=digits", "--max-train-images=512", "--max-test-images=64",
              "--jit-compile=false", "--quiet"]
    # One process, the same global batch (64): the reference.
    single = train_and_evaluate(TrainConfig(
        dataset="digits", epochs=3, max_train_images=512, max_test_images=64,
        jit_compile="false", output=str(tmp_path / "single" / "out"),
        workdir=str(tmp_path / "single" / "work"),
    ), verbose=0)

    # Two workers on loopback: the same scores; only the chief (worker 0) writes.
    out, work = tmp_path / "mw" / "out", tmp_path / "mw" / "work"
    flags = common + ["--epochs=3", f"--output={out}", f"--workdir={work}"]
    codes = _wait_all(_start_workers(tmp_path, flags, _free_ports(2), "run"), timeout=300)
    logs = "".join((tmp_path / f"run-worker{i}.log").read_text()[-2000:] for i in range(2))
    assert codes == [0, 0], logs
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("nll", "mse"):
        np.testing.assert_allclose(metrics[key]["mean"], single[key]["mean"], rtol=1e-4, atol=1e-4)
    assert sorted(os.listdir(tmp_path / "mw")) == ["out", "work"]  # nothing else written
    assert not (work / "worker-1" / "backup").exists()  # the worker's own backup, cleaned up

    # Kill worker 1 once the chief has backed up an epoch, stop the chief (a
    # collective cannot finish without its peer), and start both again: they
    # continue from the chief's backup and finish.
    out2, work2 = tmp_path / "kill" / "out", tmp_path / "kill" / "work"
    flags = common + ["--epochs=30", f"--output={out2}", f"--workdir={work2}"]
    processes = _start_workers(tmp_path, flags, _free_ports(2), "killed")
    pointer, log = work2 / "backup" / "latest", work2 / "log.csv"

    def epoch_rows():
        return len(log.read_text().splitlines()) - 1 if log.exists() else 0

    # The backup is written before the CSV row of the same epoch: wait for both.
    deadline = time.time() + 240
    while (not pointer.exists() or epoch_rows() < 1) and time.time() < deadline \
            and processes[0].poll() is None:
        time.sleep(0.2)
    assert pointer.exists(), (tmp_path / "killed-worker0.log").read_text()[-2000:]
    processes[1].kill()
    processes[0].kill()
    _wait_all(processes, timeout=60)
    assert not (out2 / "model.keras").exists()
    resumed_from = int(pointer.read_text().strip().split("-")[1])  # epochs done
    assert 1 <= resumed_from < 30
    codes = _wait_all(_start_workers(tmp_path, flags, _free_ports(2), "resumed"), timeout=300)
    logs = "".join((tmp_path / f"resumed-worker{i}.log").read_text()[-2000:] for i in range(2))
    assert codes == [0, 0], logs
    rows = list(csv.DictReader(open(log)))
    epochs = [int(row["epoch"]) for row in rows]
    # The second start began at the backed-up epoch, not at 0, and ran to the end.
    assert epochs.count(0) == 1 and epochs[-1] == 29
    assert epochs[-(30 - resumed_from):] == list(range(resumed_from, 30))
    assert json.loads((out2 / "metrics.json").read_text())["selection"]["epochs"] == 30


def test_factor_activation_and_precision_flags_reach_the_model(tmp_path):
    import train

    config, _ = train.parse_args(["--factor-activation=linear"])
    assert config.factor_activation == "linear"
    assert train.parse_args([])[0].factor_activation == "sigmoid"
    with pytest.raises(SystemExit):
        train.parse_args(["--factor-activation=relu"])
    assert train.parse_args(["--precision=mixed_bfloat16"])[0].precision == "mixed_bfloat16"
    assert train.parse_args([])[0].precision == "auto"
    from dmfa_tf import models

    expected = "mixed_bfloat16" if models.cpu_has_bfloat16() else "float32"
    assert models.resolve_precision("auto", "fullconv") == expected  # no GPU on these machines
    assert models.resolve_precision("auto", "mlp") == "float32"
    assert models.resolve_precision("float32") == "float32"
    train_and_evaluate(
        _config(tmp_path, epochs=1, factor_activation="linear", precision="mixed_bfloat16"),
        verbose=0,
    )
    model = keras.saving.load_model(tmp_path / "saved" / "digits" / "model.keras")
    assert model.head.factor_activation == "linear"
    assert model.get_layer("hidden0").compute_dtype == "bfloat16"
    assert model.head.compute_dtype == "float32"
    metrics = json.loads((tmp_path / "saved" / "digits" / "metrics.json").read_text())
    assert metrics["model"]["precision"] == "mixed_bfloat16"


def test_evaluation_stream_states_its_batch_count():
    """Keras sizes a validation pass from the stream's cardinality; without it
    the first pass ends in a spurious "ran out of data" warning."""
    import tensorflow as tf

    from dmfa_tf import masks, training

    images = np.random.default_rng(0).random((10, 4, 4, 1), dtype=np.float32)
    data = training.evaluation_data(images, masks.parse("2x2"), 4, seed=0)
    assert int(data.cardinality()) == 3
    batches = [int(tf.nest.flatten(x)[0].shape[0]) for x in data]
    assert batches == [4, 4, 2]


def test_a_standardized_run_takes_its_statistics_from_the_training_images(tmp_path):
    from dmfa_tf import data, saving
    from dmfa_tf.config import STANDARDIZE_IMAGES

    metrics = train_and_evaluate(_config(tmp_path, standardize="on"), verbose=0)
    assert metrics["model"]["standardized"] is True
    output = str(tmp_path / "saved" / "digits")
    assert saving.load_config(output)["standardize"] == "on"
    layer = saving.load(output).get_layer("observed_input")
    # The first 256 training digits (the tiny preset; fewer than STANDARDIZE_IMAGES).
    assert STANDARDIZE_IMAGES > 256
    train = data.load_sources("digits").train.take(256).to_float_array().astype(np.float64)
    assert layer.shift == pytest.approx([train.mean()], rel=1e-6)
    assert layer.scale == pytest.approx([train.std()], rel=1e-6)
    assert np.isfinite(metrics["nll"]["mean"])
