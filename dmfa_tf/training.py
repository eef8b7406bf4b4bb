"""`train_and_evaluate`: the whole training run behind `train.py`.

A run reads a data set, trains a DMFA network with `model.fit` on freshly
masked images every epoch, scores it on the test split with seeded masks beside
a diagonal-Gaussian baseline, and writes `<output>/model.keras`,
`config.json` and `metrics.json`. Work files go to `<workdir>`:

    <workdir>/checkpoints/last.keras   the model after the latest epoch
    <workdir>/checkpoints/best.json    the best epoch so far by `config.select`
                                       (its score and logs) and its weights file,
    <workdir>/checkpoints/best-epoch<E>.weights.h5   which is what gets shipped
    <workdir>/backup/                  BackupAndRestore state: run the same
                                       command again to continue an
                                       interrupted run where it stopped
    <workdir>/log.csv                  per-epoch losses and metrics
    <workdir>/tensorboard/             TensorBoard logs
"""

import json
import os
import platform
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from dmfa_tf import data as datasets
from dmfa_tf import evaluation, files
from dmfa_tf.data import dequantization, sources
from dmfa_tf.core import recalibration
from dmfa_tf import masks as masks_lib
from dmfa_tf.baselines import DiagonalGaussian
from dmfa_tf.config import TrainConfig, parse_select
from dmfa_tf.models.losses import Objective
from dmfa_tf.models import build_model, precision_of, width_kwargs

__all__ = [
    "AtomicBackupAndRestore",
    "BestEpoch",
    "ObjectiveSwitch",
    "check_output_paths",
    "hardware_description",
    "make_strategy",
    "train_and_evaluate",
    "training_data",
    "write_outputs",
]

# Training masks are seeded (seed + TRAIN_MASK_OFFSET, i), so they never repeat
# the evaluation masks (eval_seed, i) of small seeds.
TRAIN_MASK_OFFSET = 2**31
# `train_absent` masks are seeded (seed + ABSENT_MASK_OFFSET, i), i the image's index.
ABSENT_MASK_OFFSET = 2**32


def make_absent(images, spec, seed):
    """`images` made incomplete: the pixels where the mask spec `spec` gives 0
    (image `i`: seeded `(seed + ABSENT_MASK_OFFSET, i)`) become NaN, for
    training with `nonfinite="absent"`. Returns `(images, absent share)`."""
    absent = evaluation.seeded_masks(images, spec, seed + ABSENT_MASK_OFFSET) == 0
    absent = np.broadcast_to(absent, images.shape)
    return np.where(absent, np.float32(np.nan), images).astype(np.float32), float(absent.mean())


_STRATEGIES = {}  # one instance per name and process: see `make_strategy`


def make_strategy(name):
    """The `tf.distribute` strategy called `name` (see `config.STRATEGIES`).

    Each is made once per process and then reused: two instances of a
    collective strategy in one process would share collective keys, and a
    multi-worker strategy must exist before TensorFlow runs anything
    (`train.py` makes it first thing).
    """
    if name not in _STRATEGIES:
        _STRATEGIES[name] = _new_strategy(name)
    return _STRATEGIES[name]


def _new_strategy(name):
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # Every GPU; without GPUs, every CPU device (one unless logical CPU
        # devices were configured, as the tests do to run two replicas).
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as error:
            raise RuntimeError(f"--strategy=tpu: no TPU could be reached ({error}).") from None
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"Unknown strategy {name!r}.")


def _workers(strategy):
    """The number of worker processes of a multi-worker strategy (else 1)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    return max(1, int(strategy.extended._num_workers))


def worker_index(strategy):
    """None for the process that writes the outputs (the chief of a
    multi-worker run, or the only process); else the worker's index in
    TF_CONFIG (`task.index`)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return None
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return None if (task_type == "worker" and task_id == 0 and not has_chief) else int(task_id)


