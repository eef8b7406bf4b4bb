"""The serving signatures: the SavedModel's and the TFLite file's `tf.function`s.

Any model with the common interface (`model({"image", "mask"}, training=False)
-> {"logits", "loc", "factors", "diag"}` and an `image_shape` property: DMFA
networks, the classical MFA, `baselines.DiagonalGaussian`) exports the same
way. The math is `MaskedFactorMixture.from_images` (`dmfa_tf.core.distribution`)
on the model's outputs; nothing here derives it again.

Glossary: `B` batch (dynamic), `H, W, C` the model's image shape,
`N = H * W * C`, `K` components, `L` factors, `S` samples.

#### SavedModel signatures (`_serving_functions`)

Inputs of every signature: `image` float32 `[B, H, W, C]` in [0, 1] and
`mask` float32 `[B, H, W, 1]` (or `[B, H, W, C]` when `C > 1`): 1 observed,
0 missing, -1 absent (filled in but not scored).

| signature | extra inputs | outputs |
|---|---|---|
| `serving_default` | | `imputation` `[B, H, W, C]` (observed pixels kept, missing ones the mean of the most probable component), `variance` `[B, H, W, C]` (the mixture's predictive variance, 0 where observed), `mixture_weights` `[B, K]` |
| `log_prob` | | `log_prob` `[B]`: `log p(x_missing \\| x_observed)` in nats (-NLL) |
| `sample` | `num_samples` int32 `[]`, `seed` int32 `[2]` | `samples` `[S, B, H, W, C]`, observed pixels kept; the same seed gives the same samples; `S * B * H * W * C` at most `MAX_SAMPLE_VALUES` (2**28) |
| `parameters` | | `logits` `[B, K]`, `loc` `[B, K, N]`, `factors` `[B, K, N, L]`, `diag` `[B, K, N]`; with a colour basis `basis` `[B, C, C]`; with a scale prior `scales` and `scale_logits` `[B, J]` (`MaskedFactorMixture.from_images` takes them all) |
| `intervals` | `level` float32 `[]` in (0, 1) | `lower`, `upper` `[B, H, W, C]`: each pixel's central `level` interval (`recalibration.interval`), recalibrated when the export was given a `recalibration.Recalibration` (the CLI uses the model folder's first map); observed pixels: their value |

Bad input stops a SavedModel call with an `InvalidArgumentError` that names
the problem and shows the bad values: mask values other than 1, 0, -1; NaN,
inf or values outside [0, 1] at observed pixels; for `log_prob`, NaN or inf at
missing (scored) pixels; a mask with neither 1 nor `C` channels. Values at
missing pixels are never read by the other signatures. A mask with no missing
pixel is valid: `log_prob` is 0, the imputation equals the input, the variance
is 0 and every sample equals the input.

#### TFLite signatures (`_tflite_functions`)

`impute` (`imputation`, `variance`, `mixture_weights`, `valid`), `log_prob`
(`log_prob`, `valid`) and `intervals` (inputs `image`, `mask`, `level`;
outputs `lower`, `upper`, `valid`). TFLite has no assertions, so the input
checks above become the `valid` output (bool `[B]`), and every output of an
image that fails them is NaN: bad input is never silently scored. In
`intervals`, a `level` outside (0, 1) makes every image invalid. Its ends are
the SavedModel's, computed with TFLite builtins only (`recalibration.interval`
with `elementary=True`: the normal CDF by a rational fit, relative error
below 1.2e-7, and counting in place of searchsorted), recalibrated by the same
map.
"""

import numpy as np
import tensorflow as tf

from dmfa_tf.core import checks, colour
from dmfa_tf.core import recalibration as recalibration_lib
from dmfa_tf.core.distribution import (
    MaskedFactorMixture,
    checked_sample_count,
    flatten_images,
    flatten_mask,
    unflatten_images,
)

__all__ = [
    "PARAMETER_KEYS",
    "SERVING_SIGNATURES",
    "TFLITE_SIGNATURES",
    "model_image_shape",
]

SERVING_SIGNATURES = ("serving_default", "log_prob", "sample", "parameters", "intervals")
TFLITE_SIGNATURES = ("impute", "log_prob", "intervals")
PARAMETER_KEYS = ("logits", "loc", "factors", "diag")


# === Models ===


