"""Where a colour model's NLL gap to the full Gaussian sits (issue 7's CelebA study).

For each image, the missing block's Gaussian under the DMFA model's most probable
component (at scale 1: a model's scale prior, `dmfa_tf.core.scales`, is left out) (`A Aᵀ + diag(d)` on the missing coordinates, the component of the
imputation) and under the full Gaussian's exact conditional are both written in
the model's colour basis (opponent when the model is RGB). Each is then scored on
three sets of coordinates: all of them (the component's own NLL), the brightness
values alone and the two colour differences alone (the marginal densities of
those values). Each NLL is split into its two terms,

    NLL = half log det(Σ) + Mahalanobis / 2 + |I| / 2 log(2π),

so a gap from a too-broad covariance (log det) is told apart from one from a
misplaced mean or a too-narrow covariance (Mahalanobis; |I| on average when the
model is right). The squared error of each mean on those coordinates is printed
beside them:

    PYTHONPATH=. python benchmarks/gaussian_gap.py --model=saved_models/celeb_a --hole=16x16

`--regularization=R` fits the Gaussian with `R` instead of evaluate.py's 1e-4, to compare
at a model's own variance floor.
"""

import argparse

import numpy as np

from dmfa_tf import files

_LOG_TWO_PI = float(np.log(2.0 * np.pi))
TERMS = ("nll", "half_log_det", "mahalanobis", "squared_error")  # block_terms' order


def block_terms(covariance, residual, index):
    """`(nll, half_log_det, mahalanobis, squared_error)` of the Gaussian
    marginal of the coordinates `index` of `N(mean, covariance)` at
    `mean + residual`; the last is `|residual[index]|^2`, the mean's error."""
    block = covariance[np.ix_(index, index)]
    chol = np.linalg.cholesky(block)
    whitened = np.linalg.solve(chol, residual[index])
    half_log_det = float(np.sum(np.log(np.diag(chol))))
    mahalanobis = float(whitened @ whitened)
    nll = half_log_det + 0.5 * mahalanobis + 0.5 * len(index) * _LOG_TWO_PI
    return nll, half_log_det, mahalanobis, float(residual[index] @ residual[index])


def channel_sets(size, channels):
    """Coordinate sets of `size` pixel-major values: all, and for 3 channels
    the first (brightness) and the other two (colour differences)."""
    sets = {"all": np.arange(size)}
    if channels == 3:
        sets["brightness"] = np.arange(0, size, 3)
        sets["colour"] = np.flatnonzero(np.arange(size) % 3 != 0)
    return sets


