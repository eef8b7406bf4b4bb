"""DMFA on tables: the conditional density of a row's missing cells.

A row of `D` numeric cells is an event of shape `(1, D, 1)` for the same
network head and the same `MaskedFactorMixture` as images; cells are
standardised with the training rows' column means and standard deviations
(`tables.Standardizer`), and every output is given back in the table's units.

- `TabularModel`: a trained network with its columns and standardiser. Rows in
  the table's units with NaN for missing cells in; imputations (the mixture
  mean), per-cell standard deviations, samples (multiple imputations) and
  log-densities out. Saved as a model folder: `model.keras`, `table.json`,
  `config.json`, `metrics.json`.
- `train_and_evaluate(config)`: `python train.py --dataset=iris` (or
  `--dataset=csv --data-dir=FILE.csv`). Rows are split (seeded) into train,
  validation and test; cells missing in the data are absent (mask -1, neither
  input nor scored); training masks (`--mask=dropout:R`, default 20% MCAR) are
  drawn on top, new ones every step. The epoch with the lowest validation NLL
  is kept.
- `evaluate_table`: NLL of the held-out cells, RMSE and MAE in the table's
  units, interval coverage, against the column mean, scikit-learn's
  `KNNImputer` and `IterativeImputer`, and a full-covariance Gaussian
  (`dmfa_tf.baselines.tabular`).
"""

import json
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from dmfa_tf import masks as masks_lib
from dmfa_tf.data import tables
from dmfa_tf import reporting, training
from dmfa_tf.core.distribution import MaskedFactorMixture, flatten_images
from dmfa_tf.core.recalibration import marginal_cdf
from dmfa_tf.data.tables import Standardizer
from dmfa_tf.core.checks import MISSING, OBSERVED

__all__ = [
    "MIN_STEPS_PER_EPOCH", "TEST_REPEATS", "VALIDATION_REPEATS", "TabularModel", "evaluate_table",
    "mcar_rate", "row_masks", "score_predictions", "train_and_evaluate",
]

# Small tables: an epoch is at least this many steps (many passes over the rows,
# each with new masks), so that validation and backups do not dominate.
MIN_STEPS_PER_EPOCH = 100
# Each validation row is scored under this many masks (rows i, i + n, ...: mask
# seeds differ), and each test row under TEST_REPEATS: small splits, less noise.
VALIDATION_REPEATS = 10
TEST_REPEATS = 10
_BATCH = 1024


def mcar_rate(spec):
    """The missing-cell rate of a table mask spec `dropout:R`."""
    generator = masks_lib.parse(spec)
    if not isinstance(generator, masks_lib.PixelDropout):
        raise ValueError(
            f"Tables take MCAR masks `dropout:R` (each cell missing with probability R). "
            f"Received: mask={spec!r}"
        )
    return generator.rate


def row_masks(values, rate, seed, repeats=1):
    """`repeats` seeded MCAR masks for the rows `values` `[n, D]` (NaN cells
    absent): `[repeats * n, D]`, rows in the order of `np.tile(values)`; copy
    `r` is seeded `(seed, r)`."""
    return np.concatenate(
        [tables.mcar_mask(values, rate, (seed, r)) for r in range(repeats)], axis=0
    )