def model_image_shape(model, image_shape=None):
    """`(H, W, C)` of the images `model` takes: `image_shape` if given, else the
    model's `image_shape` property.

    Raises:
        ValueError: neither is known, or it is not three positive integers.
    """
    shape = image_shape if image_shape is not None else getattr(model, "image_shape", None)
    if shape is None:
        raise ValueError(
            f"The model ({type(model).__name__}) has no `image_shape` property; pass "
            "image_shape=(height, width, channels)."
        )
    try:
        shape = tuple(int(v) for v in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(
            "`image_shape` must be three positive integers (height, width, channels). "
            f"Received: image_shape={shape!r}"
        ) from None
    return shape


def _model_variables(model):
    """The `tf.Variable`s behind a model's variables (Keras 3 wraps them)."""
    found = []
    for variable in getattr(model, "variables", None) or []:
        if not isinstance(variable, tf.Variable):
            variable = getattr(variable, "value", variable)
        if isinstance(variable, tf.Variable):
            found.append(variable)
    return found


def _parameters(model, image, mask):
    """The model's mixture parameters as a dict of float32 tensors."""
    params = model({"image": image, "mask": mask}, training=False)
    missing = [key for key in PARAMETER_KEYS if key not in params]
    if missing:
        raise ValueError(
            f"The model must return a dict with {list(PARAMETER_KEYS)}; missing {missing}. "
            f"Received keys: {sorted(params)}"
        )
    # A model in a colour basis (`dmfa_tf.core.colour`) also returns `basis`,
    # one with a scale prior (`dmfa_tf.core.scales`) `scales` and `scale_logits`.
    keys = PARAMETER_KEYS + tuple(k for k in ("basis", "scales", "scale_logits") if k in params)
    return {key: tf.cast(params[key], tf.float32) for key in keys}


def _pixelwise(params, mask):
    """`[B]` bool: True, or with a colour basis whether each image's mask has
    one code per pixel (all its channels alike), as the basis needs."""
    if "basis" not in params:
        return tf.ones(tf.shape(mask)[:1], tf.bool)
    flat = flatten_mask(mask, params["loc"].shape[-1])
    return colour.pixelwise_mask(flat, tf.shape(params["basis"])[-1])


def _describe(model, image_shape):
    """Runs the model once on a dummy image; returns `(K, L)` and checks `N`."""
    height, width, channels = image_shape
    image = tf.zeros([1, height, width, channels])
    mask = tf.zeros([1, height, width, 1])
    params = _parameters(model, image, mask)
    event_size = height * width * channels
    expected = {
        "logits": (1, None),
        "loc": (1, None, event_size),
        "factors": (1, None, event_size, None),
        "diag": (1, None, event_size),
    }
    for key, shape in expected.items():
        got = tuple(params[key].shape)
        if len(got) != len(shape) or any(e is not None and e != g for e, g in zip(shape, got)):
            raise ValueError(
                f"The model's `{key}` has shape {got} for one image of shape {image_shape}; "
                f"expected {tuple('?' if e is None else e for e in shape)}."
            )
    return int(params["logits"].shape[-1]), int(params["factors"].shape[-1])


# === Input checks ===


def _assert_inputs(image, mask, image_shape, scored=False):
    """`(image, mask)` behind checks of their shapes and of the input rule
    (`dmfa_tf.core.checks`: mask codes, observed pixels, and with `scored` the
    missing ones, which `log_prob` scores). A restored signature does not check
    the shapes it is fed by itself, so they are checked here."""
    height, width, channels = image_shape
    image = tf.ensure_shape(image, [None, height, width, channels], name="image")
    mask = tf.ensure_shape(mask, [None, height, width, 1 if channels == 1 else None], name="mask")
    mask_channels = tf.shape(mask)[-1]
    allowed = "1" if channels == 1 else f"1 or {channels}"
    check = tf.debugging.Assert(
        (tf.equal(mask_channels, 1) | tf.equal(mask_channels, channels))
        & tf.equal(tf.shape(mask)[0], tf.shape(image)[0]),
        [f"dmfa_tf: `mask` must have the shape [batch, {height}, {width}, {allowed}] "
         "and the same batch size as `image`. Received image and mask shapes:",
         tf.shape(image), tf.shape(mask)],
        summarize=4,
    )
    with tf.control_dependencies([check]):
        mask = tf.identity(mask)
    with tf.control_dependencies(checks.input_assertions(image, mask, scored=scored)):
        return tf.identity(image), tf.identity(mask)


def _nan_unless(valid, values):
    """`values` `[B, ...]` with the rows of invalid images set to NaN."""
    for _ in range(values.shape.rank - 1):
        valid = tf.expand_dims(valid, -1)  # [B, 1, ...]
    return tf.where(valid, values, tf.constant(np.nan, values.dtype))


# === Signatures ===


def _specs(image_shape):
    height, width, channels = image_shape
    image = tf.TensorSpec([None, height, width, channels], tf.float32, name="image")
    mask = tf.TensorSpec(
        [None, height, width, 1 if channels == 1 else None], tf.float32, name="mask"
    )
    return image, mask


def _serving_functions(model, image_shape, diagonal_noise=True, recalibration=None):
    """The SavedModel signatures (see the module docstring), as `tf.function`s."""
    image_spec, mask_spec = _specs(image_shape)

    def mixture(image, mask, scored=False):
        image, mask = _assert_inputs(image, mask, image_shape, scored=scored)
        params = _parameters(model, image, mask)
        if "basis" in params:
            tf.debugging.Assert(
                tf.reduce_all(_pixelwise(params, mask)),
                ["dmfa_tf: this model's mixture is in a colour basis, so every channel of a "
                 "pixel must have the same mask value (1, 0 or -1)."],
            )
        return params, MaskedFactorMixture.from_images(params, mask, image)

    @tf.function(input_signature=[image_spec, mask_spec])
    def serving_default(image, mask):
        params, dist = mixture(image, mask)
        return {
            "imputation": unflatten_images(dist.imputation(), image_shape),  # [B, H, W, C]
            "variance": unflatten_images(dist.variance(), image_shape),  # [B, H, W, C]
            "mixture_weights": tf.math.softmax(params["logits"], axis=-1),  # [B, K]
        }

    @tf.function(input_signature=[image_spec, mask_spec])
    def log_prob(image, mask):
        _, dist = mixture(image, mask, scored=True)
        return {"log_prob": dist.log_prob(flatten_images(image))}  # [B]

    @tf.function(
        input_signature=[
            image_spec,
            mask_spec,
            tf.TensorSpec([], tf.int32, name="num_samples"),
            tf.TensorSpec([2], tf.int32, name="seed"),
        ]
    )
    def sample(image, mask, num_samples, seed):
        num_samples = tf.ensure_shape(num_samples, [], name="num_samples")
        seed = tf.ensure_shape(seed, [2], name="seed")
        num_samples = checked_sample_count(
            num_samples, tf.size(image, out_type=tf.int32)
        )  # an assertion: >= 0, and S x B x N at most MAX_SAMPLE_VALUES
        _, dist = mixture(image, mask)
        draws = dist.sample(num_samples, seed=seed, diagonal_noise=diagonal_noise)  # [S, B, N]
        return {"samples": unflatten_images(draws, image_shape)}  # [S, B, H, W, C]

    @tf.function(input_signature=[image_spec, mask_spec])
    def parameters(image, mask):
        params, _ = mixture(image, mask)
        return params

    @tf.function(
        input_signature=[image_spec, mask_spec, tf.TensorSpec([], tf.float32, name="level")]
    )
    def intervals(image, mask, level):
        level = tf.ensure_shape(level, [], name="level")
        _, dist = mixture(image, mask)
        # An assertion: 0 < level < 1.
        return _interval_outputs(dist, image, level, recalibration, image_shape)

    return {
        "serving_default": serving_default,
        "log_prob": log_prob,
        "sample": sample,
        "parameters": parameters,
        "intervals": intervals,
    }


def _interval_outputs(dist, image, level, recalibration, image_shape, elementary=False):
    """`lower` and `upper` `[B, H, W, C]`: each missing pixel's central `level`
    interval, observed pixels their value."""
    ends = recalibration_lib.interval(dist, level, recalibration, elementary=elementary)
    observed = checks.is_observed(dist.mask)
    value = tf.cast(flatten_images(image), dist.dtype)
    return {
        name: unflatten_images(tf.where(observed, value, end), image_shape)
        for name, end in zip(("lower", "upper"), ends)
    }


def _tflite_functions(model, image_shape, recalibration=None):
    """The TFLite signatures: no assertions, a `valid` output instead."""
    image_spec, mask_spec = _specs(image_shape)

    @tf.function(input_signature=[image_spec, mask_spec])
    def impute(image, mask):
        valid = checks.valid_per_example(image, mask)  # [B]
        params = _parameters(model, image, mask)
        valid = valid & _pixelwise(params, mask)
        dist = MaskedFactorMixture.from_images(params, mask, image)
        outputs = {
            "imputation": unflatten_images(dist.imputation(), image_shape),
            "variance": unflatten_images(dist.variance(), image_shape),
            "mixture_weights": tf.math.softmax(params["logits"], axis=-1),
        }
        outputs = {key: _nan_unless(valid, value) for key, value in outputs.items()}
        outputs["valid"] = valid
        return outputs

    @tf.function(input_signature=[image_spec, mask_spec])
    def log_prob(image, mask):
        valid = checks.valid_per_example(image, mask, scored=True)  # [B]
        params = _parameters(model, image, mask)
        valid = valid & _pixelwise(params, mask)
        dist = MaskedFactorMixture.from_images(params, mask, image)
        return {
            "log_prob": _nan_unless(valid, dist.log_prob(flatten_images(image))),
            "valid": valid,
        }

    @tf.function(
        input_signature=[image_spec, mask_spec, tf.TensorSpec([], tf.float32, name="level")]
    )
    def intervals(image, mask, level):
        level_ok = (level > 0.0) & (level < 1.0)  # False for NaN
        valid = checks.valid_per_example(image, mask) & level_ok  # [B]
        # A level outside (0, 1) is replaced by 0.5 so that nothing inside
        # divides by zero; its outputs are NaN anyway.
        level = tf.where(level_ok, level, 0.5)
        params = _parameters(model, image, mask)
        valid = valid & _pixelwise(params, mask)
        dist = MaskedFactorMixture.from_images(params, mask, image)
        outputs = _interval_outputs(
            dist, image, level, recalibration, image_shape, elementary=True
        )
        outputs = {key: _nan_unless(valid, value) for key, value in outputs.items()}
        outputs["valid"] = valid
        return outputs

    return {"impute": impute, "log_prob": log_prob, "intervals": intervals}


def _module(model, functions):
    """A `tf.Module` that holds the model's variables and the functions."""
    module = tf.Module()
    module.model_variables = _model_variables(model)
    for name, function in functions.items():
        setattr(module, name, function)
    return module
