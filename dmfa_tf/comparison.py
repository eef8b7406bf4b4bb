"""The driver behind `evaluate.py`: scores saved models and baselines on one
split with the same seeded masks and writes the reports.

- `evaluate_images(models, ...)`: DMFA and MFA folders and image baselines;
  per-image CSVs, `summary.json`, `comparison.md`, an optional mosaic; or,
  with `fit_recalibration=True`, the validation PIT map of a DMFA folder,
  written into it as `recalibration.json`; or, with `fit_scale_prior=True`,
  its scale prior, written into its `model.keras`.
- `evaluate_table_model(folder, ...)`: a table model (`dmfa_tf.tabular`)
  beside the table baselines.
"""

import json
import os
import platform
import re
import sys

import numpy as np

from dmfa_tf import data as datasets
from dmfa_tf import evaluation, files, masks, saving, tabular, visualization
from dmfa_tf.baselines import tabular as tabular_baselines
from dmfa_tf.config import TrainConfig
from dmfa_tf.core import recalibration
from dmfa_tf.data import tables
from dmfa_tf.reporting import hardware_description

__all__ = ["evaluate_images", "evaluate_table_model", "is_table_model"]


def _slug(text):
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")


def is_table_model(path):
    """Whether `path` is a table model folder (it holds `table.json`)."""
    return bool(path) and os.path.isfile(os.path.join(path, "table.json"))