class TabularModel:
    """A DMFA network for rows of a table, in the table's units.

    Args:
        model: a `DMFAModel` on `(1, D, 1)` events of standardised cells.
        columns: the `D` column names.
        standardizer: a `tables.Standardizer` of `D` columns.
    """

    def __init__(self, model, columns, standardizer):
        shape = tuple(model.image_shape)
        if shape != (1, len(columns), 1):
            raise ValueError(
                f"A table model takes events (1, D, 1); this one takes {shape} for "
                f"{len(columns)} columns."
            )
        self.model = model
        self.columns = list(columns)
        self.standardizer = standardizer

    @property
    def num_columns(self):
        return len(self.columns)

    # === Saving ===

    def table_info(self):
        """The `table.json` content: columns and standardiser."""
        return {"columns": self.columns, **self.standardizer.to_dict()}

    @classmethod
    def load(cls, path):
        """Loads a model folder written by `train_and_evaluate` (or `save`)."""
        from dmfa_tf import saving

        info_path = os.path.join(path, "table.json")
        if not os.path.isfile(info_path):
            raise FileNotFoundError(
                f"{path!r} holds no table.json: it is not a table model (train one with "
                "`python train.py --dataset=csv --data-dir=FILE.csv`)."
            )
        with open(info_path) as f:
            info = json.load(f)
        return cls(saving.load(path), info["columns"], Standardizer.from_dict(info))

    def save(self, path, files=None):
        """Writes the model folder atomically (`training.write_outputs`)."""
        training.write_outputs(path, self.model, {"table.json": self.table_info(), **(files or {})})

    # === Inference ===

    def _rows(self, rows):
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim == 1:
            rows = rows[None]
        if rows.ndim != 2 or rows.shape[1] != self.num_columns:
            raise ValueError(
                f"Rows must be [n, {self.num_columns}] ({', '.join(self.columns)}). "
                f"Received shape {rows.shape}."
            )
        if np.isinf(rows).any():
            raise ValueError("Rows hold infinite values; use NaN for a missing cell.")
        return rows

    def _mask(self, rows, mask):
        if mask is None:
            return np.where(np.isnan(rows), 0.0, 1.0).astype(np.float32)
        mask = np.asarray(mask, dtype=np.float32)
        if mask.shape != rows.shape:
            raise ValueError(f"`mask` must have the rows' shape {rows.shape}. Received {mask.shape}.")
        if not np.isin(mask, (1.0, 0.0, -1.0)).all():
            raise ValueError("`mask` must hold only 1 (observed), 0 (missing) and -1 (absent).")
        if np.isnan(rows[mask == OBSERVED]).any():
            raise ValueError("Cells marked observed (mask 1) are NaN.")
        return mask

    def parameters(self, rows, mask=None):
        """The network's mixture parameters (standardised units) for `rows`:
        dict of numpy arrays; and the standardised rows and the mask used."""
        rows = self._rows(rows)
        mask = self._mask(rows, mask)
        std = self.standardizer.transform(rows)
        # What the network sees: observed cells only (absent / missing zeroed).
        visible = np.where(mask == OBSERVED, std, 0.0).astype(np.float32)
        outputs = []
        for start in range(0, len(rows), _BATCH):
            stop = start + _BATCH
            params = self.model(
                {"image": visible[start:stop, None, :, None],
                 "mask": mask[start:stop, None, :, None]},
                training=False,
            )
            outputs.append({k: np.asarray(v, np.float64) for k, v in params.items()})
        params = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]} if outputs else {}
        return params, std, mask

    def predict(self, rows, mask=None):
        """Imputation and uncertainty of the missing cells.

        Args:
            rows: `[n, D]` in the table's units; NaN cells are missing.
            mask: optional `[n, D]` 1 observed / 0 missing / -1 absent (NaN
                cells default to missing, others to observed).

        Returns:
            dict: `imputation` `[n, D]` (the mixture mean at missing cells,
            the rows' values at observed ones), `sd` (per-cell predictive
            standard deviation, 0 at observed cells), `weights` `[n, K]`.
        """
        params, std, mask = self.parameters(rows, mask)
        mean, sd, weights = _mixture_moments(params)
        known = mask == OBSERVED
        imputation = np.where(known, std, mean)
        return {
            "imputation": self.standardizer.inverse(imputation),
            "sd": np.where(known, 0.0, sd * self.standardizer.scale),
            "weights": weights,
        }

    def impute(self, rows):
        """`rows` with each NaN cell replaced by its conditional mean."""
        return self.predict(rows)["imputation"]

    def sample(self, rows, num_samples, seed=(0, 0), mask=None):
        """`[num_samples, n, D]` draws of the missing cells given the observed
        ones (multiple imputations); observed cells keep their values."""
        params, std, mask = self.parameters(rows, mask)
        dist = _distribution(params, std, mask)
        draws = dist.sample(int(num_samples), seed=tf.constant(seed, tf.int32))
        return self.standardizer.inverse(np.asarray(draws, np.float64))

    def log_prob(self, rows, mask):
        """`[n]` log-density (nats, the table's units) of the cells with mask 0
        given those with mask 1; `rows` must hold the missing cells' values."""
        rows = self._rows(rows)
        mask = self._mask(rows, mask)
        if np.isnan(rows[mask == MISSING]).any():
            raise ValueError("log_prob needs values at the scored cells (mask 0); some are NaN.")
        params, std, mask = self.parameters(rows, mask)
        return _log_prob(params, std, mask) - (mask == MISSING) @ np.log(self.standardizer.scale)


