"""Does the full Gaussian gain as much from a scale prior as DMFA does?

The scale prior (`dmfa_tf.core.scales`, README "Scale prior") multiplies a
density's covariance by a scale `c_j` with weight `w_j`, fitted on validation
images. It is not specific to DMFA: any Gaussian conditional can have one. This
script gives one to the baseline a user would try first, the full-covariance
Gaussian (`baselines.FullGaussian`, regularisation `R`): fitted to the training
images, its scale weights fitted by EM on the validation images (their exact
conditionals' log densities and Mahalanobis distances, seeded masks), then
scored on the test images with and without the prior: NLL mean / median and
the share of images beyond the 1st / 99th percentile of the distance's
distribution (chi-squared, or the prior's mixture of scaled chi-squared), at
the dequantized values as `evaluate.py` measures them.

    PYTHONPATH=. python benchmarks/scale_prior_gaussian.py --dataset=celeb_a --data-dir=../shared/data/celeba --hole=16x16 --regularization=3e-5
"""

import argparse

import numpy as np
from scipy import stats

from dmfa_tf.core import scales as scales_lib

_HALF_LOG_TWO_PI = 0.5 * float(np.log(2.0 * np.pi))


def prior_log_prob(unit_log_prob, mahalanobis, missing, scales, weights):
    """`[B]` log densities with the prior, from those at scale 1 (NumPy)."""
    scales, weights = np.asarray(scales, np.float64), np.asarray(weights, np.float64)
    per_scale = (unit_log_prob[:, None] - 0.5 * missing[:, None] * np.log(scales)
                 - 0.5 * mahalanobis[:, None] * (1.0 / scales - 1.0) + np.log(weights))
    top = per_scale.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(per_scale - top).sum(axis=1, keepdims=True)))[:, 0]


def prior_cdf(mahalanobis, missing, scales, weights):
    """`[B]` the distance's distribution function under the prior (NumPy)."""
    return sum(w * stats.chi2.cdf(mahalanobis / c, missing) for c, w in zip(scales, weights))


def scored(model, images, masks, step, seed):
    """`(log_prob, mahalanobis at dequantized values, missing)` of a split."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    flat_mask = np.broadcast_to(masks, images.shape).reshape(len(images), -1)
    jitter = np.random.default_rng(seed).uniform(size=flat.shape) - 0.5
    out = model.predict_missing(flat, flat_mask, calibration_images=flat + step * jitter)
    return out["log_prob"], out["mahalanobis"], np.sum(flat_mask == 0, axis=1).astype(np.float64)


def compare(model, val_images, val_masks, test_images, test_masks, step=0.0, seed=0):
    """The prior fitted on the validation images, and the test scores without
    and with it: `{"prior": fit, "without": {...}, "with": {...}}`, each with
    `nll_mean`, `nll_median`, `below_p1`, `above_p99`."""
    lp, d2, m = scored(model, val_images, val_masks, step, seed)
    fit = scales_lib.fit_weights(lp[:, None], d2[:, None], np.zeros((len(lp), 1)), m)
    lp, d2, m = scored(model, test_images, test_masks, step, seed + 1)
    results = {"prior": fit}
    for name, log_prob, cdf in (
        ("without", lp, stats.chi2.cdf(d2, m)),
        ("with", prior_log_prob(lp, d2, m, fit["scales"], fit["weights"]),
         prior_cdf(d2, m, fit["scales"], fit["weights"])),
    ):
        results[name] = {
            "nll_mean": float(-np.mean(log_prob)), "nll_median": float(-np.median(log_prob)),
            "below_p1": float(np.mean(cdf < 0.01)), "above_p99": float(np.mean(cdf > 0.99)),
        }
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--hole", required=True, help="mask spec, e.g. 16x16")
    parser.add_argument("--regularization", type=float, default=1e-4, help="the Gaussian's R (1e-4)")
    parser.add_argument("--seed", type=int, default=0, help="mask seed, as evaluate.py (0)")
    args = parser.parse_args(argv)

    from dmfa_tf import data, evaluation
    from dmfa_tf.baselines import FullGaussian
    from dmfa_tf.data import dequantization

    sources = data.load_sources(args.dataset, args.data_dir, splits=("train", "val", "test"), verbose=0)
    train = sources.train.to_float_array()
    val, test = sources.val.to_float_array(), sources.test.to_float_array()
    model = FullGaussian.fit(train, regularization=args.regularization)
    step = dequantization.quantization_step(sources.test)
    results = compare(
        model, val, evaluation.seeded_masks(val, args.hole, seed=args.seed),
        test, evaluation.seeded_masks(test, args.hole, seed=args.seed), step, args.seed,
    )
    fit = results["prior"]
    print(f"Full Gaussian (R = {args.regularization:g}) on {args.dataset}, {args.hole}: scale prior of "
          f"{len(fit['scales'])} scales fitted on {fit['images']:,} validation images "
          f"(val NLL {-fit['unit_mean_log_prob']:.2f} -> {-fit['mean_log_prob']:.2f})")
    for name in ("without", "with"):
        r = results[name]
        print(f"  test, {name} the prior: NLL mean {r['nll_mean']:.2f}, median {r['nll_median']:.2f}; "
              f"chi-squared tails below 1st {100 * r['below_p1']:.1f}%, above 99th {100 * r['above_p99']:.1f}%")
    return results


if __name__ == "__main__":
    main()
