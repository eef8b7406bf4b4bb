"""Batched scoring of models on a test set with seeded masks: the paper's metrics
and calibration.

Per image (all on the [0, 1] pixel scale, summed over the missing pixels of
every channel; lower is better for the first two):

| metric | definition |
|---|---|
| `nll` | `-log p(x_missing | x_observed)` in nats, the paper's NLL |
| `squared_error` | the paper's "MSE": sum of squared errors of the most probable imputation |
| `squared_error_mixture_mean` | the same for the mixture mean `dist.mean()` (the full Gaussian: its conditional mean, the same as its imputation; NaN for KNN) |
| `psnr` | PSNR of the inpainted image (observed pixels kept) against the original, dB, peak 1 |
| `ssim` | SSIM of the inpainted image against the original (as `tf.image.ssim`: peak 1, Gaussian window of size min(11, H, W), sigma 1.5; colour images: mean over channels) |
| `mahalanobis` | squared Mahalanobis distance of the missing block under the most probable component (the one `imputation()` uses), at scale 1; chi-squared with `missing` degrees of freedom if the model is right (times a scale drawn from the scale prior, for a model with one) |
| `mahalanobis_cdf` | its distribution function under that component: chi-squared, or the scale prior's mixture of scaled chi-squared (`dmfa_tf.core.scales.mahalanobis_cdf`); uniform if the model is right |

Calibration (`calibration`), pooled over every missing pixel of the split: each
missing pixel's PIT `u = F_i(x_i)` under its exact 1-D marginal, for a
mixture `F_i(x) = sum_k w_k Phi((x - loc_k[i]) / sigma_k[i])` with `w =
softmax(logits)` and `sigma_k[i]^2 = diag_k[i] + sum_l factors_k[i, l]^2`. The
value lies in the central `alpha` interval exactly when `(1 - alpha) / 2 <= u
<= (1 + alpha) / 2`, which gives the 50% and 90% coverages without root
finding; the PIT deciles are the shares of `u` in `[0, 0.1), ..., [0.9, 1]`.
With a scale prior each component's 1-D marginal is itself a mixture over
the scales (`dist.coordinate_mixture()`). Per image, the Mahalanobis distance's
distribution function under the most probable component (`mahalanobis_cdf`:
chi-squared, or the scale prior's mixture of scaled chi-squared) is compared
with 0.01 and 0.99: the distance lies outside that distribution's 1st and 99th
percentiles.

Models without a density (`baselines.KNNImputation`) have NaN NLL, Mahalanobis
and calibration: not available.

Image `i` gets the mask seeded `(seed, i)`: every model scored with the same seed
and mask spec sees the same masks, so comparisons are paired.

| module | owns |
|---|---|
| `metrics` | per-image metrics of a batch; `summarize`, `calibration` of a split |
| `scoring` | `score`, `seeded_masks`, `timed_score` |
| `scale_prior` | `fit_scale_prior`: the scale prior fitted on a validation split |
| `specs` | `ModelSpec`: saved folders and baselines named on the command line |
| `report` | the comparison tables, the per-image CSV |

The driver behind `evaluate.py` (load a split, score several models on the same
masks, write the reports) is `dmfa_tf.comparison`."""

from dmfa_tf.core.recalibration import marginal_cdf
from dmfa_tf.evaluation.metrics import (
    CHI2_TAILS,
    COVERAGES,
    METRICS,
    PIT_BINS,
    RECALIBRATED,
    calibration,
    ssim,
    summarize,
)
from dmfa_tf.evaluation.report import comparison_table, write_csv, write_json, write_text
from dmfa_tf.evaluation.scale_prior import fit_scale_prior
from dmfa_tf.evaluation.scoring import score, seeded_masks, timed_score
from dmfa_tf.evaluation.specs import BASELINES, ModelSpec, parse_model_spec

__all__ = [
    "BASELINES", "CHI2_TAILS", "COVERAGES", "METRICS", "ModelSpec", "PIT_BINS", "RECALIBRATED",
    "calibration", "comparison_table", "fit_scale_prior", "marginal_cdf", "parse_model_spec", "score", "seeded_masks", "ssim",
    "summarize", "timed_score", "write_csv", "write_json", "write_text",
]
