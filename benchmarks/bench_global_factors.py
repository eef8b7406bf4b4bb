"""What global factors cost a training step (README, "Global factors"), with
the density gathering the scored coordinates (the default) and masking all N
rows (`dmfa_tf.core.distribution.static_shapes()`, as under XLA).

Times `model.fit` steps of the CelebA recipe's network (fullconv, width 16,
K = 3, L = 16, opponent basis, standardised input, `nll+mse:0.1`, batch 16,
32x32x3 images with 16x16 holes, float32, no XLA) for several numbers of global
factors G, on random images, and prints the median step time of each over
`--repeats` timed epochs, its ratio to G = 0 and the masked density's time
over the gathered one's, all measured in the same run.
With `L + G` up to `dmfa_tf.core.linalg.MAX_UNROLLED` (16) the Cholesky
factorisation of the capacitance is unrolled; above it, tf.linalg's kernels
take over, so the cost is not monotone in G.

    PYTHONPATH=. python benchmarks/bench_global_factors.py --global-factors 0 16 32 48 64
    PYTHONPATH=. python benchmarks/bench_global_factors.py --global-factors 0 32 --density gathered

Run it alone on the machine: the figures are wall-clock.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def step_times(global_factors, steps=30, repeats=3, factors=16, batch=16, seed=0,
               density="gathered"):
    """Seconds per training step, one value per timed epoch of `steps` steps;
    `density` "gathered" (the default path) or "masked" (`static_shapes()`)."""
    import contextlib

    import keras
    import numpy as np
    import tensorflow as tf

    import dmfa_tf
    from dmfa_tf import masks
    from dmfa_tf.core import distribution

    keras.utils.set_random_seed(seed)
    model = dmfa_tf.build_model(
        (32, 32, 3), "fullconv", components=3, factors=factors, width=16,
        global_factors=global_factors, fill="mean", colour_basis="opponent",
        precision="float32", standardize=([0.8, 0.1, 0.12], [0.41, 0.07, 0.08]),
    )
    model.objective = "nll+mse:0.1"
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(batch * steps, 32, 32, 3)).astype(np.float32)
    mask = np.stack([masks.Rectangle(16, 16)(32, 32, [seed, i]).numpy()
                     for i in range(len(images))]).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices({"image": images, "mask": mask}).batch(batch)
    context = distribution.static_shapes() if density == "masked" else contextlib.nullcontext()
    with context:  # the training function is traced in it
        model.fit(data.take(3), epochs=1, verbose=0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(data, epochs=1, verbose=0)
        times.append((time.perf_counter() - start) / steps)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--global-factors", type=int, nargs="+", default=[0, 16, 32, 48, 64])
    parser.add_argument("--steps", type=int, default=30, help="steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per G")
    parser.add_argument(
        "--density", choices=("both", "gathered", "masked"), default="both",
        help="the density's path(s) to time (default both)",
    )
    args = parser.parse_args(argv)
    if any(g < 0 for g in args.global_factors):
        parser.error(f"--global-factors must be >= 0; received {args.global_factors}")
    values = sorted(set(args.global_factors) | {0})
    paths = ("masked", "gathered") if args.density == "both" else (args.density,)
    medians = {}
    for g in values:
        for path in paths:
            medians[g, path] = statistics.median(
                step_times(g, args.steps, args.repeats, density=path)
            )
            print(f"G = {g}, {path} density: {medians[g, path] * 1000:.0f} ms/step", flush=True)
    header = "| G | L + G |" + "".join(
        f" {path}: ms per step (median) | {path}: against G = 0 |" for path in paths
    )
    if len(paths) == 2:
        header += " masked / gathered |"
    print("\n" + header + "\n|" + "---:|" * (header.count("|") - 1))
    for g in values:
        row = f"| {g} | {16 + g} |" + "".join(
            f" {medians[g, path] * 1000:.0f} | {medians[g, path] / medians[0, path]:.2f}x |"
            for path in paths
        )
        if len(paths) == 2:
            row += f" {medians[g, 'masked'] / medians[g, 'gathered']:.2f}x |"
        print(row)


if __name__ == "__main__":
    main()
