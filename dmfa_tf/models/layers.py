"""Keras layers of the DMFA network: the masked input and the mixture heads.

Layers return tensors, never TFP objects (`tfp.layers` does not work in Keras
3): the heads return a dict of the mixture parameters, and the distribution is
built from that dict outside the network (`MaskedFactorMixture.from_images`).

Glossary: `B` batch, `H, W, C` image height, width, channels,
`N = H * W * C`, `K` components, `L` factors, `F` features.
"""

import keras
import tensorflow as tf
from keras import ops

from dmfa_tf.core import colour
from dmfa_tf.core.checks import check_choice, check_positive_int, input_assertions, is_observed

__all__ = [
    "ConvMixtureHead",
    "DenseMixtureHead",
    "ObservedInput",
    "ScalePrior",
    "constrain_diag",
    "constrain_factors",
]

PACKAGE = "dmfa_tf"

FACTOR_ACTIVATIONS = ("sigmoid", "tanh", "linear")
VARIANCE_ACTIVATIONS = ("sigmoid", "softplus")
# How each image scales the global factors' loadings: "none" (shared as they
# are) or "pixel" (each row n of G_k times s_k(x)_n, predicted like the diagonal).
GLOBAL_SCALES = ("none", "pixel")


def constrain_factors(raw, amplitude, activation="sigmoid"):
    """Factor loadings from unconstrained values.

    `sigmoid` is the paper's `a * sigmoid(z) - a / 2`, in `(-a/2, a/2)`;
    `tanh` is `a/2 * tanh(z)`, the same range; `linear` leaves `z` as it is.
    """
    if activation == "sigmoid":
        return amplitude * ops.sigmoid(raw) - amplitude / 2.0
    if activation == "tanh":
        return amplitude / 2.0 * ops.tanh(raw)
    return raw


def constrain_diag(raw, floor, activation="sigmoid"):
    """Diagonal variances from unconstrained values: `floor + sigmoid(z)` (the
    paper's, at most `1 + floor`) or `floor + softplus(z)` (unbounded). The floor
    bounds how confident the model may be: each missing coordinate adds at most
    `-log(2 pi floor) / 2` nats of log density."""
    if activation == "sigmoid":
        return floor + ops.sigmoid(raw)
    return floor + ops.softplus(raw)


def _check_image_shape(image_shape):
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape
    ):
        raise ValueError(
            "`image_shape` must be three positive integers (height, width, channels). "
            f"Received: image_shape={image_shape!r}"
        )
    return shape


# What ObservedInput puts at unknown pixels.
FILLS = ("zero", "mean")


