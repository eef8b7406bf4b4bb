"""The DMFA density: a mixture of factor analysers marginalised onto missing values.

Glossary of shape letters used in the comments:
  `S` sample shape, `B` batch shape, `K` mixture components, `N` coordinates
  (pixels x channels, flattened in `[H, W, C]` row-major order), `L` factors.

#### Mathematical details

Component `k` is a Gaussian with mean `loc_k` and covariance

```none
Sigma_k = diag(diag_k) + factors_k @ factors_k^T        # [N, N], never built
```

For a `mask` with 1 on observed (given) coordinates `O` and 0 on missing
coordinates `M`, the distribution is over the missing coordinates; its density
is the mixture of the components' marginals on `M`:

```none
p(x_M) = sum_k softmax(logits)_k N(x_M; loc_k[M], Sigma_k[M, M])
```

A Gaussian's marginal on `M` drops the other rows and columns of its mean and
covariance. With the rows of `factors` outside `M` set to zero and `diag` set
to one there, every batch element keeps the same static shapes, whatever the
size of its mask. Woodbury's identity and the matrix determinant lemma, with
the `L x L` capacitance matrix

```none
W = diag(1/sqrt(diag)) on M, 0 elsewhere     r~ = W (x - loc)      A~ = W factors
C = I + A~^T A~                              u  = C^-1 A~^T r~
(x - loc)^T Sigma^-1 (x - loc) = |r~ - A~ u|^2 + |u|^2
log det Sigma[M, M] = log det C + sum_M log diag
```

evaluate each component in O(N L^2) time and O(N L) memory: no `N x N` tensor
exists in the forward pass or in the gradient. The quadratic form is the sum of
two sums of squares. The textbook form `|r~|^2 - |chol(C)^-1 A~^T r~|^2` (used
by `tfd.MultivariateNormalDiagPlusLowRankCovariance`) subtracts two numbers of
size `|x - loc|^2 / diag`, which loses float32 precision when variances
are small. With variances down to 1e-6 its float32 relative error reaches
1e-3 to 7e-3 (factors of scale 0.25, `benchmarks/bench_log_prob.py --accuracy`)
and more with larger factors; the form used here stays near 1e-6.

Coordinates marked -1 ("absent") are marginalised out too: they are neither
given nor scored, which is how training on incomplete data leaves unknown
pixels out of the loss.

The density first gathers each batch member's scored coordinates (padded to
the batch's largest count, the padding treated like an unscored coordinate),
so its algebra runs on `|M|` rows instead of `N`: at a 16x16 hole in a 32x32
colour image, a quarter of them. Where shapes must be static, in a function
compiled by XLA, inside `linalg.builtins_only()` (the TFLite export) and
inside `static_shapes()` (`dmfa_tf.core.rows`), it works on all `N` rows with the unscored ones
zeroed instead. Both give the same numbers.
"""

import math

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from dmfa_tf.core import colour, linalg, rows
from dmfa_tf.core import scales as scales_lib
from dmfa_tf.core.rows import flatten_images, flatten_mask, static_shapes, unflatten_images
from dmfa_tf.core.checks import (
    ABSENT, MASK_CODES_MESSAGE, MAX_SAMPLE_VALUES, MISSING, OBSERVED, check_mixture_shapes,
    checked_sample_count, is_observed, valid_codes,
)

tfd = tfp.distributions
tfb = tfp.bijectors

__all__ = [
    "ABSENT",
    "MAX_SAMPLE_VALUES",
    "MISSING",
    "OBSERVED",
    "MaskedFactorMixture",
    "checked_sample_count",
    "static_shapes",
    "flatten_images",
    "flatten_mask",
    "most_probable_component",
    "unflatten_images",
]

# Mask codes, one per coordinate: OBSERVED (1), MISSING (0), ABSENT (-1), as
# `dmfa_tf.core.checks` defines them.

_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)

