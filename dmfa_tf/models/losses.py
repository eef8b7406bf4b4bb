"""The DMFA training loss, the training objectives and the paper's per-image scores.

Both scores are per image, on the [0, 1] pixel scale, summed over the missing
coordinates (every channel of every pixel whose mask is 0):

- NLL: `-log p(x_missing | x_observed)` in nats, the paper's definition (no
  dequantisation; negative when the model is confident);
- squared error: the paper's "MSE", the sum of squared errors of the most
  probable imputation (the mean of the component with the largest weight).

Pixels whose mask is -1 (absent) are in neither score.

#### Training objectives

`DMFAModel.objective` (and `train.py --objective`) chooses what `fit`
minimises; the tracked `nll` and `mse` metrics are the scores above whatever
the objective. Per image, with `M` the missing coordinates, component `k` of
weight `pi_k = softmax(logits)_k`, mean `mu_k`, covariance
`Sigma_k = A_k A_k^T + diag(d_k)`, and `sg` the stop-gradient:

```none
nll(mu, A, d, pi) = -log sum_k pi_k N(x_M; mu_k[M], Sigma_k[M, M])
se                = |x_M - mu_k*[M]|^2,  k* = argmax_k logits_k   (the paper's "MSE")
r_k               = pi_k N_k(x_M) / sum_j pi_j N_j(x_M)           (responsibilities)
v                 = (1 / |M|) sum_{j in M} Var[x_j | x_O]          (mean predictive variance)
```

| spec | per-image loss | what it trains |
|---|---|---|
| `nll` (default) | `nll` | everything by the likelihood |
| `nll+mse[:w]` (w = 1) | `nll + w se` | the reference's CelebA phase: the mean of the most probable component also gets the squared error's gradient |
| `beta_nll[:b]` (b = 0.5) | `sg(v)^b nll` | beta-NLL (Seitzer et al., ICLR 2022) per image |
| `mse_mean[:w]` (w = 1) | `nll(sg(mu), A, d, pi) + w sum_k sg(r_k) |x_M - mu_k[M]|^2` | the means by the squared error only, the rest by the NLL at the stopped means |

Why these:

- The NLL's gradient with respect to a mean is `-r_k Sigma_k^-1 (x - mu_k)`.
  It is weak along the factors, where `Sigma_k` is large, so the factors can
  absorb the mean's error there and the imputation improves slowly (or gets
  worse while the NLL improves).
- `nll+mse` adds `2 w (mu_k* - x)` to the most probable component's mean
  gradient: isotropic, so it is felt along the factors too. The value is the
  NLL plus `w` times the paper's MSE.
- `beta_nll`: for one Gaussian with a diagonal covariance, beta-NLL weights
  each coordinate's NLL term by `sg(sigma^2)^beta`, so at `beta = 1` the mean's
  gradient is the squared error's (divided by 2). The mixture's NLL does not
  split into per-coordinate terms, so the weight is per image:
  `v = tr(Var[x_M | x_O]) / |M|`, the mixture's predictive variance averaged over
  the missing coordinates (between-component spread included). For an
  isotropic covariance `sigma^2 I` it is `sigma^2` and the objective is exactly
  beta-NLL; in general `v` is the model's own expected squared error per pixel.
  It rebalances images (confident images weigh less than uncertain ones), not
  the directions within an image. Images with no missing pixel weigh 1 (and
  their NLL is 0).
- `mse_mean`: the means enter the NLL only as a stopped value, so `A`, `d` and
  the logits get exactly the NLL's gradients, and `mu_k` gets
  `2 w r_k (mu_k - x)` on the missing coordinates: the NLL's mean gradient with
  `Sigma_k^-1` replaced by `2 w I`. The responsibilities (stopped) let each
  component's mean learn the images it explains, as EM's mean update would;
  with K = 1 the term is `w se`. The value is `nll + w sum_k r_k se_k`. The
  weight `w` only matters through the network layers the heads share.
"""

import dataclasses

import keras
import tensorflow as tf

from dmfa_tf.core import colour
from dmfa_tf.core.distribution import (
    MISSING,
    MaskedFactorMixture,
    flatten_images,
    flatten_mask,
    most_probable_component,
)

__all__ = [
    "OBJECTIVES",
    "MaskedNLL",
    "Objective",
    "negative_log_likelihood",
    "objective_loss",
    "squared_error",
]

