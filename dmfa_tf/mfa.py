"""The classical baseline: a mixture of factor analysers fitted by EM.

Glossary of shape letters: `n` training images, `B` batch, `K` components,
`N` coordinates (`H * W * C`, flattened in `[H, W, C]` row-major order), `L`
factors.

#### The model

Component `k` (weight `pi_k`) is a factor analyser over complete images:

```none
x = mu_k + A_k z + eps,   z ~ N(0, I_L),   eps ~ N(0, diag(D_k))
x ~ N(mu_k, A_k A_k^T + diag(D_k))
```

with means `mu [K, N]`, factors `A [K, N, L]` and noise variances `D [K, N]`:
one variance per coordinate (`noise="diagonal"`, MFA, Ghahramani & Hinton
1996) or one per component (`noise="isotropic"`, MPPCA, Tipping & Bishop 1999;
the paper's "MFA" baseline is in fact this one).

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

#### Conditionals (`model(inputs)`)

For an image with observed coordinates `o` and hidden ones `h` (mask 0 or
-1), component `k`'s conditional is again diagonal plus rank `L`:

```none
C     = I + A_o^T D_o^-1 A_o                                  [L, L]
mean  = mu_h + A_h C^-1 A_o^T D_o^-1 (x_o - mu_o)
cov   = D_h + A_h C^-1 A_h^T = D_h + F F^T,  F = A_h chol(C)^-T
```

`conditional="exact"` returns the mixture of all `K` conditionals with
posterior weights `log pi_k + log N(x_o; mu_k,o, Sigma_k,oo)`;
`conditional="paper"` returns only the most probable component's
(`argmax_k` of the same), as the paper's baseline does. The marginal
densities `N(x_o; ...)` come from `MaskedFactorMixture.component_log_prob`
with the observed coordinates scored.
"""

import contextlib
import json
import math
import os
import time

import numpy as np
import tensorflow as tf

from dmfa_tf.core.checks import check_positive_int
from dmfa_tf import files
from dmfa_tf.core import linalg
from dmfa_tf.core.distribution import (
    ABSENT,
    MISSING,
    OBSERVED,
    MaskedFactorMixture,
    flatten_images,
    flatten_mask,
)

__all__ = ["CONDITIONALS", "FILENAME", "INITS", "MFA", "NOISE_TYPES"]

NOISE_TYPES = ("isotropic", "diagonal")
INITS = ("kmeans", "random")
CONDITIONALS = ("paper", "exact")
FILENAME = "mfa.npz"

# Smallest component weight (see "Fitting" in the module docstring).
WEIGHT_FLOOR = 1e-10
# Components with less total responsibility (in images) keep their parameters.
MIN_RESPONSIBILITY = 1e-8
# Lloyd iterations after the k-means++ seeding.
KMEANS_ITERATIONS = 10
# Scale of the random factors of `init="random"`, relative to the data's
# standard deviation.
RANDOM_FACTOR_SCALE = 0.1

_LOG_TWO_PI = math.log(2.0 * math.pi)