def _mixture_moments(params):
    """Per-cell mixture mean and standard deviation `[n, D]` and weights."""
    logits = params["logits"]
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    loc = params["loc"]
    var = params["diag"] + np.square(params["factors"]).sum(axis=-1)
    mean = np.einsum("nk,nkd->nd", weights, loc)
    second = np.einsum("nk,nkd->nd", weights, var + np.square(loc))
    return mean, np.sqrt(np.maximum(second - np.square(mean), 0.0)), weights


def _distribution(params, std, mask):
    values = np.where(np.isfinite(std), std, 0.0)
    return MaskedFactorMixture.from_images(
        {k: tf.constant(v, tf.float64) for k, v in params.items()},
        tf.constant(mask[:, None, :, None], tf.float64),
        tf.constant(values[:, None, :, None], tf.float64),
    )


def _log_prob(params, std, mask):
    values = np.where(np.isfinite(std), std, 0.0)
    dist = _distribution(params, std, mask)
    return np.asarray(dist.log_prob(flatten_images(tf.constant(values[:, None, :, None]))))


# === Scoring ===


class _DMFAPredictor:
    """`TabularModel` on standardised rows, for `score_predictions`."""

    name = "DMFA"

    def __init__(self, model):
        self.model = model

    def predict(self, std, mask):
        params = self.model.parameters(self.model.standardizer.inverse(std), mask)[0]
        mean, _, _ = _mixture_moments(params)
        values = np.where(np.isfinite(std), std, 0.0)
        dist = _distribution(params, std, mask)
        return {
            "mean": mean,
            "log_prob": _log_prob(params, std, mask),
            "cdf": np.asarray(marginal_cdf(dist, tf.constant(values))),
        }


def score_predictions(prediction, std, mask, scale):
    """Metrics of one method's predictions of the cells with mask 0.

    Args:
        prediction: dict with `mean` `[n, D]` (standardised units) and
            optionally `log_prob` `[n]` (standardised units) and `cdf` `[n, D]`
            (each cell's true value under its predictive marginal CDF).
        std: `[n, D]` true standardised values; mask: `[n, D]`;
        scale: `[D]` the standardiser's scale (back to the table's units).

    Returns:
        dict: `rmse`, `mae` (table units, pooled over the scored cells),
        `rmse_std` (standardised), `nll_per_cell` (nats per scored cell,
        standardised units), `coverage_50`, `coverage_90`, `cells`.
    """
    scored = mask == MISSING
    cells = int(scored.sum())
    error = (prediction["mean"] - std) * scale
    result = {
        "cells": cells,
        "rmse": float(np.sqrt(np.mean(np.square(error[scored])))),
        "mae": float(np.mean(np.abs(error[scored]))),
        "rmse_std": float(np.sqrt(np.mean(np.square((prediction["mean"] - std)[scored])))),
        "nll_per_cell": None,
        "coverage_50": None,
        "coverage_90": None,
    }
    if prediction.get("log_prob") is not None:
        result["nll_per_cell"] = float(-np.sum(prediction["log_prob"]) / cells)
    if prediction.get("cdf") is not None:
        distance = np.abs(prediction["cdf"][scored] - 0.5)
        result["coverage_50"] = float(np.mean(distance <= 0.25))
        result["coverage_90"] = float(np.mean(distance <= 0.45))
    return result


