"""Writing files so that a reader never sees half of one (standard library only).

Every file `dmfa_tf` writes goes through `atomic_path`: the content is written
to `<path>.partial-<pid>` in the same folder and renamed over `path` only once
it is complete (`os.replace`, atomic on POSIX and Windows), so a killed process
leaves either the old file or the new one, never a truncated one; the partial
file is removed when the writing fails. Folders written whole (a model folder,
a SavedModel version) use the same idea one level up: see
`training.write_outputs` and `serving.export_saved_model`.
"""

import contextlib
import json
import os

__all__ = ["atomic_path", "umask", "write_bytes", "write_json", "write_text"]


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path beside `path` for the block to write; renamed to
    `path` when the block ends without an exception, removed otherwise. The
    folder is created if needed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    partial = f"{path}.partial-{os.getpid()}"
    try:
        yield partial
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def write_text(path, text):
    """Writes `text` to `path` atomically (`atomic_path`)."""
    with atomic_path(path) as partial:
        with open(partial, "w", newline="") as f:
            f.write(text)


def write_bytes(path, content):
    """Writes `content` to `path` atomically (`atomic_path`)."""
    with atomic_path(path) as partial:
        with open(partial, "wb") as f:
            f.write(content)


def write_json(path, content):
    """Writes `content` as indented JSON, with a final newline, atomically."""
    write_text(path, json.dumps(content, indent=2) + "\n")


def umask():
    """The process's file-mode creation mask (read without changing it for good)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
