"""Speed and float32 accuracy of the masked mixture NLL, three ways (ours in two forms).

On the same random inputs (a batch of images with one rectangular hole each,
a mixture of factor analysers per image) this script times the batch mean of
`-log_prob` of the missing pixels, forward only and forward + gradient with
respect to `logits`, `loc`, `factors` and `diag`, inside `tf.function`:

1. ours: `dmfa_tf.MaskedFactorMixture(...).log_prob(x)` (Woodbury on each
   image's gathered missing coordinates, padded to the batch's largest count).
   "ours, all N rows" is the same inside `dmfa_tf.core.rows.static_shapes()`:
   Woodbury on all N coordinates with the unscored ones whitened to zero, the
   path it takes under XLA and in the TFLite export.
2. TFP direct: `tfd.MixtureSameFamily` of
   `tfd.MultivariateNormalDiagPlusLowRankCovariance`, with the "zero trick":
   at coordinates that are not scored, `x` and `loc` are 0, the factor rows 0
   and the variance 1, so each of them adds exactly `-0.5 log(2 pi)`, which is
   added back.
3. dense per example: a Python loop over the batch that gathers each example's
   missing coordinates, builds the `|M| x |M|` covariance of every component
   and evaluates `tfd.MultivariateNormalTriL` on its Cholesky factor (what a
   direct port of the reference code does).

They are all first checked to agree on the per-example log densities (and,
loosely, on the gradients); the script stops with an error (exit status 1)
when they do not. Times are medians over repeated calls after warm-up calls;
the first call of each function (tracing, and compiling under `--xla`) is
reported apart.

The default run takes about a minute and a half on 2 CPU cores. Under `--xla`
the dense path compiles for minutes and runs for seconds per batch (XLA's CPU
Cholesky is slow): `--xla --dense-repeats 3`, or `--skip-dense`.

`--accuracy` adds a float32 accuracy study against a float64 dense NumPy
reference, with variances down to 1e-6 and data drawn from the mixture.

Usage, from the repository root:

    PYTHONPATH=. python benchmarks/bench_log_prob.py
    PYTHONPATH=. python benchmarks/bench_log_prob.py --xla --json bench.json
    PYTHONPATH=. python benchmarks/bench_log_prob.py --accuracy --skip-timing
"""

import argparse
import json
import math
import os
import platform
import sys
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
import tensorflow_probability as tfp

from dmfa_tf import masks as masks_lib
from dmfa_tf.core.distribution import MISSING, MaskedFactorMixture
from dmfa_tf.core.rows import static_shapes

tfd = tfp.distributions

_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)

IMPLEMENTATIONS = ("ours", "ours_static", "tfp_direct", "dense")
LABELS = {
    "ours": "ours (MaskedFactorMixture)",
    "ours_static": "ours, all N rows (static_shapes())",
    "tfp_direct": "TFP direct (MixtureSameFamily + zero trick)",
    "dense": "dense per example (gather + MVNTriL)",
}
SHORT_LABELS = {
    "ours": "ours", "ours_static": "ours, N rows", "tfp_direct": "TFP direct", "dense": "dense",
}


class AgreementError(RuntimeError):
    """The implementations disagree on the same inputs."""


# === Command line ===