def evaluate_table(model, table, train_rows, test_rows, rate, seed, compare=(),
                   repeats=TEST_REPEATS, regularization=None):
    """Scores `model` (a `TabularModel`, or None) and the baselines `compare`
    on `repeats` seeded MCAR masks of the test rows.

    Baselines are fitted to `table.values[train_rows]` (standardised by the
    model's standardiser, or one fitted to those rows without a model).

    Returns:
        `{method: score_predictions(...) + {"seconds"}}`.
    """
    from dmfa_tf.baselines import tabular as tabular_baselines

    standardizer = model.standardizer if model is not None else Standardizer.fit(
        table.values[train_rows])
    train_std = standardizer.transform(table.values[train_rows])
    test_values = table.values[test_rows]
    mask = row_masks(test_values, rate, seed, repeats)
    std = standardizer.transform(np.tile(test_values, (repeats, 1)))
    scored = (mask == MISSING).any(axis=1)
    std, mask = std[scored], mask[scored]
    if not len(std):
        raise ValueError("The test masks leave no cell missing: nothing to score.")
    if regularization is None:
        regularization = model.model.head.variance_floor if model is not None else 1e-3
    methods = ([_DMFAPredictor(model)] if model is not None else []) + [
        tabular_baselines.make(name, train_std, seed=seed, regularization=regularization)
        for name in compare
    ]
    results = {}
    for method in methods:
        started = time.time()
        prediction = method.predict(std, mask)
        results[method.name] = {
            **score_predictions(prediction, std, mask, standardizer.scale),
            "seconds": round(time.time() - started, 3),
        }
    return results


def format_table_results(results, title=None):
    """A markdown table of `evaluate_table` results."""
    def cell(value, digits):
        return "–" if value is None else f"{value:.{digits}f}"

    lines = ([f"{title}", ""] if title else []) + [
        "| method | NLL / cell | RMSE | MAE | RMSE (sd units) | 50% cov. | 90% cov. |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {cell(r['nll_per_cell'], 3)} | {r['rmse']:.4g} | {r['mae']:.4g} | "
            f"{r['rmse_std']:.3f} | {cell(r['coverage_50'], 3)} | {cell(r['coverage_90'], 3)} |"
        )
    return "\n".join(lines)


# === Training ===


def split_for(config, table):
    """The config's seeded `(train, val, test)` row indices of `table`."""
    return tables.split_rows(
        len(table), config.seed, val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
    )


