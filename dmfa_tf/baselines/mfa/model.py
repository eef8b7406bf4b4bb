"""The MFA class: parameters, fitting (`MFA.fit`: EM, `em`, from an
initialisation, `init`), conditionals (`conditional`), log-likelihoods, saving
and loading (`io`). The model and its math: `dmfa_tf.baselines.mfa`.

Glossary of shape letters: `n` training images, `B` batch, `K` components,
`N` coordinates (`H * W * C`, flattened in `[H, W, C]` row-major order), `L`
factors.
"""

import time

import numpy as np
import tensorflow as tf

from dmfa_tf.baselines.mfa.conditional import _mixture_conditional
from dmfa_tf.baselines.mfa.em import _e_step, _Params, _run_em
from dmfa_tf.baselines.mfa.init import _from_model, _kmeans_init, _random_init
from dmfa_tf.baselines.mfa.io import FILENAME, _load, _save
from dmfa_tf.core.checks import check_positive_int

__all__ = ["CONDITIONALS", "FILENAME", "INITS", "MFA", "NOISE_TYPES"]

NOISE_TYPES = ("isotropic", "diagonal")
INITS = ("kmeans", "random")
CONDITIONALS = ("paper", "exact")


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
            conditional: `"paper"` or `"exact"` (see `dmfa_tf.baselines.mfa.conditional`).
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
            init: `"kmeans"` (scikit-learn's seeded k-means++ and at most
                `KMEANS_ITERATIONS` Lloyd iterations, then PPCA of each
                cluster by randomised SVD), `"random"` (random
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
        x = _unit_images(images)
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
            params = _from_model(init, noise, variance_floor)
        elif init == "kmeans":
            params = _kmeans_init(x, components, factors, noise, variance_floor, rng)
        else:
            params = _random_init(x, components, factors, noise, variance_floor, rng)
        init_seconds = time.time() - started
        if verbose:
            print(f"  initialisation: {init_seconds:.1f} s")

        params, history, iteration_seconds = _run_em(
            params, x, iterations, noise, variance_floor, batch_size, verbose
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
        x = _unit_images(images, self.image_shape)
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
        return _mixture_conditional(
            self._tensors(self.dtype), inputs["image"], inputs["mask"], self.conditional
        )

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
        _save(self, folder)

    @classmethod
    def load(cls, folder):
        """Reads a model saved by `save` (a folder, or the `.npz` file itself)."""
        arguments, settings = _load(folder)
        return cls(*arguments, **settings)


def _frozen(array):
    array = np.array(array, np.float64)
    array.setflags(write=False)
    return array


def _unit_images(images, image_shape=None):
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
