"""The MFA baseline's conditionals, in TensorFlow (`MFA.__call__`).

#### Conditionals

For an image with observed coordinates `o` and hidden ones `h` (mask 0 or
-1), component `k`'s conditional is again diagonal plus rank `L`:

```none
C     = I + A_o^T D_o^-1 A_o                                  [L, L]
mean  = mu_h + A_h C^-1 A_o^T D_o^-1 (x_o - mu_o)
cov   = D_h + A_h C^-1 A_h^T = D_h + F F^T,  F = A_h chol(C)^-T
```

`C` and `C^-1 A_o^T D_o^-1 (x_o - mu_o)` come from the distribution's own
Woodbury code (`dmfa_tf.core.linalg.whitened_capacitance` and
`capacitance_solve`, with the observed coordinates selected).

`conditional="exact"` returns the mixture of all `K` conditionals with
posterior weights `log pi_k + log N(x_o; mu_k,o, Sigma_k,oo)`;
`conditional="paper"` returns only the most probable component's
(`argmax_k` of the same), as the paper's baseline does. The marginal
densities `N(x_o; ...)` come from `MaskedFactorMixture.component_log_prob`
with the observed coordinates scored.
"""

import tensorflow as tf

from dmfa_tf.core import linalg
from dmfa_tf.core.checks import ABSENT, MISSING, OBSERVED
from dmfa_tf.core.distribution import MaskedFactorMixture, flatten_images, flatten_mask


def _mixture_conditional(const, image, mask, conditional):
    """The conditional of the hidden pixels given the observed ones.

    Args:
        const: dict of the parameters as tensors of one float dtype:
            `log_weights [K]`, `means [K, N]`, `factors [K, N, L]`, `noise [K, N]`.
        image: `[B, H, W, C]` images.
        mask: `[B, H, W, 1 or C]` (1 observed; 0 and -1 are both hidden).
        conditional: `"paper"` or `"exact"`.

    Returns:
        dict of `logits [B, K']`, `loc [B, K', N]`, `factors [B, K', N, L]`,
        `diag [B, K', N]`, `K' = 1` for "paper" and `K` for "exact".
    """
    dtype = const["means"].dtype
    event_size = const["means"].shape[-1]
    x = flatten_images(tf.cast(image, dtype))  # [B, N]
    mask = flatten_mask(mask, event_size)  # [B, N]
    observed = tf.equal(tf.cast(mask, dtype), OBSERVED)  # [B, N]

    # log p(x_o | k): the components' marginals with exactly `o` scored.
    score_mask = tf.where(
        observed, tf.cast(MISSING, dtype), tf.cast(ABSENT, dtype)
    )  # [B, N]
    marginal = MaskedFactorMixture(
        const["log_weights"], const["means"], const["factors"], const["noise"], score_mask
    )
    log_posterior = const["log_weights"] + marginal.component_log_prob(x)  # [B, K]

    if conditional == "paper":
        best = tf.argmax(log_posterior, axis=-1, output_type=tf.int32)  # [B]
        means = tf.gather(const["means"], best)[:, None]  # [B, 1, N]
        factors = tf.gather(const["factors"], best)[:, None]  # [B, 1, N, L]
        noise = tf.gather(const["noise"], best)[:, None]  # [B, 1, N]
        logits = tf.zeros_like(log_posterior[:, :1])  # [B, 1]
    else:
        means = const["means"][None]  # [1, K, N]
        factors = const["factors"][None]  # [1, K, N, L]
        noise = const["noise"][None]  # [1, K, N]
        logits = log_posterior  # [B, K]
    loc, cond_factors, diag = _component_conditionals(means, factors, noise, x, observed)
    return {"logits": logits, "loc": loc, "factors": cond_factors, "diag": diag}


def _component_conditionals(means, factors, noise, x, observed):
    """Each component's Gaussian conditional of the hidden coordinates.

    Args:
        means: `[B or 1, K', N]`; factors `[B or 1, K', N, L]`; noise
            `[B or 1, K', N]` variances.
        x: `[B, N]` images; only observed coordinates are read.
        observed: `[B, N]` bool.

    Returns:
        `loc [B, K', N]`, `factors [B, K', N, L]`, `diag [B, K', N]`; at
        observed coordinates `x`, 0 and 1.
    """
    dtype = means.dtype
    seen = observed[:, None, :]  # [B, 1, N]
    # weight D_o^-1/2 [B, K', N], whitened D_o^-1/2 A_o [B, K', N, L], chol(C) [B, K', L, L]
    _, weight, whitened, chol = linalg.whitened_capacitance(factors, noise, seen)
    residual = tf.where(
        seen, (x[:, None, :] - means) * weight, tf.zeros([], dtype)
    )  # [B, K', N]: D_o^-1/2 (x_o - mu_o)
    latent = linalg.capacitance_solve(chol, whitened, residual)  # [B, K', L]
    mean = means + tf.linalg.matvec(factors, latent)  # [B, K', N]
    num_factors = factors.shape[-1]
    identity = tf.broadcast_to(tf.eye(num_factors, dtype=dtype), tf.shape(chol))
    chol_inverse = linalg.solve_lower(chol, identity)  # [B, K', L, L]
    hidden_factors = tf.linalg.matmul(factors, chol_inverse, transpose_b=True)  # A chol^-T
    loc = tf.where(seen, x[:, None, :], mean)
    cond_factors = tf.where(seen[..., None], tf.zeros([], dtype), hidden_factors)
    diag = tf.where(seen, tf.ones([], dtype), noise)
    return loc, cond_factors, diag
