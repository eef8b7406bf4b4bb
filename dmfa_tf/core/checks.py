"""The one home of the input rules: mask codes, pixel values, positive integers.

Mask codes (a mask has the image's height and width, and 1 or C channels):

| code | name | meaning |
|---:|---|---|
| 1 | `OBSERVED` | given: conditioned on, kept as it is in outputs |
| 0 | `MISSING` | not given: scored by `log_prob`, filled in by samples and means |
| -1 | `ABSENT` | not given and not scored: filled in, but left out of `log_prob` |

A pixel is observed exactly when its code equals 1 (`is_observed`); every
other code, valid or not, leaves the pixel unseen. Observed pixels must be
finite and, for images (`bounded=True`), in [0, 1]; missing pixels must be
finite where they are scored.

Every check here is made of TensorFlow builtins that TFLite also runs
(`is_finite` is written as `|x| <= max`), so the serving signatures,
the Keras input layer, the distribution and the data pipeline apply the same
rule with the same message.
"""

import numbers

import tensorflow as tf

OBSERVED = 1
MISSING = 0
ABSENT = -1

MASK_CODES_MESSAGE = "`mask` must hold only 1 (observed), 0 (missing) and -1 (absent)."


def check_positive_int(value, what):
    """`value` as an int if it is a whole number >= 1 (not a bool); else a
    ValueError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{what}` must be a positive integer. Received: {what}={value!r}")
    return int(value)


def check_choice(value, choices, what):
    """`value` if it is one of `choices`; else a ValueError naming `what`."""
    if value not in choices:
        raise ValueError(f"`{what}` must be one of {tuple(choices)}. Received: {what}={value!r}")
    return value


def valid_codes(mask):
    """Bool tensor: True where `mask` holds 1, 0 or -1."""
    return tf.equal(mask, float(OBSERVED)) | tf.equal(mask, float(MISSING)) | tf.equal(mask, float(ABSENT))


def is_observed(mask):
    """Bool tensor: True where `mask` is 1 (observed)."""
    return tf.equal(mask, float(OBSERVED))


def is_missing(mask):
    """Bool tensor: True where `mask` is 0 (missing, scored)."""
    return tf.equal(mask, float(MISSING))


def is_finite(values):
    """Bool tensor: True for finite values (NaN and inf fail `|x| <= max`, the
    dtype's largest finite value)."""
    values = tf.convert_to_tensor(values)
    return tf.abs(values) <= tf.constant(values.dtype.max, values.dtype)


def in_unit_range(values):
    """Bool tensor: True for values in [0, 1] (NaN is not)."""
    return (values >= 0.0) & (values <= 1.0)


def _assert(condition, message, values=None, where=None):
    """`tf.debugging.Assert(all(condition))` whose message starts `dmfa_tf:`;
    with `values`, the offending `values[where]` are printed after it."""
    data = ["dmfa_tf: " + message]
    if values is not None:
        data += ["Received values:", tf.boolean_mask(values, where)]
    return tf.debugging.Assert(tf.reduce_all(condition), data, summarize=8)


def input_assertions(image, mask, bounded=True, scored=False, show_values=True):
    """The assertions of the input rule on `image` `[..., C]` and a mask that
    broadcasts to it.

    Args:
        image: float tensor; any value at unobserved pixels is allowed.
        mask: float tensor of mask codes.
        bounded: observed values must lie in [0, 1] (images); False for
            unbounded values (standardised table cells).
        scored: missing pixels (mask 0) are scored, so they must be finite.
        show_values: print the offending values after the message (False in
            layers that may be XLA-compiled).

    Returns:
        A list of `tf.debugging.Assert` ops (run them as control dependencies).
    """
    codes = valid_codes(mask)
    observed = tf.broadcast_to(is_observed(mask), tf.shape(image))
    finite = is_finite(image)
    shown = (lambda where: where) if show_values else (lambda where: None)
    checks = [
        _assert(codes, MASK_CODES_MESSAGE, mask if show_values else None, ~codes),
        _assert(
            finite | ~observed,
            "`image` holds NaN or inf at observed pixels (mask 1).",
            image if show_values else None,
            shown(observed & ~finite),
        ),
    ]
    if bounded:
        in_range = in_unit_range(image)
        checks.append(_assert(
            in_range | ~observed | ~finite,
            "`image` holds values outside [0, 1] at observed pixels (mask 1).",
            image if show_values else None,
            shown(observed & ~in_range & finite),
        ))
    if scored:
        missing = tf.broadcast_to(is_missing(mask), tf.shape(image))
        checks.append(_assert(
            finite | ~missing,
            "`image` holds NaN or inf at missing pixels (mask 0), which `log_prob` scores.",
            image if show_values else None,
            shown(missing & ~finite),
        ))
    return checks


def valid_per_example(image, mask, bounded=True, scored=False):
    """`[B]` bool: whether each example of `image` `[B, ...]` passes the input
    rule, for graphs that cannot stop with an error (TFLite)."""
    axes = list(range(1, image.shape.rank))
    observed = tf.broadcast_to(is_observed(mask), tf.shape(image))
    ok = tf.reduce_all(valid_codes(mask), axis=axes)
    allowed = in_unit_range(image) if bounded else is_finite(image)
    ok &= tf.reduce_all(allowed | ~observed, axis=axes)
    if scored:
        missing = tf.broadcast_to(is_missing(mask), tf.shape(image))
        ok &= tf.reduce_all(is_finite(image) | ~missing, axis=axes)
    return ok


def pixel_assertions(image, bounded=True, finite=True, where="", data=()):
    """Assertions on every pixel of one image (the data pipeline's check, before
    a mask exists): in [0, 1] where finite if `bounded`, and finite if
    `finite`. `where` ends the messages and `data` (tensors) follow them,
    e.g. `where=" at index", data=(i,)`."""
    ok = is_finite(image)
    clean = tf.where(ok, image, tf.zeros_like(image))
    checks = []
    if bounded:
        checks.append(tf.debugging.Assert(
            tf.reduce_all(in_unit_range(clean)),
            ["Pixel values outside [0, 1] in the image" + where, *data],
        ))
    if finite:
        checks.append(tf.debugging.Assert(
            tf.reduce_all(ok),
            ["NaN or inf pixels in the image" + where, *data,
             "(use nonfinite='absent' to train on incomplete images)"],
        ))
    return checks


def check_mixture_shapes(values):
    """ValueErrors for statically known shapes of a mixture's parameters
    (`MaskedFactorMixture`'s, a dict; None values are left out) that do not
    fit together."""
    ranks = dict(logits=1, loc=2, factors=3, diag=2, mask=1, observed=1, scales=1, scale_logits=1)
    shapes = {}
    for key, rank in ranks.items():
        value = values.get(key)
        if value is None:
            continue
        if value.shape.rank is not None and value.shape.rank < rank:
            raise ValueError(
                f"`{key}` must have rank >= {rank}. "
                f"Received: {key}.shape={value.shape}"
            )
        shapes[key] = value.shape

    def check(what, dims):
        known = {k: d for k, d in dims.items() if d is not None}
        if len(set(known.values())) > 1:
            got = ", ".join(f"{k}: {d}" for k, d in known.items())
            raise ValueError(f"Inconsistent {what}. Received {got}.")

    def dim(key, axis):
        shape = shapes.get(key)
        if shape is None or shape.rank is None:
            return None
        return tf.compat.dimension_value(shape[axis])

    check(
        "number of components K (logits[-1], loc[-2], factors[-3], diag[-2])",
        {
            "logits.shape[-1]": dim("logits", -1),
            "loc.shape[-2]": dim("loc", -2),
            "factors.shape[-3]": dim("factors", -3),
            "diag.shape[-2]": dim("diag", -2),
        },
    )
    check(
        "number of coordinates N (the event size)",
        {
            "loc.shape[-1]": dim("loc", -1),
            "factors.shape[-2]": dim("factors", -2),
            "diag.shape[-1]": dim("diag", -1),
            "mask.shape[-1]": dim("mask", -1),
            "observed.shape[-1]": dim("observed", -1),
        },
    )
    check(
        "number of scales J (scales[-1], scale_logits[-1])",
        {"scales.shape[-1]": dim("scales", -1), "scale_logits.shape[-1]": dim("scale_logits", -1)},
    )


# The most values one `sample` call draws: S samples of a batch of B events of
# N values are S x B x N values (2**28 of them are 1 GiB in float32). Without a
# bound, `num_samples=2**30` through a SavedModel exhausts memory instead of
# failing. Draw more in several calls, with different seeds.
MAX_SAMPLE_VALUES = 2**28


def checked_sample_count(n, values_per_sample):
    """`n` if `0 <= n` and `n * values_per_sample <= MAX_SAMPLE_VALUES`: a
    ValueError naming the bound for values known now (Python, eager), an
    assertion in a graph."""
    limit = MAX_SAMPLE_VALUES

    def message(count, per):
        return (
            f"dmfa_tf: cannot draw {count} samples of {per} values each: at most "
            f"MAX_SAMPLE_VALUES = 2**28 values per call (num_samples x batch x event size; "
            "1 GiB of float32). Draw them in several calls, with other seeds."
        )

    static_n, static_per = tf.get_static_value(n), tf.get_static_value(values_per_sample)
    if static_n is not None and static_per is not None:
        if int(static_n) < 0:
            raise ValueError(f"dmfa_tf: the number of samples must be >= 0. Received: {int(static_n)}")
        if int(static_n) * int(static_per) > limit:
            raise ValueError(message(int(static_n), int(static_per)))
        return n
    n = tf.convert_to_tensor(n)
    total = tf.cast(n, tf.int64) * tf.cast(values_per_sample, tf.int64)
    check = tf.debugging.Assert(
        tf.logical_and(n >= 0, total <= limit),
        ["dmfa_tf: `num_samples` must be >= 0, and num_samples x batch x event size at most "
         "MAX_SAMPLE_VALUES = 2**28 values per call (draw more in several calls, with other "
         "seeds). Received num_samples:", n, "values per sample:", values_per_sample],
    )
    with tf.control_dependencies([check]):
        return tf.identity(n)
