"""`train_and_evaluate`: the whole training run behind `train.py`."""

import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from dmfa_tf import data as datasets
from dmfa_tf import evaluation
from dmfa_tf import masks as masks_lib
from dmfa_tf import reporting
from dmfa_tf.config import STANDARDIZE_IMAGES
from dmfa_tf.core import colour, recalibration
from dmfa_tf.data import dequantization
from dmfa_tf.models import precision_of
from dmfa_tf.reporting import format_summary, hardware_description
from dmfa_tf.training import outputs
from dmfa_tf.training.callbacks import check_resume, select_epoch, training_callbacks
from dmfa_tf.training.common import (
    _baseline_metrics,
    _nll_and_mse,
    build_from_config,
    check_not_stopped,
    compile_model,
    export_if_asked,
    fit_recalibration,
    model_record,
    scored_on,
)
from dmfa_tf.training.mfa_run import _train_mfa
from dmfa_tf.training.outputs import check_free_space, check_output_paths
from dmfa_tf.training.pipeline import (
    TRAIN_MASK_OFFSET,
    _workers,
    evaluation_data,
    make_absent,
    make_strategy,
    training_data,
    worker_index,
)


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
    standardize = None
    if config.standardize == "on":
        if isinstance(train_images, np.ndarray):  # made incomplete above: NaN where absent
            sample = train_images[:STANDARDIZE_IMAGES]
        else:
            sample = train_images.take(STANDARDIZE_IMAGES).to_float_array()
        standardize = colour.channel_statistics(sample, config.colour_basis)
        if verbose:
            print(f"Standardised channels ({config.colour_basis}, from {len(sample):,} training "
                  f"images): shift {np.round(standardize[0], 4).tolist()}, "
                  f"scale {np.round(standardize[1], 4).tolist()}")
    with strategy.scope():
        model = build_from_config(config, data.image_shape, standardize=standardize)
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

    scale_prior = None
    if config.scale_prior == "on" and data.val is not None and len(data.val):
        if verbose:
            print(f"Fitting the scale prior on {len(data.val):,} validation images "
                  f"({test_mask.spec()}, seed {config.eval_seed})")
        model, scale_prior = evaluation.fit_scale_prior(
            model, data.val, test_mask, config.eval_seed, verbose=verbose
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
        **scored_on(config, test_images, test_mask),
        "model": {
            **model_record(config, model),
            "precision": precision_of(model),
            "objective_switch_epoch": config.objective_switch_epoch,
            "dequantization_step": dequantization_step,
            "absent_training_pixels": absent_share,
        },
        "selection": selection,
        "scale_prior": scale_prior,
        **_nll_and_mse(model_scores),
        "calibration": evaluation.calibration(model_scores),
        "baseline": baseline,
        "train_seconds": round(train_seconds, 1),
        **reporting.run_record(started, command),
    }
    files = {"config.json": config.to_json(), "metrics.json": metrics}
    if fitted is not None:
        files[recalibration.FILE] = recalibration.file_content([fitted])
    outputs.write_outputs(config.output, model, files)
    if verbose:
        print(format_summary(metrics, config.output))
    export_if_asked(config, model, verbose)
    # Only now that every output is written: a failure before this point
    # resumed the finished training instead of repeating it.
    shutil.rmtree(os.path.join(config.workdir, "backup"), ignore_errors=True)
    return metrics
