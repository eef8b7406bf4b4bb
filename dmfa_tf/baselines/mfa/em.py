"""EM for the MFA baseline, in NumPy float64: the E-step, the M-step and the
loop that alternates them.

#### Fitting (`MFA.fit`)

EM on complete images, in float64. The E-step runs over chunks of the data
and accumulates sufficient statistics; nothing `N x N` is ever built (the
`L x L` matrix `M_k = I + A_k^T D_k^-1 A_k` gives densities and latent
posteriors by Woodbury's identity). With the augmented loadings
`Lam_k = [A_k, mu_k]` and latents `z~ = [z, 1]`, the M-step is the exact
joint maximisation over factors and means:

```none
Lam_k = (sum_n r_nk x_n E[z~]^T) (sum_n r_nk E[z~ z~^T])^-1
D_k   = diag(sum_n r_nk (x_n x_n^T - Lam_k E[z~] x_n^T)) / sum_n r_nk
pi_k  = sum_n r_nk / n
```

(Ghahramani & Hinton 1996 with one noise vector per component; for MPPCA the
one-step EM of Tipping & Bishop 1999, appendix C, whose variance is the mean
over coordinates of the diagonal update.)

Each step is an exact maximisation of EM's lower bound over a set that holds
the current parameters, so the log-likelihood never decreases:

- variances are floored at `variance_floor`: the bound is unimodal in each
  variance, so `max(update, floor)` is its maximum under the constraint
  `D >= floor`;
- weights are floored at `WEIGHT_FLOOR` (a component that loses every image
  keeps a tiny weight, never 0 or NaN): `pi_k = max(WEIGHT_FLOOR, c_k / s)`
  with `s` chosen so that the weights sum to 1 is the bound's maximum under
  `pi >= WEIGHT_FLOOR`;
- a component whose total responsibility is below `MIN_RESPONSIBILITY`
  images keeps its factors, mean and noise (a partial M-step; re-seeding it
  could lower the likelihood, so it is not done).

Glossary of shape letters: `n` images, `b` a chunk of them, `K` components,
`N` coordinates, `L` factors.
"""

import math
import time

import numpy as np

__all__ = ["MIN_RESPONSIBILITY", "WEIGHT_FLOOR"]

# Smallest component weight (see "Fitting" above).
WEIGHT_FLOOR = 1e-10
# Components with less total responsibility (in images) keep their parameters.
MIN_RESPONSIBILITY = 1e-8

_LOG_TWO_PI = math.log(2.0 * math.pi)


class _Params:
    """Float64 parameters during EM: `log_weights [K]`, `means [K, N]`,
    `factors [K, N, L]`, `noise [K, N]`."""

    def __init__(self, log_weights, means, factors, noise):
        self.log_weights = log_weights
        self.means = means
        self.factors = factors
        self.noise = noise


def _run_em(params, x, iterations, noise_type, variance_floor, batch_size, verbose):
    """`iterations` EM steps from `params` on `x [n, N]`.

    Returns:
        `(params, history, seconds)`: the final `_Params`, the mean
        log-likelihood per image of the initial model and after each step
        (`iterations + 1` values) and the seconds each took.
    """
    history = []
    seconds = []
    for iteration in range(iterations + 1):
        tick = time.time()
        last = iteration == iterations
        mean_ll, stats = _e_step(params, x, batch_size, statistics=not last)
        history.append(mean_ll)
        if not last:
            params = _m_step(params, stats, noise_type, variance_floor)
        seconds.append(time.time() - tick)
        if verbose:
            change = "" if iteration == 0 else f" ({history[-1] - history[-2]:+.4f})"
            label = "initial model" if iteration == 0 else f"iteration {iteration}/{iterations}"
            print(
                f"  {label}: mean log-likelihood per image {history[-1]:.4f}"
                f"{change}  [{seconds[-1]:.1f} s]"
            )
    return params, history, seconds