def train_and_evaluate(config, verbose=1, command=None, callbacks=()):
    """Trains a DMFA model on a table, scores it and saves it (module docstring).

    Args:
        config: a `TrainConfig` whose dataset is one of `tables.TABULAR_DATASETS`.
        verbose, command, callbacks: as `training.train_and_evaluate`.

    Returns:
        The metrics dict also written to `<output>/metrics.json`.
    """
    started = time.time()
    config = config.resolved()
    if config.dataset not in tables.TABULAR_DATASETS:
        raise ValueError(
            f"{config.dataset!r} is not a table; train images with training.train_and_evaluate."
        )
    training.check_output_paths(config.output, config.workdir)
    keras.utils.set_random_seed(config.seed)
    table = tables.load_table(config.dataset, config.data_dir)
    train_rows, val_rows, test_rows = split_for(config, table)
    if not len(val_rows) and config.select != "last":
        raise ValueError("With no validation rows (--val-fraction=0), use --select=last.")
    # --max-train-images / --max-test-images cap the rows, as they cap images.
    train_rows = train_rows[: config.max_train_images]
    test_rows = test_rows[: config.max_test_images]
    standardizer = Standardizer.fit(table.values[train_rows])
    std = standardizer.transform(table.values).astype(np.float32)
    generator = masks_lib.parse(config.mask)
    rate = mcar_rate(config.mask)
    training.check_resume(config)
    width = table.values.shape[1]
    model = training.build_from_config(
        config, (1, width, 1), bounded_inputs=False, dropout=config.dropout
    )
    model.objective = config.objective
    training.check_free_space(config, model.count_params())
    steps = max(MIN_STEPS_PER_EPOCH, len(train_rows) // config.batch_size)
    training.compile_model(model, config, steps)
    if verbose:
        print(
            f"Training {model.name} ({model.count_params():,} weights, K={config.components}, "
            f"L={config.factors}, variance floor {model.head.variance_floor:g}) on "
            f"{len(train_rows):,} rows of {config.dataset} ({width} columns, "
            f"{100 * table.missing_share:.1f}% of all cells missing in the data), masks "
            f"{generator.spec()}; {len(val_rows)} validation and {len(test_rows)} test rows; "
            f"{config.epochs} epochs of {steps} steps, batch {config.batch_size}, on "
            f"{reporting.hardware_description()}."
        )

    def events(rows):  # [n, 1, D, 1] standardised, NaN where missing in the data
        return std[rows][:, None, :, None]

    run_callbacks, selector = training.training_callbacks(config, verbose)
    validation = None
    if len(val_rows):
        validation = training.evaluation_data(
            np.tile(events(val_rows), (VALIDATION_REPEATS, 1, 1, 1)), generator,
            _BATCH, config.eval_seed, nonfinite="absent", bounded=False,
        )
    train_started = time.time()
    model.fit(
        training.training_data(
            events(train_rows), generator, config.batch_size, config.seed,
            nonfinite="absent", bounded=False,
        ),
        epochs=config.epochs,
        steps_per_epoch=steps,
        validation_data=validation,
        callbacks=run_callbacks + list(callbacks),
        shuffle=False,
        verbose=verbose,
    )
    train_seconds = time.time() - train_started
    training.check_not_stopped(model, config)
    selection = training.select_epoch(
        model, selector, config,
        f"the validation rows ({len(val_rows)} rows x {VALIDATION_REPEATS} masks "
        f"{generator.spec()}, seed {config.eval_seed})",
    )
    tabular = TabularModel(training.inference_copy(model), table.columns, standardizer)
    scores = None
    if len(test_rows):
        if verbose:
            print(f"Scoring {len(test_rows)} test rows x {TEST_REPEATS} masks {generator.spec()}")
        scores = evaluate_table(
            tabular, table, np.concatenate([train_rows, val_rows]), test_rows, rate,
            config.eval_seed, compare=("mean", "gaussian"),
        )
    metrics = {
        "dataset": config.dataset,
        "columns": table.columns,
        "rows": {"train": len(train_rows), "val": len(val_rows), "test": len(test_rows)},
        "missing_in_data": table.missing_share,
        "test_mask": generator.spec(),
        "test_repeats": TEST_REPEATS,
        "eval_seed": config.eval_seed,
        "model": training.model_record(config, model),
        "selection": selection,
        "scores": scores,
        "train_seconds": round(train_seconds, 1),
        **reporting.run_record(started, command),
    }
    tabular.save(config.output, {"config.json": config.to_json(), "metrics.json": metrics})
    if verbose:
        print(format_table_results(scores, f"Test rows of {config.dataset}:") if scores else
              "No test rows (test_fraction 0).")
        print(f"Saved to {config.output}")
    if config.export:
        from dmfa_tf.serving import tabular as tabular_serving

        path = tabular_serving.export_rows(tabular, os.path.join(config.export, config.name))
        if verbose:
            print(f"Exported the SavedModel (TF Serving, rows) to {path}")
    shutil.rmtree(os.path.join(config.workdir, "backup"), ignore_errors=True)
    return metrics