def evaluate_images(models, dataset=None, data_dir=None, image_size=None, crop=None, mask=None,
                    split="test", seed=0, batch_size=256, limit=None, dequantize="auto",
                    output=None, mosaic=None, mosaic_images=6, mosaic_baseline=None, verbose=1,
                    command=None, fit_recalibration=False, fit_scale_prior=False):
    """Scores image models and baselines on one split with the same seeded masks.

    Args:
        models: model specs (`evaluation.parse_model_spec`): saved folders,
            `folder:exact` for MFA folders, baseline names (`diagonal`,
            `gaussian[:R]`, `knn[:N]`). The first is the main one.
        dataset, data_dir, image_size, crop: the data (default: the first
            saved model's `config.json`).
        mask: a mask spec (default: the model's test mask).
        split: `"test"` or `"val"`.
        seed: image `i` gets the mask seeded `(seed, i)`.
        batch_size, limit: images per batch; score only the first `limit`.
        dequantize: `"auto"` (calibration at the dequantized values of 8-bit
            data) or `"off"`.
        output: results folder (default `results/<model>-<dataset>-<mask>-seed<seed>`):
            per-image CSVs, `summary.json`, `comparison.md` with several models.
        mosaic, mosaic_images, mosaic_baseline: also draw the paper's Figure 2
            layout into this PNG.
        verbose: 0 prints only the table; 1 progress too.
        command: the command line recorded in `summary.json`.
        fit_recalibration: instead of scoring, fit the first model's interval
            recalibration on this split (give `split="val"`) and write it into
            its folder as `recalibration.json`.
        fit_scale_prior: instead of scoring, fit the first model's scale
            prior on this split (give `split="val"`), write it into its
            `model.keras` and refit its interval recalibrations.

    Returns:
        The summary dict written to `summary.json` (with `fit_recalibration`:
        the raw calibration and the fitted map).
    """
    if not models:
        raise ValueError("No model to score: give at least one model spec.")
    specs = [evaluation.parse_model_spec(t) for t in models]
    mosaic_spec = evaluation.parse_model_spec(mosaic_baseline) if mosaic_baseline else None
    for spec in specs + ([mosaic_spec] if mosaic_spec else []):
        spec.check()  # a bad name fails before anything is loaded
    # Training images are read only for the baselines fitted to them.
    needs_train = any(s.is_baseline for s in specs + ([mosaic_spec] if mosaic_spec else []))
    config = next(
        (c for c in (saving.load_config(s.path) for s in specs if not s.is_baseline) if c), {}
    )
    dataset = dataset or config.get("dataset")
    if not dataset:
        raise ValueError("No --dataset given and the model has no config.json naming one.")
    data_dir = data_dir or (config.get("data_dir") if config.get("dataset") == dataset else None)
    image_size = image_size or (config.get("image_size") if config.get("dataset") == dataset else None)
    crop = crop or config.get("crop") or "paper"
    mask_spec = mask or config.get("test_mask") or config.get("mask")
    if not mask_spec:
        raise ValueError("No --hole or --mask given and the model's config.json names no test mask.")
    generator = masks.parse(mask_spec)

    splits = (split,) + (("train",) if needs_train else ())
    # The scored split streams from its source (a memory-mapped cache, photo
    # files or a small array); training images are loaded only for baselines.
    data = datasets.load_sources(
        dataset, data_dir, image_size=image_size, crop=crop, verbose=verbose, splits=splits
    )
    images = data.test if split == "test" else data.val
    labels = data.test_labels if split == "test" else data.val_labels
    images = images.take(limit)
    labels = None if labels is None else labels[: limit]
    generator(images.shape[1], images.shape[2], seed=[0, 0])  # a hole that does not fit fails here
    train_arrays = {}

    def train_images():  # float32 arrays, read once, only if a baseline needs them
        if "train" not in train_arrays:
            train_arrays["train"] = data.train.to_float_array(verbose) if data.train else None
        return train_arrays["train"]

    output = output or os.path.join(
        "results",
        f"{_slug(specs[0].label)}-{dataset}-{_slug(generator.spec())}-seed{seed}",
    )
    if fit_scale_prior:
        return _fit_scale_prior(
            specs[0], images, generator, dataset, split, seed, batch_size, dequantize, verbose
        )
    if fit_recalibration:
        return _fit_recalibration_map(
            specs[0], images, generator, dataset, split, seed, batch_size, dequantize, verbose
        )
    rows, summary, loaded = [], {}, {}
    for spec in specs:
        if spec.is_baseline and spec.path == "diagonal":
            fit_on = data.train  # fitted batch by batch from the source
        else:
            fit_on = train_images() if spec.is_baseline else None
        model = spec.load(train_images=fit_on, dataset=dataset)
        loaded[spec.label] = model
        if verbose:
            print(f"Scoring {spec.label} on {len(images):,} {dataset} {split} images, "
                  f"masks {generator.spec()} (seed {seed})")
        # Each model's masks are made in its pipeline, image i's seeded
        # (seed, i): every model is scored on the same masks.
        fitted = None if spec.is_baseline else recalibration.load(spec.path, generator.spec())
        scores, seconds = evaluation.timed_score(
            model, images, generator, seed, batch_size, verbose,
            dequantize="auto" if dequantize == "auto" else 0.0, recalibration=fitted,
        )
        name = "per_image.csv" if len(specs) == 1 else f"per_image_{_slug(spec.label)}.csv"
        evaluation.write_csv(os.path.join(output, name), scores, labels)
        metrics = {key: evaluation.summarize(scores[key]) for key in evaluation.METRICS}
        metrics["calibration"] = evaluation.calibration(scores)
        if fitted is not None and metrics["calibration"] and "recalibrated" in metrics["calibration"]:
            metrics["calibration"]["recalibrated"]["map_mask"] = fitted.fitted_on.get("mask")
            fitted_step = fitted.fitted_on.get("dequantization_step")
            step = metrics["calibration"].get("dequantization_step")
            if fitted_step is not None and step is not None and abs(fitted_step - step) > 1e-12:
                print(f"evaluate.py: warning: {spec.label}'s recalibration map was fitted at "
                      f"dequantization step {fitted_step:.6g}, and these values are measured at "
                      f"{step:.6g} (--dequantize): its recalibrated coverage does not apply.",
                      file=sys.stderr)
        rows.append((spec.label, metrics))
        summary[spec.label] = {
            "model": spec.path,
            "conditional": spec.conditional,
            "per_image_csv": name,
            "seconds": round(seconds, 2),
            "images_per_second": round(len(images) / seconds, 1),
            **metrics,
        }
        if fitted is not None:
            summary[spec.label]["recalibration"] = fitted.fitted_on

    table = evaluation.comparison_table(rows)
    result = {
        "dataset": dataset,
        "split": split,
        "images": int(len(images)),
        "mask": generator.spec(),
        "seed": seed,
        "models": summary,
        "hardware": hardware_description(),
        "python": platform.python_version(),
        "command": command or " ".join(["python", "evaluate.py"] + sys.argv[1:]),
    }
    evaluation.write_json(os.path.join(output, "summary.json"), result)
    if len(specs) > 1:
        header = (
            f"{len(images):,} {dataset} {split} images, masks {generator.spec()} "
            f"(seed {seed}); per image, summed over the missing pixels; calibration "
            "pooled over all missing pixels\n\n"
        )
        evaluation.write_text(os.path.join(output, "comparison.md"), header + table + "\n")

    if mosaic:
        count = min(mosaic_images, len(images))
        first = images.take(count).to_float_array()
        baseline_label = None
        if mosaic_spec:
            key = (mosaic_spec.path, mosaic_spec.conditional, mosaic_spec.option)
            scored = [s for s in specs if (s.path, s.conditional, s.option) == key]
            if scored:  # already loaded (and fitted) for scoring
                baseline = loaded[scored[0].label]
            else:
                baseline = mosaic_spec.load(train_images=train_images(), dataset=dataset)
            baseline_label = mosaic_spec.label
        elif len(specs) > 1:
            baseline_label = specs[1].label
            baseline = loaded[baseline_label]
        else:
            baseline = None
        visualization.mosaic(
            mosaic,
            loaded[specs[0].label],
            first,
            evaluation.seeded_masks(first, generator, seed),
            baseline=baseline,
            baseline_label=baseline_label or "baseline",
        )

    print()
    print(f"{len(images):,} {dataset} {split} images, masks {generator.spec()} (seed {seed}); "
          "per image, summed over the missing pixels, lower is better for NLL and MSE; "
          "calibration pooled over all missing pixels")
    print(table)
    for label, info in summary.items():
        print(f"  {label}: {info['seconds']:.1f} s, {info['images_per_second']:.0f} images/s")
    print(f"Wrote {output}/ (summary.json, per-image CSV{', comparison.md' if len(specs) > 1 else ''})"
          + (f" and {mosaic}" if mosaic else ""))
    return result


