"""Quality per CPU minute: candidate networks trained for the same wall time.

Each candidate (an architecture with its options, an objective, K, L, batch
and learning rate) trains with `model.fit` in a fresh process for the same
wall-clock budget, with a learning rate that follows a cosine over that
budget (set at each chunk of steps, from the elapsed time), and is then
scored on the first images of the validation split with seeded masks (those
of `evaluate.py --split=val`). For each candidate it prints:

- speed: weights, images per second (median over the chunks after the first),
  the first chunk's time (tracing and XLA's compile), images seen, peak RSS;
- quality: validation NLL and MSE (per image, summed over the missing pixels,
  mean), coverage of the central 50% and 90% per-pixel intervals, and the
  share of images beyond the chi-squared 99th percentile (`evaluate.py`'s
  calibration, at dequantized values for 8-bit data; the JSON also has them at
  the stored values).

The trained models stay in `--save` (`study/bench_quality/<candidate>/`), saved
before scoring.

Usage, from the repository root (each candidate takes `--minutes` plus about
a minute of start-up and scoring; run it alone on the machine):

    PYTHONPATH=. python benchmarks/bench_quality.py --minutes=8 \\
        --candidates "fullconv width=16" "fullconv width=32" "mlp hidden=(512,512)"
    PYTHONPATH=. python benchmarks/bench_quality.py --dataset=celeb_a \\
        --data-dir=../shared/data/celeba --hole=16x16 --candidates "fullconv width=16"
    PYTHONPATH=. python benchmarks/bench_quality.py --layer-timings

A candidate is `architecture [key=value ...]`: keys `objective`, `components`,
`factors`, `batch`, `lr`, `floor` (the variance floor) and `dequantize`
(`true`: fit to dequantized targets, `dmfa_tf.data.dequantization`) set the
training; any other key goes to `build_model` as an architecture option
(`width`, `depth`, `hidden`, `blocks`, ...), its value read as a Python literal.
"""

import argparse
import ast
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training import peak_rss_mb  # noqa: E402  (one home for the RSS reading)
TRAINING_KEYS = {
    "objective": str,
    "components": int,
    "factors": int,
    "batch": int,
    "lr": float,
    "floor": float,
    "dequantize": lambda v: v.lower() in ("1", "true", "yes"),
}


def parse_candidate(text):
    """`(architecture, training options, architecture options)` of a candidate."""
    parts = text.split()
    if not parts:
        raise ValueError("An empty candidate.")
    training = dict(objective="nll", components=1, factors=4, batch=64, lr=1e-3, floor=None,
                    dequantize=False)
    options = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"Candidate {text!r}: expected key=value, got {part!r}")
        if key in TRAINING_KEYS:
            training[key] = TRAINING_KEYS[key](value)
        else:
            try:
                options[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                options[key] = value
    return parts[0], training, options


def worker(args):
    """Trains and scores one candidate; prints one JSON line."""
    import keras
    import numpy as np
    import tensorflow as tf

    from dmfa_tf import data as datasets
    from dmfa_tf import evaluation
    from dmfa_tf.data import dequantization
    from dmfa_tf import masks as masks_lib
    from dmfa_tf.models import build_model
    from dmfa_tf.training import training_data

    architecture, training, options = parse_candidate(args.worker)
    keras.utils.set_random_seed(args.seed)
    data = datasets.load(args.dataset, args.data_dir or None, image_size=args.image_size, verbose=0,
                         splits=("train", "val"))
    train = data.train[: args.max_train_images]
    val = data.val[: args.val_images]
    mask = masks_lib.parse(args.hole)
    model = build_model(
        data.image_shape, architecture, components=training["components"],
        factors=training["factors"], variance_floor=training["floor"], **options,
    )
    model.objective = training["objective"]
    model.compile(keras.optimizers.Adam(training["lr"]))
    budget = 60.0 * args.minutes
    chunk = args.chunk

    class Budget(keras.callbacks.Callback):
        """Cosine learning rate over the wall-clock budget; stops when it is spent."""

        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_begin(self, logs=None):
            self.started = time.perf_counter()
            self.last = self.started

        def on_epoch_begin(self, epoch, logs=None):
            progress = min(1.0, (time.perf_counter() - self.started) / budget)
            rate = training["lr"] * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))
            self.model.optimizer.learning_rate.assign(rate)

        def on_epoch_end(self, epoch, logs=None):
            now = time.perf_counter()
            self.times.append(now - self.last)
            self.last = now
            if now - self.started >= budget:
                self.model.stop_training = True

    timer = Budget()
    data_stream = training_data(train, mask, training["batch"], args.seed)
    if training["dequantize"]:
        step = dequantization.quantization_step(train[:1000])
        data_stream = dequantization.dequantize_targets(data_stream, step, args.seed)
    # `epochs` is an upper bound: the callback stops at the budget. With it,
    # fit knows the run is long enough for XLA (jit_compile="auto").
    model.fit(data_stream, epochs=100000, steps_per_epoch=chunk, callbacks=[timer], verbose=0)
    save = os.path.join(args.save, _slug(args.worker))
    os.makedirs(save, exist_ok=True)
    model.save(os.path.join(save, "model.keras"))  # before scoring: nothing trained is lost
    steady = timer.times[1:] or timer.times
    images_per_second = chunk * training["batch"] / statistics.median(steady)
    scores = evaluation.score(model, val, mask, seed=args.eval_seed)
    calibration = evaluation.calibration(scores)
    raw = evaluation.calibration(evaluation.score(model, val, mask, seed=args.eval_seed, dequantize=0))
    nll = np.asarray(scores["nll"])
    result = {
        "candidate": args.worker,
        "weights": int(model.count_params()),
        "jit_compile": bool(model.jit_compile),
        "images_per_second": round(images_per_second, 1),
        "first_chunk_s": round(timer.times[0], 1),
        "train_s": round(sum(timer.times), 1),
        "images_seen": len(timer.times) * chunk * training["batch"],
        "val_images": len(val),
        "val_nll": float(np.mean(nll)),
        "val_nll_median": float(np.median(nll)),
        "val_mse": float(np.mean(scores["squared_error"])),
        "coverage_50": calibration["coverage_50"],
        "coverage_90": calibration["coverage_90"],
        "chi2_above_p99": calibration["mahalanobis_above_p99"],
        "chi2_below_p1": calibration["mahalanobis_below_p1"],
        "dequantization_step": calibration["dequantization_step"],
        "raw_coverage_50": raw["coverage_50"],
        "raw_coverage_90": raw["coverage_90"],
        "raw_chi2_above_p99": raw["mahalanobis_above_p99"],
        "raw_chi2_below_p1": raw["mahalanobis_below_p1"],
        "peak_rss_mb": round(peak_rss_mb(), 0),
    }
    print("RESULT " + json.dumps(result), flush=True)


