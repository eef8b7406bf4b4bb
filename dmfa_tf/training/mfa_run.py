"""`model="mfa"`: the classical baseline fitted by EM on complete training
images, scored with both conditionals beside the diagonal Gaussian."""

import time

from dmfa_tf import evaluation, reporting
from dmfa_tf.reporting import format_mfa_summary, hardware_description
from dmfa_tf.training import outputs
from dmfa_tf.training.common import _baseline_metrics, _nll_and_mse, scored_on

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
    metrics = {
        **scored_on(config, test_images, test_mask),
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
        **reporting.run_record(started, command),
    }
    outputs.write_outputs(
        config.output,
        files={"config.json": config.to_json(), "metrics.json": metrics},
        save=model.save,
    )
    if verbose:
        print(format_mfa_summary(metrics, config.output))
    return metrics