def _dmfa_folder(spec, flag):
    if spec.is_baseline or not os.path.isfile(os.path.join(spec.path, "model.keras")):
        raise ValueError(
            f"{flag} needs a DMFA model folder (with model.keras) to write "
            f"into; {spec.path!r} is not one."
        )


def _recalibration_map(model, label, images, generator, dataset, split, seed, batch_size, dequantize,
                       verbose):
    """The interval recalibration of `model` fitted on `images` (PIT histogram
    at the values `dequantize` says), and the raw calibration."""
    if verbose:
        print(f"Fitting the interval recalibration of {label} on {len(images):,} {dataset} "
              f"{split} images, masks {generator.spec()} (seed {seed})")
    scores, seconds = evaluation.timed_score(
        model, images, generator, seed, batch_size, verbose,
        dequantize="auto" if dequantize == "auto" else 0.0,
        pit_histogram_bins=recalibration.BINS,
    )
    before = evaluation.calibration(scores)
    fitted = recalibration.Recalibration.from_counts(scores["pit_histogram"], {
        "dataset": dataset, "split": split, "images": int(len(images)),
        "mask": generator.spec(), "seed": seed,
        "dequantization_step": before["dequantization_step"],
    })
    print(f"{label} on {fitted.fitted_on['pixels']:,} missing pixels of {len(images):,} "
          f"{dataset} {split} images, masks {generator.spec()}: raw coverage "
          f"{100 * before['coverage_50']:.1f}% (50%), {100 * before['coverage_90']:.1f}% (90%); "
          f"{fitted.groups} group(s) of pixels by predictive sd (bounds "
          f"{', '.join(f'{b:.3g}' for b in fitted.sd_bounds) or 'none'}), each with its own map "
          f"({seconds:.1f} s)")
    return fitted, before


def _fit_recalibration_map(spec, images, generator, dataset, split, seed, batch_size, dequantize, verbose):
    """`--fit-recalibration`: the PIT histogram of the split's missing pixels
    (at the values `--dequantize` says) becomes the model folder's
    `recalibration.json` (`dmfa_tf.core.recalibration`)."""
    _dmfa_folder(spec, "--fit-recalibration")
    model = spec.load(dataset=dataset)
    fitted, before = _recalibration_map(
        model, spec.label, images, generator, dataset, split, seed, batch_size, dequantize, verbose
    )
    path = os.path.join(spec.path, recalibration.FILE)
    maps = recalibration.with_map(spec.path, fitted)
    evaluation.write_json(path, recalibration.file_content(maps))
    print(f"Wrote {path} (maps for masks {', '.join(m.fitted_on.get('mask', '?') for m in maps)})")
    return {"calibration": before, "recalibration": fitted.to_dict()}


