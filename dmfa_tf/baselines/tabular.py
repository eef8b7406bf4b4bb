"""Baselines for tables, on standardised cells (`dmfa_tf.tabular`).

Each is fitted to training rows (NaN: missing) and predicts the cells with
mask 0 of test rows from those with mask 1 (`predict(std, mask)`: dict of
`mean`, and where the method has a density, `log_prob` and `cdf`):

| name | imputation | density |
|---|---|---|
| `mean` | the column mean | independent Gaussians (column mean and variance) |
| `knn` | scikit-learn `KNNImputer` (k = 5) | – |
| `iterative` | scikit-learn `IterativeImputer` (BayesianRidge, up to 10 rounds; fitted to the rows and a copy with 20% of cells hidden) | – |
| `gaussian` | full-covariance Gaussian: the exact conditional mean | the exact conditional |

The Gaussian's mean and covariance come from the pairwise-complete rows,
projected onto positive definite matrices, plus `regularization` on the
diagonal (the DMFA model's variance floor, so both have the same floor).
"""

import warnings

import numpy as np
from scipy import linalg
from sklearn.exceptions import ConvergenceWarning
from scipy.special import ndtr

from dmfa_tf.core.checks import MISSING, OBSERVED

__all__ = ["TABLE_BASELINES", "make"]

_HALF_LOG_TWO_PI = 0.5 * np.log(2.0 * np.pi)


class _Mean:
    name = "column mean"

    def __init__(self, train, regularization):
        self.mean = np.nanmean(train, axis=0)
        self.var = np.nanvar(train, axis=0) + regularization

    def predict(self, std, mask):
        scored = mask == MISSING
        z = (np.where(np.isfinite(std), std, 0.0) - self.mean) / np.sqrt(self.var)
        log_prob = np.where(scored, -0.5 * z**2 - 0.5 * np.log(self.var) - _HALF_LOG_TWO_PI, 0.0)
        return {
            "mean": np.broadcast_to(self.mean, std.shape),
            "log_prob": log_prob.sum(axis=1),
            "cdf": ndtr(z),
        }


def _hidden(std, mask):
    """The test rows as the imputers see them: NaN wherever mask != 1."""
    return np.where(mask == OBSERVED, std, np.nan)


class _SklearnImputer:
    """A scikit-learn imputer fitted to the training rows. The test rows are
    never part of its fit: each test row is scored under several masks, and a
    copy with a cell observed would give that cell away."""

    def __init__(self, name, imputer, train):
        self.name = name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.imputer = imputer.fit(train)

    def predict(self, std, mask):
        # A column with no observed training value is dropped by scikit-learn;
        # Standardizer.fit refuses such tables, so every column comes back.
        with warnings.catch_warnings():  # IterativeImputer: "Early stopping criterion not reached"
            warnings.simplefilter("ignore", ConvergenceWarning)
            return {"mean": self.imputer.transform(_hidden(std, mask))}


class _Gaussian:
    name = "full Gaussian"

    def __init__(self, train, regularization):
        observed = np.isfinite(train)
        self.mean = np.nanmean(train, axis=0)
        centred = np.where(observed, train - self.mean, 0.0)
        pairs = observed.T.astype(float) @ observed.astype(float)
        cov = (centred.T @ centred) / np.maximum(pairs, 1.0)
        values, vectors = np.linalg.eigh((cov + cov.T) / 2)
        cov = (vectors * np.maximum(values, 0.0)) @ vectors.T
        self.cov = cov + regularization * np.eye(len(cov))

    def predict(self, std, mask):
        n, d = std.shape
        mean = np.broadcast_to(self.mean, (n, d)).copy()
        var = np.zeros((n, d))
        log_prob = np.zeros(n)
        values = np.where(np.isfinite(std), std, 0.0)
        patterns, inverse = np.unique(mask, axis=0, return_inverse=True)
        for p, pattern in enumerate(patterns):
            rows = np.flatnonzero(inverse.ravel() == p)
            o, m = pattern == 1, pattern == 0
            if not m.any():
                continue
            s_mm = self.cov[np.ix_(m, m)]
            if o.any():
                s_oo = linalg.cho_factor(self.cov[np.ix_(o, o)])
                gain = linalg.cho_solve(s_oo, self.cov[np.ix_(o, m)]).T  # [m, o]
                cond_mean = self.mean[m] + (values[np.ix_(rows, o)] - self.mean[o]) @ gain.T
                cond_cov = s_mm - gain @ self.cov[np.ix_(o, m)]
            else:
                cond_mean = np.broadcast_to(self.mean[m], (len(rows), int(m.sum())))
                cond_cov = s_mm
            factor = linalg.cho_factor(cond_cov, lower=True)
            residual = values[np.ix_(rows, m)] - cond_mean
            white = linalg.solve_triangular(factor[0], residual.T, lower=True)
            log_det = 2.0 * np.log(np.diag(factor[0])).sum()
            log_prob[rows] = (
                -0.5 * np.sum(white**2, axis=0) - 0.5 * log_det - m.sum() * _HALF_LOG_TWO_PI
            )
            mean[np.ix_(rows, m)] = cond_mean
            var[np.ix_(rows, m)] = np.diag(cond_cov)
        z = (values - mean) / np.sqrt(np.where(var > 0, var, 1.0))
        return {"mean": mean, "log_prob": log_prob, "cdf": ndtr(z)}


def _knn(train, seed, regularization):
    from sklearn.impute import KNNImputer

    return _SklearnImputer("KNNImputer (k=5)", KNNImputer(n_neighbors=5), train)


# IterativeImputer fitted to complete rows alone converges at once (nothing is
# missing) and then imputes in a single round, from column means: it is fitted
# to the training rows together with a copy of them with this share of cells
# hidden (seeded), so that it learns its rounds.
ITERATIVE_HIDDEN_SHARE = 0.2


def _iterative(train, seed, regularization):
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    hidden = np.random.default_rng([int(seed), 0x69746572]).random(train.shape) < ITERATIVE_HIDDEN_SHARE
    rows = np.concatenate([train, np.where(hidden, np.nan, train)])
    return _SklearnImputer(
        "IterativeImputer", IterativeImputer(max_iter=10, random_state=seed), rows
    )


TABLE_BASELINES = {
    "mean": lambda train, seed, regularization: _Mean(train, regularization),
    "knn": _knn,
    "iterative": _iterative,
    "gaussian": lambda train, seed, regularization: _Gaussian(train, regularization),
}


def make(name, train, seed=0, regularization=1e-3):
    """The baseline `name` (`TABLE_BASELINES`) fitted to the standardised
    training rows `train` `[n, D]` (NaN: missing)."""
    if name not in TABLE_BASELINES:
        raise ValueError(
            f"Unknown table baseline {name!r}; choose from {sorted(TABLE_BASELINES)}."
        )
    return TABLE_BASELINES[name](np.asarray(train, np.float64), seed, regularization)
