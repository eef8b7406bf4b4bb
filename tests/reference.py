"""Independent dense float64 references (NumPy, and SciPy's normal and
chi-squared distributions) for the tests."""

import numpy as np
from scipy import stats


def mixture_log_prob(logits, loc, factors, diag, mask, x):
    """Log density of x's missing (mask == 0) coordinates under the mixture's
    marginal, by building each component's dense covariance on them.

    Shapes: logits [B, K], loc [B, K, N], factors [B, K, N, L], diag [B, K, N],
    mask [B, N], x [B, N]. Returns [B]; 0 where nothing is missing.
    """
    logits, loc, factors, diag, mask, x = (
        np.asarray(v, np.float64) for v in (logits, loc, factors, diag, mask, x)
    )
    out = np.zeros(len(x))
    for b in range(len(x)):
        missing = mask[b] == 0
        if not missing.any():
            continue
        log_weights = logits[b] - np.logaddexp.reduce(logits[b])
        terms = []
        for k in range(len(logits[b])):
            cov = factors[b, k] @ factors[b, k].T + np.diag(diag[b, k])
            cov = cov[np.ix_(missing, missing)]
            r = (x[b] - loc[b, k])[missing]
            _, log_det = np.linalg.slogdet(cov)
            terms.append(
                -0.5 * (missing.sum() * np.log(2 * np.pi) + log_det + r @ np.linalg.solve(cov, r))
                + log_weights[k]
            )
        out[b] = np.logaddexp.reduce(terms)
    return out


def mixture_moments(logits, loc, factors, diag, noise=True):
    """Mean [N] and covariance [N, N] of one mixture (no batch axis)."""
    logits, loc, factors, diag = (np.asarray(v, np.float64) for v in (logits, loc, factors, diag))
    probs = np.exp(logits - np.logaddexp.reduce(logits))
    mean = probs @ loc
    second = np.zeros((loc.shape[1], loc.shape[1]))
    for k, p in enumerate(probs):
        cov = factors[k] @ factors[k].T + (np.diag(diag[k]) if noise else 0)
        second += p * (cov + np.outer(loc[k], loc[k]))
    return mean, second - np.outer(mean, mean)


def component_mahalanobis(loc, factors, diag, mask, x):
    """Squared Mahalanobis distances [B, K] of x's missing (mask == 0)
    coordinates from each component, with dense covariances; 0 where nothing
    is missing."""
    loc, factors, diag, mask, x = (np.asarray(v, np.float64) for v in (loc, factors, diag, mask, x))
    out = np.zeros(loc.shape[:2])
    for b in range(len(x)):
        missing = mask[b] == 0
        for k in range(loc.shape[1]):
            cov = factors[b, k] @ factors[b, k].T + np.diag(diag[b, k])
            cov = cov[np.ix_(missing, missing)]
            r = (x[b] - loc[b, k])[missing]
            out[b, k] = r @ np.linalg.solve(cov, r) if missing.any() else 0.0
    return out


def marginal_cdf(logits, loc, factors, diag, x):
    """Each coordinate's 1-D mixture marginal CDF at x, [B, N]: one
    `scipy.stats.norm.cdf` per component and coordinate, in loops."""
    logits, loc, factors, diag, x = (np.asarray(v, np.float64) for v in (logits, loc, factors, diag, x))
    out = np.zeros(x.shape)
    for b in range(len(x)):
        probs = np.exp(logits[b] - np.logaddexp.reduce(logits[b]))
        for i in range(x.shape[1]):
            for k, p in enumerate(probs):
                variance = diag[b, k, i] + np.sum(factors[b, k, i] ** 2)
                out[b, i] += p * stats.norm.cdf(x[b, i], loc[b, k, i], np.sqrt(variance))
    return out


def gaussian_conditional(mean, cov, x, mask):
    """A dense Gaussian's conditional of the mask-0 coordinates given the
    mask-1 ones, the mask -1 ones marginalised out (dropped from the joint
    before conditioning).

    Returns (missing indices, conditional mean [m], conditional covariance
    [m, m], log density of x's missing block, per-coordinate CDFs at x [m],
    squared Mahalanobis distance).
    """
    mean, cov, x, mask = (np.asarray(v, np.float64) for v in (mean, cov, x, mask))
    o, h = np.flatnonzero(mask == 1), np.flatnonzero(mask == 0)
    gain = cov[np.ix_(h, o)] @ np.linalg.inv(cov[np.ix_(o, o)]) if len(o) else np.zeros((len(h), 0))
    cond_mean = mean[h] + gain @ (x[o] - mean[o])
    cond_cov = cov[np.ix_(h, h)] - gain @ cov[np.ix_(o, h)]
    if not len(h):
        return h, cond_mean, cond_cov, 0.0, np.zeros(0), 0.0
    log_prob = stats.multivariate_normal(cond_mean, cond_cov).logpdf(x[h])
    cdf = stats.norm.cdf(x[h], cond_mean, np.sqrt(np.diag(cond_cov)))
    r = x[h] - cond_mean
    return h, cond_mean, cond_cov, float(log_prob), cdf, float(r @ np.linalg.solve(cond_cov, r))