@keras.saving.register_keras_serializable(package=PACKAGE)
class ObservedInput(keras.layers.Layer):
    """The network's view of a masked image: `concat(image * known, known)`.

    `known` is 1 where the mask is 1 and 0 elsewhere (missing or absent). The
    image is zeroed with a select, not a product, so any value at an unknown
    pixel, NaN included, is ignored.

    Args:
        validate: check every batch and stop with an error naming the problem
            when the mask holds values other than 1, 0 and -1, or observed
            pixels are NaN, inf or (with `bounded`) outside [0, 1]. The checks
            are TensorFlow assertions: XLA-compiled functions leave them out.
        bounded: observed values are pixels in [0, 1] (True, the default);
            False for unbounded values such as standardised table cells.
        colour_basis, shift, scale: standardised input (all three, or
            `shift` and `scale` None, the default): each observed pixel's
            values `x` become `(Q x - shift) / scale` per channel, `Q` the
            basis's matrix (`"rgb"`: none), `shift` and `scale` lists of `C`
            floats (`colour.channel_statistics` of the training images). In the
            opponent basis this gives the colour differences, whose spread on
            faces is a fifth to a sixth of the brightness's, the same weight in
            the network.
        fill: what the network sees at unknown pixels: `"zero"` (the default;
            with standardised input, the training images' mean) or `"mean"`,
            the image's own mean over its known pixels, per channel (after
            standardising). The known-pixel channel tells the two apart.

    Input shape:
        `image`: `[B, H, W, C]`; `mask`: `[B, H, W, 1]` or `[B, H, W, C]`.

    Output shape:
        `[B, H, W, 2 * C]`.
    """

    def __init__(
        self, validate=True, bounded=True, colour_basis="rgb", shift=None, scale=None,
        fill="zero", **kwargs
    ):
        super().__init__(**kwargs)
        self.validate = bool(validate)
        self.bounded = bool(bounded)
        self.colour_basis = colour_basis
        check_choice(colour_basis, colour.BASES, "colour_basis")
        self.shift, self.scale = _check_standardize(shift, scale)
        check_choice(fill, FILLS, "fill")
        self.fill = fill

    def call(self, image, mask):
        _check_mask_shape(image.shape, mask.shape)
        known = ops.broadcast_to(is_observed(mask), ops.shape(image))
        visible = ops.where(known, image, ops.zeros_like(image))
        if self.validate:
            with tf.control_dependencies(input_assertions(
                visible, mask, bounded=self.bounded, show_values=False
            )):
                visible = tf.identity(visible)
        if self.shift is not None:
            channels = image.shape[-1]
            if len(self.shift) != channels:
                raise ValueError(
                    f"`shift` and `scale` have {len(self.shift)} values; the images have "
                    f"{channels} channels."
                )
            matrix = colour.basis_matrix(self.colour_basis, channels)
            if matrix is not None:  # y_j = sum_c Q_jc x_c: a 1x1 convolution's matmul
                visible = ops.matmul(visible, ops.convert_to_tensor(matrix.T, visible.dtype))
            visible = (visible - ops.convert_to_tensor(self.shift, visible.dtype)) / (
                ops.convert_to_tensor(self.scale, visible.dtype)
            )
            visible = ops.where(known, visible, ops.zeros_like(visible))
        if self.fill == "mean":  # per image and channel; 0 where no pixel is known
            weight = ops.cast(known, visible.dtype)
            count = ops.sum(weight, axis=(1, 2), keepdims=True)
            mean = ops.sum(visible, axis=(1, 2), keepdims=True) / ops.maximum(count, 1.0)
            visible = ops.where(known, visible, ops.broadcast_to(mean, ops.shape(visible)))
        return ops.concatenate([visible, ops.cast(known, image.dtype)], axis=-1)

    def get_config(self):
        config = super().get_config()
        config["validate"] = self.validate
        config["bounded"] = self.bounded
        if self.shift is not None:
            config.update(colour_basis=self.colour_basis, shift=self.shift, scale=self.scale)
        if self.fill != "zero":
            config["fill"] = self.fill
        return config


def _check_standardize(shift, scale):
    """`(shift, scale)` as lists of floats, or `(None, None)`; raises unless
    both or neither are given, of one length, finite, with scales > 0."""
    if shift is None and scale is None:
        return None, None
    if shift is None or scale is None:
        raise ValueError(
            "`shift` and `scale` go together: give both or neither. "
            f"Received: shift={shift!r}, scale={scale!r}"
        )
    shift = [float(v) for v in shift]
    scale = [float(v) for v in scale]
    if len(shift) != len(scale) or not shift:
        raise ValueError(
            "`shift` and `scale` must have one value per channel each. "
            f"Received: shift={shift!r}, scale={scale!r}"
        )
    if not all(abs(v) < float("inf") for v in shift) or not all(0 < v < float("inf") for v in scale):
        raise ValueError(
            "`shift` must be finite and `scale` finite and > 0. "
            f"Received: shift={shift!r}, scale={scale!r}"
        )
    return shift, scale


def _check_mask_shape(image_shape, mask_shape):
    """A ValueError naming both shapes when a mask cannot go with its images:
    another rank, height or width, batch size, or channel count (1 or C)."""
    image_shape, mask_shape = tuple(image_shape), tuple(mask_shape)

    def differ(a, b):
        return a is not None and b is not None and a != b

    channels = image_shape[-1] if image_shape else None
    if (
        len(image_shape) != len(mask_shape)
        or any(differ(a, b) for a, b in zip(image_shape[:-1], mask_shape[:-1]))
        or (mask_shape[-1] is not None and channels is not None and mask_shape[-1] not in (1, channels))
    ):
        raise ValueError(
            "`mask` must be [B, H, W, 1] or [B, H, W, C] for images [B, H, W, C] (the same "
            f"batch size, height and width). Received: image shape {image_shape}, mask shape "
            f"{mask_shape}"
        )


