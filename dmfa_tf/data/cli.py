"""The command line: `python -m dmfa_tf.data {prepare-mnist,prepare,show} ...`
(`dmfa_tf.data.__main__` runs `main`)."""

import argparse
import sys

from dmfa_tf.data.common import CROPS, DATASETS
from dmfa_tf.data.loading import load
from dmfa_tf.data.prepare import prepare_tfds

__all__ = ["main"]



def main(argv=None):
    """`python -m dmfa_tf.data {prepare-mnist,prepare,show} ...`"""
    parser = argparse.ArgumentParser(
        prog="python -m dmfa_tf.data",
        description="Prepare TFDS data sets offline, or load one and show its splits.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    mnist = commands.add_parser(
        "prepare-mnist",
        help="prepare TFDS's mnist offline from the four canonical IDX .gz files",
    )
    mnist.add_argument("--idx-dir", required=True, help="folder of the four MNIST .gz files")
    mnist.add_argument("--data-dir", required=True, help="TFDS data_dir to prepare into")
    generic = commands.add_parser(
        "prepare", help="prepare any TFDS builder offline from its canonical source files"
    )
    generic.add_argument("name", help="TFDS builder name, e.g. mnist")
    generic.add_argument("--source-dir", required=True, help="folder of the source files")
    generic.add_argument("--data-dir", required=True, help="TFDS data_dir to prepare into")
    show = commands.add_parser("show", help="load a data set and print its splits")
    show.add_argument("name", choices=sorted(DATASETS))
    show.add_argument("--data-dir", default=None)
    show.add_argument("--image-size", type=int, default=None)
    show.add_argument("--crop", choices=CROPS, default="paper")
    show.add_argument("--download", action="store_true")
    show.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    args = parser.parse_args(argv)
    try:
        if args.command in ("prepare-mnist", "prepare"):
            name = "mnist" if args.command == "prepare-mnist" else args.name
            source = args.idx_dir if args.command == "prepare-mnist" else args.source_dir
            builder = prepare_tfds(name, source, args.data_dir)
            print(
                f"{name} {builder.info.version} is prepared in {args.data_dir}: "
                + ", ".join(f"{k} {v.num_examples:,}" for k, v in builder.info.splits.items())
                + f". Use it with --dataset={name} --data-dir={args.data_dir}"
            )
        else:
            splits = load(
                args.name,
                data_dir=args.data_dir,
                image_size=args.image_size,
                crop=args.crop,
                download=args.download,
                cache=not args.no_cache,
            )
            for split in ("train", "val", "test"):
                images = getattr(splits, split)
                print(f"{split:5s} {images.shape} {images.dtype} mean {images.mean():.4f}")
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0