def _hole(text):
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a hole is HxW, e.g. 14x14; got {text!r}"
        ) from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"hole sides must be >= 1; got {text!r}")
    return height, width


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Time the masked mixture NLL (ours, TFP direct, dense per "
        "example), forward and forward + gradient, and optionally measure "
        "float32 accuracy against a float64 reference.",
    )
    size = parser.add_argument_group("timing problem")
    size.add_argument("--batch", type=int, default=64, help="B, images per batch (64)")
    size.add_argument("--components", type=int, default=4, help="K, mixture components (4)")
    size.add_argument("--factors", type=int, default=4, help="L, factors per component (4)")
    size.add_argument("--size", type=int, default=28, help="image side, N = size**2 (28)")
    size.add_argument("--hole", type=_hole, default=(14, 14), help="hole HxW per image (14x14)")
    size.add_argument("--seed", type=int, default=0, help="seed of inputs and masks (0)")
    timing = parser.add_argument_group("timing")
    timing.add_argument("--repeats", type=int, default=20, help="timed calls per case (20)")
    timing.add_argument(
        "--dense-repeats", type=int, default=10, help="timed calls of the dense path (10)"
    )
    timing.add_argument(
        "--warmup", type=int, default=2,
        help="untimed calls after the first (tracing) call (2; the dense path uses 1)",
    )
    timing.add_argument(
        "--xla", action="store_true", help="tf.function(jit_compile=True) for all of them"
    )
    timing.add_argument("--skip-dense", action="store_true", help="leave out the dense path")
    timing.add_argument(
        "--skip-timing", action="store_true",
        help="no agreement check and no timing (use with --accuracy)",
    )
    timing.add_argument(
        "--tolerance", type=float, default=1e-2,
        help="largest allowed |log_prob - ours| in nats per example (1e-2)",
    )
    accuracy = parser.add_argument_group("accuracy study (--accuracy)")
    accuracy.add_argument(
        "--accuracy", action="store_true",
        help="float32 relative error of ours and TFP direct vs a float64 dense reference",
    )
    accuracy.add_argument("--acc-batch", type=int, default=32, help="images (32)")
    accuracy.add_argument("--acc-components", type=int, default=3, help="K (3)")
    accuracy.add_argument("--acc-factors", type=int, default=4, help="L (4)")
    accuracy.add_argument("--acc-size", type=int, default=12, help="image side (12)")
    accuracy.add_argument(
        "--acc-hole", type=_hole, default=(6, 6),
        help="hole of the even-numbered images (6x6); odd ones get pixel dropout",
    )
    accuracy.add_argument(
        "--acc-dropout", type=float, default=0.5, help="missing rate of the dropout masks (0.5)"
    )
    accuracy.add_argument(
        "--acc-min-variance", type=float, default=1e-6,
        help="variances are log-uniform in [this, 1] (1e-6)",
    )
    accuracy.add_argument(
        "--acc-factor-scale", type=float, default=0.25,
        help="scale of the factors: the standard deviation, or the half-width (0.25)",
    )
    accuracy.add_argument(
        "--acc-factor-dist", choices=("normal", "uniform"), default="normal",
        help="factors normal(0, scale) or uniform in [-scale, scale] (normal)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    for name in ("batch", "components", "factors", "size", "acc_batch",
                 "acc_components", "acc_factors", "acc_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("repeats", "dense_repeats", "warmup"):
        if getattr(args, name) < (1 if name != "warmup" else 0):
            parser.error(f"--{name.replace('_', '-')} is too small")
    if max(args.hole) > args.size:
        parser.error(
            f"a {args.hole[0]}x{args.hole[1]} hole does not fit a {args.size}x{args.size} image"
        )
    if max(args.acc_hole) > args.acc_size:
        parser.error("--acc-hole does not fit --acc-size")
    return args


# === Inputs ===


def machine_info():
    gpus = tf.config.list_physical_devices("GPU")
    import keras

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tensorflow_probability": tfp.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "gpus": [gpu.name for gpu in gpus],
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def hole_masks(batch, size, hole, seed):
    """`[B, size * size]` float32 masks, one `hole` per image at a seeded place."""
    generator = masks_lib.Rectangle(*hole)
    rows = [generator(size, size, seed=[seed, b]).numpy().reshape(-1) for b in range(batch)]
    return np.stack(rows).astype(np.float32)


def timing_inputs(args):
    """Random but realistic parameters, data and masks (float32 NumPy)."""
    rng = np.random.default_rng(args.seed)
    b, k, l, n = args.batch, args.components, args.factors, args.size**2
    return {
        "logits": rng.normal(size=(b, k)).astype(np.float32),
        "loc": rng.uniform(0.0, 1.0, size=(b, k, n)).astype(np.float32),
        "factors": rng.uniform(-0.25, 0.25, size=(b, k, n, l)).astype(np.float32),
        "diag": (1e-4 + rng.uniform(0.0, 1.0, size=(b, k, n))).astype(np.float32),
        "mask": hole_masks(b, args.size, args.hole, args.seed),
        "x": rng.uniform(0.0, 1.0, size=(b, n)).astype(np.float32),
    }


# === The implementations: [B] log densities of the missing coordinates ===


def ours_log_prob(logits, loc, factors, diag, mask, x):
    return MaskedFactorMixture(logits, loc, factors, diag, mask).log_prob(x)


def ours_static_log_prob(logits, loc, factors, diag, mask, x):
    with static_shapes():  # read while tracing
        return MaskedFactorMixture(logits, loc, factors, diag, mask).log_prob(x)


def tfp_direct_log_prob(logits, loc, factors, diag, mask, x):
    scored = tf.equal(mask, MISSING)  # [B, N]
    scored_k = scored[:, None, :]  # [B, 1, N]
    x = tf.where(scored, x, tf.zeros_like(x))
    loc = tf.where(scored_k, loc, tf.zeros_like(loc))
    factors = tf.where(scored_k[..., None], factors, tf.zeros_like(factors))
    diag = tf.where(scored_k, diag, tf.ones_like(diag))
    mixture = tfd.MixtureSameFamily(
        mixture_distribution=tfd.Categorical(logits=logits),
        components_distribution=tfd.MultivariateNormalDiagPlusLowRankCovariance(
            loc=loc, cov_diag_factor=diag, cov_perturb_factor=factors
        ),
    )
    num_unscored = tf.reduce_sum(tf.cast(~scored, x.dtype), axis=-1)  # [B]
    return mixture.log_prob(x) + _HALF_LOG_TWO_PI * num_unscored


def make_dense_log_prob(static_indices=None):
    """The per-example dense path.

    With `static_indices` (one int array per example, needed under XLA, which
    wants static shapes) the missing coordinates are baked into the graph;
    without, each example's are found from the mask inside the graph.
    """

    def dense_log_prob(logits, loc, factors, diag, mask, x):
        log_weights = tf.math.log_softmax(logits, axis=-1)  # [B, K]
        out = []
        for b in range(x.shape[0]):  # a Python loop: one subgraph per example
            if static_indices is None:
                index = tf.where(tf.equal(mask[b], MISSING))[:, 0]  # [M]
            else:
                index = tf.constant(static_indices[b], tf.int32)  # [M]
            x_m = tf.gather(x[b], index)  # [M]
            loc_m = tf.gather(loc[b], index, axis=-1)  # [K, M]
            factors_m = tf.gather(factors[b], index, axis=-2)  # [K, M, L]
            diag_m = tf.gather(diag[b], index, axis=-1)  # [K, M]
            cov = tf.linalg.matmul(factors_m, factors_m, transpose_b=True)
            cov += tf.linalg.diag(diag_m)  # [K, M, M]
            scale = tf.linalg.cholesky(cov)  # [K, M, M]
            component = tfd.MultivariateNormalTriL(loc=loc_m, scale_tril=scale).log_prob(x_m)
            out.append(tf.reduce_logsumexp(component + log_weights[b], axis=-1))
        return tf.stack(out)  # [B]

    return dense_log_prob


def build_functions(log_prob, jit_compile):
    """`tf.function`s: per-example log densities, forward loss, loss + gradients."""

    @tf.function(jit_compile=jit_compile)
    def log_prob_fn(logits, loc, factors, diag, mask, x):
        return log_prob(logits, loc, factors, diag, mask, x)

    @tf.function(jit_compile=jit_compile)
    def forward_fn(logits, loc, factors, diag, mask, x):
        return -tf.reduce_mean(log_prob(logits, loc, factors, diag, mask, x))

    @tf.function(jit_compile=jit_compile)
    def gradient_fn(logits, loc, factors, diag, mask, x):
        params = [logits, loc, factors, diag]
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = -tf.reduce_mean(log_prob(logits, loc, factors, diag, mask, x))
        return loss, tape.gradient(loss, params)

    return {"log_prob": log_prob_fn, "forward": forward_fn, "gradient": gradient_fn}


def implementations(mask, jit_compile, skip_dense=False):
    """name -> functions; `mask` (NumPy `[B, N]`) fixes the dense path's indices."""
    log_probs = {
        "ours": ours_log_prob,
        "ours_static": ours_static_log_prob,
        "tfp_direct": tfp_direct_log_prob,
    }
    if not skip_dense:
        static = None
        if jit_compile:
            static = [np.flatnonzero(row == MISSING).astype(np.int32) for row in mask]
        log_probs["dense"] = make_dense_log_prob(static)
    return {name: build_functions(fn, jit_compile) for name, fn in log_probs.items()}


# === Agreement and timing ===


def check_agreement(functions, tensors, tolerance, gradients):
    """Per-example log densities and gradients of every implementation vs ours.

    `gradients` maps each name to the output of its `gradient` function.
    """
    log_probs = {name: f["log_prob"](*tensors).numpy() for name, f in functions.items()}
    reference = log_probs["ours"].astype(np.float64)
    if not np.all(np.isfinite(reference)):
        raise AgreementError("ours returned non-finite log densities")
    report = {
        "tolerance_nats": tolerance,
        "log_prob_range": [float(reference.min()), float(reference.max())],
        "max_abs_diff_nats": {},
        "max_rel_diff": {},
        "grad_max_diff_over_max_abs": {},
    }
    failures = []
    for name, values in log_probs.items():
        if name == "ours":
            continue
        diff = np.abs(values.astype(np.float64) - reference)
        worst = float(np.max(diff)) if np.all(np.isfinite(values)) else float("inf")
        report["max_abs_diff_nats"][name] = worst
        report["max_rel_diff"][name] = float(np.max(diff / np.maximum(1.0, np.abs(reference))))
        if not worst <= tolerance:
            failures.append(f"{name}: max |log_prob - ours| = {worst:.3g} nats > {tolerance:g}")
        per_param = {}
        for key, ours_g, other_g in zip(
            ("logits", "loc", "factors", "diag"), gradients["ours"][1], gradients[name][1]
        ):
            ours_g, other_g = ours_g.numpy(), other_g.numpy()
            scale = max(float(np.max(np.abs(ours_g))), 1e-30)
            per_param[key] = float(np.max(np.abs(other_g - ours_g))) / scale
        report["grad_max_diff_over_max_abs"][name] = per_param
        # Gradients: a loose sanity check (float32, different algorithms).
        if not max(per_param.values()) <= 1e-2:
            failures.append(f"{name}: gradients differ from ours: {per_param}")
    report["passed"] = not failures
    report["failures"] = failures
    return report


def _sync(outputs):
    # Fetching one output waits for the whole call (also on a GPU stream).
    first = tf.nest.flatten(outputs)[0]
    first.numpy()


def first_call(fn, tensors):
    """The first call (tracing, and compiling under XLA): (outputs, seconds)."""
    start = time.perf_counter()
    outputs = fn(*tensors)
    _sync(outputs)
    return outputs, time.perf_counter() - start


def time_calls(fn, tensors, warmup, repeats):
    """Median and quartiles of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        _sync(fn(*tensors))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _sync(fn(*tensors))
        times.append(1e3 * (time.perf_counter() - start))
    q25, median, q75 = np.percentile(times, [25, 50, 75])
    return {
        "median_ms": float(median),
        "q25_ms": float(q25),
        "q75_ms": float(q75),
        "iqr_ms": float(q75 - q25),
        "min_ms": float(np.min(times)),
        "repeats": repeats,
        "warmup": warmup,
        "times_ms": [float(t) for t in times],
    }


def run_timing(args):
    inputs = timing_inputs(args)
    keys = ("logits", "loc", "factors", "diag", "mask", "x")
    tensors = [tf.constant(inputs[key]) for key in keys]
    functions = implementations(inputs["mask"], args.xla, args.skip_dense)
    missing = (inputs["mask"] == MISSING).sum(axis=-1)
    print(
        f"Problem: B={args.batch} K={args.components} N={args.size**2} "
        f"({args.size}x{args.size}x1) L={args.factors}, one {args.hole[0]}x{args.hole[1]} hole "
        f"per image ({int(missing.min())}..{int(missing.max())} missing pixels), "
        f"{'XLA (jit_compile=True)' if args.xla else 'graph mode (tf.function)'}, seed {args.seed}"
    )
    if "dense" in functions:
        print(
            "Dense path: missing coordinates "
            + ("baked in as constants (XLA needs static shapes)" if args.xla
               else "found from the mask inside the graph (tf.where + tf.gather)")
        )
    print("\nTracing" + (" and compiling" if args.xla else "") + " ...", flush=True)
    gradients, first_calls = {}, {}
    for name, fns in functions.items():
        _, forward_s = first_call(fns["forward"], tensors)
        gradients[name], gradient_s = first_call(fns["gradient"], tensors)
        first_calls[name] = {"forward": forward_s, "gradient": gradient_s}
    print("Checking agreement (per-example log_prob vs ours) ...", flush=True)
    agreement = check_agreement(functions, tensors, args.tolerance, gradients)
    low, high = agreement["log_prob_range"]
    print(f"  ours: log_prob in [{low:.1f}, {high:.1f}] nats")
    for name in agreement["max_abs_diff_nats"]:
        grads = agreement["grad_max_diff_over_max_abs"][name]
        print(
            f"  {SHORT_LABELS[name]:>10}: max |log_prob - ours| = "
            f"{agreement['max_abs_diff_nats'][name]:.3g} nats "
            f"(relative {agreement['max_rel_diff'][name]:.2g}); "
            "gradients max|diff|/max|ours| = "
            + ", ".join(f"{k} {v:.1e}" for k, v in grads.items())
        )
    if not agreement["passed"]:
        print("\n!!! AGREEMENT CHECK FAILED !!!", file=sys.stderr)
        for line in agreement["failures"]:
            print("  " + line, file=sys.stderr)
        raise AgreementError("; ".join(agreement["failures"]))
    print(f"  agreement check passed (tolerance {args.tolerance:g} nats)")

    timings = {}
    for name, fns in functions.items():
        dense = name == "dense"
        repeats = args.dense_repeats if dense else args.repeats
        warmup = min(args.warmup, 1) if dense else args.warmup
        timings[name] = {}
        for case in ("forward", "gradient"):
            print(f"Timing {SHORT_LABELS[name]} {case} ({repeats} calls) ...", flush=True)
            timings[name][case] = time_calls(fns[case], tensors, warmup, repeats)
            timings[name][case]["first_call_s"] = first_calls[name][case]
    return {"agreement": agreement, "timings": timings}


def timing_tables(timings):
    ours = timings["ours"]
    lines = [
        "| implementation | forward ms (median) | forward+grad ms (median) "
        "| ratio vs ours fwd | ratio vs ours grad |",
        "|---|---:|---:|---:|---:|",
    ]
    summary = []
    for name, cases in timings.items():
        fwd, grad = cases["forward"], cases["gradient"]
        fwd_ratio = fwd["median_ms"] / ours["forward"]["median_ms"]
        grad_ratio = grad["median_ms"] / ours["gradient"]["median_ms"]
        lines.append(
            f"| {LABELS[name]} | {fwd['median_ms']:.2f} | {grad['median_ms']:.2f} "
            f"| {fwd_ratio:.2f}x | {grad_ratio:.2f}x |"
        )
        if name != "ours":
            summary.append(
                f"{SHORT_LABELS[name]}: {fwd_ratio:.3g}x ours (forward), "
                f"{grad_ratio:.3g}x ours (forward+grad)"
            )
    details = [
        "| implementation | forward IQR ms (q25..q75) | forward+grad IQR ms (q25..q75) "
        "| timed calls | first call (trace) fwd / grad s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, cases in timings.items():
        fwd, grad = cases["forward"], cases["gradient"]
        details.append(
            f"| {SHORT_LABELS[name]} "
            f"| {fwd['iqr_ms']:.2f} ({fwd['q25_ms']:.2f}..{fwd['q75_ms']:.2f}) "
            f"| {grad['iqr_ms']:.2f} ({grad['q25_ms']:.2f}..{grad['q75_ms']:.2f}) "
            f"| {fwd['repeats']} | {fwd['first_call_s']:.2f} / {grad['first_call_s']:.2f} |"
        )
    return "\n".join(lines), "\n".join(details), "; ".join(summary)


# === Accuracy ===


def accuracy_inputs(args):
    """Float64 parameters and data (data drawn from the mixture) and mixed masks."""
    rng = np.random.default_rng(args.seed + 1)
    b, k, l, n = args.acc_batch, args.acc_components, args.acc_factors, args.acc_size**2
    scale = args.acc_factor_scale
    params = {
        "logits": rng.normal(size=(b, k)),
        "loc": rng.uniform(0.0, 1.0, size=(b, k, n)),
        "factors": (
            rng.normal(0.0, scale, size=(b, k, n, l))
            if args.acc_factor_dist == "normal"
            else rng.uniform(-scale, scale, size=(b, k, n, l))
        ),
        "diag": np.exp(rng.uniform(math.log(args.acc_min_variance), 0.0, size=(b, k, n))),
    }
    # Round to float32 first, so that the float64 reference scores the very
    # numbers the float32 implementations see.
    params = {key: value.astype(np.float32).astype(np.float64) for key, value in params.items()}
    # x from the mixture: loc + A z + sqrt(d) eps for a component drawn per image.
    probs = np.exp(params["logits"] - np.logaddexp.reduce(params["logits"], axis=-1, keepdims=True))
    choice = np.array([rng.choice(k, p=p) for p in probs])
    rows = np.arange(b)
    latent = rng.normal(size=(b, l))
    x = (
        params["loc"][rows, choice]
        + np.einsum("bnl,bl->bn", params["factors"][rows, choice], latent)
        + np.sqrt(params["diag"][rows, choice]) * rng.normal(size=(b, n))
    )
    params["x"] = x.astype(np.float32).astype(np.float64)
    hole = masks_lib.Rectangle(*args.acc_hole)
    dropout = masks_lib.PixelDropout(args.acc_dropout)
    mask = []
    for i in range(b):
        generator = hole if i % 2 == 0 else dropout
        mask.append(generator(args.acc_size, args.acc_size, seed=[args.seed, i]).numpy().reshape(-1))
    params["mask"] = np.stack(mask)
    return params


def reference_log_prob(logits, loc, factors, diag, mask, x):
    """Float64 dense reference: restrict to the missing coordinates, slogdet + solve."""
    out = np.zeros(len(x))
    for b in range(len(x)):
        missing = mask[b] == MISSING
        m = int(missing.sum())
        if m == 0:
            continue
        log_weights = logits[b] - np.logaddexp.reduce(logits[b])
        terms = []
        for k in range(len(log_weights)):
            a = factors[b, k][missing]  # [M, L]
            cov = a @ a.T + np.diag(diag[b, k][missing])  # [M, M]
            r = (x[b] - loc[b, k])[missing]
            sign, log_det = np.linalg.slogdet(cov)
            assert sign > 0, "the reference covariance is not positive definite"
            quad = r @ np.linalg.solve(cov, r)
            terms.append(log_weights[k] - 0.5 * (m * math.log(2 * math.pi) + log_det + quad))
        out[b] = np.logaddexp.reduce(terms)
    return out


def run_accuracy(args):
    inputs = accuracy_inputs(args)
    keys = ("logits", "loc", "factors", "diag", "mask", "x")
    reference = reference_log_prob(*(inputs[key] for key in keys))
    tensors = [tf.constant(inputs[key], tf.float32) for key in keys]
    functions = implementations(inputs["mask"], args.xla, skip_dense=False)
    missing = (inputs["mask"] == MISSING).sum(axis=-1)
    print(
        f"\nAccuracy: float32 vs float64 dense NumPy reference; B={args.acc_batch} "
        f"K={args.acc_components} N={args.acc_size**2} ({args.acc_size}x{args.acc_size}) "
        f"L={args.acc_factors}, even images a {args.acc_hole[0]}x{args.acc_hole[1]} hole, odd "
        f"images pixel dropout {args.acc_dropout:g} ({int(missing.min())}..{int(missing.max())} "
        f"missing), variances log-uniform in [{args.acc_min_variance:g}, 1], factors "
        + (f"normal(0, {args.acc_factor_scale:g})" if args.acc_factor_dist == "normal"
           else f"uniform in [-{args.acc_factor_scale:g}, {args.acc_factor_scale:g}]")
        + ", x drawn from the mixture",
        flush=True,
    )
    results = {
        "reference_range": [float(reference.min()), float(reference.max())],
        "errors": {},
    }
    for name, fns in functions.items():
        values = fns["log_prob"](*tensors).numpy().astype(np.float64)
        error = np.abs(values - reference) / np.maximum(1.0, np.abs(reference))
        finite = bool(np.all(np.isfinite(values)))
        results["errors"][name] = {
            "worst_rel": float(np.max(error)) if finite else float("inf"),
            "median_rel": float(np.median(error)) if finite else float("inf"),
            "worst_abs_nats": float(np.max(np.abs(values - reference))) if finite else float("inf"),
            "finite": finite,
        }
    lines = [
        "| implementation (float32) | worst rel. error | median rel. error "
        "| worst abs. error (nats) |",
        "|---|---:|---:|---:|",
    ]
    for name, err in results["errors"].items():
        lines.append(
            f"| {LABELS[name]} | {err['worst_rel']:.2e} | {err['median_rel']:.2e} "
            f"| {err['worst_abs_nats']:.3g} |"
        )
    results["table"] = "\n".join(lines)
    low, high = results["reference_range"]
    print(f"reference log_prob in [{low:.1f}, {high:.1f}] nats; rel. error = |a - b| / max(1, |b|)\n")
    print(results["table"])
    return results


# === Main ===


def main(argv=None):
    """Runs the benchmark; returns the results dict (also written to --json)."""
    args = parse_args(argv)
    # Every implementation is its own tf.function of the same Python code,
    # which TensorFlow's retracing warning would count as retracing.
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        return _run(args)
    finally:
        logger.setLevel(level)


def _run(args):
    info = machine_info()
    print("## Machine")
    print(
        f"os.cpu_count()={info['cpu_count']}, TensorFlow {info['tensorflow']}, "
        f"TFP {info['tensorflow_probability']}, Keras {info['keras']}, NumPy {info['numpy']}, "
        f"Python {info['python']}, {info['platform']}"
    )
    print(f"GPU: {', '.join(info['gpus']) if info['gpus'] else 'none'}\n", flush=True)
    config = {
        key: (list(value) if isinstance(value, tuple) else value)
        for key, value in vars(args).items()
    }
    results = {"machine": info, "config": config}
    if not args.skip_timing:
        results.update(run_timing(args))
        table, details, summary = timing_tables(results["timings"])
        results["table"] = table
        results["summary"] = summary
        mode = "XLA" if args.xla else "graph mode"
        print(f"\n## Masked mixture NLL, batch of {args.batch}, {mode}: median ms per batch\n")
        print(table)
        print("\nSpread and tracing:\n")
        print(details)
        if summary:
            print("\n" + summary)
    if args.accuracy:
        results["accuracy"] = run_accuracy(args)
    if args.json:
        path = Path(args.json)
        if path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nResults written to {path}")
    return results


if __name__ == "__main__":
    try:
        main()
    except AgreementError as error:
        sys.exit(f"FAILED: the implementations disagree: {error}")
