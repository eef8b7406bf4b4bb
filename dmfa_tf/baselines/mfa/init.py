"""Initialisations of the MFA baseline's EM (`MFA.fit`'s `init`), NumPy float64.

- `"kmeans"`: scikit-learn's `KMeans` (k-means++ seeding, one run,
  `KMEANS_ITERATIONS` Lloyd iterations at most), then the maximum-likelihood
  PPCA (Tipping & Bishop) of each cluster, whose top principal components come
  from scikit-learn's `randomized_svd` (an exact SVD for small clusters);
- `"random"`: random distinct images as means, small random factors, the
  data's variances as noise, equal weights;
- an `MFA` to continue from (`from_model`).

Every random draw comes from the `numpy.random.Generator` passed in (scikit-learn
gets integer seeds drawn from it), so the same seed gives the same model.
"""

import math

import numpy as np
from sklearn.cluster import KMeans
from sklearn.utils.extmath import randomized_svd

from dmfa_tf.baselines._common import _one_blas_thread
from dmfa_tf.baselines.mfa.em import WEIGHT_FLOOR, _floored_weights, _Params

__all__ = ["KMEANS_ITERATIONS", "RANDOM_FACTOR_SCALE"]

# Most Lloyd iterations after the k-means++ seeding.
KMEANS_ITERATIONS = 10
# Scale of the random factors of `init="random"`, relative to the data's
# standard deviation.
RANDOM_FACTOR_SCALE = 0.1
# Randomised PCA of a cluster: extra dimensions of the random subspace and
# power iterations (exact SVD when the cluster's matrix has at most twice
# `factors + PCA_OVERSAMPLING` rows or columns).
PCA_OVERSAMPLING = 10
PCA_POWER_ITERATIONS = 2


def _seed(rng):
    """An integer seed for scikit-learn, drawn from `rng`."""
    return int(rng.integers(np.iinfo(np.int32).max))


def _kmeans_init(x, components, factors, noise_type, variance_floor, rng):
    """k-means (k-means++ seeding, at most `KMEANS_ITERATIONS` Lloyd
    iterations; empty clusters are moved to far points), then the PPCA
    (maximum-likelihood, Tipping & Bishop) fit of each cluster.

    Runs on one thread (BLAS and OpenMP): the result does not depend on the
    number of cores, and on a busy machine threads made a 300-image k-means
    30 times slower (and MNIST's no faster on 2 cores); at MNIST size it is a
    few seconds, against minutes of EM."""
    size = x.shape[1]
    weights = np.empty(components)
    means = np.empty((components, size))
    loadings = np.zeros((components, size, factors))
    noise = np.empty((components, size))
    with _one_blas_thread(user_api=None):
        kmeans = KMeans(
            n_clusters=components,
            init="k-means++",
            n_init=1,
            max_iter=KMEANS_ITERATIONS,
            tol=0.0,  # stop early only when the assignment no longer changes
            random_state=_seed(rng),
            algorithm="lloyd",
        ).fit(x)
        labels = kmeans.labels_  # of the final centres
        centres = kmeans.cluster_centers_  # [K, N]
        for k in range(components):
            members = x[labels == k]
            weights[k] = len(members) + 1.0  # one pseudo-count: no weight is 0
            if len(members) == 0:
                means[k] = centres[k]
                noise[k] = _noise_from_variances(x.var(axis=0), noise_type, variance_floor)
            else:
                means[k], loadings[k], noise[k] = _ppca(
                    members, factors, noise_type, variance_floor, rng
                )
    weights /= weights.sum()
    return _Params(np.log(weights), means, loadings, noise)


def _ppca(members, factors, noise_type, variance_floor, rng):
    """Maximum-likelihood PPCA (Tipping & Bishop) of `members [m, N]`: mean
    `[N]`, factors `[N, L]` and noise `[N]` (for diagonal noise, the variance
    the factors leave unexplained per coordinate)."""
    size = members.shape[1]
    mean = members.mean(axis=0)
    centred = members - mean
    variances = np.mean(centred * centred, axis=0)  # [N]
    values, vectors = _top_principal_components(centred, factors, rng)
    sigma2 = max((variances.sum() - values.sum()) / (size - factors), variance_floor)
    loadings = vectors * np.sqrt(np.maximum(values - sigma2, 0.0))  # [N, L]
    if noise_type == "isotropic":
        return mean, loadings, np.full(size, sigma2)
    explained = np.sum(loadings**2, axis=1)
    return mean, loadings, np.maximum(variances - explained, variance_floor)


def _top_principal_components(
    centred, count, rng, oversampling=PCA_OVERSAMPLING, power_iterations=PCA_POWER_ITERATIONS
):
    """The `count` largest eigenvalues `[count]` and eigenvectors `[N, count]`
    of `centred^T centred / m` for `centred [m, N]`: scikit-learn's
    `randomized_svd` (QR-normalised power iterations, seeded from `rng`), or
    an exact SVD when the matrix is small (eigenvalues beyond its rank are 0)."""
    m, size = centred.shape
    rank = count + oversampling
    if min(m, size) <= 2 * rank:
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        values = np.zeros(count)
        vectors = np.zeros((size, count))
        kept = min(count, len(singular))
        values[:kept] = singular[:kept] ** 2 / m
        vectors[:, :kept] = vt[:kept].T
        return values, vectors
    _, singular, vt = randomized_svd(
        centred,
        count,
        n_oversamples=oversampling,
        n_iter=power_iterations,
        power_iteration_normalizer="QR",
        random_state=_seed(rng),
    )
    return singular**2 / m, vt.T


def _noise_from_variances(variances, noise_type, variance_floor):
    if noise_type == "isotropic":
        return np.full(variances.shape, max(variances.mean(), variance_floor))
    return np.maximum(variances, variance_floor)


def _random_init(x, components, factors, noise_type, variance_floor, rng):
    """Random distinct images as means, small random factors, the data's
    variances as noise, equal weights."""
    n, size = x.shape
    means = x[rng.choice(n, components, replace=False)]
    variances = x.var(axis=0)
    scale = RANDOM_FACTOR_SCALE * math.sqrt(max(variances.mean(), variance_floor))
    loadings = scale * rng.standard_normal((components, size, factors))
    noise = np.repeat(
        _noise_from_variances(variances, noise_type, variance_floor)[None], components, axis=0
    )
    return _Params(np.full(components, -math.log(components)), means, loadings, noise)


def _from_model(model, noise_type, variance_floor):
    """An `MFA`'s parameters to continue from: variances raised to
    `variance_floor` (and averaged for isotropic noise), weights floored at
    `WEIGHT_FLOOR`."""
    start = np.maximum(model.noise, variance_floor)
    if noise_type == "isotropic":
        start = np.repeat(start.mean(axis=1, keepdims=True), start.shape[1], axis=1)
    return _Params(
        np.log(_floored_weights(model.weights, WEIGHT_FLOOR)),
        np.array(model.means), np.array(model.factors), start,
    )
