"""`build_model`: a backbone from `dmfa_tf.models.backbones` between the masked
input (`ObservedInput`) and a mixture head, as a `DMFAModel`."""

import keras
import numpy as np

from dmfa_tf.models.backbones import ARCHITECTURES
from dmfa_tf.models.device import PRECISIONS, resolve_precision
from dmfa_tf.models.dmfa_model import DMFAModel
from dmfa_tf.models.layers import ObservedInput, ScalePrior

__all__ = ["build_model", "with_scale_prior"]


def build_model(
    image_shape,
    architecture="fullconv",
    components=1,
    factors=4,
    factor_amplitude=None,
    factor_activation="sigmoid",
    variance_floor=None,
    variance_activation="sigmoid",
    colour_basis="rgb",
    name=None,
    precision="auto",
    bounded_inputs=True,
    standardize=None,
    fill="zero",
    global_factors=0,
    global_scale="none",
    **architecture_kwargs,
):
    """Builds a DMFA network.

    Args:
        image_shape: `(H, W, C)`.
        architecture: a backbone of `dmfa_tf.models.backbones.BACKBONES`:
            `"fullconv"`, `"linear_heads"`, `"mlp"` or `"tabular"`.
        components: K, mixture components.
        factors: L, factors per component.
        factor_amplitude: `a` in `A = a * sigmoid(z) - a / 2`; None for the
            architecture's default.
        factor_activation: `"sigmoid"`, `"tanh"` or `"linear"`.
        variance_floor: smallest variance, `d = floor + sigmoid(z)`; None for the
            architecture's default.
        variance_activation: `"sigmoid"` or `"softplus"`.
        colour_basis: `"rgb"` (default) or `"opponent"` (colour images): the
            basis of each pixel's values that the mixture's diagonal is in
            (`dmfa_tf.core.colour`).
        name: the model's name (default `dmfa_<architecture>`).
        precision: `"auto"` (default; `resolve_precision`: bfloat16 for
            `fullconv` and `linear_heads` on CPUs that have it, else float32),
            `"float32"` or `"mixed_bfloat16"`. Mixed: the backbone's
            layers compute in bfloat16 (weights kept in float32), while the
            input layer, the mixture head and the density stay float32. On
            CPUs with AVX512-BF16 / AMX, oneDNN runs bfloat16 convolutions and
            matmuls about 1.5-2x faster (README, "Speed"); XLA on CPU does not,
            so `jit_compile="auto"` leaves it off for such a model.
        bounded_inputs: observed values are pixels in [0, 1], checked by the
            input layer (True); False for unbounded values (table cells).
        standardize: None (default), or `(shift, scale)`, each `C` floats
            (`dmfa_tf.core.colour.channel_statistics(train_images,
            colour_basis)`): the network sees each channel of the colour basis
            standardised, `(Q x - shift) / scale` (`ObservedInput`). On CelebA
            in the opponent basis, the network then sees the colour
            differences, whose spread is a fifth to a sixth of the
            brightness's, on the brightness's scale (README, "Standardised
            channels").
        fill: what the network sees at unknown pixels (`ObservedInput`):
            `"zero"` (default) or `"mean"`, each image's mean over its known
            pixels, per channel.
        global_factors: G, factor columns per component shared by every
            image and learned as weights (default 0): the covariance becomes
            `A(x) A(x)^T + G G^T + diag(d)`, still a low-rank-plus-diagonal
            matrix with L + G factors.
        global_scale: `"none"` (default) or `"pixel"`: each image scales each
            row of the global loadings, `S(x) G` with `S(x)` diagonal in (0, 2),
            predicted by the head like the diagonal (README, "Per-image scales
            of the global factors"). Needs `global_factors` > 0.
        **architecture_kwargs: `last_channels` (linear_heads), `width` and
            `depth` (fullconv), `hidden` (mlp), `width`, `blocks` and `dropout` (tabular).

    Returns:
        A `DMFAModel`.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"Unknown architecture {architecture!r}; choose one of {sorted(ARCHITECTURES)}."
        )
    image_shape = tuple(image_shape)
    if len(image_shape) != 3 or not all(isinstance(v, int) and v > 0 for v in image_shape):
        raise ValueError(
            "`image_shape` must be (height, width, channels), positive integers. "
            f"Received: image_shape={image_shape!r}"
        )
    if precision not in PRECISIONS:
        raise ValueError(
            f"`precision` must be one of {PRECISIONS}. Received: precision={precision!r}"
        )
    precision = resolve_precision(precision, architecture)
    image = keras.Input(shape=image_shape, name="image")
    mask = keras.Input(shape=image_shape[:2] + (None,), name="mask")
    shift = scale = None
    if standardize is not None:
        try:
            shift, scale = standardize
        except (TypeError, ValueError):
            raise ValueError(
                "`standardize` must be None or (shift, scale), one value per channel each. "
                f"Received: standardize={standardize!r}"
            ) from None
        shift = [float(v) for v in np.ravel(shift)]
        scale = [float(v) for v in np.ravel(scale)]
        if len(shift) != image_shape[2] or len(scale) != image_shape[2]:
            raise ValueError(
                f"`standardize` needs {image_shape[2]} shifts and scales (one per channel). "
                f"Received: {len(shift)} shifts, {len(scale)} scales"
            )
    network_input = ObservedInput(
        bounded=bounded_inputs, colour_basis=colour_basis if shift is not None else "rgb",
        shift=shift, scale=scale, fill=fill, name="observed_input",
    )(image, mask)
    # The backbone's layers take the dtype policy in force when they are made
    # (and save it in their config); the head below is made after, in float32.
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        features, head_class, defaults = ARCHITECTURES[architecture](
            network_input, image_shape, **architecture_kwargs
        )
    except TypeError as error:
        raise ValueError(
            f"Bad option for architecture {architecture!r}: {error}"
        ) from None
    finally:
        keras.config.set_dtype_policy(previous_policy)
    head = head_class(
        image_shape,
        dtype="float32",
        components=components,
        factors=factors,
        factor_amplitude=defaults["factor_amplitude"]
        if factor_amplitude is None
        else factor_amplitude,
        factor_activation=factor_activation,
        variance_floor=defaults["variance_floor"] if variance_floor is None else variance_floor,
        variance_activation=variance_activation,
        colour_basis=colour_basis,
        global_factors=global_factors,
        global_scale=global_scale,
        name="mixture_head",
    )
    outputs = head(features)
    return DMFAModel(
        inputs={"image": image, "mask": mask},
        outputs=outputs,
        name=name or f"dmfa_{architecture}",
    )


def with_scale_prior(model, scales, weights):
    """`model` with a scale prior (`ScalePrior`; `dmfa_tf.core.scales`) added
    to its outputs, or replacing the one it has; `scales=None` removes it.

    The new model shares the layers (and so the weights) of `model`, keeps its
    training objective and name, and is not compiled.
    """
    outputs = {key: value for key, value in model.output.items() if key not in ("scales", "scale_logits")}
    if scales is not None:
        outputs.update(ScalePrior(scales, weights, name="scale_prior")(outputs["logits"]))
    rebuilt = DMFAModel(inputs=model.input, outputs=outputs, name=model.name)
    rebuilt.objective = model.objective
    return rebuilt