# kind -> (name of its number, default number); None: the kind takes no number.
OBJECTIVES = {
    "nll": None,
    "nll+mse": ("w", 1.0),
    "beta_nll": ("beta", 0.5),
    "mse_mean": ("w", 1.0),
}


def negative_log_likelihood(params, image, mask, validate_args=False):
    """Per-image NLL `[B]` of the missing pixels given the observed ones.

    Args:
        params: dict of the network's outputs (`logits`, `loc`, `factors`, `diag`).
        image: `[B, H, W, C]` complete images (the targets).
        mask: `[B, H, W, 1 or C]` mask, 1 observed / 0 missing / -1 absent.
        validate_args: run the distribution's argument checks.

    An image with no missing pixel has NLL 0.
    """
    dist = MaskedFactorMixture.from_images(params, mask, validate_args=validate_args)
    return -dist.log_prob(flatten_images(tf.cast(image, dist.dtype)))


def _in_basis(params, values):
    """`[B, N]` values in the colour basis of the parameters, if they have one."""
    if params.get("basis") is None:
        return values
    return colour.to_basis(values, tf.cast(params["basis"], values.dtype))


def squared_error(params, image, mask):
    """Per-image sum of squared errors `[B]` of the most probable imputation
    over the missing pixels (the paper's "MSE")."""
    loc = tf.convert_to_tensor(params["loc"])  # [B, K, N]
    best = tf.one_hot(most_probable_component(params["logits"]), tf.shape(loc)[-2], dtype=loc.dtype)
    imputation = tf.reduce_sum(best[..., None] * loc, axis=-2)  # [B, N]
    # In a colour basis the loc is rotated, and so is the target: a rotation of
    # each (wholly missing) pixel keeps its squared error.
    target = _in_basis(params, flatten_images(tf.cast(image, loc.dtype)))  # [B, N]
    missing = flatten_mask(mask, loc.shape[-1]) == MISSING  # [B, N]
    error = tf.where(missing, tf.square(imputation - target), tf.zeros_like(target))
    return tf.reduce_sum(error, axis=-1)


