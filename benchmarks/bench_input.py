"""The input pipeline alone: images per second and peak memory.

For photo folders (the CelebA subset in `--data-dir`, and a synthetic folder of
`--synthetic` generated JPEGs) at each image size, this measures, each in a
fresh process so that its peak resident memory (RSS) is its own:

| path | what the process does |
|---|---|
| `arrays` | the old way: `datasets.load` (float32 arrays of every split), then the training stream from a tensor of the training split |
| `cache-build` | `datasets.load_sources` with an empty cache folder: every photo decoded once into the memory-mapped uint8 cache |
| `cache` | `load_sources` on the built cache: the training stream reads the memmap |
| `files` | `load_sources(cache=False)`: the training stream reads, decodes and crops the JPEG files as it goes |
| `train-cache`, `train-files` | `model.fit` of the default network fed by the `cache` or `files` stream (the decoding shares the cores with training) |

For each it reports images/s of `training.training_data` (masks, shuffling
and batching included; the median over rounds of `--batches` batches after a
warm-up) or of the decode pass, and the peak RSS minus that of a process that
only imported TensorFlow and `dmfa_tf` (measured in the same run). Beside
them it measures the training speed of `train.py`'s default CelebA network at
the same image size (`train.py`'s architecture and precision, `model.fit` on a
fixed uint8 batch), and the same training fed by the streams, so the table
shows whether the input pipeline keeps up with training.

Usage, from the repository root (about 10 minutes on 2 CPU cores; the
synthetic folder is generated into a temporary folder and deleted):

    PYTHONPATH=. python benchmarks/bench_input.py --data-dir=../shared/data/celeba
    PYTHONPATH=. python benchmarks/bench_input.py --data-dir=../shared/data/celeba --synthetic=0 --sizes 32

Run it alone on the machine.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("arrays", "cache-build", "cache", "files")


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _stream_speed(source, image_size, batches, rounds, batch_size=64):
    """Median images/s of the training stream over `rounds` of `batches`."""
    from dmfa_tf import training

    hole = f"{image_size // 2}x{image_size // 2}"
    iterator = iter(training.training_data(source, hole, batch_size, seed=0))
    for _ in range(3):  # warm-up: tracing, the first files
        next(iterator)
    speeds = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(batches):
            next(iterator)["image"].numpy()
        speeds.append(batches * batch_size / (time.perf_counter() - started))
    return statistics.median(speeds)


def _train_speed(args):
    """Median training img/s of train.py's default CelebA network, fed by a
    fixed in-memory batch (`train`), the cache stream (`train-cache`) or the
    file stream (`train-files`)."""
    import keras
    import numpy as np

    from dmfa_tf import build_model, training
    from dmfa_tf import data as datasets
    from dmfa_tf.config import TrainConfig
    from dmfa_tf.models import precision_of, width_kwargs

    size = args.size
    config = TrainConfig(dataset="celeb_a", image_size=size).resolved()
    model = build_model((size, size, 3), architecture=config.architecture,
                        components=config.components, factors=config.factors,
                        **width_kwargs(config.architecture, config.width))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    if args.path == "train":
        source = np.random.default_rng(0).integers(0, 256, (64, size, size, 3), np.uint8)
    else:
        cache = args.cache if args.path == "train-cache" else False
        source = datasets.load_sources("celeb_a", args.folder, image_size=size, cache=cache,
                                       verbose=0).train
    data = training.training_data(source, f"{size // 2}x{size // 2}", 64, seed=0)
    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.started = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self.started)

    steps = 25 + 5
    started = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[Timer()])
    return {"images_per_second": 64 / statistics.median(times[5:]), "images": len(source),
            "wall_images_per_second": 64 * (steps - 5) / (time.perf_counter() - started
                                                          - sum(times[:5])),
            "precision": precision_of(model), "architecture": config.architecture}


def worker(args):
    """One measurement, in this process; prints one JSON line."""
    import numpy as np

    from dmfa_tf import data as datasets  # noqa: F401 (imports TensorFlow)

    size = args.size
    result = {"path": args.path, "folder": args.folder, "size": size}
    if args.path == "baseline":
        pass
    elif args.path.startswith("train"):
        result.update(_train_speed(args))
    elif args.path == "arrays":
        from dmfa_tf import training

        started = time.perf_counter()
        data = datasets.load("celeb_a", args.folder, image_size=size, cache=False, verbose=0)
        result["load_seconds"] = time.perf_counter() - started
        result["images"] = len(data.train) + len(data.val) + len(data.test)
        # The old training stream: the split converted to a tensor in the graph.
        import tensorflow as tf

        table = tf.convert_to_tensor(data.train)
        result["images_per_second"] = _stream_speed(table.numpy(), size, args.batches, args.rounds)
    else:
        cache = args.cache if args.path.startswith("cache") else False
        started = time.perf_counter()
        data = datasets.load_sources("celeb_a", args.folder, image_size=size, cache=cache, verbose=0)
        seconds = time.perf_counter() - started
        result["images"] = len(data.train) + len(data.val) + len(data.test)
        if args.path == "cache-build":
            result["load_seconds"] = seconds
            result["images_per_second"] = result["images"] / seconds  # the decode pass
        else:
            result["load_seconds"] = seconds
            result["images_per_second"] = _stream_speed(data.train, size, args.batches, args.rounds)
    result["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(result))


def _run(path, folder, size, cache, args):
    command = [
        sys.executable, __file__, "--_worker", "--path", path, "--folder", folder or "",
        "--size", str(size), "--cache", cache or "", "--batches", str(args.batches),
        "--rounds", str(args.rounds),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"{path} {folder} {size} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def make_synthetic_folder(folder, count, seed=0):
    """`count` JPEGs of 178x218 (CelebA's size): smooth random colour fields
    with a few discs, so they compress like photos (about 5 KB each)."""
    import numpy as np
    import tensorflow as tf

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:218, 0:178].astype(np.float32)
    for i in range(count):
        coarse = rng.random((4, 4, 3), np.float32)
        image = tf.image.resize(coarse[None], [218, 178], method="bicubic")[0].numpy()
        for _ in range(3):
            cy, cx, r = rng.random() * 218, rng.random() * 178, 10 + rng.random() * 40
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.random(3)
        data = tf.io.encode_jpeg(np.clip(image * 255, 0, 255).astype(np.uint8), quality=90)
        tf.io.write_file(os.path.join(folder, f"{i + 1:06d}.jpg"), data)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", help="a CelebA photo folder (e.g. ../shared/data/celeba)")
    parser.add_argument("--synthetic", type=int, default=50000,
                        help="generated JPEGs in the synthetic folder (0: none)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--batches", type=int, default=30, help="batches per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        args.cache = args.cache or False
        return worker(args)

    scratch = tempfile.mkdtemp(prefix="bench_input-")
    rows = []
    try:
        folders = []
        if args.data_dir:
            folders.append(("CelebA subset", args.data_dir))
        if args.synthetic:
            synthetic = os.path.join(scratch, "synthetic")
            started = time.perf_counter()
            make_synthetic_folder(synthetic, args.synthetic)
            megabytes = sum(e.stat().st_size for e in os.scandir(synthetic)) / 2**20
            print(f"Generated {args.synthetic:,} JPEGs ({megabytes:.0f} MB) in "
                  f"{time.perf_counter() - started:.0f} s")
            folders.append((f"synthetic ({args.synthetic:,} JPEGs)", synthetic))
        base = _run("baseline", "", 32, "", args)["peak_rss_mb"]
        print(f"Baseline process (TensorFlow and dmfa_tf imported): peak RSS {base:.0f} MB")
        for size in args.sizes:
            train = _run("train", "", size, "", args)
            print(f"Training, train.py's default CelebA network at {size}x{size}x3 "
                  f"({train['architecture']}, {train['precision']}), fixed batch: "
                  f"{train['images_per_second']:.0f} img/s", flush=True)
            for label, folder in folders:
                cache = os.path.join(scratch, f"cache-{size}-{len(rows)}")
                for path in PATHS + ("train-cache", "train-files"):
                    result = _run(path, folder, size, cache if path != "files" else "", args)
                    result.update(label=label, extra_rss_mb=result["peak_rss_mb"] - base,
                                  train_images_per_second=train["images_per_second"])
                    result.setdefault("images", len(os.listdir(folder)))
                    rows.append(result)
                    print(f"  {label:28s} {size:3d}px {path:12s} {result['images_per_second']:8.0f} img/s  "
                          f"peak RSS +{result['extra_rss_mb']:6.0f} MB  "
                          f"({result['images']:,} images; load {result.get('load_seconds', 0):.1f} s)",
                          flush=True)
                shutil.rmtree(cache, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    print("| data | size | path | images | img/s | / training on a fixed batch | peak RSS over baseline |")
    print("|---|---|---|---:|---:|---:|---:|")
    for row in rows:
        ratio = row["images_per_second"] / row["train_images_per_second"]
        print(f"| {row['label']} | {row['size']} | `{row['path']}` | {row['images']:,} | "
              f"{row['images_per_second']:,.0f} | {ratio:.1f} | {row['extra_rss_mb']:,.0f} MB |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"baseline_rss_mb": base, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
