"""Train a DMFA model: `python train.py --dataset=digits` (the default).

Every flag is a field of `dmfa_tf.config.TrainConfig`; flags left out take the
data set's defaults. The README lists them all.
"""

import argparse
import dataclasses
import os
import sys

# Keep TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) off the
# console unless the user asks for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    from dmfa_tf.config import (
        COLOUR_BASES, CROPS, DATASET_DEFAULTS, DEQUANTIZE, MFA_INITS, MFA_NOISE_TYPES, MODELS,
        FILLS, GLOBAL_SCALES, PRESETS, SCALE_PRIORS, STANDARDIZE, STRATEGIES, TrainConfig,
    )
    from dmfa_tf.models import ARCHITECTURES

    parser = argparse.ArgumentParser(
        description="Train a Deep Mixture of Factor Analyzers on masked images, "
        "score it on the test split and save it under saved_models/.",
    )
    choices = {
        "dataset": sorted(DATASET_DEFAULTS),
        "architecture": sorted(ARCHITECTURES),
        "strategy": list(STRATEGIES),
        "factor_activation": ["sigmoid", "tanh", "linear"],
        "precision": ["auto", "float32", "mixed_bfloat16"],
        "variance_activation": ["sigmoid", "softplus"],
        "colour_basis": list(COLOUR_BASES),
        "standardize": list(STANDARDIZE),
        "fill": list(FILLS),
        "global_scale": list(GLOBAL_SCALES),
        "scale_prior": list(SCALE_PRIORS),
        "dequantize": list(DEQUANTIZE),
        "nonfinite": ["error", "absent"],
        "jit_compile": ["auto", "true", "false"],
        "lr_schedule": ["constant", "cosine"],
        "crop": list(CROPS),
        "model": list(MODELS),
        "mfa_noise": list(MFA_NOISE_TYPES),
        "mfa_init": list(MFA_INITS),
    }
    helps = {
        "dataset": "data set, named as in tensorflow-datasets (default: digits, "
        "scikit-learn's bundled 8x8 digits); tables: csv (--data-dir=FILE.csv or .npz), or "
        "scikit-learn's bundled iris, wine, breast_cancer, diabetes",
        "data_dir": "a TFDS data_dir, or the local files: the IDX files' folder "
        "(mnist, fashion_mnist), CelebA's photo folder, or a .npz file "
        "(default: TFDS's ~/tensorflow_datasets)",
        "image_size": "celeb_a: side of the square images (default 32; 64 for the "
        "paper's 64x64 variant)",
        "crop": "celeb_a: paper (resize to 1.875x the size, aspect not kept, then "
        "centre crop; default) or aspect (centre square of the photo, then resize)",
        "download": "let TFDS download the data set (needs internet access)",
        "architecture": "network (default per data set: digits mlp, tables tabular, others "
        "fullconv)",
        "components": "K, mixture components (default 1; tables 3)",
        "factors": "L, factors per component (default 4)",
        "hole": "training hole HxW (default per data set: digits 4x4, mnist 14x14)",
        "mask": "training mask spec instead of --hole, e.g. '14x14~2|dropout:0.5'; tables: "
        "dropout:R, each cell missing with probability R (default dropout:0.2)",
        "test_mask": "validation and test mask spec (default: the training mask)",
        "epochs": "epochs (default per data set)",
        "batch_size": "global batch size (default 64; celeb_a 16)",
        "learning_rate": "Adam learning rate (default 1e-3)",
        "factor_amplitude": "a in A = a*sigmoid(z) - a/2 (default per architecture)",
        "factor_activation": "A = a*sigmoid(z) - a/2 (the paper's, default), a/2*tanh(z), "
        "or linear: A = z, unbounded (no saturated factors)",
        "variance_floor": "smallest variance d (default: linear_heads 1e-10, others 1e-4)",
        "variance_activation": "d = floor + sigmoid(z) or floor + softplus(z)",
        "colour_basis": "the basis of each pixel's colour values that the diagonal d is in: "
        "rgb, or opponent (brightness and two colour differences, 3 channels only; "
        "default: celeb_a opponent, others rgb)",
        "standardize": "on: the network sees each channel of --colour-basis standardised by "
        "the first 2,000 training images' mean and standard deviation (default: celeb_a on, "
        "others off)",
        "fill": "what the network sees at missing pixels: zero (default; with --standardize=on, "
        "the training images' mean) or mean, the image's own mean over its observed pixels",
        "global_factors": "G, factor columns per component shared by every image, learned as "
        "weights, on top of the L per image (default 0)",
        "global_scale": "none (default) or pixel: each image scales each row of the global "
        "factors' loadings by 2 sigmoid(z), z predicted by the head (needs --global-factors)",
        "precision": "the backbone's arithmetic: auto (default: mixed_bfloat16 for fullconv and "
        "linear_heads on a machine without GPU whose CPU has bfloat16 instructions, else float32), float32, or "
        "mixed_bfloat16 (bfloat16 layers, float32 weights; the head, the density and "
        "exports stay float32)",
        "dequantize": "fit the density to dequantized pixels x + (v - 1/2)/255, v ~ U(0, 1): "
        "off (default), auto (on for 8-bit data, values k/255, such as MNIST and CelebA; "
        "nothing to do for other data) or on",
        "width": "fullconv: base channels (default 32); mlp: units of each of the two "
        "hidden layers (default 256); tabular: units (default 256)",
        "dropout": "tabular: dropout rate inside the residual blocks (default 0)",
        "val_fraction": "tables: share of rows held out for validation (default 0.2)",
        "test_fraction": "tables: share of rows held out for test (default 0.2; 0 holds none "
        "back, e.g. to impute the same file afterwards)",
        "lr_schedule": "constant (default; tables: cosine) or cosine (decays to 1%% of the rate over "
        "the run)",
        "seed": "seed of weights, shuffling and training masks (default 0)",
        "eval_seed": "seed of the validation and test masks (default 0)",
        "strategy": "tf.distribute strategy (default: none)",
        "name": "run name (default: the data set)",
        "output": "where the model goes (default saved_models/<name>)",
        "workdir": "checkpoints, backup and logs (default runs/<name>)",
        "export": "also export the trained model for TF Serving into "
        "<export>/<name>/<next version>/ (e.g. --export=serving)",
        "max_train_images": "use only the first N training images",
        "max_test_images": "score only the first N test images",
        "jit_compile": "XLA: auto (where measured to pay: GPUs; on CPU linear_heads and "
        "fullconv, for runs of 200 steps or more), true or false",
        "model": "dmfa (a network, default) or mfa (the classical mixture of factor "
        "analysers, fitted by EM on complete images)",
        "mfa_components": "--model=mfa: K (default per data set: digits 10, mnist 50)",
        "mfa_factors": "--model=mfa: L (default per data set: digits 4, mnist 6)",
        "mfa_iterations": "--model=mfa: EM iterations (default 30)",
        "mfa_noise": "--model=mfa: isotropic (MPPCA, the paper's, default) or diagonal noise",
        "mfa_init": "--model=mfa: kmeans (default) or random initialisation",
        "objective": "training objective: nll, nll+mse[:w] (NLL + w x the paper's MSE, "
        "w = 1), beta_nll[:beta] (beta-NLL per image, beta = 0.5), mse_mean[:w] (the means "
        "by the squared error, the covariance by the NLL at the stopped means); default per "
        "data set: mnist nll+mse:1, celeb_a nll+mse:0.1, others nll",
        "objective_switch_epoch": "train on --objective for this many epochs, then on the "
        "NLL alone (the reference's two CelebA phases)",
        "nonfinite": "NaN / inf training pixels: error (default) or absent (incomplete "
        "data: those pixels are neither seen nor scored, mask -1)",
        "train_absent": "make the training images incomplete: a mask spec whose 0 pixels are "
        "absent, fixed per image (seeded), e.g. dropout:0.3 (implies --nonfinite=absent)",
        "restart": "start over: delete the backup of an interrupted run in --workdir instead "
        "of continuing it (a run with other settings is refused without it)",
        "scale_prior": "on (default): after training, fit the scale prior on the validation split "
        "(each component's covariance times a scale c_j with weight w_j: heavier tails, "
        "calibrated Mahalanobis distances; README, Scale prior); off: none",
        "select": "the shipped epoch: the lowest of val_nll (default), val_mse, a weighted "
        "sum such as 'val_nll+20*val_mse', or 'last'",
    }
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if isinstance(field.default, bool):  # a switch: --download
            parser.add_argument(
                flag, dest=field.name, action="store_true", default=field.default,
                help=helps.get(field.name),
            )
            continue
        if field.name == "image_size":
            field_type = int
        else:
            field_type = None
        kind = {int: int, float: float}.get(type(field.default), None)
        if field.name in ("components", "factors", "epochs", "batch_size", "width",
                          "seed", "eval_seed", "max_train_images", "max_test_images",
                          "mfa_components", "mfa_factors", "mfa_iterations",
                          "objective_switch_epoch", "global_factors"):
            kind = int
        if field.name in ("learning_rate", "factor_amplitude", "variance_floor",
                          "val_fraction", "test_fraction", "dropout"):
            kind = float
        parser.add_argument(
            flag,
            dest=field.name,
            type=field_type or kind or str,
            default=field.default,
            choices=choices.get(field.name),
            help=helps.get(field.name),
        )
    parser.add_argument("--quiet", action="store_true", help="print only errors")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS),
        help="named settings for the flags left out: tiny (digits, 2 epochs, 256 training "
        "images, 64 scored: seconds, for smoke checks)",
    )
    preset = parser.parse_known_args(argv)[0].preset
    if preset:
        parser.set_defaults(**PRESETS[preset])
    args = parser.parse_args(argv)
    del args.preset
    quiet = args.quiet
    del args.quiet
    return TrainConfig(**vars(args)), quiet


def main(argv=None):
    config, quiet = parse_args(argv)
    if config.strategy == "multi_worker":
        # Collective ops are configured when the strategy is made, which must
        # come before TensorFlow runs anything (loading data does).
        from dmfa_tf.training import make_strategy

        try:
            make_strategy(config.strategy)
        except (ValueError, RuntimeError) as error:
            print(f"train.py: error: --strategy=multi_worker: {error}", file=sys.stderr)
            return 2
    from dmfa_tf.config import TABULAR_DATASETS

    if config.dataset in TABULAR_DATASETS:
        from dmfa_tf.tabular import train_and_evaluate
    else:
        from dmfa_tf.training import train_and_evaluate

    try:
        train_and_evaluate(config, verbose=0 if quiet else 1)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        try:
            workdir = config.resolved().workdir
        except ValueError:
            workdir = "the run's workdir"
        print(
            f"\ntrain.py: interrupted. Run the same command again to continue from the last "
            f"finished epoch (backup in {os.path.join(workdir, 'backup')}).",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
