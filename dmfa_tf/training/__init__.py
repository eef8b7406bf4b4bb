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

| module | owns |
|---|---|
| `pipeline` | training and evaluation `tf.data` pipelines, seeded masks, strategies |
| `outputs` | output paths, free space, the atomic write of the model folder |
| `callbacks` | BackupAndRestore (atomic), best-epoch selection, the objective switch, resume checks |
| `common` | steps shared by image, MFA and table runs: compile, NaN check, test scores, recalibration, export |
| `run` | `train_and_evaluate` (DMFA networks) |
| `mfa_run` | `model="mfa"`: the classical baseline's run |"""

from dmfa_tf.training import outputs
from dmfa_tf.training.callbacks import (
    RESUMABLE_SETTINGS,
    AtomicBackupAndRestore,
    BestEpoch,
    ObjectiveSwitch,
    check_resume,
    select_epoch,
    training_callbacks,
)
from dmfa_tf.training.common import (
    build_from_config,
    check_not_stopped,
    compile_model,
    export_if_asked,
    fit_recalibration,
    inference_copy,
    model_record,
)
from dmfa_tf.training.outputs import (
    OUTPUT_FILES,
    check_free_space,
    check_output_paths,
    write_outputs,
)
from dmfa_tf.training.pipeline import (
    ABSENT_MASK_OFFSET,
    TRAIN_MASK_OFFSET,
    evaluation_data,
    make_absent,
    make_strategy,
    training_data,
    worker_index,
)
from dmfa_tf.training.run import train_and_evaluate

__all__ = [
    "ABSENT_MASK_OFFSET", "AtomicBackupAndRestore", "build_from_config", "BestEpoch", "OUTPUT_FILES", "ObjectiveSwitch",
    "RESUMABLE_SETTINGS", "TRAIN_MASK_OFFSET", "check_free_space", "check_not_stopped",
    "check_output_paths", "check_resume", "compile_model", "evaluation_data", "export_if_asked",
    "fit_recalibration", "inference_copy", "model_record", "make_absent", "make_strategy", "outputs",
    "select_epoch", "train_and_evaluate", "training_callbacks", "training_data", "worker_index",
    "write_outputs",
]