def _float_dtype(*values):
    for value in values:
        dtype = getattr(value, "dtype", None)
        if dtype is not None and tf.as_dtype(dtype).is_floating:
            return tf.as_dtype(dtype)
    return tf.float32


class MaskedFactorMixture(tfd.Distribution):
    """Mixture of factor analysers, marginalised onto the missing coordinates.

    The density of `x`'s missing coordinates under the mixture's marginal on
    them (see the module docstring for the math). Observed coordinates are
    given: samples, means and imputations keep their values (`observed`, or 0
    when it is not passed) and the variance there is 0.

    #### Examples

    ```python
    dist = MaskedFactorMixture(
        logits=logits,      # [B, K]
        loc=loc,            # [B, K, N]
        factors=factors,    # [B, K, N, L]
        diag=diag,          # [B, K, N], variances > 0
        mask=mask,          # [B, N], 1 observed / 0 missing / -1 absent
        observed=image)     # [B, N], optional: values kept where mask == 1
    dist.log_prob(image)                # [B]: log p(x_missing | x_observed)
    dist.imputation()                   # [B, N]: mean of the most probable component
    dist.mean()                         # [B, N]: mixture mean
    dist.variance()                     # [B, N]: predictive variance, 0 where observed
    dist.sample(5, seed=[1, 2])         # [5, B, N]
    dist.sample(5, seed=[1, 2], diagonal_noise=False)   # without sqrt(diag) noise
    ```
    """

    def __init__(
        self,
        logits,
        loc,
        factors,
        diag,
        mask,
        observed=None,
        basis=None,
        scales=None,
        scale_logits=None,
        validate_args=False,
        allow_nan_stats=True,
        name="MaskedFactorMixture",
    ):
        """Builds the distribution.

        Args:
            logits: `[..., K]` unnormalised log mixture weights.
            loc: `[..., K, N]` component means.
            factors: `[..., K, N, L]` factor loadings.
            diag: `[..., K, N]` diagonal variances, all > 0.
            mask: `[..., N]` per coordinate: 1 observed, 0 missing (scored),
                -1 absent (neither given nor scored). Booleans are read as
                True = observed.
            observed: optional `[..., N]` values of the observed coordinates,
                kept in samples, means and imputations. Values at other
                coordinates are ignored (they may be NaN).
            basis: optional `[C, C]` or `[..., C, C]` orthonormal colour
                basis (`dmfa_tf.core.colour`): `logits`, `loc`, `factors` and
                `diag` then describe each pixel's `C` values rotated by it,
                and every channel of a pixel must share its mask code.
            scales, scale_logits: optional `[..., J]` scale prior
                (`dmfa_tf.core.scales`): each component's covariance times
                `scales[j]` with probability `softmax(scale_logits)[j]`. Both
                or neither.
            validate_args: check at run time that `diag > 0`, that the mask
                holds only -1, 0 and 1, that parameters and observed values are
                finite, and that `log_prob`'s scored values are finite.
            allow_nan_stats: as in every TFP distribution.
            name: name scope of the ops.

        Raises:
            ValueError: statically known shapes that do not fit together.
        """
        parameters = dict(locals())
        with tf.name_scope(name) as name:
            dtype = _float_dtype(loc, factors, diag, logits)
            self._logits = tf.convert_to_tensor(logits, dtype, name="logits")
            self._loc = tf.convert_to_tensor(loc, dtype, name="loc")
            self._factors = tf.convert_to_tensor(factors, dtype, name="factors")
            self._diag = tf.convert_to_tensor(diag, dtype, name="diag")
            mask = tf.convert_to_tensor(mask, name="mask")
            self._mask = tf.cast(mask, dtype)
            self._observed = (
                None
                if observed is None
                else tf.convert_to_tensor(observed, dtype, name="observed")
            )
            self._basis = (
                None if basis is None else tf.convert_to_tensor(basis, dtype, name="basis")
            )
            if (scales is None) != (scale_logits is None):
                raise ValueError("`scales` and `scale_logits` come together: pass both or neither.")
            self._scales = None if scales is None else tf.convert_to_tensor(scales, dtype, name="scales")
            self._scale_logits = (
                None if scale_logits is None
                else tf.convert_to_tensor(scale_logits, dtype, name="scale_logits")
            )
            self._check_static_shapes()
            super().__init__(
                dtype=dtype,
                reparameterization_type=tfd.NOT_REPARAMETERIZED,
                validate_args=validate_args,
                allow_nan_stats=allow_nan_stats,
                parameters=parameters,
                name=name,
            )

    @classmethod
    def _parameter_properties(cls, dtype, num_classes=None):
        eps = float(np.finfo(tf.as_dtype(dtype or tf.float32).as_numpy_dtype).eps)
        return dict(
            logits=tfp.util.ParameterProperties(event_ndims=1),
            loc=tfp.util.ParameterProperties(event_ndims=2),
            factors=tfp.util.ParameterProperties(event_ndims=3),
            diag=tfp.util.ParameterProperties(
                event_ndims=2,
                default_constraining_bijector_fn=lambda: tfb.Softplus(low=eps),
            ),
            mask=tfp.util.ParameterProperties(event_ndims=1),
            observed=tfp.util.ParameterProperties(event_ndims=1),
            basis=tfp.util.ParameterProperties(event_ndims=2),
            scales=tfp.util.ParameterProperties(event_ndims=1),
            scale_logits=tfp.util.ParameterProperties(event_ndims=1),
        )

    @classmethod
    def from_images(cls, params, mask, image=None, **kwargs):
        """The distribution of the missing pixels of a batch of images.

        Args:
            params: dict of the network's outputs, `logits [B, K]`,
                `loc [B, K, N]`, `factors [B, K, N, L]`, `diag [B, K, N]`, with
                `N = H * W * C` in `[H, W, C]` row-major order, and for a
                model with a colour basis `basis [B, C, C]`, and with a
                scale prior `scales [B, J]` and `scale_logits [B, J]`.
            mask: `[B, H, W, 1]` or `[B, H, W, C]` mask (1 / 0 / -1).
            image: optional `[B, H, W, C]` images; their observed pixels are
                kept in samples, means and imputations.
            **kwargs: passed to the constructor (`validate_args`, ...).

        Returns:
            A `MaskedFactorMixture` with batch shape `[B]` and event shape `[N]`.
        """
        loc = tf.convert_to_tensor(params["loc"])
        flat_mask = flatten_mask(mask, loc.shape[-1])
        if params.get("basis") is not None and tf.executing_eagerly():
            colour.assert_pixelwise_mask(flat_mask, params["basis"])  # raises now
        observed = None if image is None else flatten_images(image)
        return cls(
            params["logits"], loc, params["factors"], params["diag"], flat_mask,
            observed=observed, basis=params.get("basis"), scales=params.get("scales"),
            scale_logits=params.get("scale_logits"), **kwargs,
        )

    # === Properties ===

    @property
    def logits(self):
        return self._logits

    @property
    def loc(self):
        return self._loc

    @property
    def factors(self):
        return self._factors

    @property
    def diag(self):
        return self._diag

    @property
    def mask(self):
        return self._mask

    @property
    def observed(self):
        return self._observed

    @property
    def basis(self):
        return self._basis

    @property
    def scales(self):
        return self._scales

    @property
    def scale_logits(self):
        return self._scale_logits

    def without_scale_prior(self):
        """The same mixture with every scale 1 (itself if it has no scale prior)."""
        return self if self._scales is None else self.copy(scales=None, scale_logits=None)

    def coordinate_mixture(self):
        """Each coordinate's 1-D marginal, a mixture of `K'` normals:
        `(weights [B, K'], mean [B, K', N], variance [B, K', N])`, with
        `K' = K` components, or `K * J` (component, scale) pairs with a
        scale prior. In the coordinates of `x` (`coordinate_marginals`)."""
        probs = self._probs()  # [B, K]
        loc, variance = self.coordinate_marginals()  # [B, K, N] each
        if self._scales is None:
            return probs, loc, variance
        weights = tf.math.softmax(self._scale_logits, axis=-1)  # [B, J]
        shape = tf.concat([tf.shape(probs)[:-1], [-1]], 0)
        probs = tf.reshape(probs[..., :, None] * weights[..., None, :], shape)  # [B, K * J]
        loc = tf.repeat(loc, tf.shape(weights)[-1], axis=-2)  # [B, K * J, N]
        variance = tf.reshape(
            variance[..., :, None, :] * self._scales[..., None, :, None],
            tf.concat([tf.shape(probs), tf.shape(variance)[-1:]], 0),
        )  # [B, K * J, N]
        return probs, loc, variance

    def coordinate_marginals(self):
        """Each coordinate's 1-D marginal under each component, in the
        coordinates of `x` (rotated back from the basis when there is one):
        `(mean, variance)`, each `[B, K, N]`."""
        return colour.coordinate_marginals(self._loc, self._factors, self._diag, self._basis)

    def _in_basis(self, x):
        return x if self._basis is None else colour.to_basis(x, self._basis)

    def _from_basis(self, y):
        return y if self._basis is None else colour.from_basis(y, self._basis)

    @property
    def num_components(self):
        return tf.compat.dimension_value(self._loc.shape[-2])

    @property
    def num_factors(self):
        return tf.compat.dimension_value(self._factors.shape[-1])

    def _check_static_shapes(self):
        check_mixture_shapes({
            key: getattr(self, "_" + key)
            for key in ("logits", "loc", "factors", "diag", "mask", "observed", "scales", "scale_logits")
        })

    # === Shapes ===

    def _event_shape(self):
        return self._loc.shape[-1:]

    def _event_shape_tensor(self):
        return tf.shape(self._loc)[-1:]

    # === Validation ===

    def _parameter_control_dependencies(self, is_init):
        if not (self.validate_args and is_init):
            return []
        assertions = [
            tf.debugging.assert_positive(
                self._diag,
                message="`diag` holds variances and must be > 0 everywhere.",
            ),
            tf.debugging.assert_equal(
                tf.reduce_all(valid_codes(self._mask)), True, message=MASK_CODES_MESSAGE
            ),
        ]
        if self._scales is not None:
            assertions.append(tf.debugging.assert_positive(
                self._scales, message="`scales` (the scale prior) must be > 0 everywhere."))
        for key in ("logits", "loc", "factors", "diag") + (() if self._scales is None else ("scales", "scale_logits")):
            assertions.append(
                tf.debugging.assert_equal(
                    tf.reduce_all(tf.math.is_finite(getattr(self, "_" + key))),
                    True,
                    message=f"`{key}` holds NaN or inf values.",
                )
            )
        if self._observed is not None:
            given = tf.where(is_observed(self._mask), self._observed, 0.0)
            assertions.append(
                tf.debugging.assert_equal(
                    tf.reduce_all(tf.math.is_finite(given)),
                    True,
                    message="`observed` holds NaN or inf values at observed coordinates.",
                )
            )
        if self._basis is not None:
            assertions.append(colour.assert_pixelwise_mask(self._mask, self._basis))
        return assertions

    def _sample_control_dependencies(self, x):
        event_size = tf.compat.dimension_value(self._loc.shape[-1])
        size = tf.compat.dimension_value(x.shape[-1]) if x.shape.rank else None
        if x.shape.rank == 0 or (
            event_size is not None and size is not None and size != event_size
        ):
            raise ValueError(
                f"`x` must have {event_size} coordinates in its last axis "
                f"(the event size). Received: x.shape={x.shape}"
            )
        if tf.executing_eagerly() and not self.validate_args:
            # Eager values cost one reduction to check: a NaN here would be a
            # silent NaN score. (In a graph, `validate_args=True` checks it.)
            scored = tf.where(self._mask == MISSING, x, 0.0)
            bad = int(tf.reduce_sum(tf.cast(~tf.math.is_finite(scored), tf.int32)))
            if bad:
                raise ValueError(
                    f"`x` holds {bad} NaN or inf values at missing (scored, mask 0) "
                    "coordinates: their density cannot be scored. Mark values that are "
                    "not known -1 (absent) to leave them out of the score."
                )
            return []
        if not self.validate_args:
            return []
        scored = tf.where(self._mask == MISSING, x, 0.0)
        return [
            tf.debugging.assert_equal(
                tf.reduce_all(tf.math.is_finite(scored)),
                True,
                message="`x` holds NaN or inf values at missing (scored) coordinates.",
            )
        ]

    # === Density ===

    def _scored_rows(self):
        """`rows.scored_rows` of the mask: `(index, valid)`, each `[B, 1, M]`,
        or None where shapes must stay static (module docstring)."""
        return rows.scored_rows(self._mask == MISSING)

    def _whitened_factors(self):
        """Quantities that depend on the parameters and mask, not on `x`: with
        `R` the rows the density works on (the scored coordinates and their
        padding, or all `N`), `(rows, selected, weight, factors, chol,
        log_det, num_scored)`, where `rows` is `_scored_rows()`, `selected`
        `[B, 1, R]` marks the scored rows, `weight` `[B, K, R]` and `factors`
        `[B, K, R, L]` are whitened, `chol` `[B, K, L, L]` and `log_det`
        `[B, K]`."""
        scored_rows = self._scored_rows()
        factors, diag = self._factors, self._diag
        if scored_rows is None:
            # expand_dims, not `[..., None, :]`: TFLite's strided slice has no new
            # axis before a dynamic one.
            selected = tf.expand_dims(self._mask == MISSING, -2)  # [B, 1, N]
        else:
            index, selected = scored_rows
            factors = rows.take(factors, index, axis=-2)  # [B, K, M, L]
            diag = rows.take(diag, index, axis=-1)  # [B, K, M]
        # diag (1 where not selected), weight, factors (whitened), chol
        diag, weight, factors, chol = linalg.whitened_capacitance(factors, diag, selected)
        log_det = linalg.cholesky_log_det(chol) + tf.reduce_sum(
            tf.math.log(diag), axis=-1
        )  # [B, K]
        num_scored = tf.reduce_sum(tf.cast(selected, self.dtype), axis=-1)  # [B, 1]
        return scored_rows, selected, weight, factors, chol, log_det, num_scored

    def component_log_prob(self, x, name="component_log_prob"):
        """Log densities of `x`'s missing coordinates under each component.

        Args:
            x: `[S, B, N]` values; only the missing (mask 0) coordinates are read.
            name: name scope of the ops.

        Returns:
            `[S, B, K]` log densities, without the mixture weights.
        """
        with self._name_and_control_scope(name):
            x = tf.convert_to_tensor(x, self.dtype, name="x")
            with tf.control_dependencies(self._sample_control_dependencies(x)):
                return self._component_log_prob(x)

    def component_mahalanobis(self, x, name="component_mahalanobis"):
        """Squared Mahalanobis distances of `x`'s missing coordinates from each
        component: `(x_M - loc_k[M])^T Sigma_k[M, M]^-1 (x_M - loc_k[M])`.

        The quadratic form of `component_log_prob`, by the same Woodbury
        computation (module docstring); under component `k` it follows a
        chi-squared distribution with `|M|` degrees of freedom.

        Args:
            x: `[S, B, N]` values; only the missing (mask 0) coordinates are read.
            name: name scope of the ops.

        Returns:
            `[S, B, K]` distances; 0 where nothing is missing.
        """
        with self._name_and_control_scope(name):
            x = tf.convert_to_tensor(x, self.dtype, name="x")
            with tf.control_dependencies(self._sample_control_dependencies(x)):
                return self._mahalanobis(x, self._whitened_factors())

    def component_log_prob_and_mahalanobis(self, x, name="component_log_prob_and_mahalanobis"):
        """`(component_log_prob(x), component_mahalanobis(x))`, each `[S, B, K]`,
        from one Woodbury pass instead of two."""
        with self._name_and_control_scope(name):
            x = tf.convert_to_tensor(x, self.dtype, name="x")
            with tf.control_dependencies(self._sample_control_dependencies(x)):
                return self._component_terms(x)

    def _component_log_prob(self, x):
        return self._component_terms(x)[0]

    def _component_terms(self, x):
        whitened = self._whitened_factors()
        log_det, num_scored = whitened[-2:]
        mahalanobis = self._mahalanobis(x, whitened)  # [S, B, K]
        log_prob = -0.5 * (mahalanobis + log_det) - _HALF_LOG_TWO_PI * num_scored
        if self._scales is not None:
            log_prob = scales_lib.component_log_prob(
                log_prob, mahalanobis, num_scored, self._scales, self._scale_logits)
        return log_prob, mahalanobis

    def _mahalanobis(self, x, whitened):
        scored_rows, selected, weight, factors, chol, _, _ = whitened
        x, loc = self._in_basis(x), self._loc
        if scored_rows is not None:
            index = scored_rows[0]  # [B, 1, M]
            x = rows.take(x, index[..., 0, :], axis=-1)  # [S, B, M]
            loc = rows.take(loc, index, axis=-1)  # [B, K, M]
        residual = tf.expand_dims(x, -2) - loc  # [S, B, K, R]
        residual = tf.where(selected, residual * weight, tf.zeros_like(residual))
        latent = linalg.capacitance_solve(chol, factors, residual)  # [S, B, K, L]: C^-1 A~^T r~
        unexplained = residual - tf.linalg.matvec(factors, latent)  # [S, B, K, R]
        # Two sums of squares, no cancellation (see the module docstring).
        return tf.reduce_sum(tf.square(unexplained), axis=-1) + tf.reduce_sum(
            tf.square(latent), axis=-1
        )  # [S, B, K]

    def _log_prob(self, x):
        component = self._component_log_prob(x)  # [S, B, K]
        log_weights = tf.math.log_softmax(self._logits, axis=-1)  # [B, K]
        log_prob = tf.reduce_logsumexp(component + log_weights, axis=-1)  # [S, B]
        has_missing = tf.reduce_any(self._mask == MISSING, axis=-1)  # [B]
        # No missing coordinate: the density of an empty vector, exactly log 1.
        return tf.where(has_missing, log_prob, tf.zeros_like(log_prob))

    # === Point predictions ===

    def _keep_observed(self, values, fill=None):
        """Puts the observed values (or `fill`) back where the mask is 1."""
        if fill is None:
            fill = self._observed if self._observed is not None else tf.zeros([], self.dtype)
        return tf.where(self._mask == OBSERVED, fill, values)

    def _probs(self):
        return tf.math.softmax(self._logits, axis=-1)  # [B, K]

    def _mean(self):
        mean = tf.reduce_sum(self._probs()[..., None] * self._loc, axis=-2)  # [B, N]
        return self._keep_observed(self._from_basis(mean))

    def _variance(self):
        probs = self._probs()[..., None]  # [B, K, 1]
        loc, component_var = self.coordinate_marginals()  # [B, K, N] each
        mixture_mean = tf.reduce_sum(probs * loc, axis=-2, keepdims=True)  # [B, 1, N]
        spread = tf.square(loc - mixture_mean)  # [B, K, N]
        if self._scales is not None:  # E[c] Sigma_k
            mean_scale = tf.reduce_sum(tf.math.softmax(self._scale_logits, axis=-1) * self._scales, axis=-1)
            component_var = component_var * mean_scale[..., None, None]
        variance = tf.reduce_sum(probs * (component_var + spread), axis=-2)  # [B, N]
        return self._keep_observed(variance, fill=tf.zeros([], self.dtype))

    def most_probable_component(self, name="most_probable_component"):
        """`[B]` int32 index of the component with the largest weight."""
        with self._name_and_control_scope(name):
            return most_probable_component(self._logits)

    def imputation(self, name="imputation"):
        """The paper's "most probable imputation": the mean of the component with
        the largest weight on the missing coordinates, observed values kept.

        Returns:
            `[B, N]` values.
        """
        with self._name_and_control_scope(name):
            best = tf.one_hot(
                most_probable_component(self._logits),
                self.num_components or tf.shape(self._logits)[-1], dtype=self.dtype,
            )  # [B, K]
            values = tf.reduce_sum(best[..., None] * self._loc, axis=-2)  # [B, N]
            return self._keep_observed(self._from_basis(values))

    # === Sampling ===

    def _sample_n(self, n, seed=None, diagonal_noise=True):
        """Draws `n` samples (`n * B * N` values at most `MAX_SAMPLE_VALUES`);
        `diagonal_noise=False` leaves out `sqrt(diag) * eps`."""
        n = checked_sample_count(
            n, tf.reduce_prod(self.batch_shape_tensor()) * tf.shape(self._loc)[-1]
        )
        component_seed, factor_seed, noise_seed = tfp.random.split_seed(
            seed, n=3, salt="MaskedFactorMixture"
        )
        batch_shape = self.batch_shape_tensor()
        num_components = tf.shape(self._logits)[-1]
        num_factors = tf.shape(self._factors)[-1]
        event_size = tf.shape(self._loc)[-1]
        # Gumbel-max draw of the component, for any batch shape.
        uniform = tf.random.stateless_uniform(
            tf.concat([[n], batch_shape, [num_components]], 0),
            seed=component_seed,
            minval=np.finfo(self.dtype.as_numpy_dtype).tiny,
            maxval=1.0,
            dtype=self.dtype,
        )  # [n, B, K]
        choice = tf.argmax(self._logits - tf.math.log(-tf.math.log(uniform)), axis=-1)
        one_hot = tf.one_hot(choice, num_components, dtype=self.dtype)  # [n, B, K]
        latent = tf.random.stateless_normal(
            tf.concat([[n], batch_shape, [1, num_factors]], 0),
            seed=factor_seed,
            dtype=self.dtype,
        )  # [n, B, 1, L]
        components = self._loc + tf.linalg.matvec(self._factors, latent)  # [n, B, K, N]
        if diagonal_noise:
            noise = tf.random.stateless_normal(
                tf.concat([[n], batch_shape, [1, event_size]], 0),
                seed=noise_seed,
                dtype=self.dtype,
            )  # [n, B, 1, N]
            components += tf.sqrt(self._diag) * noise
        if self._scales is not None:  # loc + sqrt(c_j) (factors z + sqrt(diag) e), j ~ w
            scale_seed = tfp.random.split_seed(seed, n=2, salt="MaskedFactorMixture.scale")[0]
            uniform = tf.random.stateless_uniform(
                tf.concat([[n], tf.shape(self._scale_logits)], 0), seed=scale_seed,
                minval=np.finfo(self.dtype.as_numpy_dtype).tiny, maxval=1.0, dtype=self.dtype,
            )  # [n, B, J]
            drawn = tf.argmax(self._scale_logits - tf.math.log(-tf.math.log(uniform)), axis=-1)
            chosen = tf.one_hot(drawn, tf.shape(self._scales)[-1], dtype=self.dtype)  # [n, B, J]
            root = tf.sqrt(tf.reduce_sum(chosen * self._scales, axis=-1))  # [n, B]
            components = self._loc + root[..., None, None] * (components - self._loc)  # [n, B, K, N]
        draws = tf.reduce_sum(one_hot[..., None] * components, axis=-2)  # [n, B, N]
        return self._keep_observed(self._from_basis(draws))


def most_probable_component(logits):
    """`[...]` int32 index of the component with the largest weight, from the
    mixture logits `[..., K]`: the component of the paper's imputation and of
    its "MSE". The one definition of it: the distribution, the losses and the
    mosaic call this."""
    return tf.argmax(logits, axis=-1, output_type=tf.int32)