@keras.saving.register_keras_serializable(package="dmfa_tf")
class MaskedNLL(keras.losses.Loss):
    """`-log p(x_missing | x_observed)`, nats per image, averaged over the batch.

    `y_true` is a dict `{"image": [B, H, W, C], "mask": [B, H, W, 1 or C]}`
    and `y_pred` the dict of mixture parameters a DMFA network returns.
    `DMFAModel` uses it in `compute_loss`, so `model.fit` needs no `loss`
    argument; call it directly in custom training loops:

    ```python
    loss = MaskedNLL()({"image": image, "mask": mask}, model({"image": image, "mask": mask}))
    ```
    """

    def __init__(self, name="masked_nll", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        image, mask = unpack_images(y_true)
        return negative_log_likelihood(y_pred, image, mask)


def unpack_images(data):
    """`(image, mask)` from a dict with those keys or a pair."""
    if isinstance(data, dict):
        missing = {"image", "mask"} - set(data)
        if missing:
            raise ValueError(
                f"Expected a dict with keys 'image' and 'mask'; missing {sorted(missing)}. "
                f"Received keys: {sorted(data)}"
            )
        return data["image"], data["mask"]
    if isinstance(data, (list, tuple)) and len(data) == 2:
        return data[0], data[1]
    raise ValueError(
        "Expected {'image': ..., 'mask': ...} or (image, mask). "
        f"Received: {type(data).__name__}"
    )


@dataclasses.dataclass(frozen=True)
class Objective:
    """A training objective (module docstring): `kind` and its number
    (`w` of `nll+mse` and `mse_mean`, `beta` of `beta_nll`; None for `nll`).

    `Objective.parse("nll+mse:0.5")`; `str(objective)` is the canonical spec;
    calling it on `(params, image, mask)` returns `(loss, nll)`, both `[B]`.
    """

    kind: str = "nll"
    value: float = None

    @classmethod
    def parse(cls, spec):
        """An `Objective` from a spec `kind[:number]`, or the `Objective` itself."""
        if isinstance(spec, Objective):
            return spec
        if not isinstance(spec, str):
            raise ValueError(
                f"An objective is a string such as 'nll' or 'nll+mse:1'. Received: {spec!r}"
            )
        kind, _, number = spec.strip().partition(":")
        kind = kind.strip()
        if kind not in OBJECTIVES:
            raise ValueError(
                f"Unknown objective {spec!r}; choose one of 'nll', 'nll+mse[:w]', "
                "'beta_nll[:beta]', 'mse_mean[:w]'."
            )
        if OBJECTIVES[kind] is None:
            if number:
                raise ValueError(f"Objective {kind!r} takes no number. Received: {spec!r}")
            return cls(kind)
        name, default = OBJECTIVES[kind]
        if not number:
            return cls(kind, default)
        try:
            value = float(number)
        except ValueError:
            value = float("nan")
        if not (value >= 0 and value != float("inf")):
            raise ValueError(
                f"Objective {kind!r}: `{name}` must be a finite number >= 0. Received: {spec!r}"
            )
        return cls(kind, value)

    def __str__(self):
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"

    def __call__(self, params, image, mask):
        return objective_loss(self, params, image, mask)


def _missing_count(missing, dtype):
    return tf.reduce_sum(tf.cast(missing, dtype), axis=-1)  # [B]


def objective_loss(objective, params, image, mask):
    """Per-image training loss and NLL of an objective (module docstring).

    Args:
        objective: an `Objective` or its spec, e.g. `"nll"`, `"beta_nll:0.5"`.
        params: dict of the network's outputs (`logits`, `loc`, `factors`, `diag`).
        image: `[B, H, W, C]` complete images (the targets).
        mask: `[B, H, W, 1 or C]` mask, 1 observed / 0 missing / -1 absent.

    Returns:
        `(loss, nll)`, both `[B]`: the objective's value and the plain NLL
        (`negative_log_likelihood`) of each image. With `"nll"` they are the
        same tensor.
    """
    objective = Objective.parse(objective)
    kind, value = objective.kind, objective.value
    if kind == "nll":
        nll = negative_log_likelihood(params, image, mask)
        return nll, nll
    if kind == "nll+mse":
        nll = negative_log_likelihood(params, image, mask)
        return nll + tf.cast(value, nll.dtype) * squared_error(params, image, mask), nll
    if kind == "beta_nll":
        dist = MaskedFactorMixture.from_images(params, mask)
        nll = -dist.log_prob(flatten_images(tf.cast(image, dist.dtype)))
        missing = dist.mask == MISSING  # [B, N]
        count = _missing_count(missing, dist.dtype)
        variance = dist.variance()  # [B, N]
        total = tf.reduce_sum(tf.where(missing, variance, tf.zeros_like(variance)), axis=-1)
        mean_variance = tf.where(count > 0, total / tf.maximum(count, 1.0), tf.ones_like(total))
        weight = tf.stop_gradient(mean_variance) ** tf.cast(value, nll.dtype)
        return weight * nll, nll
    if kind == "mse_mean":
        loc = tf.convert_to_tensor(params["loc"])  # [B, K, N]
        stopped = dict(params, loc=tf.stop_gradient(loc))
        dist = MaskedFactorMixture.from_images(stopped, mask)
        target = flatten_images(tf.cast(image, dist.dtype))  # [B, N]
        target_in_basis = _in_basis(params, target)
        joint = dist.component_log_prob(target) + tf.math.log_softmax(
            tf.cast(params["logits"], dist.dtype), axis=-1
        )  # [B, K]
        missing = dist.mask == MISSING  # [B, N]
        # As MaskedFactorMixture.log_prob: an image with nothing missing has NLL 0.
        has_missing = tf.reduce_any(missing, axis=-1)
        nll = tf.where(has_missing, -tf.reduce_logsumexp(joint, axis=-1), tf.zeros_like(joint[:, 0]))
        responsibilities = tf.stop_gradient(tf.math.softmax(joint, axis=-1))  # [B, K]
        error = tf.where(
            missing[:, None, :], tf.square(loc - target_in_basis[:, None, :]), tf.zeros_like(loc)
        )
        component_se = tf.reduce_sum(error, axis=-1)  # [B, K]
        mean_term = tf.reduce_sum(responsibilities * component_se, axis=-1)
        return nll + tf.cast(value, nll.dtype) * mean_term, nll
    raise ValueError(f"Unknown objective {objective!r}.")
