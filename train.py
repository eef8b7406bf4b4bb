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
    from dmfa_tf.config import DATASET_DEFAULTS, STRATEGIES, TrainConfig

    parser = argparse.ArgumentParser(
        description="Train a Deep Mixture of Factor Analyzers on masked images, "
        "score it on the test split and save it under saved_models/.",
    )
    choices = {
        "dataset": sorted(DATASET_DEFAULTS),
        "architecture": ["fullconv", "linear_heads", "mlp"],
        "strategy": list(STRATEGIES),
        "variance_activation": ["sigmoid", "softplus"],
        "jit_compile": ["auto", "true", "false"],
    }
    helps = {
        "dataset": "data set (default: digits, scikit-learn's bundled 8x8 digits)",
        "data_dir": "folder of the data files (the IDX files for mnist / fashion_mnist)",
        "architecture": "network (default per data set: digits mlp, others fullconv)",
        "components": "K, mixture components (default 1)",
        "factors": "L, factors per component (default 4)",
        "hole": "training hole HxW (default per data set: digits 4x4, mnist 14x14)",
        "mask": "training mask spec instead of --hole, e.g. '14x14~2|dropout:0.5'",
        "test_mask": "validation and test mask spec (default: the training mask)",
        "epochs": "epochs (default per data set)",
        "batch_size": "global batch size (default 64)",
        "learning_rate": "Adam learning rate (default 1e-3)",
        "factor_amplitude": "a in A = a*sigmoid(z) - a/2 (default per architecture)",
        "variance_floor": "smallest variance d (default: linear_heads 1e-10, others 1e-4)",
        "variance_activation": "d = floor + sigmoid(z) or floor + softplus(z)",
        "width": "fullconv base channels (default 32)",
        "seed": "seed of weights, shuffling and training masks (default 0)",
        "eval_seed": "seed of the validation and test masks (default 0)",
        "strategy": "tf.distribute strategy (default: none)",
        "name": "run name (default: the data set)",
        "output": "where the model goes (default saved_models/<name>)",
        "workdir": "checkpoints, backup and logs (default runs/<name>)",
        "max_train_images": "use only the first N training images",
        "max_test_images": "score only the first N test images",
        "jit_compile": "XLA: auto (GPU only), true or false",
    }
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = {int: int, float: float}.get(type(field.default), None)
        if field.name in ("components", "factors", "epochs", "batch_size", "width",
                          "seed", "eval_seed", "max_train_images", "max_test_images"):
            kind = int
        if field.name in ("learning_rate", "factor_amplitude", "variance_floor"):
            kind = float
        parser.add_argument(
            flag,
            dest=field.name,
            type=kind or str,
            default=field.default,
            choices=choices.get(field.name),
            help=helps.get(field.name),
        )
    parser.add_argument("--quiet", action="store_true", help="print only errors")
    args = parser.parse_args(argv)
    quiet = args.quiet
    del args.quiet
    return TrainConfig(**vars(args)), quiet


def main(argv=None):
    config, quiet = parse_args(argv)
    from dmfa_tf.training import train_and_evaluate

    try:
        train_and_evaluate(config, verbose=0 if quiet else 1)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
