"""TF Serving SavedModels for table models: rows in, NaN = missing.

`export_rows(model, "serving/iris")` writes `serving/iris/<version>/` (the next
free version; never over an existing one), whose signatures take rows in the
table's units, float32 `[B, D]`, the columns in `table.json`'s order. A NaN
cell is missing; every other cell is observed. The standardisation is inside
the graph.

| signature | inputs | outputs |
|---|---|---|
| `serving_default` | `rows` | `imputation` `[B, D]` (observed cells kept, missing ones the mixture mean), `sd` `[B, D]` (predictive standard deviation, 0 where observed), `mixture_weights` `[B, K]` |
| `log_prob` | `rows`, `mask` `[B, D]` (1 observed, 0 scored, -1 absent) | `log_prob` `[B]`: nats, table units, of the cells with mask 0 given those with mask 1 |
| `sample` | `rows`, `num_samples` int32 `[]`, `seed` int32 `[2]` | `samples` `[S, B, D]`: multiple imputations, observed cells kept |

From TF Serving's REST API, NaN is written as the bare JSON token `NaN` (as
Python's `json.dumps` writes it): `{"instances": [[5.1, NaN, 1.4, 0.2]]}`.
Infinite cells, a mask with other codes than 1 / 0 / -1, NaN at a cell marked
observed or scored, or rows of another width stop a call with an
`InvalidArgumentError` naming the problem.
"""

import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from dmfa_tf import files as files_lib
from dmfa_tf.core.checks import MISSING, OBSERVED, valid_codes
from dmfa_tf.core.distribution import MaskedFactorMixture, checked_sample_count, flatten_images
from dmfa_tf.models import float32_copy
from dmfa_tf.serving.saved_model import _check_version, _publish
from dmfa_tf.serving.signatures import _module, _parameters

__all__ = ["ROW_SIGNATURES", "export_rows"]

ROW_SIGNATURES = ("serving_default", "log_prob", "sample")


def _row_functions(model, mean, scale):
    width = len(mean)
    mean = tf.constant(mean, tf.float32)
    scale = tf.constant(scale, tf.float32)
    log_scale = tf.math.log(scale)
    rows_spec = tf.TensorSpec([None, width], tf.float32, name="rows")
    mask_spec = tf.TensorSpec([None, width], tf.float32, name="mask")

    def mixture(rows, mask):
        checks = [
            tf.debugging.Assert(
                tf.logical_not(tf.reduce_any(tf.math.is_inf(rows))),
                ["dmfa_tf: `rows` hold infinite values; use NaN for a missing cell."],
            ),
            tf.debugging.Assert(
                tf.reduce_all(valid_codes(mask)),
                ["dmfa_tf: `mask` must hold only 1 (observed), 0 (scored) and -1 (absent)."],
            ),
        ]
        with tf.control_dependencies(checks):
            std = (rows - mean) / scale
        visible = tf.where(mask == OBSERVED, std, tf.zeros_like(std))[:, None, :, None]
        mask4 = mask[:, None, :, None]
        params = _parameters(model, visible, mask4)
        return params, MaskedFactorMixture.from_images(params, mask4, visible), std

    def nan_mask(rows):
        return tf.where(tf.math.is_nan(rows), tf.zeros_like(rows), tf.ones_like(rows))

    @tf.function(input_signature=[rows_spec])
    def serving_default(rows):
        mask = nan_mask(rows)
        params, dist, _ = mixture(rows, mask)
        known = mask == OBSERVED
        return {
            "imputation": tf.where(known, rows, dist.mean() * scale + mean),
            "sd": tf.sqrt(dist.variance()) * scale,
            "mixture_weights": tf.math.softmax(params["logits"], axis=-1),
        }

    @tf.function(input_signature=[rows_spec, mask_spec])
    def log_prob(rows, mask):
        tf.debugging.assert_equal(
            tf.shape(rows), tf.shape(mask), message="dmfa_tf: `rows` and `mask` differ in shape."
        )
        with tf.control_dependencies([tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(tf.math.is_nan(rows) & (mask >= 0.0))),
            ["dmfa_tf: NaN at cells marked observed (1) or scored (0); mark them -1 (absent)."],
        )]):
            _, dist, std = mixture(rows, mask)
        values = tf.where(mask >= 0.0, std, tf.zeros_like(std))
        jacobian = tf.reduce_sum(tf.where(mask == MISSING, log_scale, 0.0), axis=-1)
        return {"log_prob": dist.log_prob(flatten_images(values[:, None, :, None])) - jacobian}

    @tf.function(input_signature=[
        rows_spec, tf.TensorSpec([], tf.int32, name="num_samples"),
        tf.TensorSpec([2], tf.int32, name="seed"),
    ])
    def sample(rows, num_samples, seed):
        num_samples = checked_sample_count(num_samples, tf.size(rows, out_type=tf.int32))
        _, dist, _ = mixture(rows, nan_mask(rows))
        draws = dist.sample(num_samples, seed=seed) * scale + mean  # [S, B, D]
        return {"samples": tf.where(tf.math.is_nan(rows), draws, rows)}

    return {"serving_default": serving_default, "log_prob": log_prob, "sample": sample}


def export_rows(model, path, version=None):
    """Exports a `tabular.TabularModel` for TF Serving into `<path>/<version>/`
    (module docstring). Returns the version folder."""
    network = float32_copy(model.model)
    if version is not None:
        version = _check_version(version)
        _publish(None, path, version)  # fails now if it exists
    os.makedirs(path, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".partial-", dir=path)
    os.chmod(staging, 0o777 & ~files_lib.umask())
    try:
        functions = _row_functions(
            network, np.asarray(model.standardizer.mean, np.float32),
            np.asarray(model.standardizer.scale, np.float32),
        )
        signatures = {name: fn.get_concrete_function() for name, fn in functions.items()}
        tf.saved_model.save(_module(network, functions), staging, signatures=signatures)
        info = {
            "model": "TabularModel",
            "columns": model.columns,
            "components": network.num_components,
            "factors": network.num_factors,
            "signatures": list(ROW_SIGNATURES),
            "tensorflow": tf.__version__,
        }
        return _publish(staging, path, version, info)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
