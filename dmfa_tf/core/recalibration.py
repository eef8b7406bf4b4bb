"""Recalibrated per-pixel intervals: maps of the PIT fitted on a validation split.

A model's per-pixel marginal `F_i` (the exact 1-D mixture marginal, see
`marginal_cdf` below) gives the PIT `u = F_i(x_i)` of each missing value.
A calibrated model has uniform PITs; the shipped ones do not (their central
intervals cover too much). Following Kuleshov, Fenner and Ermon, "Accurate
uncertainties for deep learning using calibrated regression" (ICML 2018), a
recalibration `R` is the distribution function of the PITs of a held-out split:

    R(u) = share of validation PITs <= u,

kept at `BINS + 1` points and read by linear interpolation between them. The
points are evenly spaced in `z = Phi^-1(u)` from -8 to 8, not in `u`: an
over-confident model puts much of its PITs within 1e-4 of 0 and 1, where an
even grid in `u` could not tell the 1% from the 5% level. Then `R(F_i(x))` is
uniform on data like the validation split's, and the central `level` interval
of pixel `i` is

    [F_i^-1(R^-1((1 - level) / 2)), F_i^-1(R^-1((1 + level) / 2))].

One map for all pixels calibrates the pooled coverage but not each kind of
pixel: on MNIST it would narrow the intervals of the pixels the model is sure
of and of those it is unsure of alike. So the pixels are grouped by their
predictive standard deviation (`dist.stddev()`, known at test time), into up to
`GROUPS` groups of about equal size on the validation split, and each group
gets its own map.

The density, the NLL and the imputation are unchanged: only the intervals (and
the PIT read through `R`) are. A model folder's `recalibration.json` holds a
list of these, one per mask spec: `train.py` fits the first on the validation
split with the model's test mask, and

    python evaluate.py --model=saved_models/mnist --split=val --hole=18x18 --fit-recalibration

adds (or refits) the one for another mask. `evaluate.py` reads intervals
through the one fitted for the scored mask, or else the first one, and reports
raw and recalibrated coverage side by side.
"""

import json
import math
import os

import numpy as np
import tensorflow as tf

__all__ = [
    "BINS", "FILE", "GROUPS", "SD_GRID", "Z_RANGE", "Recalibration", "file_content", "interval",
    "load", "load_all", "marginal_cdf", "normal_cdf", "pit_bin", "pit_position", "quantile", "sd_bin",
    "with_map",
]

BINS = 1024  # PIT bins, evenly spaced in z = Phi^-1(PIT) over [-Z_RANGE, Z_RANGE]
Z_RANGE = 8.0  # PITs beyond Phi(+-8) (6e-16 from 0 or 1) count in the end bins
GROUPS = 8  # the most groups of pixels (by predictive sd), each with its own map
MIN_GROUP_PIXELS = 2000  # fewer validation pixels per group than this: fewer groups
# The grid on which group bounds are chosen: log10 of the predictive sd, 0.01
# decades (2.3%) apart from 1e-3 to 10 (values outside fall in the end cells).
# Fine, because a model's sds can be close together: the shipped MNIST
# model's middle 75% lie between 0.40 and 0.60.
SD_GRID = np.linspace(-3.0, 1.0, 401)
FILE = "recalibration.json"


def _z(u, xp):
    tiny = 1e-300 if u.dtype in (np.float64, tf.float64) else 1e-30
    if xp is tf:
        return tf.math.ndtri(tf.clip_by_value(u, tiny, 1.0 - 1e-16))
    from scipy import special

    return special.ndtri(np.clip(u, tiny, 1.0 - 1e-16))


def pit_position(u, bins=BINS):
    """Where each PIT lies on the map's grid, in bins: 0 at z = -Z_RANGE,
    `bins` at z = Z_RANGE (TensorFlow or NumPy), clipped to [0, bins]."""
    xp = tf if isinstance(u, (tf.Tensor, tf.Variable)) else np
    position = (_z(u, xp) + Z_RANGE) * (bins / (2.0 * Z_RANGE))
    return tf.clip_by_value(position, 0.0, float(bins)) if xp is tf else np.clip(position, 0.0, bins)


def pit_bin(u, bins=BINS):
    """The grid bin of each PIT, 0 to `bins - 1` (TensorFlow)."""
    return tf.minimum(tf.cast(tf.floor(pit_position(u, bins)), tf.int32), bins - 1)


