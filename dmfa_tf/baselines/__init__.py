"""Baselines, scored by the same code and on the same masks as the DMFA networks.

Two kinds of baseline for images:

- A *mixture* baseline is a callable `baseline({"image", "mask"}) -> {"logits",
  "loc", "factors", "diag"}`, like a DMFA network (`DiagonalGaussian`, and the
  classical mixture of factor analysers `dmfa_tf.baselines.mfa.MFA`).
- A *predictor* baseline has `predict_missing(images, mask)`: NumPy in, NumPy
  out, for models whose conditional is not a mixture of factor analysers
  (`FullGaussian`, `KNNImputation`). `dmfa_tf.evaluation.score` scores both.

`predict_missing(images, mask)` takes `[B, N]` float64 images and `[B, N]`
masks (1 observed, 0 missing, -1 absent) and returns a dict of `[B, N]` or
`[B]` float64 arrays: `imputation` (always; observed values kept), and, for a
baseline with a density, `log_prob` (`log p(x_missing | x_observed)`), `pit`
(each missing coordinate's value under its 1-D conditional CDF) and
`mahalanobis` (the squared Mahalanobis distance of the missing block).

| module | contents |
|---|---|
| `diagonal` | `DiagonalGaussian` |
| `gaussian` | `FullGaussian`, `DEFAULT_REGULARIZATION` |
| `knn` | `KNNImputation`, `KNN_NEIGHBORS` |
| `mfa` | `MFA`: the classical mixture of factor analysers, fitted by EM |
| `tabular` | the baselines for tables (`make`, `TABLE_BASELINES`) |

`mfa` and `tabular` are imported on first use (`from dmfa_tf.baselines.mfa
import MFA`, `from dmfa_tf.baselines import tabular`).
"""

from dmfa_tf.baselines.diagonal import DiagonalGaussian
from dmfa_tf.baselines.gaussian import DEFAULT_REGULARIZATION, FullGaussian
from dmfa_tf.baselines.knn import KNN_NEIGHBORS, KNNImputation

__all__ = [
    "DEFAULT_REGULARIZATION",
    "KNN_NEIGHBORS",
    "DiagonalGaussian",
    "FullGaussian",
    "KNNImputation",
]