def _fit_scale_prior(spec, images, generator, dataset, split, seed, batch_size, dequantize, verbose):
    """`--fit-scale-prior`: the scale prior (`dmfa_tf.core.scales`) fitted on
    the split goes into the folder's `model.keras`, its record into
    `metrics.json`; the folder's interval recalibrations, which depend on the
    density, are fitted again on the same split, each for its own mask and
    seed. Every file is written only once all are computed, each atomically."""
    _dmfa_folder(spec, "--fit-scale-prior")
    model = spec.load(dataset=dataset)
    if verbose:
        print(f"Fitting the scale prior of {spec.label} on {len(images):,} {dataset} {split} "
              f"images, masks {generator.spec()} (seed {seed})")
    fitted_model, record = evaluation.fit_scale_prior(model, images, generator, seed, batch_size, verbose)
    print(f"{spec.label}: scale prior of {len(record['scales'])} scales "
          f"({record['scales'][0]:.3g} to {record['scales'][-1]:.3g}); {split} NLL "
          f"{record['nll']:.2f} (at scale 1 alone {record['nll_without']:.2f}; {record['seconds']:.1f} s)")
    maps = []
    for old in recalibration.load_all(spec.path):
        mask = old.fitted_on.get("mask") or generator.spec()
        refit_seed = int(old.fitted_on.get("seed", seed))
        maps.append(_recalibration_map(
            fitted_model, spec.label, images, masks.parse(mask), dataset, split, refit_seed,
            batch_size, dequantize, verbose,
        )[0])
    metrics_path = os.path.join(spec.path, "metrics.json")
    metrics = None
    if os.path.isfile(metrics_path):
        with open(metrics_path) as f:
            metrics = json.load(f)
        metrics["scale_prior"] = {**record, "split": split, "fitted_by": "evaluate.py --fit-scale-prior"}
    with files.atomic_path(os.path.join(spec.path, "model.keras")) as partial:
        try:  # Keras wants the .keras suffix
            fitted_model.save(partial + ".keras")
            os.replace(partial + ".keras", partial)
        finally:
            if os.path.exists(partial + ".keras"):
                os.remove(partial + ".keras")
    if maps:
        evaluation.write_json(os.path.join(spec.path, recalibration.FILE), recalibration.file_content(maps))
    if metrics is not None:
        evaluation.write_json(metrics_path, metrics)
    print(f"Wrote {os.path.join(spec.path, 'model.keras')}"
          + (f", {recalibration.FILE} (refitted for masks {', '.join(m.fitted_on['mask'] for m in maps)})"
             if maps else "")
          + (", metrics.json" if metrics is not None else ""))
    return {"scale_prior": record, "recalibrations": [m.to_dict() for m in maps]}


def evaluate_table_model(folder, compare=(), dataset=None, data_dir=None, mask=None,
                         split="test", seed=0, limit=None, output=None):
    """A table model (`dmfa_tf.tabular`): NLL per held-out cell, RMSE and MAE in
    the table's units, interval coverage; `--compare` baselines from
    `dmfa_tf.baselines.tabular` (mean, knn, iterative, gaussian)."""
    for name in compare:
        if name not in tabular_baselines.TABLE_BASELINES:
            raise ValueError(
                f"--compare {name}: a table model compares with "
                f"{sorted(tabular_baselines.TABLE_BASELINES)}."
            )
    model = tabular.TabularModel.load(folder)
    with open(os.path.join(folder, "config.json")) as f:
        config = TrainConfig.from_json(f.read())
    dataset = dataset or config.dataset
    table = tables.load_table(dataset, data_dir or config.data_dir)
    if table.columns != model.columns:
        raise ValueError(
            f"The data's columns {table.columns} are not the model's {model.columns}."
        )
    train, val, test = tabular.split_for(config, table)
    rows = test if split == "test" else val
    fitted = np.concatenate([train, val]) if split == "test" else train
    rows = rows[: limit]
    if not len(rows):
        raise ValueError(f"The {split} split of this model's data has no rows.")
    mask_spec = mask or config.test_mask
    rate = tabular.mcar_rate(mask_spec)
    results = tabular.evaluate_table(model, table, fitted, rows, rate, seed, compare=compare)
    title = (f"{len(rows)} {dataset} {split} rows x {tabular.TEST_REPEATS} masks {mask_spec} "
             f"(seed {seed}); NLL in nats per missing cell (standardised units), RMSE and "
             "MAE in the table's units")
    text = tabular.format_table_results(results)
    output = output or os.path.join(
        "results", _slug(f"{os.path.basename(os.path.normpath(folder))}-{dataset}-"
                         f"{mask_spec}-seed{seed}"))
    os.makedirs(output, exist_ok=True)
    evaluation.write_json(os.path.join(output, "summary.json"), {
        "dataset": dataset, "split": split, "rows": len(rows), "mask": mask_spec,
        "repeats": tabular.TEST_REPEATS, "seed": seed, "results": results,
    })
    evaluation.write_text(os.path.join(output, "comparison.md"), f"{title}\n\n{text}\n")
    print(title)
    print(text)
    print(f"Wrote {output}/ (summary.json, comparison.md)")
    return results
