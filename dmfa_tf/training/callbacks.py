"""Keras callbacks of a run and what they need: the atomic backup (resume where
a run stopped), best-epoch selection, the objective switch."""

import json
import os
import shutil

import keras
import numpy as np

from dmfa_tf import files
from dmfa_tf.config import parse_select
from dmfa_tf.models.losses import Objective


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` whose backup is never half-written, and kept.

    Keras writes `latest.weights.h5` in place: a kill during that write leaves a
    truncated file that every later run fails to load. Here each backup is a
    complete folder `<backup_dir>/epoch-<E>/` (weights and training metadata),
    written first and then named in `<backup_dir>/latest`, a one-line file
    replaced atomically. The older folder is removed only after that, so a kill
    at any moment leaves one complete backup. The backup is not deleted when
    training ends: `train_and_evaluate` removes it once the outputs are
    published, so a failure while scoring or saving loses no training.
    """

    def __init__(self, backup_dir, restore_dir=None):
        """`restore_dir`: where a run resumes from (default `backup_dir`). The
        workers of a multi-worker run other than the chief write their backup
        into a folder of their own and resume from the chief's, so that every
        worker resumes at the same epoch with the same weights."""
        super().__init__(backup_dir, delete_checkpoint=False)
        self._pointer = os.path.join(backup_dir, "latest")
        self._restore_dir = restore_dir or backup_dir
        self._use(self._latest(), self._restore_dir)

    def _latest(self, folder=None):
        """The backup named by `<folder>/latest` (default: the restore
        folder), if it is complete; else None."""
        folder = folder or self._restore_dir
        try:
            with open(os.path.join(folder, "latest")) as f:
                name = f.read().strip()
        except OSError:
            return None
        return name if name and os.path.isdir(os.path.join(folder, name)) else None

    def _use(self, name, base):
        # No pointer: Keras's own layout (files in the folder itself), as left by
        # an interrupted run of an older dmfa_tf, is read if it is there.
        folder = base if name is None else os.path.join(base, name)
        self._weights_path = os.path.join(folder, "latest.weights.h5")
        self._training_metadata_path = os.path.join(folder, "training_metadata.json")

    def _load_model(self):
        self._use(self._latest(), self._restore_dir)
        super()._load_model()

    def _save_model(self):
        name = f"epoch-{self._current_epoch}"
        folder = os.path.join(self.backup_dir, name)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        self._use(name, self.backup_dir)
        super()._save_model()  # weights and metadata into the new folder
        files.write_text(self._pointer, name + "\n")  # the new backup is complete and current
        for other in os.listdir(self.backup_dir):
            if other != name and other != "latest":
                path = os.path.join(self.backup_dir, other)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


class BestEpoch(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the lowest selection criterion.

    After each epoch the criterion (`config.parse_select`: e.g. `"val_nll"` or
    `"val_nll+20*val_mse"`) is computed from the epoch's logs; a new lowest
    score saves the weights to `<folder>/best-epoch<E>.weights.h5` and then
    records `{"criterion", "epoch", "score", "logs", "weights"}` in
    `<folder>/best.json` (replaced atomically; the older weights file is
    removed only then), so an interrupted run always has a consistent best.

    With `resume=True` (a run continued by `BackupAndRestore`) the best so far
    is read back from `best.json`; otherwise an older run's files are removed.
    Put it before `BackupAndRestore` in the callbacks, so that an epoch is
    judged before it is backed up. `best` holds the record (None before any).
    """

    def __init__(self, folder, select="val_nll", resume=False):
        super().__init__()
        self.folder = folder
        self.select = select
        self.terms = parse_select(select)
        if not self.terms:
            raise ValueError("BestEpoch needs a criterion; select='last' needs no callback.")
        os.makedirs(folder, exist_ok=True)
        self.best = None
        record_path = os.path.join(folder, "best.json")
        if resume and os.path.exists(record_path):
            with open(record_path) as f:
                record = json.load(f)
            weights = os.path.join(folder, record.get("weights", ""))
            if record.get("criterion") == select and os.path.exists(weights):
                self.best = record  # else: another criterion, scores not comparable
        if self.best is None:
            self.forget(folder)
        self._remove_weights(folder, keep=self.best["weights"] if self.best else None)

    @staticmethod
    def forget(folder):
        """Removes the best-epoch files from `folder` (an older run's)."""
        if os.path.exists(os.path.join(folder, "best.json")):
            os.remove(os.path.join(folder, "best.json"))
        BestEpoch._remove_weights(folder)

    @staticmethod
    def _remove_weights(folder, keep=None):
        for name in os.listdir(folder):
            if name.startswith("best-epoch") and name.endswith(".weights.h5") and name != keep:
                os.remove(os.path.join(folder, name))

    @property
    def weights_path(self):
        """The best epoch's weights file (None before any)."""
        return os.path.join(self.folder, self.best["weights"]) if self.best else None

    def score(self, logs):
        missing = sorted({metric for _, metric in self.terms} - set(logs or {}))
        if missing:
            raise ValueError(
                f"select={self.select!r} needs {missing} in the epoch's logs; it has "
                f"{sorted(logs or {})}."
            )
        return float(sum(c * float(logs[metric]) for c, metric in self.terms))

    def on_epoch_end(self, epoch, logs=None):
        score = self.score(logs)
        if not np.isfinite(score) or (self.best is not None and score >= self.best["score"]):
            return
        name = f"best-epoch{epoch:04d}.weights.h5"
        self.model.save_weights(os.path.join(self.folder, name))
        self.best = {
            "criterion": self.select,
            "epoch": int(epoch),
            "score": score,
            "logs": {key: float(value) for key, value in (logs or {}).items()},
            "weights": name,
        }
        files.write_json(os.path.join(self.folder, "best.json"), self.best)
        self._remove_weights(self.folder, keep=name)


class ObjectiveSwitch(keras.callbacks.Callback):
    """Trains on `objective` for the first `epochs` epochs, then on `after`
    (the NLL): the reference's two phases on CelebA. The objective is set at
    the start of every epoch from its number, so a resumed run is right too."""

    def __init__(self, objective, epochs, after="nll"):
        super().__init__()
        self.objective = str(Objective.parse(objective))
        self.after = str(Objective.parse(after))
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        wanted = self.objective if epoch < self.epochs else self.after
        if self.model.objective != wanted:
            self.model.objective = wanted  # drops the traced step functions
            self.model.make_train_function(force=True)


# Settings that may change when an interrupted run is continued: they do not
# change what was trained so far (`epochs`: train for longer or shorter).
RESUMABLE_SETTINGS = frozenset(
    {"epochs", "output", "export", "name", "max_test_images", "restart", "download"}
)


def check_resume(config):
    """Refuses to continue an interrupted run with other settings (naming them),
    or starts over with `config.restart`; records the run's settings."""
    workdir = config.workdir
    backup = os.path.join(workdir, "backup")
    settings_path = os.path.join(workdir, "run_config.json")
    if config.restart:
        shutil.rmtree(backup, ignore_errors=True)
    elif os.path.isdir(backup) and os.path.exists(settings_path):
        with open(settings_path) as f:
            before = json.load(f)
        now = json.loads(config.to_json())
        changed = [
            f"--{key.replace('_', '-')} {before.get(key)!r} -> {now[key]!r}"
            for key in sorted(now)
            if key not in RESUMABLE_SETTINGS and before.get(key) != now[key]
        ]
        if changed:
            raise ValueError(
                f"{workdir} holds an interrupted run with other settings ({'; '.join(changed)}). "
                "Run it with its own settings to continue it, add --restart to start over "
                "(its backup is deleted), or give another --workdir."
            )
    os.makedirs(workdir, exist_ok=True)
    files.write_json(settings_path, json.loads(config.to_json()))


def training_callbacks(config, verbose, worker_dir=None):
    """The run's callbacks, and its `BestEpoch` (None with `select="last"`).

    `worker_dir`: a worker of a multi-worker run other than the chief writes
    its checkpoints, backup and logs there (`<workdir>/worker-<index>`), and
    resumes from the chief's backup.
    """
    workdir = worker_dir or config.workdir
    checkpoints = os.path.join(workdir, "checkpoints")
    backup = os.path.join(workdir, "backup")
    restore = os.path.join(config.workdir, "backup")
    os.makedirs(checkpoints, exist_ok=True)
    # A backup means BackupAndRestore continues an interrupted run: keep its best.
    resume = os.path.isdir(restore)
    selector = None
    callbacks = []
    if parse_select(config.select):
        selector = BestEpoch(checkpoints, config.select, resume=resume)
        callbacks.append(selector)
    elif not resume:
        BestEpoch.forget(checkpoints)
    if config.objective_switch_epoch is not None:
        callbacks.append(ObjectiveSwitch(config.objective, config.objective_switch_epoch))
    log = os.path.join(workdir, "log.csv")
    if not resume and os.path.exists(log):  # a finished run's log: kept, not appended to
        os.replace(log, os.path.join(workdir, "log.previous.csv"))
    callbacks += [
        AtomicBackupAndRestore(backup, restore_dir=restore),
        keras.callbacks.ModelCheckpoint(os.path.join(checkpoints, "last.keras")),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(log, append=True),
        keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard")),
    ]
    return callbacks, selector


def select_epoch(model, selector, config, validation):
    """Loads the selected epoch's weights into `model`; the `selection` record
    of metrics.json. `validation` describes the validation split and masks."""
    last = config.epochs - 1
    if selector is None:
        return {"criterion": "last", "epoch": last, "epochs": config.epochs,
                "reason": "the last epoch (select='last')"}
    if selector.best is None:
        raise RuntimeError(
            f"No epoch had a finite {config.select}; nothing was saved to {config.output}."
        )
    model.load_weights(selector.weights_path)
    best = selector.best
    return {
        "criterion": config.select,
        "epoch": best["epoch"],
        "epochs": config.epochs,
        "score": best["score"],
        **{key: best["logs"][key] for key in ("val_nll", "val_mse") if key in best["logs"]},
        "reason": f"lowest {config.select} over epochs 0-{last} (0-based, as log.csv) on "
        f"{validation}",
    }