class _MixtureHead(keras.layers.Layer):
    """Shared configuration and constraints of the mixture heads."""

    def __init__(
        self,
        image_shape,
        components=1,
        factors=4,
        factor_amplitude=0.5,
        factor_activation="sigmoid",
        variance_floor=1e-4,
        variance_activation="sigmoid",
        colour_basis="rgb",
        global_factors=0,
        global_scale="none",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_shape = _check_image_shape(image_shape)
        if isinstance(global_factors, bool) or not isinstance(global_factors, int) or global_factors < 0:
            raise ValueError(
                "`global_factors` must be an integer >= 0. "
                f"Received: global_factors={global_factors!r}"
            )
        self.global_factors = global_factors
        check_choice(global_scale, GLOBAL_SCALES, "global_scale")
        if global_scale != "none" and not global_factors:
            raise ValueError(
                f"`global_scale={global_scale!r}` scales the global factors: it needs "
                f"`global_factors` > 0. Received: global_factors={global_factors!r}"
            )
        self.global_scale = global_scale
        # None for "rgb"; raises for an unknown name or a basis the channels cannot have.
        self._basis = colour.basis_matrix(colour_basis, self.image_shape[2])
        self.colour_basis = colour_basis
        check_positive_int(components, "components")
        check_positive_int(factors, "factors")
        check_choice(factor_activation, FACTOR_ACTIVATIONS, "factor_activation")
        check_choice(variance_activation, VARIANCE_ACTIVATIONS, "variance_activation")
        if not factor_amplitude > 0:
            raise ValueError(
                f"`factor_amplitude` must be > 0. Received: factor_amplitude={factor_amplitude!r}"
            )
        if not variance_floor >= 0:
            raise ValueError(
                f"`variance_floor` must be >= 0. Received: variance_floor={variance_floor!r}"
            )
        self.components = components
        self.factors = factors
        self.factor_amplitude = float(factor_amplitude)
        self.factor_activation = factor_activation
        self.variance_floor = float(variance_floor)
        self.variance_activation = variance_activation
        height, width, channels = self.image_shape
        self.event_size = height * width * channels

    def _build_global(self):
        if self.global_factors:
            # Loadings shared by every image, learned as weights: G more factor
            # columns per component at the cost of the density's algebra only.
            self.global_loadings = self.add_weight(
                shape=(self.components, self.event_size, self.global_factors),
                initializer=keras.initializers.RandomNormal(stddev=0.01),
                name="global_loadings",
            )

    def _finish(self, logits, loc, factors, diag, global_scale=None):
        factors = constrain_factors(factors, self.factor_amplitude, self.factor_activation)
        if self.global_factors:
            shared = ops.cast(self.global_loadings, factors.dtype)[None]
            if global_scale is None:
                shared = ops.broadcast_to(
                    shared, (ops.shape(factors)[0],) + tuple(shared.shape[1:])
                )
            else:
                # "pixel": each image scales each row of the shared loadings,
                # s = 2 sigmoid(z) in (0, 2), 1 at the zero start.
                shared = shared * (2.0 * ops.sigmoid(global_scale))[..., None]
            factors = ops.concatenate([factors, shared], axis=-1)
        params = {
            "logits": logits,  # [B, K]
            "loc": loc,  # [B, K, N]
            "factors": factors,  # [B, K, N, L + G]
            "diag": constrain_diag(
                diag, self.variance_floor, self.variance_activation
            ),  # [B, K, N]
        }
        if self._basis is not None:
            # The colour basis the parameters are in (`dmfa_tf.core.colour`), per image.
            channels = self.image_shape[2]
            params["basis"] = ops.broadcast_to(
                ops.convert_to_tensor(self._basis, "float32"),
                (ops.shape(logits)[0], channels, channels),
            )  # [B, C, C]
        return params

    def compute_output_spec(self, features):
        batch = features.shape[0]
        k, n, l = self.components, self.event_size, self.factors + self.global_factors
        spec = {
            "logits": keras.KerasTensor((batch, k), dtype=self.compute_dtype),
            "loc": keras.KerasTensor((batch, k, n), dtype=self.compute_dtype),
            "factors": keras.KerasTensor((batch, k, n, l), dtype=self.compute_dtype),
            "diag": keras.KerasTensor((batch, k, n), dtype=self.compute_dtype),
        }
        if self._basis is not None:
            channels = self.image_shape[2]
            spec["basis"] = keras.KerasTensor((batch, channels, channels), dtype="float32")
        return spec

    def get_config(self):
        config = super().get_config()
        config.update(
            image_shape=list(self.image_shape),
            components=self.components,
            factors=self.factors,
            factor_amplitude=self.factor_amplitude,
            factor_activation=self.factor_activation,
            variance_floor=self.variance_floor,
            variance_activation=self.variance_activation,
            colour_basis=self.colour_basis,
        )
        if self.global_factors:
            config["global_factors"] = self.global_factors
        if self.global_scale != "none":
            config["global_scale"] = self.global_scale
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class DenseMixtureHead(_MixtureHead):
    """Mixture parameters from a feature vector, one dense layer per parameter
    (the paper's "linear heads").

    Args:
        image_shape: `(H, W, C)` of the modelled images.
        components: K, the number of mixture components.
        factors: L, the number of factors per component.
        factor_amplitude: `a` in the factor constraint (see `constrain_factors`).
        factor_activation: `"sigmoid"` (the paper's), `"tanh"` or `"linear"`.
        variance_floor: the smallest variance (see `constrain_diag`).
        variance_activation: `"sigmoid"` (the paper's) or `"softplus"`.
        colour_basis: `"rgb"` (default), or `"opponent"` (3 channels): the
            parameters describe each pixel's colour values rotated into
            brightness and two colour differences (`dmfa_tf.core.colour`), so
            the diagonal gives them their own variances; the output dict then
            also holds `basis [B, C, C]`.
        global_factors: G (default 0), factor columns per component that are
            weights of the layer, shared by every image and appended to its L
            columns: `factors` is then `[B, K, N, L + G]`.
        global_scale: `"none"` (default) or `"pixel"`: each image scales row n
            of component k's global loadings by `s = 2 sigmoid(z)` in (0, 2),
            predicted like the diagonal (zero weights at the start: s = 1), so
            the shared directions' variance can follow what the image shows;
            the covariance is then `A Aᵀ + S G Gᵀ S + diag(d)`, `S = diag(s)`.

    Input shape:
        `[B, F]` features.

    Output shape:
        dict: `logits [B, K]`, `loc [B, K, N]`, `factors [B, K, N, L + G]`,
        `diag [B, K, N]`, and `basis [B, C, C]` with a colour basis.
    """

    def build(self, features_shape):
        k, n, l = self.components, self.event_size, self.factors
        self.logits_dense = keras.layers.Dense(k, name="logits")
        self.loc_dense = keras.layers.Dense(k * n, name="loc")
        self.factors_dense = keras.layers.Dense(k * n * l, name="factors")
        self.diag_dense = keras.layers.Dense(k * n, name="diag")
        denses = [self.logits_dense, self.loc_dense, self.factors_dense, self.diag_dense]
        if self.global_scale == "pixel":
            self.scale_dense = keras.layers.Dense(
                k * n, kernel_initializer="zeros", name="global_scale"
            )
            denses.append(self.scale_dense)
        for dense in denses:
            dense.build(features_shape)
        self._build_global()

    def call(self, features):
        k, n, l = self.components, self.event_size, self.factors
        scale = None
        if self.global_scale == "pixel":
            scale = ops.reshape(self.scale_dense(features), (-1, k, n))
        return self._finish(
            self.logits_dense(features),
            ops.reshape(self.loc_dense(features), (-1, k, n)),
            ops.reshape(self.factors_dense(features), (-1, k, n, l)),
            ops.reshape(self.diag_dense(features), (-1, k, n)),
            scale,
        )


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConvMixtureHead(_MixtureHead):
    """Mixture parameters from a feature map with the image's height and width:
    a convolution per parameter predicts each pixel's mean, variance and factor
    loadings, and the mixture logits come from globally pooled features. The
    weight count does not depend on the image area.

    Args:
        kernel_size: the head convolutions' kernel size.
        Others: as in `DenseMixtureHead`.

    Input shape:
        `[B, H, W, F]` features.

    Output shape:
        as `DenseMixtureHead`.
    """

    def __init__(self, image_shape, kernel_size=3, **kwargs):
        super().__init__(image_shape, **kwargs)
        check_positive_int(kernel_size, "kernel_size")
        self.kernel_size = kernel_size

    def build(self, features_shape):
        height, width, _ = self.image_shape
        if tuple(features_shape[1:3]) != (height, width):
            raise ValueError(
                f"ConvMixtureHead expects features of size {height}x{width}. "
                f"Received: features_shape={tuple(features_shape)}"
            )
        k, l, c = self.components, self.factors, self.image_shape[2]
        conv = lambda filters, name, **kwargs: keras.layers.Conv2D(  # noqa: E731
            filters, self.kernel_size, padding="same", name=name, **kwargs
        )
        self.loc_conv = conv(k * c, "loc")
        self.diag_conv = conv(k * c, "diag")
        self.factors_conv = conv(k * c * l, "factors")
        self.logits_dense = keras.layers.Dense(k, name="logits")
        convs = [self.loc_conv, self.diag_conv, self.factors_conv]
        if self.global_scale == "pixel":
            self.scale_conv = conv(k * c, "global_scale", kernel_initializer="zeros")
            convs.append(self.scale_conv)
        for layer in convs:
            layer.build(features_shape)
        self.logits_dense.build((features_shape[0], features_shape[-1]))
        self._build_global()

    def call(self, features):
        height, width, channels = self.image_shape
        k, n, l = self.components, self.event_size, self.factors

        def per_component(values, extra):
            # [B, H, W, K * C * extra] -> [B, K, N(, extra)], N in (H, W, C) order
            values = ops.reshape(values, (-1, height, width, k, channels * extra))
            values = ops.transpose(values, (0, 3, 1, 2, 4))
            return ops.reshape(values, (-1, k, n) + ((extra,) if extra > 1 else ()))

        factors = per_component(self.factors_conv(features), l)
        if l == 1:
            factors = ops.expand_dims(factors, -1)
        scale = None
        if self.global_scale == "pixel":
            scale = per_component(self.scale_conv(features), 1)
        return self._finish(
            self.logits_dense(ops.mean(features, axis=(1, 2))),
            per_component(self.loc_conv(features), 1),
            factors,
            per_component(self.diag_conv(features), 1),
            scale,
        )

    def get_config(self):
        config = super().get_config()
        config["kernel_size"] = self.kernel_size
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class ScalePrior(keras.layers.Layer):
    """The scale prior of the mixture (`dmfa_tf.core.scales`): each
    component's covariance times `scales[j]` with probability `weights[j]`,
    the same for every image.

    Fitted after training, on the validation split (`train.py`, or
    `evaluate.py --fit-scale-prior`), and added to the network's outputs
    (`dmfa_tf.models.with_scale_prior`), so a saved model, its SavedModel
    and its TFLite file carry it.

    Args:
        scales: `J` positive floats.
        weights: `J` positive floats (normalised here).

    Input shape:
        `logits` `[B, K]` (only its batch size is read).

    Output:
        `{"scales": [B, J], "scale_logits": [B, J]}`, every row the same.
    """

    def __init__(self, scales, weights, **kwargs):
        super().__init__(**kwargs)
        scales = [float(c) for c in scales]
        weights = [float(w) for w in weights]
        if not scales or len(scales) != len(weights):
            raise ValueError(
                "`scales` and `weights` must be two non-empty lists of the same length. "
                f"Received: {len(scales)} scales and {len(weights)} weights."
            )
        bad = [v for v in scales + weights if not v > 0.0 or v == float("inf")]
        if bad:
            raise ValueError(f"Scales and their weights must be positive and finite. Received: {bad[0]!r}")
        total = sum(weights)
        self.scales, self.scale_weights = scales, [w / total for w in weights]

    def call(self, logits):
        rows = ops.shape(logits)[0]
        dtype = logits.dtype
        scales = ops.convert_to_tensor(self.scales, dtype=dtype)
        log_weights = ops.log(ops.convert_to_tensor(self.scale_weights, dtype=dtype))
        size = len(self.scales)
        return {
            "scales": ops.broadcast_to(scales[None, :], (rows, size)),
            "scale_logits": ops.broadcast_to(log_weights[None, :], (rows, size)),
        }

    def compute_output_spec(self, logits):
        shape = (logits.shape[0], len(self.scales))
        return {key: keras.KerasTensor(shape, dtype=logits.dtype) for key in ("scales", "scale_logits")}

    def get_config(self):
        return {**super().get_config(), "scales": self.scales, "weights": self.scale_weights}