class MFA:
    """A mixture of factor analysers over images, with masked conditionals.

    Build one with `MFA.fit(images, ...)` or `MFA.load(folder)`. Calling it
    returns the conditional of the missing pixels given the observed ones in
    the same form as a DMFA network, so the same code scores both:

    ```python
    model = MFA.fit(train_images, components=50, factors=6)      # [n, H, W, C]
    params = model({"image": image, "mask": mask})                 # [B, H, W, C], [B, H, W, 1]
    params["logits"]   # [B, K']      K' = 1 ("paper") or K ("exact")
    params["loc"]      # [B, K', N]
    params["factors"]  # [B, K', N, L]
    params["diag"]     # [B, K', N]
    model.conditional = "exact"     # or "paper"; read when the call is traced
    model.log_prob(train_images)    # [n] float64 log-likelihoods of complete images
    model.save("saved_models/mfa")  # saved_models/mfa/mfa.npz
    ```
    """

    def __init__(
        self,
        weights,
        means,
        factors,
        noise,
        image_shape,
        noise_type="diagonal",
        conditional="paper",
        history=None,
        variance_floor=None,
        info=None,
        dtype="float32",
    ):
        """Builds the model from its parameters.

        Args:
            weights: `[K]` mixture weights, positive (normalised here).
            means: `[K, N]` component means.
            factors: `[K, N, L]` factor loadings.
            noise: `[K, N]` noise variances, or `[K]` (one per component).
            image_shape: `(H, W, C)` with `H * W * C == N`.
            noise_type: `"diagonal"` or `"isotropic"` (then each row of `noise`
                must be constant).
            conditional: `"paper"` or `"exact"` (see the module docstring).
            history: mean log-likelihood per training image after each EM
                iteration (the first entry: the initial model).
            variance_floor: the floor the variances were fitted with.
            info: dict of JSON-serialisable facts about the fit.
            dtype: float dtype of the conditionals computed by `__call__`.
        """
        weights = np.asarray(weights, np.float64)
        means = np.asarray(means, np.float64)
        factors = np.asarray(factors, np.float64)
        noise = np.asarray(noise, np.float64)
        if weights.ndim != 1 or means.ndim != 2 or factors.ndim != 3:
            raise ValueError(
                "Expected weights [K], means [K, N], factors [K, N, L]. Received: "
                f"weights.shape={weights.shape}, means.shape={means.shape}, "
                f"factors.shape={factors.shape}"
            )
        num_components, size = means.shape
        if noise.ndim == 1:
            noise = np.repeat(noise[:, None], size, axis=1)
        if (
            len(weights) != num_components
            or factors.shape[:2] != means.shape
            or noise.shape != means.shape
        ):
            raise ValueError(
                "Inconsistent shapes: weights [K], means [K, N], factors [K, N, L] "
                f"and noise [K, N] or [K]. Received: weights.shape={weights.shape}, "
                f"means.shape={means.shape}, factors.shape={factors.shape}, "
                f"noise.shape={noise.shape}"
            )
        image_shape = tuple(int(d) for d in image_shape)
        if len(image_shape) != 3 or int(np.prod(image_shape)) != size:
            raise ValueError(
                f"`image_shape` must be (H, W, C) with H * W * C = N = {size}. "
                f"Received: image_shape={image_shape}"
            )
        if noise_type not in NOISE_TYPES:
            raise ValueError(
                f"`noise_type` must be one of {NOISE_TYPES}. Received: noise_type={noise_type!r}"
            )
        for key, value in (("weights", weights), ("noise", noise)):
            if not np.all(np.isfinite(value) & (value > 0)):
                raise ValueError(
                    f"`{key}` must be finite and > 0. Received: min({key})={value.min()!r}"
                )
        for key, value in (("means", means), ("factors", factors)):
            if not np.all(np.isfinite(value)):
                raise ValueError(f"`{key}` holds NaN or inf values.")
        if noise_type == "isotropic" and not np.allclose(noise, noise[:, :1], rtol=1e-12):
            raise ValueError("Isotropic noise needs one variance per component.")
        self._log_weights = _frozen(np.log(weights / weights.sum()))
        self._means = _frozen(means)
        self._factors = _frozen(factors)
        self._noise = _frozen(noise)
        self._image_shape = image_shape
        self.noise_type = noise_type
        self.conditional = conditional
        self.history = [float(v) for v in (history if history is not None else [])]
        self.variance_floor = None if variance_floor is None else float(variance_floor)
        self.info = dict(info or {})
        self.dtype = tf.as_dtype(dtype)
        self._constants = {}

    # === Properties ===

    @property
    def image_shape(self):
        """`(H, W, C)`."""
        return self._image_shape

    @property
    def num_components(self):
        return self._means.shape[0]

    @property
    def num_factors(self):
        return self._factors.shape[2]

    @property
    def event_size(self):
        return self._means.shape[1]

    @property
    def weights(self):
        """`[K]` mixture weights (float64, read-only)."""
        return np.exp(self._log_weights)

    @property
    def means(self):
        """`[K, N]` (float64, read-only)."""
        return self._means

    @property
    def factors(self):
        """`[K, N, L]` (float64, read-only)."""
        return self._factors

    @property
    def noise(self):
        """`[K, N]` noise variances (float64, read-only)."""
        return self._noise

    @property
    def conditional(self):
        """`"paper"` (the most probable component) or `"exact"` (the mixture)."""
        return self._conditional

    @conditional.setter
    def conditional(self, value):
        if value not in CONDITIONALS:
            raise ValueError(
                f"`conditional` must be one of {CONDITIONALS}. Received: conditional={value!r}"
            )
        self._conditional = value

    def count_params(self):
        """Number of free parameters (weights, means, factors, variances)."""
        variances = self.num_components * (
            1 if self.noise_type == "isotropic" else self.event_size
        )
        return int(
            self.num_components - 1
            + self._means.size
            + self._factors.size
            + variances
        )

    def __repr__(self):
        return (
            f"MFA(K={self.num_components}, L={self.num_factors}, "
            f"image_shape={self.image_shape}, noise_type={self.noise_type!r}, "
            f"conditional={self.conditional!r})"
        )

    # === Fitting ===

    @classmethod
    def fit(
        cls,
        images,
        components,
        factors,
        iterations=30,
        noise="isotropic",
        init="kmeans",
        seed=0,
        variance_floor=1e-4,
        batch_size=4096,
        verbose=1,
        conditional="paper",
    ):
        """Fits a mixture of factor analysers to complete images by EM.

        Args:
            images: `[n, H, W, C]` images in [0, 1], `n >= components`.
            components: K.
            factors: L, `1 <= L < N`.
            iterations: number of EM iterations (no convergence test).
            noise: `"isotropic"` (MPPCA, the paper's baseline) or `"diagonal"`.
            init: `"kmeans"` (seeded k-means++ and `KMEANS_ITERATIONS` Lloyd
                iterations, then PPCA of each cluster), `"random"` (random
                images as means, small random factors, the data's variance),
                or an `MFA` of the same shapes to continue from (its variances
                are raised to `variance_floor` where below it).
            seed: seed of the initialisation; the same seed gives the same model.
            variance_floor: smallest noise variance (> 0).
            batch_size: images per chunk of the E-step (memory only).
            verbose: 1 prints the mean log-likelihood per image at every iteration.
            conditional: the fitted model's `conditional`.

        Returns:
            An `MFA`; `history` holds the mean log-likelihood per training image
            of the initial model and after each iteration (`iterations + 1`
            values, never decreasing), `info` the fit's settings and timings.

        Raises:
            ValueError: bad images or settings; the message names the value.
        """
        started = time.time()
        x = _check_images(images)
        n, size = x.shape
        image_shape = tuple(int(d) for d in np.shape(images)[1:])
        check_positive_int(components, "components")
        check_positive_int(factors, "factors")
        check_positive_int(batch_size, "batch_size")
        if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
            raise ValueError(
                f"`iterations` must be an integer >= 0. Received: iterations={iterations!r}"
            )
        if factors >= size:
            raise ValueError(
                f"`factors` must be smaller than N = {size} coordinates. Received: factors={factors}"
            )
        if n < components:
            raise ValueError(
                f"Too few images for components={components}: need at least {components}, "
                f"received {n}."
            )
        if noise not in NOISE_TYPES:
            raise ValueError(f"`noise` must be one of {NOISE_TYPES}. Received: noise={noise!r}")
        if isinstance(init, MFA):
            expected = (components, size, factors)
            if init.factors.shape != expected:
                raise ValueError(
                    f"An MFA given as `init` must have [K, N, L] = {list(expected)}. "
                    f"Received: {list(init.factors.shape)}"
                )
        elif init not in INITS:
            raise ValueError(
                f"`init` must be one of {INITS} or an MFA. Received: init={init!r}"
            )
        if not (isinstance(variance_floor, (int, float)) and variance_floor > 0):
            raise ValueError(
                f"`variance_floor` must be > 0. Received: variance_floor={variance_floor!r}"
            )
        variance_floor = float(variance_floor)
        rng = np.random.default_rng(seed)
        init_name = "given" if isinstance(init, MFA) else init
        if verbose:
            print(
                f"Fitting {'MPPCA' if noise == 'isotropic' else 'MFA'} by EM: K={components}, "
                f"L={factors}, {n:,} images of {size} values, {init_name} init (seed {seed}), "
                f"{iterations} iterations, variance floor {variance_floor:g}"
            )
        if isinstance(init, MFA):
            start = np.maximum(init.noise, variance_floor)
            if noise == "isotropic":
                start = np.repeat(start.mean(axis=1, keepdims=True), size, axis=1)
            params = _Params(
                np.log(_floored_weights(init.weights, WEIGHT_FLOOR)),
                np.array(init.means), np.array(init.factors), start,
            )
        elif init == "kmeans":
            params = _kmeans_init(x, components, factors, noise, variance_floor, rng, batch_size)
        else:
            params = _random_init(x, components, factors, noise, variance_floor, rng)
        init_seconds = time.time() - started
        if verbose:
            print(f"  initialisation: {init_seconds:.1f} s")

        history = []
        iteration_seconds = []
        for iteration in range(iterations + 1):
            tick = time.time()
            last = iteration == iterations
            mean_ll, stats = _e_step(params, x, batch_size, statistics=not last)
            history.append(mean_ll)
            if not last:
                params = _m_step(params, stats, noise, variance_floor)
            iteration_seconds.append(time.time() - tick)
            if verbose:
                change = "" if iteration == 0 else f" ({history[-1] - history[-2]:+.4f})"
                label = "initial model" if iteration == 0 else f"iteration {iteration}/{iterations}"
                print(
                    f"  {label}: mean log-likelihood per image {history[-1]:.4f}"
                    f"{change}  [{iteration_seconds[-1]:.1f} s]"
                )
        fit_seconds = time.time() - started
        info = {
            "images": int(n),
            "iterations": int(iterations),
            "init": init_name,
            "seed": int(seed) if seed is not None else None,
            "fit_seconds": round(fit_seconds, 2),
            "init_seconds": round(init_seconds, 2),
            "iteration_seconds": round(float(np.mean(iteration_seconds[:-1])), 3)
            if iterations
            else None,
        }
        if verbose:
            print(f"  fitted in {fit_seconds:.1f} s")
        return cls(
            np.exp(params.log_weights),
            params.means,
            params.factors,
            params.noise,
            image_shape,
            noise_type=noise,
            conditional=conditional,
            history=history,
            variance_floor=variance_floor,
            info=info,
        )

    def log_prob(self, images, batch_size=4096):
        """Log-likelihood of complete images, float64.

        Args:
            images: `[n, H, W, C]` images in [0, 1].

        Returns:
            `[n]` float64 log densities, nats.
        """
        x = _check_images(images, self.image_shape)
        params = _Params(self._log_weights, self._means, self._factors, self._noise)
        return _e_step(params, x, batch_size, statistics=False, per_image=True)

    # === Conditionals ===

    def __call__(self, inputs, training=False):
        """The conditional of the hidden pixels given the observed ones.

        Args:
            inputs: dict with `image` `[B, H, W, C]` and `mask` `[B, H, W, 1 or C]`
                (1 observed, 0 missing, -1 absent; 0 and -1 are both hidden).
            training: ignored (for the DMFA calling convention).

        Returns:
            dict of `logits [B, K']`, `loc [B, K', N]`, `factors [B, K', N, L]`,
            `diag [B, K', N]` in `self.dtype`, `K' = 1` for the "paper"
            conditional and `K` for "exact". At observed coordinates `loc` is
            the image, `factors` 0 and `diag` 1.

        Memory: about `6 * B * K' * N * (L + 2)` values at a time (all `K`
        components are scored for either conditional); choose the batch size
        with `batch_size_for`.
        """
        del training
        dtype = self.dtype
        const = self._tensors(dtype)
        x = flatten_images(tf.cast(inputs["image"], dtype))  # [B, N]
        mask = flatten_mask(inputs["mask"], self.event_size)  # [B, N]
        observed = tf.equal(tf.cast(mask, dtype), OBSERVED)  # [B, N]

        # log p(x_o | k): the components' marginals with exactly `o` scored.
        score_mask = tf.where(
            observed, tf.cast(MISSING, dtype), tf.cast(ABSENT, dtype)
        )  # [B, N]
        marginal = MaskedFactorMixture(
            const["log_weights"], const["means"], const["factors"], const["noise"], score_mask
        )
        log_posterior = const["log_weights"] + marginal.component_log_prob(x)  # [B, K]

        if self.conditional == "paper":
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
        loc, cond_factors, diag = _conditional(means, factors, noise, x, observed)
        return {"logits": logits, "loc": loc, "factors": cond_factors, "diag": diag}

    def batch_size_for(self, memory_bytes=2**30, largest=256):
        """A batch size whose conditionals need about `memory_bytes`."""
        per_image = 6 * self.num_components * self.event_size * (self.num_factors + 2)
        per_image *= self.dtype.size
        return int(max(1, min(largest, memory_bytes // per_image)))

    def _tensors(self, dtype):
        """The parameters as eager constants of `dtype`, made once (they are
        captured, not embedded, by the `tf.function`s that call the model)."""
        key = dtype.name
        if key not in self._constants:
            with tf.init_scope():
                self._constants[key] = {
                    "log_weights": tf.constant(self._log_weights, dtype),  # [K]
                    "means": tf.constant(self._means, dtype),  # [K, N]
                    "factors": tf.constant(self._factors, dtype),  # [K, N, L]
                    "noise": tf.constant(self._noise, dtype),  # [K, N]
                }
        return self._constants[key]

    # === Saving ===

    def save(self, folder):
        """Writes `folder/mfa.npz` (parameters, image shape, noise type,
        conditional, history, variance floor, fit info); makes `folder`."""
        os.makedirs(folder, exist_ok=True)
        arrays = {
            "weights": self.weights,
            "means": self._means,
            "factors": self._factors,
            "noise": self._noise,
            "image_shape": np.asarray(self.image_shape, np.int64),
            "noise_type": np.asarray(self.noise_type),
            "conditional": np.asarray(self.conditional),
            "history": np.asarray(self.history, np.float64),
            "variance_floor": np.asarray(
                np.nan if self.variance_floor is None else self.variance_floor, np.float64
            ),
            "info": np.asarray(json.dumps(self.info)),
            "format_version": np.asarray(1, np.int64),
        }
        with files.atomic_path(os.path.join(folder, FILENAME)) as partial:
            with open(partial, "wb") as f:  # a file object: savez adds no ".npz"
                np.savez(f, **arrays)

    @classmethod
    def load(cls, folder):
        """Reads a model saved by `save` (a folder, or the `.npz` file itself)."""
        path = folder if folder.endswith(".npz") else os.path.join(folder, FILENAME)
        if not os.path.exists(path):
            raise FileNotFoundError(f"No MFA model at {path!r}.")
        with np.load(path, allow_pickle=False) as data:
            floor = float(data["variance_floor"])
            return cls(
                data["weights"],
                data["means"],
                data["factors"],
                data["noise"],
                tuple(int(d) for d in data["image_shape"]),
                noise_type=str(data["noise_type"]),
                conditional=str(data["conditional"]),
                history=data["history"].tolist(),
                variance_floor=None if math.isnan(floor) else floor,
                info=json.loads(str(data["info"])),
            )


# === Conditionals (TensorFlow) ===


def _conditional(means, factors, noise, x, observed):
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
    precision = tf.where(seen, 1.0 / noise, tf.zeros([], dtype))  # [B, K', N]: D_o^-1
    weighted = factors * precision[..., None]  # [B, K', N, L]: D_o^-1 A_o
    num_factors = factors.shape[-1]
    capacitance = tf.linalg.matmul(factors, weighted, transpose_a=True)  # [B, K', L, L]
    capacitance += tf.eye(num_factors, dtype=dtype)
    chol = linalg.cholesky(capacitance)  # [B, K', L, L]
    residual = tf.where(seen, x[:, None, :] - means, tf.zeros([], dtype))  # [B, K', N]
    projected = tf.linalg.matvec(weighted, residual, transpose_a=True)  # [B, K', L]
    latent = linalg.solve_upper(chol, linalg.solve_lower(chol, projected[..., None]))[
        ..., 0
    ]  # [B, K', L]: C^-1 A_o^T D_o^-1 (x_o - mu_o)
    mean = means + tf.linalg.matvec(factors, latent)  # [B, K', N]
    identity = tf.broadcast_to(tf.eye(num_factors, dtype=dtype), tf.shape(chol))
    chol_inverse = linalg.solve_lower(chol, identity)  # [B, K', L, L]
    hidden_factors = tf.linalg.matmul(factors, chol_inverse, transpose_b=True)  # A chol^-T
    loc = tf.where(seen, x[:, None, :], mean)
    cond_factors = tf.where(seen[..., None], tf.zeros([], dtype), hidden_factors)
    diag = tf.where(seen, tf.ones([], dtype), noise)
    return loc, cond_factors, diag


# === EM (NumPy, float64) ===


class _Params:
    """Float64 parameters during EM: `log_weights [K]`, `means [K, N]`,
    `factors [K, N, L]`, `noise [K, N]`."""

    def __init__(self, log_weights, means, factors, noise):
        self.log_weights = log_weights
        self.means = means
        self.factors = factors
        self.noise = noise


def _frozen(array):
    array = np.array(array, np.float64)
    array.setflags(write=False)
    return array


def _check_images(images, image_shape=None):
    """`[n, H, W, C]` images in [0, 1] -> float64 `[n, N]`."""
    x = np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"Images must have shape [n, H, W, C]. Received: shape={x.shape}")
    if image_shape is not None and tuple(x.shape[1:]) != tuple(image_shape):
        raise ValueError(
            f"Images must have shape [n, {', '.join(map(str, image_shape))}]. "
            f"Received: shape={x.shape}"
        )
    if len(x) == 0:
        raise ValueError(f"No images. Received: shape={x.shape}")
    x = x.reshape(len(x), -1).astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("Images hold NaN or inf values.")
    low, high = x.min(), x.max()
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"Images must be in [0, 1]. Received values from {low:g} to {high:g}."
        )
    return x


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


# === Initialisation ===


def _kmeans_init(x, components, factors, noise_type, variance_floor, rng, batch_size):
    """k-means++ seeding, `KMEANS_ITERATIONS` Lloyd iterations, then the PPCA
    (maximum-likelihood, Tipping & Bishop) fit of each cluster."""
    n, size = x.shape
    norms = np.sum(x * x, axis=1)  # [n]
    # k-means++: each new centre drawn with probability ~ squared distance.
    centres = np.empty((components, size))
    first = rng.integers(n)
    centres[0] = x[first]
    nearest = np.maximum(norms - 2.0 * x @ centres[0] + norms[first], 0.0)  # [n]
    for j in range(1, components):
        total = nearest.sum()
        index = rng.choice(n, p=nearest / total) if total > 0 else rng.integers(n)
        centres[j] = x[index]
        distance = np.maximum(norms - 2.0 * x @ centres[j] + norms[index], 0.0)
        nearest = np.minimum(nearest, distance)

    def assign(centres):
        labels = np.empty(n, np.int64)
        distances = np.empty(n)
        centre_norms = np.sum(centres * centres, axis=1)
        for start in range(0, n, batch_size):
            chunk = slice(start, start + batch_size)
            d = norms[chunk, None] - 2.0 * x[chunk] @ centres.T + centre_norms  # [b, K]
            labels[chunk] = d.argmin(axis=1)
            distances[chunk] = d[np.arange(len(d)), labels[chunk]]
        return labels, distances

    for _ in range(KMEANS_ITERATIONS):
        labels, distances = assign(centres)
        counts = np.bincount(labels, minlength=components)
        sums = np.stack([x[labels == k].sum(axis=0) for k in range(components)])  # [K, N]
        centres = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres)
        # An empty cluster moves to the point farthest from its centre.
        for k in np.flatnonzero(counts == 0):
            farthest = int(np.argmax(distances))
            centres[k] = x[farthest]
            distances[farthest] = -1.0
    labels, _ = assign(centres)

    weights = np.empty(components)
    means = np.empty((components, size))
    loadings = np.zeros((components, size, factors))
    noise = np.empty((components, size))
    with _single_threaded_blas():
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


def _single_threaded_blas():
    """A context with one BLAS thread, where `threadpoolctl` is installed: the
    many small factorisations of the per-cluster PCA run hundreds of times
    slower with threads on a busy machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


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


def _top_principal_components(centred, count, rng, oversampling=10, power_iterations=2):
    """The `count` largest eigenvalues `[count]` and eigenvectors `[N, count]`
    of `centred^T centred / m` for `centred [m, N]`, by randomised subspace
    iteration (exact SVD when the matrix is small)."""
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
    basis, _ = np.linalg.qr(centred @ rng.standard_normal((size, rank)))  # [m, rank]
    for _ in range(power_iterations):
        basis, _ = np.linalg.qr(centred.T @ basis)  # [N, rank]
        basis, _ = np.linalg.qr(centred @ basis)  # [m, rank]
    _, singular, vt = np.linalg.svd(basis.T @ centred, full_matrices=False)
    return singular[:count] ** 2 / m, vt[:count].T


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
