"""Score saved models with the paper's metrics on seeded test masks.

    python evaluate.py --model=saved_models/mnist --dataset=mnist --hole=10x15
    python evaluate.py --model=saved_models/mnist --compare saved_models/mnist_mfa \
        saved_models/mnist_mfa:exact diagonal gaussian knn --mosaic=mnist.png

Per image: NLL (nats, summed over the missing pixels), the paper's MSE (sum of
squared errors of the most probable imputation), PSNR and SSIM of the inpainted
image, and the squared Mahalanobis distance of the missing block; per split,
the calibration of the per-pixel marginals (50% / 90% interval coverage, PIT
deciles) and the share of Mahalanobis distances in the chi-squared tails,
measured at dequantized values for 8-bit data (--dequantize).
Image i of the split gets the mask seeded (seed, i), the same for every model,
so comparisons are paired. Writes a per-image CSV per model, a JSON summary
and, with several models, a markdown table. The README lists the flags.
"""

import argparse
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Score DMFA and baseline models on a test split with seeded masks."
    )
    parser.add_argument(
        "--model",
        help="saved model folder (saved_models/<name>) or .keras file; MFA folders take "
        "':paper' or ':exact' (the conditional); or a baseline fitted to the training split: "
        "'diagonal' (diagonal Gaussian), 'gaussian' or 'gaussian:R' (full-covariance Gaussian, "
        "regularisation R, 1e-4), 'knn' or 'knn:N' (KNNImputer, k=5, the first N training images)",
    )
    parser.add_argument(
        "--compare", nargs="+", default=[], metavar="MODEL",
        help="more models, scored on the same masks and put in one markdown table",
    )
    parser.add_argument("--dataset", help="data set (default: the model's, from its config.json)")
    parser.add_argument("--data-dir", help="data folder (default: the model's)")
    parser.add_argument("--image-size", type=int, help="CelebA image side (default: the model's)")
    parser.add_argument("--crop", choices=["paper", "aspect"], help="CelebA crop (default: the model's)")
    parser.add_argument("--hole", help="test hole HxW, e.g. 10x15")
    parser.add_argument("--mask", help="any test mask spec instead of --hole (default: the model's test mask)")
    parser.add_argument("--split", choices=["test", "val"], default="test", help="split to score (test)")
    parser.add_argument("--seed", type=int, default=0, help="mask seed: image i gets mask (seed, i) (0)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (256)")
    parser.add_argument("--limit", type=int, help="score only the first N images")
    parser.add_argument(
        "--dequantize", choices=["auto", "off"], default="auto",
        help="where calibration is measured: auto (default) at the dequantized missing values "
        "x + (v - 1/2)/255 of 8-bit data (the continuous values the density describes), at "
        "the stored values otherwise; off: always at the stored values. NLL and MSE are "
        "always those of the stored values",
    )
    parser.add_argument(
        "--output",
        help="results folder (default results/<model>-<dataset>-<mask>-seed<seed>)",
    )
    parser.add_argument("--mosaic", help="also draw the paper's Figure 2 layout into this PNG")
    parser.add_argument("--mosaic-images", type=int, default=6, help="rows of the mosaic (6)")
    parser.add_argument(
        "--mosaic-baseline",
        help="model whose imputation gets a mosaic column (default: the first --compare model)",
    )
    parser.add_argument(
        "--fit-recalibration", action="store_true",
        help="fit the map that recalibrates the model's per-pixel intervals on this split "
        "(--split=val) and write it into the model folder as recalibration.json; later "
        "evaluations report raw and recalibrated coverage (see the README, Calibration)",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the table and errors")
    args = parser.parse_args(argv)
    if not args.model and not args.compare:
        parser.error("give --model (and/or --compare)")
    if args.fit_recalibration:
        if args.split != "val":
            parser.error("--fit-recalibration fits on held-out data the model is then not "
                         "scored on: give --split=val")
        if args.compare:
            parser.error("--fit-recalibration takes one --model and no --compare")
    if args.hole and args.mask:
        parser.error("give --hole or --mask, not both")
    for name in ("batch_size", "limit", "mosaic_images"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1 (received {value})")
    return args


def _slug(text):
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")


def _is_table_model(path):
    return bool(path) and os.path.isfile(os.path.join(path, "table.json"))


def evaluate_table(args):
    """A table model (`dmfa_tf.tabular`): NLL per held-out cell, RMSE and MAE in
    the table's units, interval coverage; `--compare` baselines from
    `dmfa_tf.baselines.tabular` (mean, knn, iterative, gaussian)."""
    import numpy as np

    from dmfa_tf import evaluation, tabular
    from dmfa_tf.baselines import tabular as tabular_baselines
    from dmfa_tf.data import tables
    from dmfa_tf.config import TrainConfig

    for name in args.compare:
        if name not in tabular_baselines.TABLE_BASELINES:
            raise ValueError(
                f"--compare {name}: a table model compares with "
                f"{sorted(tabular_baselines.TABLE_BASELINES)}."
            )
    for flag in ("hole", "image_size", "crop", "mosaic", "mosaic_baseline"):
        if getattr(args, flag):
            raise ValueError(f"--{flag.replace('_', '-')} applies to images, not to table models.")
    model = tabular.TabularModel.load(args.model)
    with open(os.path.join(args.model, "config.json")) as f:
        config = TrainConfig.from_json(f.read())
    dataset = args.dataset or config.dataset
    table = tables.load_table(dataset, args.data_dir or config.data_dir)
    if table.columns != model.columns:
        raise ValueError(
            f"The data's columns {table.columns} are not the model's {model.columns}."
        )
    train, val, test = tabular.split_for(config, table)
    rows = test if args.split == "test" else val
    fitted = np.concatenate([train, val]) if args.split == "test" else train
    rows = rows[: args.limit]
    if not len(rows):
        raise ValueError(f"The {args.split} split of this model's data has no rows.")
    mask_spec = args.mask or config.test_mask
    rate = tabular.mcar_rate(mask_spec)
    results = tabular.evaluate_table(model, table, fitted, rows, rate, args.seed, compare=args.compare)
    title = (f"{len(rows)} {dataset} {args.split} rows x {tabular.TEST_REPEATS} masks {mask_spec} "
             f"(seed {args.seed}); NLL in nats per missing cell (standardised units), RMSE and "
             "MAE in the table's units")
    text = tabular.format_table_results(results)
    output = args.output or os.path.join(
        "results", _slug(f"{os.path.basename(os.path.normpath(args.model))}-{dataset}-"
                         f"{mask_spec}-seed{args.seed}"))
    os.makedirs(output, exist_ok=True)
    evaluation.write_json(os.path.join(output, "summary.json"), {
        "dataset": dataset, "split": args.split, "rows": len(rows), "mask": mask_spec,
        "repeats": tabular.TEST_REPEATS, "seed": args.seed, "results": results,
    })
    evaluation.write_text(os.path.join(output, "comparison.md"), f"{title}\n\n{text}\n")
    print(title)
    print(text)
    print(f"Wrote {output}/ (summary.json, comparison.md)")
    return results


def evaluate(args):
    import platform

    if _is_table_model(args.model):
        return evaluate_table(args)

    from dmfa_tf import data as datasets
    from dmfa_tf import evaluation, masks, saving, training
    from dmfa_tf.core import recalibration

    specs = [evaluation.parse_model_spec(t) for t in ([args.model] if args.model else []) + args.compare]
    mosaic_spec = evaluation.parse_model_spec(args.mosaic_baseline) if args.mosaic_baseline else None
    for spec in specs + ([mosaic_spec] if mosaic_spec else []):
        spec.check()  # a bad name fails before anything is loaded
    # Training images are read only for the baselines fitted to them.
    needs_train = any(s.is_baseline for s in specs + ([mosaic_spec] if mosaic_spec else []))
    config = next(
        (c for c in (saving.load_config(s.path) for s in specs if not s.is_baseline) if c), {}
    )
    dataset = args.dataset or config.get("dataset")
    if not dataset:
        raise ValueError("No --dataset given and the model has no config.json naming one.")
    data_dir = args.data_dir or (config.get("data_dir") if config.get("dataset") == dataset else None)
    image_size = args.image_size or (config.get("image_size") if config.get("dataset") == dataset else None)
    crop = args.crop or config.get("crop") or "paper"
    mask_spec = args.mask or args.hole or config.get("test_mask") or config.get("mask")
    if not mask_spec:
        raise ValueError("No --hole or --mask given and the model's config.json names no test mask.")
    generator = masks.parse(mask_spec)

    verbose = 0 if args.quiet else 1
    splits = (args.split,) + (("train",) if needs_train else ())
    # The scored split streams from its source (a memory-mapped cache, photo
    # files or a small array); training images are loaded only for baselines.
    data = datasets.load_sources(
        dataset, data_dir, image_size=image_size, crop=crop, verbose=verbose, splits=splits
    )
    images = data.test if args.split == "test" else data.val
    labels = data.test_labels if args.split == "test" else data.val_labels
    images = images.take(args.limit)
    labels = None if labels is None else labels[: args.limit]
    generator(images.shape[1], images.shape[2], seed=[0, 0])  # a hole that does not fit fails here
    train_arrays = {}

    def train_images():  # float32 arrays, read once, only if a baseline needs them
        if "train" not in train_arrays:
            train_arrays["train"] = data.train.to_float_array(verbose) if data.train else None
        return train_arrays["train"]

    output = args.output or os.path.join(
        "results",
        f"{_slug(specs[0].label)}-{dataset}-{_slug(generator.spec())}-seed{args.seed}",
    )
    if args.fit_recalibration:
        return fit_recalibration(args, specs[0], images, generator, dataset, verbose)
    rows, summary, loaded = [], {}, {}
    for spec in specs:
        if spec.is_baseline and spec.path == "diagonal":
            fit_on = data.train  # fitted batch by batch from the source
        else:
            fit_on = train_images() if spec.is_baseline else None
        model = spec.load(train_images=fit_on, dataset=dataset)
        loaded[spec.label] = model
        if verbose:
            print(f"Scoring {spec.label} on {len(images):,} {dataset} {args.split} images, "
                  f"masks {generator.spec()} (seed {args.seed})")
        # Each model's masks are made in its pipeline, image i's seeded
        # (seed, i): every model is scored on the same masks.
        fitted = None if spec.is_baseline else recalibration.load(spec.path, generator.spec())
        scores, seconds = evaluation.timed_score(
            model, images, generator, args.seed, args.batch_size, verbose,
            dequantize="auto" if args.dequantize == "auto" else 0.0, recalibration=fitted,
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
        "split": args.split,
        "images": int(len(images)),
        "mask": generator.spec(),
        "seed": args.seed,
        "models": summary,
        "hardware": training.hardware_description(),
        "python": platform.python_version(),
        "command": " ".join(["python", "evaluate.py"] + sys.argv[1:]),
    }
    evaluation.write_json(os.path.join(output, "summary.json"), result)
    if len(specs) > 1:
        header = (
            f"{len(images):,} {dataset} {args.split} images, masks {generator.spec()} "
            f"(seed {args.seed}); per image, summed over the missing pixels; calibration "
            "pooled over all missing pixels\n\n"
        )
        evaluation.write_text(os.path.join(output, "comparison.md"), header + table + "\n")

    if args.mosaic:
        from dmfa_tf import visualization

        count = min(args.mosaic_images, len(images))
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
            args.mosaic,
            loaded[specs[0].label],
            first,
            evaluation.seeded_masks(first, generator, args.seed),
            baseline=baseline,
            baseline_label=baseline_label or "baseline",
        )

    print()
    print(f"{len(images):,} {dataset} {args.split} images, masks {generator.spec()} (seed {args.seed}); "
          "per image, summed over the missing pixels, lower is better for NLL and MSE; "
          "calibration pooled over all missing pixels")
    print(table)
    for label, info in summary.items():
        print(f"  {label}: {info['seconds']:.1f} s, {info['images_per_second']:.0f} images/s")
    print(f"Wrote {output}/ (summary.json, per-image CSV{', comparison.md' if len(specs) > 1 else ''})"
          + (f" and {args.mosaic}" if args.mosaic else ""))
    return result


def fit_recalibration(args, spec, images, generator, dataset, verbose):
    """`--fit-recalibration`: the PIT histogram of the split's missing pixels
    (at the values `--dequantize` says) becomes the model folder's
    `recalibration.json` (`dmfa_tf.core.recalibration`)."""
    from dmfa_tf import evaluation
    from dmfa_tf.core import recalibration

    if spec.is_baseline or not os.path.isfile(os.path.join(spec.path, "model.keras")):
        raise ValueError(
            f"--fit-recalibration needs a DMFA model folder (with model.keras) to write "
            f"into; {spec.path!r} is not one."
        )
    model = spec.load(dataset=dataset)
    if verbose:
        print(f"Fitting the interval recalibration of {spec.label} on {len(images):,} {dataset} "
              f"{args.split} images, masks {generator.spec()} (seed {args.seed})")
    scores, seconds = evaluation.timed_score(
        model, images, generator, args.seed, args.batch_size, verbose,
        dequantize="auto" if args.dequantize == "auto" else 0.0,
        pit_histogram_bins=recalibration.BINS,
    )
    before = evaluation.calibration(scores)
    fitted = recalibration.Recalibration.from_counts(scores["pit_histogram"], {
        "dataset": dataset, "split": args.split, "images": int(len(images)),
        "mask": generator.spec(), "seed": args.seed,
        "dequantization_step": before["dequantization_step"],
    })
    path = os.path.join(spec.path, recalibration.FILE)
    maps = recalibration.with_map(spec.path, fitted)
    evaluation.write_json(path, recalibration.file_content(maps))
    print(f"{spec.label} on {fitted.fitted_on['pixels']:,} missing pixels of {len(images):,} "
          f"{dataset} {args.split} images: raw coverage {100 * before['coverage_50']:.1f}% (50%), "
          f"{100 * before['coverage_90']:.1f}% (90%); {fitted.groups} group(s) of pixels by "
          f"predictive sd (bounds {', '.join(f'{b:.3g}' for b in fitted.sd_bounds) or 'none'}), "
          f"each with its own map ({seconds:.1f} s)")
    print(f"Wrote {path} (maps for masks {', '.join(m.fitted_on.get('mask', '?') for m in maps)})")
    return {"calibration": before, "recalibration": fitted.to_dict()}


def main(argv=None):
    args = parse_args(argv)
    try:
        evaluate(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"evaluate.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
