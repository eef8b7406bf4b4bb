"""Data: image data sets as float32 arrays `[n, H, W, C]` in [0, 1] split three
ways (`load`) or as image sources read inside `tf.data` (`load_sources`),
tables with missing cells (`tables`), and dequantization (`dequantization`).

Names are spelled as tensorflow-datasets (TFDS) spells them.

| name | sources | splits (train / val / test) |
|---|---|---|
| `digits` | scikit-learn's bundled 8x8 digits (no download) | 1,257 / 180 / 360, seeded |
| `mnist`, `fashion_mnist` | TFDS; the four IDX files; `.npz` | 55,000 / 5,000 / 10,000 |
| `celeb_a` | TFDS; a folder of JPEG/PNG photos; `.npz` | 162,770 / 19,867 / 19,962 |
| `svhn_cropped` | TFDS; `.npz` | 68,257 / 5,000 / 26,032 |
| `cifar10` | TFDS; `.npz` | 45,000 / 5,000 / 10,000 |

Where the data come from is decided by `data_dir` (`load`):

1. `data_dir` holds a TFDS-prepared copy of the data set (a TFDS `data_dir` with
   `<name>/<version>/`, or that version folder itself): read through TFDS. With
   `data_dir=None`, TFDS's default folder (`$TFDS_DATA_DIR` or
   `~/tensorflow_datasets`) is used, and `download=True` lets TFDS fetch the data
   (machines with internet only).
2. Local files, recognised by what `data_dir` holds: a `.npz` file (or a folder
   with one), the IDX files of MNIST / Fashion-MNIST, or CelebA's photos.
3. `download=True`: TFDS downloads and prepares the data set into `data_dir`.

Validation splits. A data set's own validation split is used where it has one
(CelebA: `list_eval_partition.txt` or TFDS's `validation`; `.npz` files with
`x_val`). Otherwise the last `min(5000, n // 10)` of the `n` training images are
held out (`validation_size`): 5,000 for MNIST-style IDX files, TFDS data sets
without one and large `.npz` arrays, a tenth of a small training split; fewer
than 10 training images is an error. TFDS stores
examples in a hashed order; `load` puts MNIST / Fashion-MNIST back in file
order (and CIFAR-10 / SVHN in the order of their `id` feature), so the TFDS and
the IDX routes give identical splits.

CelebA photos (178x218 aligned faces) become `S x S` images (`image_size`,
default 32), cropped `"paper"` or `"aspect"` (`photos`), resized bilinearly
with antialiasing and rounded to 8 bits, so the images hold multiples of
1/255. Decoded photos are cached (see `load`'s `cache`): by default in
`$DMFA_TF_CACHE_DIR` or `~/.cache/dmfa_tf`.

TFDS's own `mnist` can be prepared offline from the four canonical IDX files:
`python -m dmfa_tf.data prepare-mnist --idx-dir DIR --data-dir DIR`
(`prepare_tfds_mnist`). The Fashion-MNIST files that Debian ships are
recompressed: their content is the original but their bytes are not, so TFDS's
checksums reject them; read them with the IDX loader instead.

The modules, each importing only those above it:

- `sources`: `ImageSource`s (arrays, memory-mapped caches, photo files).
- `tables`: tables with missing cells (NumPy only).
- `dequantization`: the continuous values behind 8-bit pixels.
- `common`: the names, `Splits`, the validation hold-out, the checks.
- `cache`: the memory-mapped cache of decoded photos.
- `idx`: IDX files and scikit-learn's digits; `npz`: `.npz` files;
  `photos`: CelebA's photo folder and partition file.
- `tfds`: reading TFDS-prepared data sets; `prepare`: preparing them offline.
- `loading`: `load`, `load_sources` and `load_model_sources`; `cli`: the command line.
"""

from dmfa_tf.data import dequantization, sources, tables
from dmfa_tf.data.cache import CACHE_ENV, cache_path
from dmfa_tf.data.cli import main
from dmfa_tf.data.common import (
    CELEBA_IMAGE_SIZE,
    CROPS,
    DATASETS,
    SPLITS,
    VAL_HOLDOUT,
    Splits,
    validation_size,
)
from dmfa_tf.data.idx import IDX_FILES, read_idx
from dmfa_tf.data.loading import load, load_model_sources, load_sources
from dmfa_tf.data.photos import (
    IMAGE_EXTENSIONS,
    PAPER_RESIZE_RATIO,
    PARTITION_FILES,
    SEEDED_TEST_FRACTION,
    SEEDED_VAL_FRACTION,
    read_partition,
)
from dmfa_tf.data.prepare import prepare_tfds, prepare_tfds_mnist
from dmfa_tf.data.tfds import tfds_record_order

__all__ = [
    "CACHE_ENV",
    "CELEBA_IMAGE_SIZE",
    "CROPS",
    "DATASETS",
    "IDX_FILES",
    "IMAGE_EXTENSIONS",
    "PAPER_RESIZE_RATIO",
    "PARTITION_FILES",
    "SEEDED_TEST_FRACTION",
    "SEEDED_VAL_FRACTION",
    "SPLITS",
    "Splits",
    "VAL_HOLDOUT",
    "cache_path",
    "dequantization",
    "load",
    "load_model_sources",
    "load_sources",
    "main",
    "prepare_tfds",
    "prepare_tfds_mnist",
    "read_idx",
    "read_partition",
    "sources",
    "tables",
    "tfds_record_order",
    "validation_size",
]
