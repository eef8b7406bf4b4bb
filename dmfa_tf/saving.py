"""Loading saved models of every kind through one function.

A saved model is a folder written by `train.py` (`saved_models/<name>/`):

| file | kind |
|---|---|
| `model.keras` | a DMFA network (`keras.saving.load_model`) |
| `mfa.npz` | a classical mixture of factor analysers (`dmfa_tf.baselines.mfa`) |

plus `config.json` (the training settings), `metrics.json` (its test scores)
and, for DMFA networks, `recalibration.json` (`dmfa_tf.core.recalibration`: the
maps that recalibrate its per-pixel intervals).
Every loaded model is a callable `model({"image", "mask"}) -> {"logits", "loc",
"factors", "diag"}` with an `image_shape` property, so evaluation and export
treat all kinds alike.
"""

import json
import os

__all__ = ["load", "load_config"]


def load(path):
    """Loads a saved model folder, or a `.keras` file.

    Raises:
        FileNotFoundError: `path` does not exist or holds no known model file.
        ValueError: the `.keras` file is not a zip archive (truncated or corrupt).
    """
    if os.path.isfile(path) and path.endswith(".keras"):
        return _load_keras(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No saved model at {path!r}.")
    if os.path.exists(os.path.join(path, "model.keras")):
        return _load_keras(os.path.join(path, "model.keras"))
    if os.path.exists(os.path.join(path, "mfa.npz")):
        from dmfa_tf.baselines.mfa import MFA

        return MFA.load(path)
    raise FileNotFoundError(
        f"{path!r} holds neither model.keras (a DMFA network) nor mfa.npz (an MFA "
        f"model). Found: {sorted(os.listdir(path))}"
    )


def load_config(path):
    """The `config.json` saved beside a model (a dict), or None."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    config_path = os.path.join(folder, "config.json")
    if not os.path.exists(config_path):
        return None
    with open(config_path) as f:
        return json.load(f)


def _load_keras(path):
    import importlib
    import zipfile

    import keras

    importlib.import_module("dmfa_tf.models")  # registers the custom layers and model

    # Keras reports any unreadable file as "File not found"; name the real problem.
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path!r} is not a Keras model file: a .keras file is a zip archive, and this "
            f"one ({os.path.getsize(path):,} bytes) is not. It may be truncated or corrupt; "
            "train or copy it again."
        )
    return keras.saving.load_model(path)
