"""Why the per-pixel intervals over-cover: what the likelihood itself asks for.

For a trained model and the first images of a validation split (masks seeded as
`evaluate.py --split=val`), this fits, by maximum likelihood on the first half
of the images, one scale per (component, factor) of the loadings `A` and one per
component of the diagonal `d` (`A <- alpha A`, `d <- beta d`), and reports on
the other half, before and after:

- the NLL (per image, summed over the missing pixels, mean);
- the coverage of the central 50% and 90% per-pixel intervals (exact 1-D
  mixture marginals, at the stored values);
- the median per-pixel variance carried by the factors (`sum_l A_il^2`) and
  by `d`, and the mean and median squared error of the most probable
  component's mean.

If the likelihood-optimal scales are above 1 while the intervals already cover
too much, the over-coverage is not a badly fitted scale: the per-image errors
are heavy-tailed (a few images with large errors along the factor directions),
and a Gaussian fitted by likelihood widens every image's marginals for them.

Usage, from the repository root:

    PYTHONPATH=. python benchmarks/calibration_scaling.py --model=saved_models/celeb_a \\
        --dataset=celeb_a --data-dir=../shared/data/celeba --hole=16x16
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a saved model folder or .keras file")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--hole", required=True, help="mask spec, e.g. 16x16")
    parser.add_argument("--images", type=int, default=1000, help="validation images used")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    from dmfa_tf import data as datasets
    from dmfa_tf import evaluation, files
    from dmfa_tf.core import colour
    from dmfa_tf.core.distribution import MaskedFactorMixture, flatten_images

    path = args.model
    if os.path.isdir(path):
        path = os.path.join(path, "model.keras")
    model = keras.saving.load_model(path)
    images = datasets.load(args.dataset, args.data_dir, verbose=0, splits=("val",)).val
    images = images[: args.images]
    mask = evaluation.seeded_masks(images, args.hole, 0)
    parts = {key: [] for key in ("logits", "loc", "factors", "diag")}
    for start in range(0, len(images), 64):
        batch = images[start:start + 64]
        full_mask = np.broadcast_to(mask[start:start + 64], batch.shape[:-1] + mask.shape[-1:])
        out = model({"image": batch, "mask": full_mask.astype(np.float32)}, training=False)
        for extra in ("basis", "scales", "scale_logits"):  # a colour basis, a scale prior
            if extra in out:
                parts.setdefault(extra, [])
        for key in parts:
            parts[key].append(tf.cast(out[key], tf.float64).numpy())
    params = {key: np.concatenate(value) for key, value in parts.items()}
    values = flatten_images(images).numpy().astype(np.float64)
    k, l = params["factors"].shape[1], params["factors"].shape[-1]
    half = len(images) // 2
    fit, held = slice(0, half), slice(half, len(images))

    def mixture(rows, log_alpha, log_beta):
        return MaskedFactorMixture.from_images(
            dict(logits=params["logits"][rows], loc=params["loc"][rows],
                 factors=params["factors"][rows] * tf.exp(log_alpha)[None, :, None, :],
                 diag=params["diag"][rows] * tf.exp(log_beta)[None, :, None],
                 **{key: params[key][rows] for key in ("basis", "scales", "scale_logits")
                    if key in params}),
            mask[rows].astype(np.float64),
        )

    def measure(rows, log_alpha, log_beta):
        dist = mixture(rows, log_alpha, log_beta)
        nll = -dist.log_prob(values[rows]).numpy()
        pit = evaluation.marginal_cdf(dist, values[rows]).numpy()
        missing = (np.broadcast_to(mask[rows], images[rows].shape).reshape(len(pit), -1) == 0)
        pit = pit[missing]
        # The factors' share of each RGB value's variance [B, K, N] (rotated back
        # from a colour basis when there is one).
        factor_var = colour.coordinate_marginals(
            dist.loc, dist.factors, tf.zeros_like(dist.diag), dist.basis)[1].numpy()
        diag = colour.coordinate_marginals(
            dist.loc, tf.zeros_like(dist.factors), dist.diag, dist.basis)[1].numpy()
        best = np.argmax(params["logits"][rows], -1)
        pick = lambda a: np.take_along_axis(a, best[:, None, None], 1)[:, 0]  # noqa: E731
        error = np.square(values[rows] - dist.imputation().numpy())[missing]
        return {
            "nll": float(np.mean(nll)),
            "coverage_50": float(np.mean(np.abs(pit - 0.5) < 0.25)),
            "coverage_90": float(np.mean(np.abs(pit - 0.5) < 0.45)),
            "median_factor_variance": float(np.median(pick(factor_var)[missing])),
            "median_diag": float(np.median(pick(diag)[missing])),
            "mean_squared_error": float(np.mean(error)),
            "median_squared_error": float(np.median(error)),
        }

    log_alpha = tf.Variable(tf.zeros([k, l], tf.float64))
    log_beta = tf.Variable(tf.zeros([k], tf.float64))
    def fit_nll():  # the mean NLL of the fitting half, the quantity minimised
        return -tf.reduce_mean(mixture(fit, log_alpha, log_beta).log_prob(values[fit]))

    before = measure(held, log_alpha, log_beta)
    fit_before = float(fit_nll())
    optimizer = keras.optimizers.Adam(0.02)
    for _ in range(args.steps):
        with tf.GradientTape() as tape:
            loss = fit_nll()
        grads = tape.gradient(loss, [log_alpha, log_beta])
        optimizer.apply_gradients(zip(grads, [log_alpha, log_beta]))
    after = measure(held, log_alpha, log_beta)
    fit_after = float(fit_nll())
    result = {
        "model": args.model, "hole": args.hole, "fit_images": half,
        "held_out_images": len(images) - half,
        "alpha": np.exp(log_alpha.numpy()).round(3).tolist(),
        "beta": np.exp(log_beta.numpy()).round(3).tolist(),
        "before": before, "after": after,
        "fit_nll_before": fit_before, "fit_nll_after": fit_after,
    }
    print(f"{args.model} ({args.hole}): scales fitted by NLL on {half} validation images, "
          f"measured on the other {len(images) - half}")
    print(f"  alpha (factors, per component x factor): {result['alpha']}")
    print(f"  beta (diagonal, per component): {result['beta']}")
    for name, row in (("before", before), ("after", after)):
        print(f"  {name:6s} NLL {row['nll']:9.2f}  coverage 50% {100 * row['coverage_50']:5.1f}%  "
              f"90% {100 * row['coverage_90']:5.1f}%  median factor variance "
              f"{row['median_factor_variance']:.4f}, median d {row['median_diag']:.4f}")
    print(f"  squared error per missing value: mean {before['mean_squared_error']:.4f}, "
          f"median {before['median_squared_error']:.4f}")
    if args.json:
        files.write_json(args.json, result)
    return result


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
