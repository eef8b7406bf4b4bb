"""The cache of decoded photos: uint8 `.npy` files, memory-mapped.

Decoding CelebA's photos takes minutes, so `load` and `load_sources` decode
them once into a cache file keyed by where they came from (`cache_path`) and
memory-map it afterwards (`_cached`). Files are written to a temporary name
and renamed, so an interrupted run never leaves a partial one. The folder is
`$DMFA_TF_CACHE_DIR` (`CACHE_ENV`; `off` turns caching off), else
`~/.cache/dmfa_tf`.
"""

import errno
import hashlib
import json
import os
import tempfile
import warnings

import numpy as np

__all__ = ["CACHE_ENV", "cache_path"]

CACHE_ENV = "DMFA_TF_CACHE_DIR"
_CACHE_FORMAT = 2  # 2: a memory-mappable .npy file


def _cache_folder(cache):
    """The cache folder for `cache` (see `load`), or None when caching is off."""
    if cache is None or cache is False:
        return None
    if cache is True:
        folder = os.environ.get(CACHE_ENV)
        if folder is not None:
            if folder.strip().lower() in ("", "0", "off", "none", "false"):
                return None
            return os.path.expanduser(folder)
        return os.path.join(os.path.expanduser("~"), ".cache", "dmfa_tf")
    return os.path.expanduser(os.fspath(cache))


def cache_path(key, stem, cache=True):
    """Where `load` caches the uint8 arrays for `key` (a dict), or None."""
    folder = _cache_folder(cache)
    if folder is None:
        return None
    digest = hashlib.sha256(
        json.dumps({"format": _CACHE_FORMAT, **key}, sort_keys=True).encode("utf-8")
    ).hexdigest()[:20]
    return os.path.join(folder, f"{stem}-{digest}.npy")


def _new_memmap(shape, folder=None, prefix="dmfa_tf-"):
    """`(path, out)`: a uint8 `.npy` memmap of `shape` in a new temporary file
    of `folder` (the system's temporary folder when None), its whole size
    reserved now, so that a full disk is an OSError here, not a SIGBUS while
    `out` is written. Nothing is left behind on error."""
    handle, temporary = tempfile.mkstemp(prefix=prefix, suffix=".npy", dir=folder)
    os.close(handle)
    try:
        out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=shape)
        _reserve(temporary)
    except BaseException:
        os.remove(temporary)
        raise
    return temporary, out


def _spilled(shape, decode):
    """`decode(out)` into a memmap of an unlinked temporary file."""
    temporary, out = _new_memmap(shape)
    try:
        decode(out)
        out.flush()
        return np.load(temporary, mmap_mode="r", allow_pickle=False)
    finally:
        os.remove(temporary)  # the mapping keeps the data until it is closed


def _reserve(path):
    """Allocates the whole file now (see `_new_memmap`)."""
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
        except AttributeError:  # pragma: no cover - no posix_fallocate here
            pass


def _cached(key, stem, shape, decode, cache, spill=False):
    """A uint8 array of `shape`, memory-mapped from the cache.

    A missing or damaged cache file is made by `decode(out)`, which fills the
    memmap `out` batch by batch (memory stays bounded), written to a temporary
    name and then renamed, so an interrupted run never leaves a partial file.
    With the cache off (`cache` False or `DMFA_TF_CACHE_DIR=off`), `decode`
    fills an array in memory, or with `spill=True` a memmap of a temporary file
    that is deleted as soon as it is mapped (the disk space is freed when the
    process ends). A cache folder that cannot be written is warned about, and
    the array is decoded in memory.
    """
    shape = tuple(int(s) for s in shape)
    path = cache_path(key, stem, cache)
    if path is None:
        if spill:
            return _spilled(shape, decode)
        return decode(np.empty(shape, np.uint8))
    if os.path.exists(path):
        try:
            images = np.load(path, mmap_mode="r", allow_pickle=False)
            if images.dtype == np.uint8 and images.shape == shape:
                return images
            raise ValueError(f"it holds {images.dtype} {images.shape}, not uint8 {shape}")
        except (OSError, ValueError, EOFError) as error:
            warnings.warn(f"Ignoring the unreadable cache file {path}: {error}", stacklevel=3)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary, out = _new_memmap(shape, os.path.dirname(path), prefix=".tmp-")
    except OSError as error:
        warnings.warn(f"Could not write the cache file {path}: {error}", stacklevel=3)
        return decode(np.empty(shape, np.uint8))
    try:
        decode(out)
        out.flush()
        del out
        os.replace(temporary, path)
        temporary = None
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)
    return np.load(path, mmap_mode="r", allow_pickle=False)