def sd_bin(sd):
    """The cell of `SD_GRID` holding each predictive sd (TensorFlow), 0 to
    `len(SD_GRID) - 2`."""
    log_sd = tf.math.log(tf.maximum(sd, 1e-30)) / math.log(10.0)
    inner = tf.constant(SD_GRID[1:-1], log_sd.dtype)
    flat = tf.reshape(log_sd, [-1])
    return tf.reshape(tf.searchsorted(inner, flat, side="right"), tf.shape(sd))


class Recalibration:
    """PIT maps for groups of pixels (see the module docstring).

    Args:
        cdfs: `[G, bins + 1]` rows of non-decreasing values from 0 to 1: group
            `g`'s map at the PIT `Phi(-Z_RANGE + 2 Z_RANGE j / bins)` (or one
            such row).
        sd_bounds: `[G - 1]` increasing predictive standard deviations: a
            pixel with sd `s` is in group `g` = the number of bounds `<= s`.
        fitted_on: a dict saying what it was fitted on (kept in the JSON).
    """

    def __init__(self, cdfs, sd_bounds=(), fitted_on=None):
        cdfs = np.asarray(cdfs, np.float64)
        cdfs = cdfs[None] if cdfs.ndim == 1 else cdfs
        bounds = np.asarray(sd_bounds, np.float64).reshape(-1)
        if cdfs.ndim != 2 or cdfs.shape[1] < 2 or not np.all(np.isfinite(cdfs)):
            raise ValueError(
                f"A recalibration needs finite `cdfs` of shape [groups, >= 2]. Received {cdfs.shape}."
            )
        if np.any(np.abs(cdfs[:, 0]) > 1e-6) or np.any(np.abs(cdfs[:, -1] - 1) > 1e-6) or np.any(
            np.diff(cdfs, axis=1) < -1e-9
        ):
            raise ValueError("Each recalibration map must rise from 0 to 1 without falling.")
        if bounds.size != cdfs.shape[0] - 1 or np.any(np.diff(bounds) <= 0) or not np.all(bounds > 0):
            raise ValueError(
                f"{cdfs.shape[0]} maps need {cdfs.shape[0] - 1} increasing positive sd bounds. "
                f"Received {bounds.tolist()}."
            )
        self.cdfs = np.clip(cdfs, 0.0, 1.0)
        self.sd_bounds = bounds
        self.fitted_on = dict(fitted_on or {})

    @classmethod
    def from_counts(cls, counts, fitted_on=None, groups=GROUPS, min_group_pixels=MIN_GROUP_PIXELS):
        """From PIT counts on the bins of `pit_bin`: `[bins]` (one map), or
        `[len(SD_GRID) - 1, bins]` counted per cell of `SD_GRID` (grouped maps: the cells are
        joined into up to `groups` groups of about equal size, each with at
        least `min_group_pixels` pixels)."""
        counts = np.asarray(counts, np.float64)
        total = counts.sum()
        if counts.ndim not in (1, 2) or not total > 0 or np.any(counts < 0):
            raise ValueError(
                "Cannot fit a recalibration: no missing pixels were scored (a model "
                "without a density, or masks that hide nothing)."
            )
        fitted_on = dict(fitted_on or {}, pixels=int(total))
        if counts.ndim == 1:
            return cls(_cdf(counts), (), fitted_on)
        if counts.shape[0] != len(SD_GRID) - 1:
            raise ValueError(f"Grouped counts need {len(SD_GRID) - 1} rows. Received {counts.shape}.")
        per_cell = counts.sum(1)
        groups = int(max(1, min(groups, total // max(1, min_group_pixels))))
        cumulative = np.cumsum(per_cell) / total
        cuts = []  # cell index after which a group ends
        for target in np.arange(1, groups) / groups:
            cut = int(np.searchsorted(cumulative, target))
            if cut < len(per_cell) - 1 and (not cuts or cut > cuts[-1]):
                cuts.append(cut)
        # Every group ends at a cell where the cumulative share reached its
        # target, so holds pixels; the last one may not: then it is dropped.
        while cuts and not per_cell[cuts[-1] + 1:].sum():
            cuts.pop()
        starts, ends = [0] + [c + 1 for c in cuts], cuts + [len(per_cell) - 1]
        cdfs = [_cdf(counts[a:b + 1].sum(0)) for a, b in zip(starts, ends)]
        bounds = [10.0 ** SD_GRID[c + 1] for c in cuts]
        return cls(cdfs, bounds, fitted_on)

    @property
    def bins(self):
        return self.cdfs.shape[1] - 1

    @property
    def groups(self):
        return self.cdfs.shape[0]

    def group(self, sd):
        """Each pixel's group from its predictive sd (NumPy)."""
        return np.searchsorted(self.sd_bounds, np.asarray(sd, np.float64), side="right")

    def group_tf(self, sd, shape):
        """`group` in TensorFlow: `[shape]` int32 groups (all 0 with one group)."""
        if self.groups == 1:
            return tf.zeros(shape, tf.int32)
        sd = tf.reshape(tf.convert_to_tensor(sd), [-1, 1])
        bounds = _unquantized_constant(self.sd_bounds, sd.dtype)
        # searchsorted(bounds, sd, side="right") = the number of bounds <= sd,
        # counted with TFLite builtins (searchsorted is not one).
        return tf.reshape(tf.reduce_sum(tf.cast(bounds <= sd, tf.int32), axis=-1), shape)

    def __call__(self, u, sd=None):
        """`R_g(u)` for PITs `u` of pixels with predictive sd `sd` (needed when
        there are several groups); NumPy or TensorFlow, the same type back."""
        if self.groups > 1 and sd is None:
            raise ValueError("This recalibration has groups by predictive sd: pass `sd`.")
        if isinstance(u, (tf.Tensor, tf.Variable)):
            table = tf.constant(self.cdfs.reshape(-1), u.dtype)
            group = self.group_tf(sd, tf.shape(u))
            position = pit_position(u, self.bins)
            left = tf.clip_by_value(tf.floor(position), 0.0, float(self.bins - 1))
            index = group * (self.bins + 1) + tf.cast(left, group.dtype)
            low, high = tf.gather(table, index), tf.gather(table, index + 1)
            return low + (position - left) * (high - low)
        u = np.asarray(u, np.float64)
        position = pit_position(u, self.bins)
        group = np.zeros(u.shape, int) if self.groups == 1 else np.broadcast_to(self.group(sd), u.shape)
        out = np.empty(u.shape)
        for g in range(self.groups):
            where = group == g
            out[where] = np.interp(position[where], np.arange(self.bins + 1), self.cdfs[g])
        return out

    def inverse(self, p):
        """`R_g^-1(p)` for every group: `[groups, *shape(p)]` PIT levels (NumPy).
        Where a map is flat at `p`, the middle of the flat part."""
        return self.inverse_tf(tf.constant(np.asarray(p, np.float64))).numpy()

    def inverse_tf(self, p, elementary=False):
        """`inverse` in TensorFlow: `[groups, *shape(p)]` for a float tensor `p`;
        with `elementary`, TFLite builtin operators only (see `normal_cdf`)."""
        return normal_cdf(self.inverse_z_tf(p), elementary)

    def inverse_z_tf(self, p):
        """`Phi^-1(R_g^-1(p))` for every group, `[groups, *shape(p)]`: the
        level as a z, from which both tails (`Phi(z)`, `Phi(-z)`) are exact,
        however close to 1 the level is. TFLite builtin operators only."""
        p = tf.clip_by_value(tf.convert_to_tensor(p), 0.0, 1.0)
        shape = tf.shape(p)
        cdfs = _unquantized_constant(self.cdfs, p.dtype)  # [G, bins + 1]
        levels = tf.tile(tf.reshape(p, [1, -1]), [self.groups, 1])  # [G, n]

        def crossing(side, flat):
            # "left": the least position where R = p; "right": the greatest.
            # The segment [j - 1, j] holds it; it is flat only at p = 0 or 1.
            # searchsorted(cdfs, levels, side), as a count (a TFLite builtin):
            # left, the number of map values < p; right, the number <= p.
            below = cdfs[:, tf.newaxis, :] < levels[:, :, tf.newaxis]  # [G, n, bins + 1]
            if side == "right":
                below = below | (cdfs[:, tf.newaxis, :] == levels[:, :, tf.newaxis])
            j = tf.reduce_sum(tf.cast(below, tf.int32), axis=-1)
            j = tf.clip_by_value(j, 1, self.bins)
            low = tf.gather(cdfs, j - 1, batch_dims=1)
            high = tf.gather(cdfs, j, batch_dims=1)
            rising = high > low
            share = tf.where(rising, (levels - low) / tf.where(rising, high - low, 1.0), flat)
            return tf.cast(j - 1, p.dtype) + tf.clip_by_value(share, 0.0, 1.0)

        position = 0.5 * (crossing("left", 0.0) + crossing("right", 1.0))
        z = -Z_RANGE + position * (2.0 * Z_RANGE / self.bins)
        return tf.reshape(z, tf.concat([[self.groups], shape], 0))

    def to_dict(self):
        return {
            "bins": self.bins,
            "sd_bounds": [float(f"{v:.6g}") for v in self.sd_bounds],
            "cdfs": [[round(float(v), 6) for v in cdf] for cdf in self.cdfs],
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_dict(cls, content):
        try:
            return cls(content["cdfs"], content.get("sd_bounds", ()), content.get("fitted_on"))
        except (KeyError, TypeError) as error:
            raise ValueError(f"Not a recalibration: {error!r}") from None


def _unquantized_constant(values, dtype, scale=2.0**26):
    """A float constant stored as int32 multiples of `1 / scale` (`|values| <
    32`, steps of 1.5e-8) and converted in the graph: a TFLite converter that
    quantises float weights (float16, dynamic range) leaves integers alone, so
    a quantised file keeps the map exact."""
    values = np.asarray(values, np.float64)
    stored = tf.constant(np.round(values * scale).astype(np.int32))
    return tf.cast(stored, dtype) / tf.constant(scale, dtype)


def _cdf(counts):
    counts = np.asarray(counts, np.float64)
    cdf = np.concatenate([[0.0], np.cumsum(counts) / counts.sum()])
    cdf[-1] = 1.0
    return cdf


def load(folder, mask=None):
    """The recalibration in the folder's `recalibration.json` fitted for the
    mask spec `mask`, or else its first one (the one `train.py` fitted for the
    model's test mask); None if the folder has no such file. Its `fitted_on`
    says which mask it was fitted on."""
    maps = load_all(folder)
    for fitted in maps:
        if mask is not None and fitted.fitted_on.get("mask") == mask:
            return fitted
    return maps[0] if maps else None


def load_all(folder):
    """Every recalibration in the folder's `recalibration.json` (a list; empty
    without one)."""
    path = os.path.join(folder, FILE) if os.path.isdir(folder) else None
    if not path or not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            content = json.load(f)
        return [Recalibration.from_dict(one) for one in content["maps"]]
    except (json.JSONDecodeError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a readable recalibration file: {error!r}") from None


def file_content(maps):
    """The JSON content of a `recalibration.json` holding `maps`."""
    return {"format": 1, "maps": [m.to_dict() for m in maps]}


def with_map(folder, fitted):
    """The folder's recalibrations with `fitted` in place of the one fitted
    for the same mask, or after the others."""
    maps = load_all(folder)
    mask = fitted.fitted_on.get("mask")
    for i, one in enumerate(maps):
        if one.fitted_on.get("mask") == mask:
            return maps[:i] + [fitted] + maps[i + 1:]
    return maps + [fitted]


# Chebyshev fit of erfc(x) (Press et al., "Numerical Recipes", the `erfcc`
# function): erfc(x) ~ t exp(-x^2 + P(t)), t = 1 / (1 + x / 2), x >= 0, with
# relative error below 1.2e-7 for every x >= 0. P's coefficients, lowest first:
_ERFC_FIT = (
    -1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
    0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277,
)


def normal_cdf(z, elementary=False):
    """The standard normal CDF `Phi(z)`, accurate in both tails.

    Args:
        z: a float tensor.
        elementary: False, `0.5 * erfc(-z / sqrt(2))` to the dtype's precision;
            True, only operators that are TFLite builtins (erfc is not one):
            `Phi(-|z|)` by the Chebyshev fit above, with relative error below
            1.2e-7 (plus float32 rounding), and `Phi(|z|) = 1 - Phi(-|z|)`.
    """
    if not elementary:
        return 0.5 * tf.math.erfc(-z * math.sqrt(0.5))
    x = tf.abs(z) * math.sqrt(0.5)
    t = 1.0 / (1.0 + 0.5 * x)
    poly = tf.zeros_like(t) + _ERFC_FIT[-1]
    for coefficient in reversed(_ERFC_FIT[:-1]):
        poly = poly * t + coefficient
    lower = 0.5 * t * tf.exp(poly - tf.square(x))  # Phi(-|z|) = erfc(|z| / sqrt 2) / 2
    return tf.where(z < 0.0, lower, 1.0 - lower)


def marginal_cdf(dist, x, elementary=False, upper=False):
    """Each coordinate's value under its exact 1-D marginal CDF (the PIT).

    Coordinate `i`'s marginal under `dist` is the mixture
    `sum_k w_k N(loc_k[i], diag_k[i] + sum_l factors_k[i, l]^2)`, `w =
    softmax(logits)` (`dist.coordinate_mixture()`, which rotates them back
    to RGB when the mixture has a colour basis, and has a term per component
    and scale when it has a scale prior).

    Args:
        dist: a `MaskedFactorMixture` with batch shape `[B]`.
        x: `[B, N]` values.
        elementary: TFLite builtin operators only (`normal_cdf`).
        upper: the upper tail `1 - F_i(x)` instead, exact where it is far
            smaller than the dtype's resolution of 1.

    Returns:
        `[B, N]` values in [0, 1] (every coordinate; only the missing ones
        mean anything).
    """
    x = tf.cast(x, dist.dtype)
    # [B, K], [B, K, N] each (in RGB with a colour basis; K * J terms with a scale prior)
    probs, loc, variance = dist.coordinate_mixture()
    z = (tf.expand_dims(x, -2) - loc) / tf.sqrt(variance)  # [B, K, N]
    cdf = normal_cdf(-z if upper else z, elementary)
    return tf.reduce_sum(tf.expand_dims(probs, -1) * cdf, axis=-2)


def quantile(dist, p, iterations=60, elementary=False, upper=False):
    """Per-coordinate `p`-quantile of the exact 1-D marginals of `dist`.

    Args:
        dist: a `MaskedFactorMixture` with batch shape `[B]`.
        p: a number in (0, 1), or `[B, N]` levels.
        iterations: bisection steps (60 reach float64 resolution).
        elementary: TFLite builtin operators only (`normal_cdf`).
        upper: `p` is an upper-tail probability: `x` with `1 - F_i(x) = p`,
            exact also where `1 - p` rounds to 1 (float32 beyond z = 5.3).

    Returns:
        `[B, N]` values `x` with `F_i(x) = p` (every coordinate; only the
        missing ones mean anything).
    """
    _, loc, variance = dist.coordinate_mixture()  # [B, K, N] each (K * J with a scale prior)
    scale = tf.sqrt(variance)
    low = tf.reduce_min(loc - 40.0 * scale, axis=-2)
    high = tf.reduce_max(loc + 40.0 * scale, axis=-2)
    p = tf.cast(p, dist.dtype)

    def halve(step, low, high):
        middle = 0.5 * (low + high)
        tail = marginal_cdf(dist, middle, elementary, upper)
        below = tail > p if upper else tail < p  # the quantile lies above `middle`
        return step + 1, tf.where(below, middle, low), tf.where(below, high, middle)

    # A loop op, not `iterations` copies of the step: small graphs, fast export.
    _, low, high = tf.while_loop(
        lambda step, low, high: step < iterations, halve, (tf.constant(0), low, high)
    )
    return 0.5 * (low + high)


def interval(dist, level, recalibration=None, iterations=60, elementary=False):
    """The central `level` interval of every coordinate's marginal (TensorFlow;
    also inside a `tf.function`, where `level` may be a tensor).

    Args:
        dist: a `MaskedFactorMixture` with batch shape `[B]`.
        level: a number in (0, 1), e.g. 0.9.
        recalibration: a `Recalibration` (the interval whose recalibrated
            PIT lies in the central `level`), or None (the model's own).
        iterations: bisection steps of `quantile`.
        elementary: TFLite builtin operators only (`normal_cdf`, and no
            assertion on a tensor `level`: the caller checks it).

    Returns:
        `(lower, upper)`, each `[B, N]` (every coordinate; only the missing
        ones mean anything).
    """
    if isinstance(level, (tf.Tensor, tf.Variable)):
        level = tf.cast(level, dist.dtype)
    if isinstance(level, tf.Tensor) and not elementary:
        tf.debugging.Assert(
            (level > 0.0) & (level < 1.0),
            ["`level` must lie strictly between 0 and 1; received level =", level],
        )
    elif not isinstance(level, tf.Tensor):
        level = float(level)
        if not 0.0 < level < 1.0 or math.isnan(level):
            raise ValueError(f"`level` must lie strictly between 0 and 1. Received: level={level!r}")
        level = tf.constant(level, dist.dtype)
    # The upper end is found from its upper-tail probability, which stays
    # exact where its level rounds to 1 in float32.
    if recalibration is None:
        tail = (1.0 - level) / 2.0
        return (
            quantile(dist, tail, iterations, elementary),
            quantile(dist, tail, iterations, elementary, upper=True),
        )
    z = recalibration.inverse_z_tf(tf.stack([(1.0 - level) / 2.0, (1.0 + level) / 2.0]))  # [G, 2]
    tails = (normal_cdf(z[:, 0], elementary), normal_cdf(-z[:, 1], elementary))  # [G] each
    sd = dist.stddev()  # [B, N]
    group = recalibration.group_tf(sd, tf.shape(sd))
    return tuple(
        quantile(dist, tf.gather(tails[side], group), iterations, elementary, upper=side == 1)
        for side in (0, 1)
    )
