"""What the low-rank-plus-diagonal shape alone costs against the full Gaussian
(issue 7's CelebA gap).

The full Gaussian's conditional covariance `C` of a hole does not depend on the
observed values, only on where the hole is. For each of the first `--images`
seeded holes this fits the best covariance of DMFA's shape to it, `W Wᵀ +
diag(d)` with `R` columns and `d` in the model's colour basis (opponent), by
factor-analysis EM on `C` itself, and prints the Kullback-Leibler divergence

    KL(N(m, C) || N(m, W Wᵀ + diag(d))) = ½ [tr(Σ⁻¹ C) − |h| + log det Σ − log det C],

the NLL per image that such a covariance loses, *with the Gaussian's exact
conditional mean*, against the Gaussian's own conditional: a floor for a
one-component model of rank R that is no better informed than the Gaussian
(a network conditions on each face, and mixes K components, so it can do
better than this floor, and is not bound by it):

    PYTHONPATH=. python benchmarks/lowrank_bound.py --model=saved_models/celeb_a --hole=16x16 --ranks 16 48 80 128 256
"""

import argparse
import time

import numpy as np


def fit_factor_analysis(covariance, rank, iterations=200, tolerance=1e-4):
    """`(W [n, rank], d [n])` maximising the expected log-likelihood of data of
    covariance `covariance` under `N(0, W Wᵀ + diag(d))` (EM, Rubin and
    Thayer 1982), from the top `rank` principal directions."""
    values, vectors = np.linalg.eigh(covariance)
    values, vectors = values[::-1], vectors[:, ::-1]
    noise = values[rank:].mean() if rank < len(values) else values[-1] * 0.5
    loadings = vectors[:, :rank] * np.sqrt(np.maximum(values[:rank] - noise, 1e-12))
    diag = np.maximum(np.diag(covariance) - np.sum(loadings**2, axis=1), 1e-8)
    previous = np.inf
    for _ in range(iterations):
        # beta = Wᵀ Σ⁻¹ by Woodbury: (I + Wᵀ D⁻¹ W)⁻¹ Wᵀ D⁻¹
        scaled = loadings / diag[:, None]
        inner = np.eye(rank) + loadings.T @ scaled
        beta = np.linalg.solve(inner, scaled.T)
        beta_c = beta @ covariance
        moment = np.eye(rank) - beta @ loadings + beta_c @ beta.T
        loadings = np.linalg.solve(moment, beta_c).T
        diag = np.maximum(np.diag(covariance) - np.sum(loadings * beta_c.T, axis=1), 1e-8)
        value = kl_divergence(covariance, loadings, diag)
        if previous - value < tolerance:
            break
        previous = value
    return loadings, diag


def kl_divergence(covariance, loadings, diag):
    """KL(N(0, covariance) || N(0, W Wᵀ + diag(d))) in nats."""
    model = loadings @ loadings.T + np.diag(diag)
    chol = np.linalg.cholesky(model)
    chol_c = np.linalg.cholesky(covariance)
    solved = np.linalg.solve(chol, chol_c)
    trace = float(np.sum(solved**2))
    log_det_model = 2.0 * float(np.sum(np.log(np.diag(chol))))
    log_det_c = 2.0 * float(np.sum(np.log(np.diag(chol_c))))
    return 0.5 * (trace - len(diag) + log_det_model - log_det_c)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a saved DMFA folder: its data (3 channels)")
    parser.add_argument("--hole", required=True, help="mask spec, e.g. 16x16")
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 48, 80, 128, 256])
    parser.add_argument("--images", type=int, default=8, help="the first N test holes (8)")
    parser.add_argument("--seed", type=int, default=0, help="masks (seed, i) as evaluate.py (0)")
    args = parser.parse_args(argv)
    if any(r < 1 for r in args.ranks) or args.images < 1:
        parser.error(f"--ranks and --images must be >= 1; received {args.ranks}, {args.images}")

    from gaussian_gap import conditional_in_basis  # this folder's script, beside this one

    from dmfa_tf import data, evaluation, saving
    from dmfa_tf.baselines.gaussian import FullGaussian
    from dmfa_tf.core import colour

    sources = data.load_model_sources(saving.load_config(args.model), splits=("train", "test"))
    train = sources.train.to_float_array()
    if train.shape[-1] != 3:
        raise ValueError(f"{args.model!r} has {train.shape[-1]} channel(s), not 3.")
    gaussian = FullGaussian.fit(train)
    images = sources.test.take(args.images).to_float_array()
    masks = evaluation.seeded_masks(images, args.hole, seed=args.seed)
    basis = np.asarray(colour.basis_matrix("opponent", 3), np.float64)
    per_pixel = np.repeat(masks.reshape(len(images), -1), 3, axis=1)
    flat = images.reshape(len(images), -1).astype(np.float64)
    results = {rank: [] for rank in args.ranks}
    start = time.perf_counter()
    for b in range(len(images)):
        if not np.any(per_pixel[b] == 0):
            continue
        _, covariance, _ = conditional_in_basis(gaussian, flat[b], per_pixel[b], basis)
        for rank in args.ranks:
            results[rank].append(kl_divergence(covariance, *fit_factor_analysis(covariance, rank)))
        print(f"hole {b + 1}/{len(images)}: " + ", ".join(
            f"R={rank} {results[rank][-1]:.1f}" for rank in args.ranks)
            + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"\nKL of the best rank-R + diagonal covariance to the full Gaussian's conditional, "
          f"{args.hole}, {len(results[args.ranks[0]])} holes (nats per image; median, mean):")
    for rank in args.ranks:
        print(f"  R = {rank:4d}: {np.median(results[rank]):8.2f}  {np.mean(results[rank]):8.2f}")
    return results


if __name__ == "__main__":
    main()
