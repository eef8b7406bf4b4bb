"""Artefact sizes, single-image CPU latency and quantisation error of the
deployment formats.

For one saved model (a `saved_models/<name>` folder; by default a fresh
untrained 8x8 `mlp` network, so the script runs anywhere) it exports, into a
temporary folder:

- the SavedModel (`dmfa_tf.export_saved_model`) with its five signatures,
  its `intervals` recalibrated by the folder's first map as the CLI does;
- `model.tflite` (float32, builtin ops only) and the quantised variants
  `model_float16.tflite` (float16 weights) and `model_dynamic_range.tflite`
  (int8 weights, float activations).

It then measures, in the same run:

1. sizes on disk: the `.keras` file (when there is one), the SavedModel folder
   (without the `.tflite` files) and each `.tflite` file;
2. latency for ONE image (batch 1), median and quartiles over `--repeats`
   calls after `--warmup` calls: the in-memory model (`model.impute` /
   `model.mixture(...).log_prob` and `recalibration.interval` in a
   `tf.function`), the SavedModel's `serving_default`, `log_prob` and
   `intervals` (level 0.9) signatures through `tf.saved_model.load`, and each
   TFLite file's `impute`, `log_prob` and `intervals` signatures through the
   LiteRT interpreter (`ai-edge-litert`, else `tf.lite.Interpreter`);
3. error of each TFLite file against the SavedModel on a batch of test images
   (the model's data set when its `config.json` names one that loads here,
   else random images), each with a centred hole of a quarter of the image:
   the largest absolute difference of `imputation`, `variance`, `log_prob`
   and the 90% interval ends, and the largest relative difference of
   `log_prob`.

Usage, from the repository root:

    PYTHONPATH=. python benchmarks/bench_serving.py --model saved_models/mnist
    PYTHONPATH=. python benchmarks/bench_serving.py --json serving.json
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    import dmfa_tf  # noqa: F401  (sets up Keras 3 before TensorFlow is imported)
except ImportError:  # run without PYTHONPATH: the package is next to this folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import dmfa_tf  # noqa: F401

import numpy as np
import tensorflow as tf

from dmfa_tf import saving
from dmfa_tf import serving as export
from dmfa_tf.core import recalibration as recalibration_lib
from dmfa_tf.core.distribution import MaskedFactorMixture, flatten_images

LEVEL = 0.9  # the intervals' level


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=None,
        help="saved model folder (model.keras or mfa.npz); default: an untrained 8x8 mlp",
    )
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per case (200)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls first (10)")
    parser.add_argument("--images", type=int, default=32, help="images for the error study (32)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    for key in ("repeats", "warmup", "images"):
        if getattr(args, key) < 1:
            parser.error(f"--{key} must be >= 1. Received: {getattr(args, key)}")
    return args


def _folder_size(path, skip_suffix=".tflite"):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            if not name.endswith(skip_suffix):
                total += os.path.getsize(os.path.join(root, name))
    return total


def _time(fn, repeats, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    q25, median, q75 = np.percentile(times, [25, 50, 75])
    return {"median_ms": float(median), "q25_ms": float(q25), "q75_ms": float(q75),
            "repeats": repeats}


def _test_batch(model_dir, image_shape, count):
    """`count` test images of the model's data set (when it loads here) or
    random ones, with a centred hole of a quarter of the image."""
    source = "random images"
    images = None
    if model_dir is not None:
        try:
            config = saving.load_config(model_dir) or {}
            from dmfa_tf import data as datasets

            if config.get("dataset"):
                data = datasets.load(
                    config["dataset"], config.get("data_dir"),
                    image_size=config.get("image_size"), crop=config.get("crop", "paper"),
                    verbose=0,
                )
                if tuple(data.image_shape) == tuple(image_shape):
                    images = np.asarray(data.test[:count], np.float32)
                    source = f"the first {len(images)} {config['dataset']} test images"
        except Exception as error:  # noqa: BLE001 - any failure: fall back to random images
            print(f"(data set not available here, random images instead: {error})")
    if images is None:
        images = np.random.default_rng(0).uniform(size=(count,) + tuple(image_shape))
        images = images.astype(np.float32)
    height, width, _ = image_shape
    mask = np.ones(images.shape[:3] + (1,), np.float32)
    mask[:, height // 4 : height // 4 + max(1, height // 2),
         width // 4 : width // 4 + max(1, width // 2)] = 0
    return images, mask, source


def main(argv=None):
    args = parse_args(argv)
    if args.model is None:
        import keras

        keras.utils.set_random_seed(0)
        model = dmfa_tf.build_model((8, 8, 1), "mlp", components=2, factors=4)
        label = "untrained 8x8 mlp (K=2, L=4)"
        keras_file = None
    else:
        model = saving.load(args.model)
        label = args.model
        keras_file = os.path.join(args.model, "model.keras")
        if not os.path.exists(keras_file):
            keras_file = None
    image_shape = export.model_image_shape(model)
    images, masks, source = _test_batch(args.model, image_shape, args.images)

    fitted = recalibration_lib.load(args.model) if args.model else None
    workdir = tempfile.mkdtemp(prefix="bench-serving-")
    try:
        version = export.export_saved_model(
            model, os.path.join(workdir, "model"), tflite=True,
            quantize=export.QUANTIZATIONS, recalibration=fitted,
        )
        tflite_files = {
            "float32": os.path.join(version, "model.tflite"),
            **{q: os.path.join(version, f"model_{q}.tflite") for q in export.QUANTIZATIONS},
        }
        sizes = {"saved_model": _folder_size(version)}
        if keras_file:
            sizes["keras"] = os.path.getsize(keras_file)
        for name, path in tflite_files.items():
            sizes[f"tflite_{name}"] = os.path.getsize(path)

        one_image = tf.constant(images[:1])
        one_mask = tf.constant(masks[:1])
        loaded = tf.saved_model.load(version)
        serving = loaded.signatures["serving_default"]
        log_prob_sig = loaded.signatures["log_prob"]
        intervals_sig = loaded.signatures["intervals"]
        level = tf.constant(LEVEL)

        @tf.function(input_signature=[tf.TensorSpec(one_image.shape), tf.TensorSpec(one_mask.shape)])
        def in_memory_impute(image, mask):
            params = model({"image": image, "mask": mask}, training=False)
            return MaskedFactorMixture.from_images(params, mask, image).imputation()

        @tf.function(input_signature=[tf.TensorSpec(one_image.shape), tf.TensorSpec(one_mask.shape)])
        def in_memory_log_prob(image, mask):
            params = model({"image": image, "mask": mask}, training=False)
            dist = MaskedFactorMixture.from_images(params, mask, image)
            return dist.log_prob(flatten_images(image))

        @tf.function(input_signature=[tf.TensorSpec(one_image.shape), tf.TensorSpec(one_mask.shape)])
        def in_memory_intervals(image, mask):
            params = model({"image": image, "mask": mask}, training=False)
            dist = MaskedFactorMixture.from_images(params, mask, image)
            return recalibration_lib.interval(dist, LEVEL, fitted)

        timings = {
            "in_memory": {
                "impute": _time(lambda: in_memory_impute(one_image, one_mask).numpy(),
                                args.repeats, args.warmup),
                "log_prob": _time(lambda: in_memory_log_prob(one_image, one_mask).numpy(),
                                  args.repeats, args.warmup),
                "intervals": _time(lambda: in_memory_intervals(one_image, one_mask)[0].numpy(),
                                   args.repeats, args.warmup),
            },
            "saved_model": {
                "impute": _time(
                    lambda: serving(image=one_image, mask=one_mask)["imputation"].numpy(),
                    args.repeats, args.warmup),
                "log_prob": _time(
                    lambda: log_prob_sig(image=one_image, mask=one_mask)["log_prob"].numpy(),
                    args.repeats, args.warmup),
                "intervals": _time(
                    lambda: intervals_sig(image=one_image, mask=one_mask, level=level)[
                        "lower"].numpy(),
                    args.repeats, args.warmup),
            },
        }
        np_image, np_mask = images[:1], masks[:1]
        errors = {}
        reference_impute = serving(image=tf.constant(images), mask=tf.constant(masks))
        reference_log_prob = log_prob_sig(
            image=tf.constant(images), mask=tf.constant(masks))["log_prob"].numpy()
        reference_ends = intervals_sig(
            image=tf.constant(images), mask=tf.constant(masks), level=level)
        for name, path in tflite_files.items():
            interpreter = export.tflite_interpreter(path)
            impute_runner = interpreter.get_signature_runner("impute")
            log_prob_runner = interpreter.get_signature_runner("log_prob")
            intervals_runner = interpreter.get_signature_runner("intervals")
            np_level = np.float32(LEVEL)
            timings[f"tflite_{name}"] = {
                "impute": _time(lambda: impute_runner(image=np_image, mask=np_mask),
                                args.repeats, args.warmup),
                "log_prob": _time(lambda: log_prob_runner(image=np_image, mask=np_mask),
                                  args.repeats, args.warmup),
                "intervals": _time(
                    lambda: intervals_runner(image=np_image, mask=np_mask, level=np_level),
                    args.repeats, args.warmup),
            }
            ends = intervals_runner(image=images, mask=masks, level=np_level)
            out = impute_runner(image=images, mask=masks)
            scored = log_prob_runner(image=images, mask=masks)["log_prob"]
            errors[name] = {
                "imputation_max_abs": float(np.max(np.abs(
                    out["imputation"] - reference_impute["imputation"].numpy()))),
                "variance_max_abs": float(np.max(np.abs(
                    out["variance"] - reference_impute["variance"].numpy()))),
                "log_prob_max_abs": float(np.max(np.abs(scored - reference_log_prob))),
                "log_prob_max_rel": float(np.max(
                    np.abs(scored - reference_log_prob) / np.maximum(np.abs(reference_log_prob), 1.0))),
                "intervals_max_abs": max(
                    float(np.max(np.abs(ends[key] - reference_ends[key].numpy())))
                    for key in ("lower", "upper")),
            }
        ops = export.tflite_ops(tflite_files["float32"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    results = {
        "model": label,
        "image_shape": list(image_shape),
        "error_images": source,
        "sizes_bytes": sizes,
        "latency_batch1": timings,
        "tflite_error_vs_saved_model": errors,
        "tflite_ops": ops,
        "intervals_recalibration": None if fitted is None else fitted.fitted_on,
        "hardware": f"{os.cpu_count()} CPU cores ({platform.machine()})",
        "versions": {"tensorflow": tf.__version__, "python": platform.python_version()},
    }
    _print(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


def _print(results):
    print(f"\nModel: {results['model']}, image {tuple(results['image_shape'])}, "
          f"on {results['hardware']}, TensorFlow {results['versions']['tensorflow']}")
    print("\n| artefact | size |\n|---|---|")
    for name, size in results["sizes_bytes"].items():
        print(f"| {name} | {size / 1e6:.2f} MB |")
    base = results["latency_batch1"]["saved_model"]
    print("\nOne image (batch 1), median ms [quartiles] over repeated calls; ratio to the SavedModel:")
    cases_timed = ("impute", "log_prob", "intervals")
    print("\n| runtime | " + " | ".join(f"{c} ms" for c in cases_timed) + " | "
          + " | ".join(f"{c} ratio" for c in cases_timed) + " |")
    print("|---" * (2 * len(cases_timed) + 1) + "|")
    for name, cases in results["latency_batch1"].items():
        cells = []
        for case in cases_timed:
            t = cases[case]
            cells.append(f"{t['median_ms']:.3f} [{t['q25_ms']:.3f}, {t['q75_ms']:.3f}]")
        ratios = [f"{cases[c]['median_ms'] / base[c]['median_ms']:.2f}x" for c in cases_timed]
        print(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    print(f"\nTFLite against the SavedModel on {results['error_images']} (centred hole):")
    print("\n| file | imputation max abs | variance max abs | log_prob max abs | log_prob max rel "
          "| 90% interval ends max abs |")
    print("|---|---|---|---|---|---|")
    for name, e in results["tflite_error_vs_saved_model"].items():
        print(f"| {name} | {e['imputation_max_abs']:.2e} | {e['variance_max_abs']:.2e} | "
              f"{e['log_prob_max_abs']:.2e} | {e['log_prob_max_rel']:.2e} | "
              f"{e['intervals_max_abs']:.2e} |")
    fitted = results.get("intervals_recalibration")
    print("\nIntervals: " + ("the model's own" if fitted is None else
                            f"recalibrated by the map fitted on {fitted.get('mask')} holes of "
                            f"the {fitted.get('split')} split"))
    print(f"\nTFLite operators (float32 file): {', '.join(results['tflite_ops'])}")


if __name__ == "__main__":
    main()
