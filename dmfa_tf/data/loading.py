"""`load` and `load_sources`: a data set by name, from wherever `data_dir` says.

The dispatch (`_load`) checks the arguments, then reads, in this order: a
TFDS-prepared copy (`dmfa_tf.data.tfds`), a `.npz` file (`npz`), the IDX files
(`idx`) or CelebA's photos (`photos`), or lets TFDS download the data set. The
loaders are called through their modules, so that each can be replaced (in
tests) where it is defined.
"""

import dataclasses
import os

from dmfa_tf.data import idx, npz, photos, sources, tfds
from dmfa_tf.data.common import (
    _LOCAL_FORMATS,
    CELEBA_IMAGE_SIZE,
    CROPS,
    DATASETS,
    SPLITS,
    _check_image_size,
    _check_native_size,
    _check_splits,
)

__all__ = ["load", "load_sources", "load_model_sources"]


def load(
    name,
    data_dir=None,
    image_size=None,
    crop="paper",
    download=False,
    cache=True,
    verbose=1,
    splits=SPLITS,
):
    """Loads a data set by name (see `dmfa_tf.data`).

    Args:
        name: `"digits"`, `"mnist"`, `"fashion_mnist"`, `"celeb_a"`,
            `"svhn_cropped"` or `"cifar10"`.
        data_dir: a TFDS data_dir, or the local files: a folder of IDX files,
            a folder of CelebA photos (or the folder holding `img_align_celeba/`
            and `list_eval_partition.txt`), or a `.npz` file (or a folder with
            one). None: TFDS's default data_dir.
        image_size: CelebA's side S (default 32). Data sets stored at a fixed
            size accept only None or that size.
        crop: CelebA's crop, `"paper"` or `"aspect"` (`dmfa_tf.data.photos`).
        download: let TFDS download the data (machines with internet only).
        cache: where decoded CelebA photos are cached: True (default) for
            `$DMFA_TF_CACHE_DIR`, else `~/.cache/dmfa_tf` (setting the variable
            to `off` turns caching off); a folder; or False for no cache. Cache
            files are keyed by the folder, image size, crop and file list, and
            written to a temporary file first, then renamed. Delete them freely.
        verbose: 1 shows a progress bar for long decodes, 0 nothing.
        splits: the splits wanted, some of `("train", "val", "test")` (all);
            the others are None in the result. The IDX loader then skips the
            training files when neither "train" nor "val" is wanted (the
            other sources read everything).

    Returns:
        `Splits`.

    Raises:
        ValueError: unknown name, bad `image_size` / `crop`, unreadable or
            malformed files (named), data not in TFDS without `download`.
        FileNotFoundError: `data_dir` or a file in it is missing.
        RuntimeError: TFDS failed to download.
    """
    splits = _check_splits(splits)
    result = _load(name, data_dir, image_size, crop, download, cache, verbose,
                   need_train="train" in splits or "val" in splits)
    dropped = {}
    for split in SPLITS:
        if split not in splits:
            dropped[split] = None
            dropped[f"{split}_labels"] = None
    return dataclasses.replace(result, **dropped) if dropped else result


def load_sources(
    name,
    data_dir=None,
    image_size=None,
    crop="paper",
    download=False,
    cache=True,
    verbose=1,
    splits=SPLITS,
):
    """As `load`, but each split is a `sources.ImageSource` that training and
    evaluation read inside `tf.data`, not a float array in memory.

    - CelebA (photo folder or TFDS): the photos are decoded once, batch by
      batch, into a uint8 cache file that is then memory-mapped, so memory
      holds at most the uint8 pages in use. With the cache off, a photo folder
      is read, decoded and cropped from the files as images are needed (memory
      does not grow with the number of photos), and a TFDS split is decoded
      into a temporary file that is deleted as soon as it is mapped.
    - The other data sets (IDX, `.npz`, digits, TFDS MNIST-style sets) are
      small: their arrays are held in memory (TFDS ones as uint8) and read
      through an `ArraySource`.

    The images, splits and order are those of `load`. Each split's
    `to_float_array()` gives `load`'s array.
    """
    splits = _check_splits(splits)
    result = _load(name, data_dir, image_size, crop, download, cache, verbose,
                   need_train="train" in splits or "val" in splits, stream=True)
    fields = {}
    for split in SPLITS:
        images = getattr(result, split)
        wanted = split in splits and images is not None
        fields[split] = sources.as_source(images) if wanted else None
        if not wanted:
            fields[f"{split}_labels"] = None
    return dataclasses.replace(result, **fields)


