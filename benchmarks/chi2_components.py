"""Chi-squared tails of the missing block's squared Mahalanobis distance, under
two choices of component (issue 7's joint-calibration study).

`evaluate.py` reports the share of images whose distance under the *most
probable* component (the one of the paper's imputation) falls outside the
chi-squared(|M|) 1st and 99th percentiles. For a mixture that statistic is not
chi-squared even when the model is right: the most probable component given the
observed pixels need not be the one that made the image. Drawing the component
from its posterior given the whole image, `p(k | x_O, x_M)`, gives a distance
that is chi-squared(|M|) exactly when the model is right, whatever the mixture.
With a scale prior (`dmfa_tf.core.scales`) each component's distance is compared
with its mixture of scaled chi-squared instead, as `evaluate.py` does; `evaluate.py`
now also reports the posterior-drawn shares, as expectations over the posterior.
This script prints both, on a split of a saved model's data, at the dequantized
values `evaluate.py` uses:

    PYTHONPATH=. python benchmarks/chi2_components.py --model=saved_models/mnist --hole=14x14
"""

import argparse

import numpy as np
import tensorflow as tf

from dmfa_tf import files
from dmfa_tf.core import scales
from dmfa_tf.core.distribution import flatten_images


def chi2_tails(dist, values, rng):
    """Shares of images below / above the chi-squared(|M|) 1st / 99th
    percentiles, and the median distance / |M|, under the most probable
    component and under a component drawn from its posterior.

    Args:
        dist: a `MaskedFactorMixture` with batch shape `[B]`.
        values: `[B, N]` values (only the missing coordinates are read).
        rng: a NumPy generator for the posterior draws.
    """
    values = tf.cast(values, dist.dtype)
    d2 = dist.component_mahalanobis(values)  # [B, K], at scale 1
    dof = np.sum(dist.mask.numpy() == 0, axis=-1)
    # Each distance's distribution function under its component: chi-squared,
    # or with a scale prior its mixture of scaled chi-squared.
    cdf = scales.mahalanobis_cdf(d2, tf.constant(dof, d2.dtype), dist.scales, dist.scale_logits).numpy()
    d2 = d2.numpy()
    log_joint = dist.component_log_prob(values) + tf.nn.log_softmax(dist.parameters["logits"])
    log_joint = log_joint.numpy()
    posterior = np.exp(log_joint - log_joint.max(axis=1, keepdims=True))
    posterior /= posterior.sum(axis=1, keepdims=True)
    drawn = np.array([rng.choice(len(p), p=p) for p in posterior])
    best = dist.most_probable_component().numpy()
    rows = np.arange(len(d2))
    out = {}
    for name, pick in (("most_probable", best), ("posterior_draw", drawn)):
        out[name] = {
            "below_p1": float(np.mean(cdf[rows, pick] < 0.01)),
            "above_p99": float(np.mean(cdf[rows, pick] > 0.99)),
            "median_d2_over_dof": float(np.median(d2[rows, pick] / dof)),
        }
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a saved DMFA folder")
    parser.add_argument("--hole", required=True, help="mask spec, e.g. 14x14")
    parser.add_argument("--split", choices=["val", "test"], default="val")
    parser.add_argument("--images", type=int, default=2000, help="the first N images (2000)")
    parser.add_argument("--seed", type=int, default=0, help="masks (seed, i), jitter and draws (0)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    from dmfa_tf import data, evaluation, saving
    from dmfa_tf.data import dequantization

    model = saving.load(args.model)
    sources = data.load_model_sources(saving.load_config(args.model), splits=(args.split,))
    source = getattr(sources, args.split).take(args.images)
    images = source.to_float_array()
    masks = evaluation.seeded_masks(images, args.hole, seed=args.seed)
    step = dequantization.quantization_step(source)
    rng = np.random.default_rng(args.seed)
    parts = []
    for start in range(0, len(images), 250):
        x, m = images[start:start + 250], masks[start:start + 250]
        jittered = x + step * (rng.uniform(size=x.shape).astype(np.float32) - 0.5)
        parts.append((len(x), chi2_tails(model.mixture(x, m), flatten_images(jittered), rng)))
    total = sum(n for n, _ in parts)
    results = {
        name: {key: sum(n * r[name][key] for n, r in parts) / total
               for key in ("below_p1", "above_p99")}
        for name in ("most_probable", "posterior_draw")
    }
    summary = {"model": args.model, "hole": args.hole, "split": args.split, "images": total,
               "dequantization_step": step, "results": results}
    for name, shares in results.items():
        print(f"{args.model} {args.hole}, {total} {args.split} images, {name.replace('_', ' ')}: "
              f"below the 1st percentile {100 * shares['below_p1']:.1f}%, above the 99th "
              f"{100 * shares['above_p99']:.1f}%")
    if args.json:
        files.write_json(args.json, summary)
    return summary


if __name__ == "__main__":
    main()
