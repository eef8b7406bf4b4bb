"""`fit_scale_prior`: a DMFA model's scale prior (`dmfa_tf.core.scales`),
fitted on a held-out split with seeded masks."""

import time

from dmfa_tf.core import scales as scales_lib
from dmfa_tf.evaluation.scoring import score
from dmfa_tf.models import with_scale_prior


def fit_scale_prior(model, images, mask, seed=0, batch_size=256, verbose=0,
                    scales=scales_lib.DEFAULT_SCALES):
    """The scale weights of largest likelihood on `images` (a validation
    split), as `model` with them (`dmfa_tf.models.with_scale_prior`; any scale
    prior `model` has is replaced).

    Args:
        model: a `DMFAModel`.
        images, mask, seed, batch_size, verbose: as `evaluation.score`; the
            densities are those of the stored values (as the NLL).
        scales: the grid of scales.

    Returns:
        `(fitted_model, record)`: `record` holds `scales`, `weights`,
        `nll` and `nll_without` (the mean NLL of `images` with the prior and
        at scale 1 alone), `images`, `mask`, `seed` and `seconds`.

    Raises:
        ValueError: `model` is not a DMFA network, or no image has a
            missing pixel.
    """
    if not hasattr(model, "output") or "logits" not in getattr(model, "output", {}):
        raise ValueError("A scale prior is fitted to a DMFA network (a Keras model with mixture outputs).")
    started = time.time()
    scores = score(model, images, mask, seed, batch_size, verbose, dequantize=0.0, components=True)
    fit = scales_lib.fit_weights(
        scores["component_log_prob"], scores["component_mahalanobis"], scores["logits"],
        scores["missing"], scales,
    )
    fitted = with_scale_prior(model, fit["scales"], fit["weights"])
    spec = mask if isinstance(mask, str) else getattr(mask, "spec", lambda: None)()
    record = {
        "scales": fit["scales"], "weights": fit["weights"],
        "nll": -fit["mean_log_prob"], "nll_without": -fit["unit_mean_log_prob"],
        "images": fit["images"], "mask": spec, "seed": int(seed),
        "seconds": round(time.time() - started, 1),
    }
    return fitted, record
