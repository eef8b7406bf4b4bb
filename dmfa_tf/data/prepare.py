"""Preparing TFDS's own builders offline, from local copies of their sources.

TFDS's own `mnist` can be prepared offline from the four canonical IDX files:
`python -m dmfa_tf.data prepare-mnist --idx-dir DIR --data-dir DIR`
(`prepare_tfds_mnist`); `prepare_tfds` does the same for any builder. TFDS
verifies checksums: the Fashion-MNIST files that Debian ships are
recompressed (their content is the original but their bytes are not), so they
are rejected; read them with the IDX loader instead.
"""

import hashlib
import os
import shutil
import tempfile

from dmfa_tf.data.tfds import _is_prepared, _quiet_absl, _tfds

__all__ = ["prepare_tfds", "prepare_tfds_mnist"]


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_tfds(name, source_dir, data_dir):
    """Prepares TFDS's own builder `name` offline from its source files.

    The files TFDS would download (its `checksums.tsv`) are looked up in
    `source_dir` by content (SHA-256), whatever their names, placed under the
    names that the builder expects in a temporary manual directory, and the
    builder runs `download_and_prepare(download_config=DownloadConfig(
    manual_dir=..., try_download_gcs=False))`. Afterwards
    `load(name, data_dir=data_dir)` reads through TFDS. Needs
    `importlib_resources` and `Pillow`.

    Args:
        name: a TFDS builder name, e.g. `"mnist"`.
        source_dir: folder holding the source files, byte-identical to the
            canonical ones (e.g. MNIST's four `.gz` IDX files).
        data_dir: TFDS data_dir to prepare into (created if needed).

    Returns:
        the prepared builder.

    Raises:
        FileNotFoundError: `source_dir` does not exist.
        ValueError: a file TFDS needs is not in `source_dir` (or differs from
            the canonical bytes); names it and its expected checksum.
    """
    tfds = _tfds()
    if not source_dir or not os.path.isdir(source_dir):
        raise FileNotFoundError(f"Source folder not found: {source_dir!r}")
    if not data_dir:
        raise ValueError("prepare_tfds needs data_dir (--data-dir): where TFDS writes the data.")
    with _quiet_absl():
        builder = tfds.builder(name, data_dir=data_dir)
    if _is_prepared(builder):
        return builder
    url_infos = builder.url_infos or {}
    if not url_infos:
        raise ValueError(
            f"TFDS's {name} builder lists no source files (checksums.tsv); it cannot "
            "be prepared from local files this way."
        )
    expected = {}
    for url, info in url_infos.items():
        expected[info.checksum] = (info.filename or url.rstrip("/").split("/")[-1], info.size)
    sizes = {size for _, size in expected.values()}
    found, examined = {}, {}
    for entry in sorted(os.listdir(source_dir)):
        path = os.path.join(source_dir, entry)
        if not os.path.isfile(path):
            continue
        if os.path.getsize(path) in sizes or entry in {n for n, _ in expected.values()}:
            checksum = _sha256(path)
            examined[entry] = checksum
            if checksum in expected:
                found[checksum] = path
    missing = [(filename, checksum) for checksum, (filename, _) in expected.items()
               if checksum not in found]
    if missing:
        lines = []
        for filename, checksum in missing:
            line = f"{filename} (sha256 {checksum})"
            if filename in examined:
                line += (
                    f": {os.path.join(source_dir, filename)} has sha256 {examined[filename]}, "
                    "not byte-identical to the canonical file"
                )
            lines.append(line)
        raise ValueError(
            f"{source_dir} lacks files that TFDS's {name} builder needs: "
            + "; ".join(lines)
            + ". TFDS verifies checksums, so only the canonical bytes work (recompressed "
            "copies such as Debian's Fashion-MNIST are rejected); read such files with "
            f"load({name!r}, data_dir={source_dir!r}) instead."
        )
    os.makedirs(data_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".prepare-{name}-", dir=data_dir)
    try:
        manual_dir = os.path.join(work, "manual")
        os.makedirs(manual_dir)
        for checksum, path in found.items():
            target = os.path.join(manual_dir, expected[checksum][0])
            try:
                os.symlink(os.path.abspath(path), target)
            except OSError:
                shutil.copyfile(path, target)
        builder.download_and_prepare(
            download_dir=os.path.join(work, "downloads"),
            download_config=tfds.download.DownloadConfig(
                manual_dir=manual_dir, try_download_gcs=False
            ),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return builder


def prepare_tfds_mnist(idx_dir, data_dir):
    """Prepares TFDS's `mnist` offline from the four canonical MNIST IDX `.gz`
    files in `idx_dir` into the TFDS data_dir `data_dir` (see `prepare_tfds`)."""
    return prepare_tfds("mnist", idx_dir, data_dir)