def load_model_sources(config, splits=SPLITS, verbose=0):
    """`load_sources` for the data a saved model was trained on, as its
    `config.json` names them: the data set, `data_dir`, image size and crop.

    Args:
        config: the model's config dict (`dmfa_tf.saving.load_config`).
        splits: the splits wanted (see `load`).
        verbose: 1 shows a progress bar for long decodes, 0 nothing.

    Raises:
        ValueError: `config` is empty or names no data set.
    """
    if not config or not config.get("dataset"):
        raise ValueError("The model's config.json names no data set (key 'dataset'); "
                         f"got {sorted(config or {})}.")
    return load_sources(
        config["dataset"], config.get("data_dir"), image_size=config.get("image_size"),
        crop=config.get("crop") or "paper", verbose=verbose, splits=splits,
    )


def _load(name, data_dir, image_size, crop, download, cache, verbose, need_train, stream=False):
    if name not in DATASETS:
        raise ValueError(
            f"Unknown dataset {name!r}; choose one of {sorted(DATASETS)}."
        )
    _check_image_size(image_size)
    if crop not in CROPS:
        raise ValueError(f"`crop` must be one of {CROPS}. Received: crop={crop!r}")
    if name == "digits":
        if data_dir is not None:
            raise ValueError(
                f"digits are bundled with scikit-learn: data_dir (--data-dir) does not apply. "
                f"Received: data_dir={data_dir!r}"
            )
        _check_native_size(name, (8, 8), image_size, "scikit-learn's digits")
        return idx._load_digits()
    if name == "celeb_a" and image_size is None:
        image_size = CELEBA_IMAGE_SIZE
    if data_dir is not None:
        data_dir = os.fspath(data_dir)
    if data_dir == "":
        raise ValueError(
            f"data_dir is empty: pass --data-dir naming a TFDS data_dir or a folder "
            f"with {_LOCAL_FORMATS[name]}."
        )

    if data_dir is None:  # TFDS's default data_dir
        builder = tfds._tfds_builder(name, None)
        if not tfds._is_prepared(builder):
            if not download:
                raise ValueError(tfds._not_in_tfds(name, None))
            tfds._download_and_prepare(name, builder)
        return tfds._load_tfds(name, builder, image_size, crop, cache, verbose, stream)

    if not os.path.exists(data_dir):
        if not download:
            raise FileNotFoundError(f"Data folder not found: {data_dir}")
        builder = tfds._tfds_builder(name, data_dir)  # TFDS downloads into a new folder
        tfds._download_and_prepare(name, builder)
        return tfds._load_tfds(name, builder, image_size, crop, cache, verbose, stream)
    if os.path.isfile(data_dir):
        if not data_dir.lower().endswith(".npz"):
            raise ValueError(
                f"{data_dir} is a file but not a .npz file; data_dir must be a folder "
                f"(a TFDS data_dir or one with {_LOCAL_FORMATS[name]}) or a .npz file."
            )
        return npz._load_npz(data_dir, name, image_size)

    # 1. A TFDS-prepared copy.
    builder = None
    if tfds._may_hold_tfds(data_dir, name):
        builder = tfds._tfds_builder(name, data_dir)
        if tfds._is_prepared(builder):
            return tfds._load_tfds(name, builder, image_size, crop, cache, verbose, stream)
    # 2. Local files.
    npz_path = npz._find_npz(data_dir, name)
    if npz_path is not None:
        return npz._load_npz(npz_path, name, image_size)
    if name in idx._IDX_NAMES and (idx._has_idx_files(data_dir) or not download):
        _check_native_size(name, (28, 28), image_size, data_dir)
        return idx._load_idx_dataset(data_dir, need_train=need_train)
    if name == "celeb_a":
        try:
            if stream:
                return photos._celeba_folder_sources(data_dir, image_size, crop, cache, verbose)
            return photos._load_celeba_folder(data_dir, image_size, crop, cache, verbose)
        except FileNotFoundError:
            if not download:
                raise
    # 3. A download into data_dir.
    if download:
        builder = builder or tfds._tfds_builder(name, data_dir)
        tfds._download_and_prepare(name, builder)
        return tfds._load_tfds(name, builder, image_size, crop, cache, verbose, stream)
    raise FileNotFoundError(tfds._not_in_tfds(name, data_dir) + f" ({data_dir} holds neither.)")
