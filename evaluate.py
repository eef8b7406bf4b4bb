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
    parser.add_argument(
        "--fit-scale-prior", action="store_true",
        help="fit the model's scale prior (each component's covariance times a scale c_j "
        "with weight w_j) on this split (--split=val) and write it into the model folder's "
        "model.keras; its recalibration.json maps are refitted too (see the README, Scale prior)",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the table and errors")
    args = parser.parse_args(argv)
    if not args.model and not args.compare:
        parser.error("give --model (and/or --compare)")
    if args.fit_scale_prior:
        if args.split != "val":
            parser.error("--fit-scale-prior fits on held-out data the model is then not "
                         "scored on: give --split=val")
        if args.compare or args.fit_recalibration:
            parser.error("--fit-scale-prior takes one --model, no --compare and no "
                         "--fit-recalibration (it refits the recalibrations itself)")
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


def evaluate(args):
    """Runs what the flags ask for through `dmfa_tf.comparison`."""
    from dmfa_tf import comparison

    if comparison.is_table_model(args.model):
        for flag in ("hole", "image_size", "crop", "mosaic", "mosaic_baseline", "fit_scale_prior"):
            if getattr(args, flag):
                raise ValueError(f"--{flag.replace('_', '-')} applies to images, not to table models.")
        return comparison.evaluate_table_model(
            args.model, compare=args.compare, dataset=args.dataset, data_dir=args.data_dir,
            mask=args.mask, split=args.split, seed=args.seed, limit=args.limit, output=args.output,
        )
    return comparison.evaluate_images(
        ([args.model] if args.model else []) + args.compare,
        dataset=args.dataset, data_dir=args.data_dir, image_size=args.image_size, crop=args.crop,
        mask=args.mask or args.hole, split=args.split, seed=args.seed, batch_size=args.batch_size,
        limit=args.limit, dequantize=args.dequantize, output=args.output, mosaic=args.mosaic,
        mosaic_images=args.mosaic_images, mosaic_baseline=args.mosaic_baseline,
        verbose=0 if args.quiet else 1, fit_recalibration=args.fit_recalibration,
        fit_scale_prior=args.fit_scale_prior,
    )


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
