"""Steps shared by the image, MFA and table runs: compiling, the NaN check,
test scores beside the diagonal Gaussian, the recalibration fit, export."""

import os

import keras

from dmfa_tf import evaluation
from dmfa_tf.baselines import DiagonalGaussian
from dmfa_tf.core import recalibration
from dmfa_tf.models import build_model, width_kwargs


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
        "mse_mixture_mean": evaluation.summarize(scores["squared_error_mixture_mean"]),
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


def build_from_config(config, image_shape, bounded_inputs=True, dropout=None, standardize=None):
    """`build_model` with the network settings of a resolved `TrainConfig`
    (`dropout`: tables' rate; `standardize`: `(shift, scale)` with
    `config.standardize == "on"`)."""
    return build_model(
        image_shape,
        architecture=config.architecture,
        components=config.components,
        factors=config.factors,
        factor_amplitude=config.factor_amplitude,
        factor_activation=config.factor_activation,
        variance_floor=config.variance_floor,
        variance_activation=config.variance_activation,
        colour_basis=config.colour_basis,
        precision=config.precision,
        bounded_inputs=bounded_inputs,
        standardize=standardize,
        fill=config.fill,
        global_factors=config.global_factors,
        global_scale=config.global_scale,
        **width_kwargs(config.architecture, config.width, dropout),
    )


def scored_on(config, test_images, test_mask):
    """The first keys of a run's test metrics: what was scored, on which masks."""
    return {
        "dataset": config.dataset,
        "test_images": len(test_images),
        "test_mask": test_mask.spec(),
        "eval_seed": config.eval_seed,
    }


def model_record(config, model):
    """What a run's `metrics.json` says about its network."""
    return {
        "architecture": config.architecture,
        "components": config.components,
        "factors": config.factors,
        "variance_floor": model.head.variance_floor,
        "colour_basis": model.head.colour_basis,
        "standardized": model.get_layer("observed_input").shift is not None,
        "fill": model.get_layer("observed_input").fill,
        "global_factors": model.head.global_factors,
        "global_scale": model.head.global_scale,
        "weights": int(model.count_params()),
        "objective": config.objective,
    }
