"""Saving and loading the MFA baseline: one `mfa.npz` file per folder
(`MFA.save`, `MFA.load`, `dmfa_tf.saving.load`)."""

import json
import math
import os

import numpy as np

from dmfa_tf import files

__all__ = ["FILENAME"]

FILENAME = "mfa.npz"


def _save(model, folder):
    """Writes `folder/mfa.npz` atomically; makes `folder`."""
    os.makedirs(folder, exist_ok=True)
    arrays = {
        "weights": model.weights,
        "means": model.means,
        "factors": model.factors,
        "noise": model.noise,
        "image_shape": np.asarray(model.image_shape, np.int64),
        "noise_type": np.asarray(model.noise_type),
        "conditional": np.asarray(model.conditional),
        "history": np.asarray(model.history, np.float64),
        "variance_floor": np.asarray(
            np.nan if model.variance_floor is None else model.variance_floor, np.float64
        ),
        "info": np.asarray(json.dumps(model.info)),
        "format_version": np.asarray(1, np.int64),
    }
    with files.atomic_path(os.path.join(folder, FILENAME)) as partial:
        with open(partial, "wb") as f:  # a file object: savez adds no ".npz"
            np.savez(f, **arrays)


def _load(folder):
    """The `MFA` constructor's `(arguments, keyword arguments)` read from a
    folder saved by `_save`, or from the `.npz` file itself."""
    path = folder if folder.endswith(".npz") else os.path.join(folder, FILENAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No MFA model at {path!r}.")
    with np.load(path, allow_pickle=False) as data:
        floor = float(data["variance_floor"])
        arguments = (
            data["weights"],
            data["means"],
            data["factors"],
            data["noise"],
            tuple(int(d) for d in data["image_shape"]),
        )
        settings = dict(
            noise_type=str(data["noise_type"]),
            conditional=str(data["conditional"]),
            history=data["history"].tolist(),
            variance_floor=None if math.isnan(floor) else floor,
            info=json.loads(str(data["info"])),
        )
    return arguments, settings