def layer_timings(batch=64, repeats=10):
    """Forward + backward time of one 3x3 convolution against its separable
    and depthwise forms, XLA-compiled, at the U-Net's sizes: is a separable
    U-Net cheaper on this CPU? Returns rows of (layer, channels, side, ms)."""
    import keras
    import tensorflow as tf

    rows = []
    for channels, side in ((16, 32), (32, 16), (32, 32), (64, 16)):
        x = tf.random.normal((batch, side, side, channels), seed=0)
        for name, make in (
            ("conv 3x3", lambda: keras.layers.Conv2D(channels, 3, padding="same")),
            ("separable 3x3", lambda: keras.layers.SeparableConv2D(channels, 3, padding="same")),
            ("depthwise 3x3", lambda: keras.layers.DepthwiseConv2D(3, padding="same")),
            ("conv 1x1", lambda: keras.layers.Conv2D(channels, 1, padding="same")),
        ):
            layer = make()
            layer.build(x.shape)

            @tf.function(jit_compile=True)
            def step(x, layer=layer):
                with tf.GradientTape() as tape:
                    loss = tf.reduce_sum(tf.square(layer(x)))
                return tape.gradient(loss, layer.trainable_variables)

            step(x)
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                [g.numpy() for g in step(x)]
                times.append(time.perf_counter() - started)
            rows.append((name, channels, side, 1000 * statistics.median(times)))
    return rows


def _slug(text):
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")


def table(rows):
    lines = [
        "| candidate | weights | img/s | first chunk s | images seen | val NLL | val MSE "
        "| cov 50% | cov 90% | chi2 > p99 | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['candidate']}` | {r['weights']:,} | {r['images_per_second']:.0f} "
            f"| {r['first_chunk_s']:.0f} | {r['images_seen']:,} | {r['val_nll']:.2f} "
            f"| {r['val_mse']:.2f} | {100 * r['coverage_50']:.1f}% | {100 * r['coverage_90']:.1f}% "
            f"| {100 * r['chi2_above_p99']:.1f}% | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--hole", default="14x14")
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget per candidate")
    parser.add_argument("--chunk", type=int, default=50, help="steps between schedule updates")
    parser.add_argument("--max-train-images", type=int, default=None)
    parser.add_argument("--val-images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--candidates", nargs="+", default=["fullconv width=16"])
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--save", default=os.path.join("study", "bench_quality"),
                        help="the trained models go to <save>/<candidate>/model.keras "
                        "(default study/bench_quality)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--layer-timings", action="store_true",
                        help="only time a 3x3 convolution against its separable and "
                        "depthwise forms (batch 64, XLA) and exit")
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.layer_timings:
        rows = layer_timings()
        print("| layer | channels | size | forward + backward ms (median, batch 64) |")
        print("|---|---:|---:|---:|")
        for name, channels, side, ms in rows:
            print(f"| {name} | {channels} | {side}x{side} | {ms:.1f} |")
        return rows
    for candidate in args.candidates:
        parse_candidate(candidate)  # fail before any training
    rows = []
    for candidate in args.candidates:
        settings = {k: v for k, v in vars(args).items()
                    if k not in ("candidates", "json", "worker", "layer_timings") and v is not None}
        command = [sys.executable, __file__, "--worker", candidate] + [
            f"--{key.replace('_', '-')}={value}" for key, value in settings.items()
        ]
        print(f"== {candidate}", flush=True)
        started = time.time()
        process = subprocess.run(command, capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
        lines = [l for l in process.stdout.splitlines() if l.startswith("RESULT ")]
        if process.returncode or not lines:
            print(process.stderr[-3000:], file=sys.stderr)
            print(f"   failed (rc {process.returncode})", flush=True)
            continue
        row = json.loads(lines[-1][len("RESULT "):])
        row["process_s"] = round(time.time() - started, 1)
        rows.append(row)
        print("   " + json.dumps(row), flush=True)
    print(table(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