def training_data(images, mask, batch_size, seed, nonfinite="error", input_context=None,
                  bounded=True):
    """An endless, shuffled, masked, batched data set of `{"image", "mask"}`.

    `images` is an array or a `sources.ImageSource` (a memory-mapped cache, photo
    files): the images are read by index and stay in their stored type (uint8)
    until the last map, so the stream holds no float copy of the split.

    The shuffle order and the masks are seeded; masks are drawn per element of
    the endless stream (element `p` gets the mask seeded `(seed + 1, p)`), so
    every epoch sees new masks. Pass `e` of the stream is the permutation
    `stateless_shuffle(range(n), seed=(seed, e))`: the stream is the same however
    many iterators are made of it (a `tf.distribute` strategy makes its own, and
    a stateful `shuffle` would then give each replica set another order).
    `nonfinite="absent"` makes NaN / inf pixels absent (mask -1: neither seen nor
    scored), which trains on incomplete images (`masks.with_masks`).

    With `input_context` (a `tf.distribute.InputContext`, as
    `strategy.distribute_datasets_from_function` passes it) this input pipeline
    reads only its share of every global batch of `batch_size`: rows
    `[j b / P, (j + 1) b / P)` for pipeline `j` of `P`, batched per replica. The
    elements keep their positions in the whole stream, so the workers together
    train on exactly the batches (images and masks) of one process.
    `bounded=False`: values are not pixels in [0, 1] (table cells).
    """
    source = sources.as_source(images)
    count = len(source)
    seed_tensor = tf.constant(int(seed), tf.int64)

    def permutation(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64), seed=tf.stack([seed_tensor, epoch])
        )
        return tf.data.Dataset.from_tensor_slices(order)

    # An endless stream of (position, index) pairs, pass after pass.
    stream = tf.data.Dataset.zip(
        tf.data.Dataset.counter(), tf.data.Dataset.counter().flat_map(permutation)
    )
    out_batch = batch_size
    if input_context is not None and input_context.num_input_pipelines > 1:
        pipelines, pipeline = input_context.num_input_pipelines, input_context.input_pipeline_id
        if batch_size % pipelines:
            raise ValueError(
                f"The batch size ({batch_size}) must be a multiple of the number of workers "
                f"({pipelines}): each reads an equal share of every batch."
            )
        rows = batch_size // pipelines
        share = slice(pipeline * rows, (pipeline + 1) * rows)
        stream = stream.batch(batch_size).map(lambda p, i: (p[share], i[share])).unbatch()
        out_batch = input_context.get_per_replica_batch_size(batch_size)
    data = source.read(stream.map(lambda p, i: {"position": p, "index": i}))
    data = data.map(lambda element: (element["position"], element["image"]))
    data = masks_lib.with_masks(
        data, mask, seed + TRAIN_MASK_OFFSET, nonfinite=nonfinite, indexed=True, bounded=bounded
    )
    return data.batch(out_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def evaluation_data(images, mask, batch_size, seed, nonfinite="error", bounded=True):
    """The images (an array or a `sources.ImageSource`) in order, image `i` with
    the mask seeded `(seed, i)`, batched (`nonfinite`, `bounded`: as
    `masks.with_masks`)."""
    source = sources.as_source(images)
    data = masks_lib.with_masks(source.images(), mask, seed, nonfinite=nonfinite, bounded=bounded)
    # A stated cardinality lets Keras size the validation pass; without it the
    # first pass ends in a StopIteration that Keras reports as "Your input ran
    # out of data; interrupting training", although nothing was cut short.
    batches = -(-len(source) // batch_size)
    data = data.batch(batch_size).apply(tf.data.experimental.assert_cardinality(batches))
    return data.prefetch(tf.data.AUTOTUNE)


def hardware_description():
    """One line naming the CPU count and any GPUs TensorFlow sees."""
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        gpus.append(details.get("device_name", device.name))
    text = f"{os.cpu_count()} CPU cores ({platform.machine()})"
    if gpus:
        text += ", GPU: " + ", ".join(gpus)
    return text


def inference_copy(model):
    """An uncompiled copy of `model` with the same weights: saved, it holds no
    optimizer state (a third of the size with Adam). Compile the loaded model
    again to continue training it. A model without an optimizer (or not a
    Keras model) is returned as it is."""
    if not isinstance(model, keras.Model) or getattr(model, "optimizer", None) is None:
        return model
    copy = model.__class__.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


# What a model folder written by `write_outputs` holds: replacing such a folder
# loses nothing that is not ours.
OUTPUT_FILES = frozenset({
    "model.keras", "mfa.npz", "config.json", "metrics.json", "table.json", "recalibration.json",
})


def _nearest_existing(path):
    """`path`, or the nearest folder above it that exists (absolute)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_output_paths(output, workdir=None):
    """Raises a ValueError naming the problem, before any training, when the
    run could not write its outputs or would destroy something:

    - `output` or `workdir` lies below a regular file, or is a file itself;
    - the nearest existing folder above either one is not writable;
    - `output` is a folder holding anything but a model of ours (`OUTPUT_FILES`):
      it is replaced whole when the run ends, so that would be deleted;
    - one of `output` and `workdir` lies inside the other.
    """
    output = os.path.abspath(output)
    paths = [("output", output)] + ([("workdir", os.path.abspath(workdir))] if workdir else [])
    for flag, path in paths:
        if os.path.isfile(path):
            raise ValueError(f"--{flag} {path} is a file; give a folder.")
        existing = _nearest_existing(path)
        if not os.path.isdir(existing):
            raise ValueError(f"--{flag} {path} lies below {existing}, which is a file, not a folder.")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f"--{flag} {path}: {existing} is not writable.")
    if os.path.isdir(output):
        foreign = sorted(set(os.listdir(output)) - OUTPUT_FILES)
        if foreign:
            raise ValueError(
                f"--output {output} holds files that are not a dmfa_tf model "
                f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}). The output "
                "folder is replaced whole when the run ends, so they would be deleted. "
                "Give another --output, or move them away."
            )
    if workdir:
        workdir = os.path.abspath(workdir)
        for inner, outer, a, b in ((workdir, output, "workdir", "output"),
                                   (output, workdir, "output", "workdir")):
            if os.path.commonpath([inner, outer]) == outer:
                raise ValueError(
                    f"--{a} {inner} lies inside --{b} {outer}; keep the two apart "
                    "(the output folder is replaced whole when the run ends)."
                )


def _remove_stale_partials(output):
    """Removes `<output>.partial-PID` / `.old-PID` folders left by a killed save
    (their process is gone); those of live processes are left alone."""
    parent, base = os.path.dirname(output), os.path.basename(output)
    for name in os.listdir(parent):
        for tag in (".partial-", ".old-"):
            prefix = base + tag
            if name.startswith(prefix) and name[len(prefix):].isdigit():
                pid = int(name[len(prefix):])
                try:
                    os.kill(pid, 0)
                    alive = pid != os.getpid()
                except ProcessLookupError:
                    alive = False
                except PermissionError:  # another user's live process
                    alive = True
                if not alive:
                    shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


# Bytes per weight a run writes at most: float32 weights in the last checkpoint
# and the backup with Adam's two moments (3 + 3 copies), the best epoch's weights
# and the output model (1 + 1), and as much again while a file is replaced.
BYTES_PER_WEIGHT = 4 * 8 * 2


def check_free_space(config, weights):
    """A ValueError before any training when the workdir's or the output's file
    system has less free space than the run will write (`BYTES_PER_WEIGHT` per
    weight): a full disk found later fails deep inside h5py."""
    needed = BYTES_PER_WEIGHT * int(weights)
    for flag, path in (("workdir", config.workdir), ("output", config.output)):
        free = shutil.disk_usage(_nearest_existing(path)).free
        if free < needed:
            raise ValueError(
                f"--{flag} {path}: {free / 2**20:,.0f} MiB free on its file system, and the run "
                f"writes up to {needed / 2**20:,.0f} MiB ({int(weights):,} weights: checkpoints, "
                "backup and model). Free some space or choose another folder."
            )


def write_outputs(output, model=None, files=None, save=None):
    """Writes `model.keras` and the JSON `files` into `output` atomically: a
    complete new folder replaces the old one, or nothing changes.

    `save`, if given, is called with the folder being written (before it
    replaces `output`) to add other model files, e.g. `MFA.save`. A folder
    `output` holding anything but a model of ours is never replaced: a
    ValueError says so (`check_output_paths`)."""
    check_output_paths(output)
    output = os.path.abspath(output)
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_partials(output)
    partial = f"{output}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        if model is not None:
            inference_copy(model).save(os.path.join(partial, "model.keras"))
        if save is not None:
            save(partial)
        for name, content in (files or {}).items():
            with open(os.path.join(partial, name), "w") as f:
                f.write(content if isinstance(content, str) else json.dumps(content, indent=2))
                f.write("\n")
        old = None
        if os.path.exists(output):
            old = f"{output}.old-{os.getpid()}"
            os.replace(output, old)
        os.replace(partial, output)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


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


def train_and_evaluate(config, verbose=1, command=None, callbacks=()):
    """Trains, scores and saves a DMFA model.

    Args:
        config: a `TrainConfig` (defaults are filled in here).
        verbose: 0 silent, 1 progress bars and the summary, 2 one line per epoch.
        command: the command line to record in `metrics.json`.
        callbacks: Keras callbacks to add to the run's own.

    Returns:
        The metrics dict also written to `<output>/metrics.json`. A worker of
        a multi-worker run other than the chief (see `worker_index`) trains
        its share, writes nothing outside `<workdir>/worker-<index>/`, and
        returns `{"worker": index, "train_seconds": ...}`.
    """
    started = time.time()
    config = config.resolved()
    # A multi-worker strategy must exist before TensorFlow runs anything.
    strategy = make_strategy(config.strategy)
    worker = worker_index(strategy)  # None: this process writes the outputs
    if worker is None:
        check_output_paths(config.output, config.workdir)  # before any work
    keras.utils.set_random_seed(config.seed)
    # Each split is read inside tf.data (a memory-mapped uint8 cache, photo
    # files, or a small array): no float copy of a split is held.
    data = datasets.load_sources(
        config.dataset,
        config.data_dir,
        image_size=config.image_size,
        crop=config.crop,
        download=config.download,
        verbose=1 if verbose else 0,
    )
    train_images = data.train.take(config.max_train_images)
    test_images = data.test.take(config.max_test_images)
    train_mask = masks_lib.parse(config.mask)
    test_mask = masks_lib.parse(config.test_mask)
    height, width, _ = data.image_shape
    for generator in (train_mask, test_mask):  # a hole that does not fit fails here
        generator(height, width, seed=[0, 0])
    if config.model == "mfa":  # EM on arrays in memory
        return _train_mfa(
            config, data, train_images.to_float_array(), test_images, test_mask, started,
            verbose, command,
        )

    if worker is None:
        check_resume(config)
    absent_share = None
    if config.train_absent is not None:  # made in memory: a float copy of the split
        train_images, absent_share = make_absent(
            train_images.to_float_array(), config.train_absent, config.seed
        )
    elif train_images.dtype != tf.uint8:  # float arrays may hold NaN / inf
        array = train_images.to_array()
        nonfinite_count = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        if nonfinite_count and config.nonfinite == "error":
            raise ValueError(
                f"{nonfinite_count:,} pixels of the {config.dataset} training images are NaN or "
                "inf. Pass --nonfinite=absent to train on incomplete images (those pixels are "
                "then neither seen nor scored)."
            )
        if config.nonfinite == "absent":
            absent_share = nonfinite_count / max(1, np.size(array))
    architecture_kwargs = width_kwargs(config.architecture, config.width)
    with strategy.scope():
        model = build_model(
            data.image_shape,
            architecture=config.architecture,
            components=config.components,
            factors=config.factors,
            factor_amplitude=config.factor_amplitude,
            factor_activation=config.factor_activation,
            variance_floor=config.variance_floor,
            variance_activation=config.variance_activation,
            precision=config.precision,
            **architecture_kwargs,
        )
    model.objective = config.objective  # dmfa_tf.models.losses; the default is "nll"
    check_free_space(config, model.count_params())

    steps = max(1, len(train_images) // config.batch_size)
    dequantization_step = 0.0
    if config.dequantize != "off":
        dequantization_step = dequantization.quantization_step(train_images)
        if config.dequantize == "on" and not dequantization_step:
            raise ValueError(
                f"--dequantize=on: the {config.dataset} training images are not 8-bit "
                "(values k/255), so there is nothing to dequantize. Use --dequantize=auto or off."
            )
    with strategy.scope():
        compile_model(model, config, steps)
    if verbose:
        print(
            f"Training {model.name} ({model.count_params():,} weights, K={config.components}, "
            f"L={config.factors}, variance floor {model.head.variance_floor:g}, "
            f"{'bfloat16 backbone' if precision_of(model) != 'float32' else 'float32'}"
            + (f", dequantized targets (step 1/{round(1 / dequantization_step)})"
               if dequantization_step else "")
            + ") on "
            f"{len(train_images):,} {config.dataset} images {data.image_shape}"
            + (f" ({100 * absent_share:.1f}% of their pixels absent)" if absent_share else "")
            + ", masks "
            f"{train_mask.spec()}, {config.epochs} epochs of {steps} steps, batch "
            f"{config.batch_size}, on {hardware_description()}."
        )
    train_started = time.time()
    worker_dir = None if worker is None else os.path.join(config.workdir, f"worker-{worker}")
    run_callbacks, selector = training_callbacks(config, verbose, worker_dir)
    def train_stream(input_context=None):
        stream = training_data(
            train_images, train_mask, config.batch_size, config.seed,
            nonfinite=config.nonfinite, input_context=input_context,
        )
        if dequantization_step:
            stream = dequantization.dequantize_targets(
                stream, dequantization_step, config.seed + TRAIN_MASK_OFFSET
            )
        return stream

    if _workers(strategy) > 1:
        # Each worker reads (decodes) only its share of every global batch.
        stream = strategy.distribute_datasets_from_function(train_stream)
        if verbose:
            print(f"Each of the {_workers(strategy)} workers reads "
                  f"{config.batch_size // _workers(strategy)} images of every batch.")
    else:
        stream = train_stream()
    model.fit(
        stream,
        epochs=config.epochs,
        steps_per_epoch=steps,
        validation_data=evaluation_data(data.val, test_mask, config.batch_size, config.eval_seed),
        callbacks=run_callbacks + list(callbacks),
        shuffle=False,  # the data set is shuffled, seeded
        verbose=verbose,
    )
    train_seconds = time.time() - train_started
    check_not_stopped(model, config)
    if worker is not None:
        # Only the chief scores and writes the model; this worker's part is done.
        shutil.rmtree(os.path.join(worker_dir, "backup"), ignore_errors=True)
        if verbose:
            print(f"Worker {worker}: training done; the chief scores and saves the model.")
        return {"worker": worker, "train_seconds": round(train_seconds, 1)}
    selection = select_epoch(
        model, selector, config,
        f"the validation split ({len(data.val):,} images, masks {test_mask.spec()}, "
        f"seed {config.eval_seed})",
    )

    fitted = fit_recalibration(model, data.val, test_mask, config, verbose)
    if verbose:
        print(f"Scoring {len(test_images):,} test images ({test_mask.spec()}, seed {config.eval_seed})")
    model_scores = evaluation.score(
        model, test_images, test_mask, config.eval_seed, verbose=verbose, recalibration=fitted
    )
    baseline = _baseline_metrics(
        train_images, test_images, test_mask, config.eval_seed, model.head.variance_floor
    )
    metrics = {
        "dataset": config.dataset,
        "test_images": len(test_images),
        "test_mask": test_mask.spec(),
        "eval_seed": config.eval_seed,
        "model": {
            "architecture": config.architecture,
            "components": config.components,
            "factors": config.factors,
            "variance_floor": model.head.variance_floor,
            "weights": int(model.count_params()),
            "precision": precision_of(model),
            "objective": config.objective,
            "objective_switch_epoch": config.objective_switch_epoch,
            "dequantization_step": dequantization_step,
            "absent_training_pixels": absent_share,
        },
        "selection": selection,
        **_nll_and_mse(model_scores),
        "calibration": evaluation.calibration(model_scores),
        "baseline": baseline,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - started, 1),
        "hardware": hardware_description(),
        "versions": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": platform.python_version(),
        },
        "command": command or " ".join(sys.argv),
    }
    files = {"config.json": config.to_json(), "metrics.json": metrics}
    if fitted is not None:
        files[recalibration.FILE] = recalibration.file_content([fitted])
    write_outputs(config.output, model, files)
    if verbose:
        print(format_summary(metrics, config.output))
    export_if_asked(config, model, verbose)
    # Only now that every output is written: a failure before this point
    # resumed the finished training instead of repeating it.
    shutil.rmtree(os.path.join(config.workdir, "backup"), ignore_errors=True)
    return metrics


def compile_model(model, config, steps):
    """Compiles `model` for `config`: Adam at `config.learning_rate`, cosine
    decay over `steps * config.epochs` steps with `--lr-schedule=cosine`, and
    `config.jit_compile`."""
    learning_rate = config.learning_rate
    if config.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=steps * config.epochs, alpha=0.01
        )
    jit = {"auto": "auto", "true": True, "false": False}[config.jit_compile]
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=jit)


def check_not_stopped(model, config):
    """Raises if `model.fit` was stopped by TerminateOnNaN: nothing is saved."""
    if model.stop_training:
        raise RuntimeError(
            "Training stopped early (a NaN loss: TerminateOnNaN). Try a lower "
            "--learning-rate or a larger variance floor; nothing was saved to "
            f"{config.output}."
        )


def fit_recalibration(model, images, mask, config, verbose=0):
    """The `recalibration.Recalibration` of `model`'s per-pixel intervals,
    fitted on `images` (the validation split) with `mask` (seeded as
    `evaluation.score`); None without validation images."""
    if images is None or not len(images):
        return None
    if verbose:
        print(f"Fitting the interval recalibration on {len(images):,} validation images "
              f"({mask.spec()}, seed {config.eval_seed})")
    scores = evaluation.score(
        model, images, mask, config.eval_seed, verbose=verbose,
        pit_histogram_bins=recalibration.BINS,
    )
    if not scores["pit_histogram"].sum():
        return None
    return recalibration.Recalibration.from_counts(scores["pit_histogram"], {
        "dataset": config.dataset, "split": "val", "images": len(images), "mask": mask.spec(),
        "seed": config.eval_seed, "dequantization_step": float(scores["dequantization_step"][0]),
    })


def _nll_and_mse(scores):
    """`{"nll", "mse"}` summaries of per-image `evaluation.score` results."""
    return {
        "nll": evaluation.summarize(scores["nll"]),
        "mse": evaluation.summarize(scores["squared_error"]),
    }


def _baseline_metrics(train_images, test_images, test_mask, seed, variance_floor):
    """The diagonal Gaussian fitted to `train_images`, scored on the test masks."""
    baseline = DiagonalGaussian.fit(train_images, variance_floor=variance_floor)
    scores = evaluation.score(baseline, test_images, test_mask, seed)
    return {"name": "diagonal Gaussian", **_nll_and_mse(scores)}


def export_if_asked(config, model, verbose=1):
    """With `config.export` set, exports `model` for TF Serving into
    `<export>/<name>/<next version>/` and returns that folder (else None)."""
    if not config.export:
        return None
    from dmfa_tf.serving import export_saved_model

    path = export_saved_model(model, os.path.join(config.export, config.name))
    if verbose:
        print(f"Exported the SavedModel (TF Serving) to {path}")
    return path


def format_summary(metrics, output):
    """The end-of-run table."""
    model = metrics["model"]
    name = f"DMFA ({model['architecture']}, K={model['components']}, L={model['factors']})"
    rows = [(name, metrics["nll"], metrics["mse"])]
    rows.append(("diagonal Gaussian", metrics["baseline"]["nll"], metrics["baseline"]["mse"]))
    lines = [
        "",
        f"Test: {metrics['test_images']:,} {metrics['dataset']} images, masks "
        f"{metrics['test_mask']} (seed {metrics['eval_seed']}); per image, summed over "
        "missing pixels, lower is better",
        f"  {'model':<32} {'NLL mean':>10} {'median':>10} {'MSE mean':>10}",
    ]
    for label, nll, mse in rows:
        lines.append(
            f"  {label:<32} {nll['mean']:>10.2f} {nll['median']:>10.2f} {mse['mean']:>10.3f}"
        )
    lines.append(
        f"Training {metrics['train_seconds']:.1f} s, whole run {metrics['total_seconds']:.1f} s "
        f"on {metrics['hardware']}."
    )
    selection = metrics.get("selection")
    if selection:
        text = f"Shipped epoch {selection['epoch']} (0-based) of {selection['epochs']}"
        if selection["criterion"] == "last":
            text += ": the last"
        else:
            text += f": the lowest {selection['criterion']} ({selection['score']:.3f})"
        lines.append(f"{text}; objective {model.get('objective', 'nll')}.")
    calibration = metrics.get("calibration") or {}
    if calibration.get("coverage_50") is not None:
        text = (f"Per-pixel interval coverage (ideal 50% / 90%): "
                f"{100 * calibration['coverage_50']:.1f}% / {100 * calibration['coverage_90']:.1f}%")
        recalibrated = calibration.get("recalibrated")
        if recalibrated:
            text += (f"; recalibrated on the validation split: "
                     f"{100 * recalibrated['coverage_50']:.1f}% / "
                     f"{100 * recalibrated['coverage_90']:.1f}%")
        lines.append(text + ".")
    files = "config.json, metrics.json" + (", recalibration.json" if calibration.get("recalibrated") else "")
    lines.append(f"Saved {os.path.join(output, 'model.keras')}, {files}")
    return "\n".join(lines)


# The classical baseline (`model="mfa"`).

MFA_VARIANCE_FLOOR = 1e-4  # the MFA's variance floor when `variance_floor` is not set


def _train_mfa(config, data, train_images, test_images, test_mask, started, verbose, command):
    """`train_and_evaluate` for `config.model == "mfa"`.

    Fits a mixture of factor analysers by EM on the complete training images,
    scores its "paper" and "exact" conditionals and the diagonal Gaussian on
    the test images (masks `config.test_mask`, seed `config.eval_seed`), and
    writes `<output>/mfa.npz`, `config.json` and `metrics.json`. The headline
    `nll` / `mse` are the paper conditional's (as the paper reports its MFA);
    `exact` holds the full mixture conditional's.
    """
    from dmfa_tf.baselines.mfa import MFA

    floor = config.variance_floor if config.variance_floor is not None else MFA_VARIANCE_FLOOR
    if verbose:
        print(
            f"Fitting an MFA (K={config.mfa_components}, L={config.mfa_factors}, "
            f"{config.mfa_noise} noise) on {len(train_images):,} {config.dataset} images "
            f"{data.image_shape} on {hardware_description()}."
        )
    fit_started = time.time()
    model = MFA.fit(
        train_images,
        config.mfa_components,
        config.mfa_factors,
        iterations=config.mfa_iterations,
        noise=config.mfa_noise,
        init=config.mfa_init,
        seed=config.seed,
        variance_floor=floor,
        verbose=verbose,
    )
    fit_seconds = time.time() - fit_started

    scores = {}
    batch_size = model.batch_size_for()
    # Each `evaluation.score` call traces a new function (twice: full and last
    # batch); three calls trip TensorFlow's harmless retracing warning.
    tf_logger = tf.get_logger()
    logger_level = tf_logger.level
    tf_logger.setLevel("ERROR")
    try:
        for conditional in ("paper", "exact"):
            model.conditional = conditional
            if verbose:
                print(
                    f"Scoring the {conditional} conditional on {len(test_images):,} test "
                    f"images ({test_mask.spec()}, seed {config.eval_seed})"
                )
            scores[conditional] = evaluation.score(
                model, test_images, test_mask, config.eval_seed, batch_size=batch_size,
                verbose=verbose,
            )
        model.conditional = "paper"
        baseline = _baseline_metrics(
            train_images, test_images, test_mask, config.eval_seed, floor
        )
    finally:
        tf_logger.setLevel(logger_level)
    metrics = {
        "dataset": config.dataset,
        "test_images": len(test_images),
        "test_mask": test_mask.spec(),
        "eval_seed": config.eval_seed,
        "model": {
            "kind": "mfa",
            "components": config.mfa_components,
            "factors": config.mfa_factors,
            "noise": config.mfa_noise,
            "init": config.mfa_init,
            "iterations": config.mfa_iterations,
            "variance_floor": floor,
            "parameters": model.count_params(),
            "train_images": len(train_images),
        },
        "conditional": "paper",
        **_nll_and_mse(scores["paper"]),
        "exact": _nll_and_mse(scores["exact"]),
        "baseline": baseline,
        "log_likelihood_history": model.history,
        "fit_seconds": round(fit_seconds, 1),
        "train_seconds": round(fit_seconds, 1),  # the same, for parity with DMFA runs
        "total_seconds": round(time.time() - started, 1),
        "hardware": hardware_description(),
        "versions": {
            "tensorflow": tf.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "command": command or " ".join(sys.argv),
    }
    write_outputs(
        config.output,
        files={"config.json": config.to_json(), "metrics.json": metrics},
        save=model.save,
    )
    if verbose:
        print(_format_mfa_summary(metrics, config.output))
    return metrics


def _format_mfa_summary(metrics, output):
    """The end-of-run table of an MFA run."""
    model = metrics["model"]
    rows = [
        ("MFA paper conditional", metrics["nll"], metrics["mse"]),
        ("MFA exact conditional", metrics["exact"]["nll"], metrics["exact"]["mse"]),
        ("diagonal Gaussian", metrics["baseline"]["nll"], metrics["baseline"]["mse"]),
    ]
    lines = [
        "",
        f"Test: {metrics['test_images']:,} {metrics['dataset']} images, masks "
        f"{metrics['test_mask']} (seed {metrics['eval_seed']}); per image, summed over "
        "missing pixels, lower is better",
        f"MFA: K={model['components']}, L={model['factors']}, {model['noise']} noise, "
        f"{model['init']} init, {model['iterations']} EM iterations, variance floor "
        f"{model['variance_floor']:g}",
        f"  {'model':<32} {'NLL mean':>10} {'median':>10} {'MSE mean':>10}",
    ]
    for label, nll, mse in rows:
        lines.append(
            f"  {label:<32} {nll['mean']:>10.2f} {nll['median']:>10.2f} {mse['mean']:>10.3f}"
        )
    lines.append(
        f"EM fit {metrics['fit_seconds']:.1f} s, whole run {metrics['total_seconds']:.1f} s "
        f"on {metrics['hardware']}."
    )
    lines.append(f"Saved {os.path.join(output, 'mfa.npz')}, config.json, metrics.json")
    return "\n".join(lines)