def conditional_in_basis(gaussian, image, mask, basis):
    """`(missing, covariance, residual)`: the full Gaussian's conditional of the
    missing values of `image` (`mask` 0), its covariance and `x - mean` written
    in the orthonormal colour `basis`, pixel-major."""
    missing = np.flatnonzero(mask == 0)
    _, mean, chol = gaussian.conditional(image, mask)
    rotation = np.kron(np.eye(len(missing) // basis.shape[0]), basis)
    chol_inverse = np.linalg.inv(chol)
    covariance = rotation @ (chol_inverse.T @ chol_inverse) @ rotation.T
    return missing, covariance, rotation @ (image[missing] - mean)


def compare(gaussian, params, image, mask, basis, params_in_basis=True):
    """Per-set terms for one image: `{set: {"dmfa": terms, "gaussian": terms}}`.

    Args:
        gaussian: a fitted `FullGaussian`.
        params: the model's parameters for this image, float64 NumPy (`logits
            [K]`, `loc [K, N]`, `factors [K, N, L]`, `diag [K, N]`).
        image: `[N]` values (pixel-major).
        mask: `[N]` 1 observed, 0 missing.
        basis: `[C, C]` orthonormal rows: the basis both Gaussians are scored in.
        params_in_basis: whether `params` describe values in `basis` (a
            colour-basis model) or in the image's own channels (they are then
            rotated).
    """
    channels = basis.shape[0]
    missing, covariance_g, residual_g = conditional_in_basis(gaussian, image, mask, basis)
    rotation = np.kron(np.eye(len(missing) // channels), basis)
    k = int(np.argmax(params["logits"]))
    factors = params["factors"][k][missing]
    covariance_d = factors @ factors.T + np.diag(params["diag"][k][missing])
    loc = params["loc"][k][missing]
    if not params_in_basis:
        covariance_d = rotation @ covariance_d @ rotation.T
        loc = rotation @ loc
    residual_d = rotation @ image[missing] - loc
    return {
        name: {"dmfa": block_terms(covariance_d, residual_d, index),
               "gaussian": block_terms(covariance_g, residual_g, index)}
        for name, index in channel_sets(len(missing), channels).items()
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a saved DMFA folder (3 channels)")
    parser.add_argument("--hole", required=True, help="mask spec, e.g. 16x16")
    parser.add_argument("--split", choices=["val", "test"], default="test")
    parser.add_argument("--images", type=int, default=200, help="the first N images (200)")
    parser.add_argument("--seed", type=int, default=0, help="masks (seed, i) as evaluate.py (0)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--regularization", type=float, default=1e-4,
                        help="the Gaussian's R (1e-4, evaluate.py's); compare at the "
                        "model's variance floor")
    args = parser.parse_args(argv)
    if not args.regularization > 0:
        parser.error(f"--regularization must be > 0; received {args.regularization}")

    from dmfa_tf import data, evaluation, saving
    from dmfa_tf.baselines.gaussian import FullGaussian
    from dmfa_tf.core import colour

    model = saving.load(args.model)
    sources = data.load_model_sources(saving.load_config(args.model), splits=("train", args.split))
    train = sources.train.to_float_array()
    if train.shape[-1] != 3:
        raise ValueError(f"The gap study splits colour values; {args.model!r} has "
                         f"{train.shape[-1]} channel(s), not 3.")
    gaussian = FullGaussian.fit(train, regularization=args.regularization)
    images = getattr(sources, args.split).take(args.images).to_float_array()
    masks = evaluation.seeded_masks(images, args.hole, seed=args.seed)
    params = {k: np.asarray(v, np.float64) for k, v in model({"image": images, "mask": masks}).items()}
    basis = np.asarray(colour.basis_matrix("opponent", 3), np.float64)
    if "basis" in params:
        basis = params["basis"][0]
    per_pixel = np.repeat(masks.reshape(len(images), -1), 3, axis=1)
    flat = images.reshape(len(images), -1).astype(np.float64)
    rows = [compare(gaussian, {k: v[b] for k, v in params.items()}, flat[b], per_pixel[b], basis,
                    params_in_basis="basis" in params)
            for b in range(len(images)) if np.any(per_pixel[b] == 0)]
    sets = channel_sets(int(np.sum(per_pixel[0] == 0)), 3)
    results = {}
    for name in rows[0]:
        results[name] = {"coordinates": len(sets[name])}  # of the first image
        for who in ("dmfa", "gaussian"):
            means = np.mean([row[name][who] for row in rows], axis=0)  # over images
            results[name][who] = {term: float(mean) for term, mean in zip(TERMS, means)}
        print(f"{name:10s} ({results[name]['coordinates']} values): NLL DMFA "
              f"{results[name]['dmfa']['nll']:9.2f}, Gaussian {results[name]['gaussian']['nll']:9.2f}; "
              f"half log det {results[name]['dmfa']['half_log_det']:9.2f} / "
              f"{results[name]['gaussian']['half_log_det']:9.2f}; Mahalanobis "
              f"{results[name]['dmfa']['mahalanobis']:8.2f} / {results[name]['gaussian']['mahalanobis']:8.2f}; "
              f"squared error {results[name]['dmfa']['squared_error']:.3f} / "
              f"{results[name]['gaussian']['squared_error']:.3f}")
    summary = {"model": args.model, "hole": args.hole, "regularization": args.regularization,
               "split": args.split, "images": len(rows), "basis": basis.tolist(),
               "results": results}
    if args.json:
        files.write_json(args.json, summary)
    return summary


if __name__ == "__main__":
    main()
