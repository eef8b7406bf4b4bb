"""Independent dense float64 references (NumPy only) for the tests."""

import numpy as np


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
