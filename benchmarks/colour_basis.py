"""How much of the CelebA gap to the full Gaussian is colour? (issue 7)

A factor model's diagonal `d` makes a pixel's three colour values independent
given the factors. On the downscaled CelebA faces they are nearly equal, so
that diagonal must hold each pixel's whole unexplained brightness three times
over, while a full covariance puts almost no variance on the colour
differences. Rotating each pixel's `(R, G, B)` into an orthonormal opponent
basis (`(R + G + B) / sqrt 3`, `(R - G) / sqrt 2`, `(R + G - 2 B) / sqrt 6`)
lets a diagonal give brightness and colour their own variances.

The rotated images are `y = 1/2 + (x - 1/2) Q^T / sqrt 3` per pixel: the
`1 / sqrt 3` keeps them in [0, 1]. The missing set is a union of whole pixels,
so the change of variables is exact: `log p(x_M) = log p(y_M) - |M|/2 log 3`
(`|M|` missing values), squared errors are 3 times those of `y`, and a
variance floor `f` on `x` is `f / 3` on `y`. Every figure printed is in the
original RGB units. A full-covariance Gaussian is rotation invariant, so its
two rows must agree: a check of the change of variables.

This script fits, on the training images, and scores on the test images with
the same seeded masks, in both bases: the classical MFA with diagonal noise
and its exact conditional, the diagonal Gaussian and the full Gaussian.
DMFA networks do the same inside the model: `train.py --colour-basis=opponent`
(the default for celeb_a; `dmfa_tf.core.colour`), without the scaling, with
everything reported in RGB. `--write-npz` writes the rotated splits as a
`.npz` that `train.py` reads, the route of the first DMFA study (give it
`--variance-floor=3.3333e-5` and 3 times the MSE weight of `--objective`, the
same objective in RGB units):

    PYTHONPATH=. python benchmarks/colour_basis.py --data-dir=../shared/data/celeba --hole=16x16
"""

import argparse
import math
import time

import numpy as np

from dmfa_tf import files
from dmfa_tf.core.colour import basis_matrix

# Rows: brightness, red - green, (red + green) - 2 blue; orthonormal.
OPPONENT = basis_matrix("opponent", 3)
SCALE = 1.0 / math.sqrt(3.0)  # keeps the rotated values in [0, 1]


def to_opponent(images):
    """`[n, H, W, 3]` RGB images in [0, 1] to the scaled opponent basis, in [0, 1]."""
    images = np.asarray(images, np.float64)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected [n, H, W, 3] colour images. Received shape {images.shape}.")
    rotated = (images - 0.5) @ OPPONENT.T * SCALE + 0.5
    # Only rounding (about 1e-16) can leave [0, 1].
    return np.clip(rotated, 0.0, 1.0).astype(np.float32)


def from_opponent(rotated):
    """The inverse of `to_opponent`."""
    rotated = np.asarray(rotated, np.float64)
    return ((rotated - 0.5) / SCALE @ OPPONENT + 0.5).astype(np.float32)


def rgb_units(scores, basis):
    """Per-image NLL and squared error in RGB units, from scores measured in
    `basis` (`"rgb"` or `"opponent"`)."""
    nll = np.asarray(scores["nll"], np.float64)
    squared = np.asarray(scores["squared_error"], np.float64)
    if basis == "opponent":
        nll = nll + 0.5 * math.log(3.0) * np.asarray(scores["missing"], np.float64)
        squared = 3.0 * squared
    return nll, squared


def compare(train, test, hole, components=20, factors=10, iterations=30, floor=1e-4, seed=0,
            models=("full_gaussian", "diagonal_gaussian", "mfa_diagonal")):
    """Scores each model fitted in each basis; a list of result dicts."""
    from dmfa_tf import evaluation
    from dmfa_tf.baselines import DiagonalGaussian, FullGaussian
    from dmfa_tf.baselines.mfa import MFA

    masks = evaluation.seeded_masks(test, hole, seed=seed)
    results = []
    for basis in ("rgb", "opponent"):
        fit_on = train if basis == "rgb" else to_opponent(train)
        scored_on = test if basis == "rgb" else to_opponent(test)
        basis_floor = floor if basis == "rgb" else floor * SCALE**2
        for name in models:
            start = time.perf_counter()
            if name == "full_gaussian":
                model = FullGaussian.fit(fit_on, regularization=basis_floor)
            elif name == "diagonal_gaussian":
                model = DiagonalGaussian.fit(fit_on, variance_floor=basis_floor)
            elif name == "mfa_diagonal":
                model = MFA.fit(fit_on, components, factors, iterations=iterations,
                                noise="diagonal", seed=seed, variance_floor=basis_floor,
                                verbose=0, conditional="exact")
            else:
                raise ValueError(f"Unknown model {name!r}.")
            scores = evaluation.score(model, scored_on, masks, seed=seed, dequantize=0)
            nll, squared = rgb_units(scores, basis)
            results.append({
                "model": name, "basis": basis,
                "nll_mean": float(nll.mean()), "nll_median": float(np.median(nll)),
                "mse": float(squared.mean()),
                "seconds": time.perf_counter() - start,
            })
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="CelebA's photo folder (or .npz)")
    parser.add_argument("--hole", default="16x16", help="test mask spec (16x16)")
    parser.add_argument("--components", type=int, default=20, help="MFA components (20)")
    parser.add_argument("--factors", type=int, default=10, help="MFA factors (10)")
    parser.add_argument("--iterations", type=int, default=30, help="EM iterations (30)")
    parser.add_argument("--write-npz", help="also write the rotated splits to this .npz file")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    from dmfa_tf import data

    splits = data.load("celeb_a", args.data_dir, verbose=0)
    if args.write_npz:
        np.savez(args.write_npz, x_train=to_opponent(splits.train),
                 x_val=to_opponent(splits.val), x_test=to_opponent(splits.test))
        print(f"Wrote the opponent-basis splits to {args.write_npz}")
    results = compare(splits.train, splits.test, args.hole, args.components, args.factors,
                      args.iterations)
    print(f"\nCelebA {splits.image_shape}, {len(splits.train)} training and {len(splits.test)} "
          f"test images, {args.hole} holes; NLL and MSE in RGB units, variance floor 1e-4:\n")
    print("| model | basis | NLL mean / median | MSE | seconds |\n|---|---|---:|---:|---:|")
    for r in results:
        label = r["model"].replace("mfa_diagonal", f"MFA, diagonal noise, K = {args.components}, "
                                                   f"L = {args.factors}")
        print(f"| {label.replace('_', ' ')} | {r['basis']} | {r['nll_mean']:.2f} / "
              f"{r['nll_median']:.2f} | {r['mse']:.2f} | {r['seconds']:.0f} |")
    if args.json:
        files.write_json(args.json, {"hole": args.hole, "results": results})
    return results


if __name__ == "__main__":
    main()