def _e_step(params, x, batch_size, statistics=True, per_image=False):
    """One pass over the data with parameters `params`.

    Returns:
        `per_image`: `[n]` log-likelihoods. Otherwise `(mean log-likelihood,
        statistics)`, the statistics being None unless `statistics`: a dict of
        `count [K]`, `x [N, K]`, `xx [N, K]` (sum of squares), `xz [N, K * L]`,
        `z [K, L]`, `zz [K, L, L]` (responsibility-weighted sums) and
        `posterior_cov [K, L, L]` (`M^-1`).
    """
    log_weights, means, factors, noise = (
        params.log_weights, params.means, params.factors, params.noise
    )
    num_components, size, num_factors = factors.shape
    precision = 1.0 / noise  # [K, N]
    weighted = factors * precision[..., None]  # [K, N, L]: D^-1 A
    capacitance = np.einsum("knl,knm->klm", factors, weighted) + np.eye(num_factors)
    chol = np.linalg.cholesky(capacitance)  # [K, L, L]
    posterior_cov = np.linalg.inv(capacitance)  # [K, L, L]: M^-1
    log_det = 2.0 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(-1) + np.log(
        noise
    ).sum(-1)  # [K]
    # One matrix product gives A^T D^-1 x and mu^T D^-1 x for every component.
    projector = np.concatenate(
        [weighted.transpose(1, 0, 2).reshape(size, -1), (means * precision).T], axis=1
    )  # [N, K * L + K]
    mean_projection = np.einsum("knl,kn->kl", weighted, means)  # [K, L]
    mean_norm = np.sum(means * means * precision, axis=1)  # [K]
    constant = log_weights - 0.5 * (log_det + size * _LOG_TWO_PI)  # [K]
    kl = num_components * num_factors

    stats = None
    if statistics:
        stats = {
            "count": np.zeros(num_components),
            "x_xz": np.zeros((size, kl + num_components)),
            "xx": np.zeros((size, num_components)),
            "z": np.zeros((num_components, num_factors)),
            "zz": np.zeros((num_components, num_factors, num_factors)),
            "posterior_cov": posterior_cov,
        }
    log_likelihoods = []
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size]  # [b, N]
        squares = chunk * chunk  # [b, N]
        products = chunk @ projector  # [b, K * L + K]
        projected = (
            products[:, :kl].reshape(len(chunk), num_components, num_factors) - mean_projection
        )  # [b, K, L]: A^T D^-1 (x - mu)
        quadratic = squares @ precision.T - 2.0 * products[:, kl:] + mean_norm  # [b, K]
        latent = np.einsum("klm,bkm->bkl", posterior_cov, projected)  # [b, K, L]: E[z]
        mahalanobis = quadratic - np.sum(projected * latent, axis=-1)  # [b, K]
        joint = constant - 0.5 * mahalanobis  # [b, K]: log pi_k + log N(x; k)
        peak = joint.max(axis=1, keepdims=True)
        log_likelihood = peak[:, 0] + np.log(np.exp(joint - peak).sum(axis=1))  # [b]
        log_likelihoods.append(log_likelihood)
        if stats is not None:
            resp = np.exp(joint - log_likelihood[:, None])  # [b, K]
            weighted_latent = resp[..., None] * latent  # [b, K, L]
            stats["count"] += resp.sum(0)
            stats["x_xz"] += chunk.T @ np.concatenate(
                [weighted_latent.reshape(len(chunk), kl), resp], axis=1
            )
            stats["xx"] += squares.T @ resp
            stats["z"] += weighted_latent.sum(0)
            stats["zz"] += np.einsum("bkl,bkm->klm", weighted_latent, latent)
    log_likelihoods = np.concatenate(log_likelihoods)
    if per_image:
        return log_likelihoods
    return float(log_likelihoods.mean()), stats


def _m_step(params, stats, noise_type, variance_floor):
    """The closed-form M-step (see the module docstring); returns new `_Params`."""
    num_components, size, num_factors = params.factors.shape
    kl = num_components * num_factors
    count = stats["count"]  # [K]
    active = count >= MIN_RESPONSIBILITY  # [K]
    # sum_n r E[z~ z~^T], z~ = [z, 1]: [K, L + 1, L + 1]
    gram = np.zeros((num_components, num_factors + 1, num_factors + 1))
    gram[:, :num_factors, :num_factors] = (
        count[:, None, None] * stats["posterior_cov"] + stats["zz"]
    )
    gram[:, :num_factors, num_factors] = stats["z"]
    gram[:, num_factors, :num_factors] = stats["z"]
    gram[:, num_factors, num_factors] = count
    gram[~active] = np.eye(num_factors + 1)
    # sum_n r x E[z~]^T: [K, N, L + 1]
    cross = np.concatenate(
        [
            stats["x_xz"][:, :kl].reshape(size, num_components, num_factors),
            stats["x_xz"][:, kl:, None],
        ],
        axis=2,
    ).transpose(1, 0, 2)
    loadings = np.linalg.solve(gram, cross.transpose(0, 2, 1)).transpose(0, 2, 1)  # [K, N, L+1]
    safe_count = np.where(active, count, 1.0)[:, None]
    raw_noise = (stats["xx"].T - np.sum(loadings * cross, axis=2)) / safe_count  # [K, N]
    if noise_type == "isotropic":
        raw_noise = np.repeat(raw_noise.mean(axis=1, keepdims=True), size, axis=1)
    noise = np.maximum(raw_noise, variance_floor)
    keep = ~active
    factors = np.where(keep[:, None, None], params.factors, loadings[..., :num_factors])
    means = np.where(keep[:, None], params.means, loadings[..., num_factors])
    noise = np.where(keep[:, None], params.noise, noise)
    log_weights = np.log(_floored_weights(count, WEIGHT_FLOOR))
    return _Params(log_weights, means, factors, noise)


def _floored_weights(count, floor):
    """`argmax_pi sum_k count_k log pi_k` subject to `pi >= floor`, `sum pi = 1`:
    `pi_k = max(floor, count_k / s)`, `s` found by growing the floored set."""
    count = np.asarray(count, np.float64)
    floored = np.zeros(count.shape, bool)
    while True:
        free = count[~floored].sum()
        scale = free / (1.0 - floored.sum() * floor)
        weights = np.where(floored, floor, count / scale)
        low = (weights < floor) & ~floored
        if not low.any():
            return weights
        floored |= low
