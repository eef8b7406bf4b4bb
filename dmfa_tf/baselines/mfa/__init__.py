"""The classical baseline: a mixture of factor analysers fitted by EM.

Component `k` (weight `pi_k`) is a factor analyser over complete images:

```none
x = mu_k + A_k z + eps,   z ~ N(0, I_L),   eps ~ N(0, diag(D_k))
x ~ N(mu_k, A_k A_k^T + diag(D_k))
```

with means `mu [K, N]`, factors `A [K, N, L]` and noise variances `D [K, N]`:
one variance per coordinate (`noise="diagonal"`, MFA, Ghahramani & Hinton
1996) or one per component (`noise="isotropic"`, MPPCA, Tipping & Bishop 1999;
the paper's "MFA" baseline is in fact this one). Glossary of shape letters:
`n` training images, `B` batch, `K` components, `N` coordinates (`H * W * C`,
flattened in `[H, W, C]` row-major order), `L` factors.

| module | contents |
|---|---|
| `model` | the `MFA` class: parameters, `fit`, `log_prob`, `__call__` |
| `em` | EM in NumPy float64 (the fitting math, the floors that keep the likelihood non-decreasing) |
| `init` | initialisations: k-means (scikit-learn) + per-cluster PPCA, random, a given MFA |
| `conditional` | the masked conditionals in TensorFlow (`"paper"` and `"exact"`) |
| `io` | `mfa.npz` saving and loading |

```python
from dmfa_tf.baselines.mfa import MFA
model = MFA.fit(train_images, components=50, factors=6)   # [n, H, W, C] in [0, 1]
params = model({"image": image, "mask": mask})             # as a DMFA network's output
```
"""

from dmfa_tf.baselines.mfa.em import MIN_RESPONSIBILITY, WEIGHT_FLOOR
from dmfa_tf.baselines.mfa.init import KMEANS_ITERATIONS, RANDOM_FACTOR_SCALE
from dmfa_tf.baselines.mfa.io import FILENAME
from dmfa_tf.baselines.mfa.model import CONDITIONALS, INITS, MFA, NOISE_TYPES

__all__ = [
    "CONDITIONALS",
    "FILENAME",
    "INITS",
    "KMEANS_ITERATIONS",
    "MFA",
    "MIN_RESPONSIBILITY",
    "NOISE_TYPES",
    "RANDOM_FACTOR_SCALE",
    "WEIGHT_FLOOR",
]
