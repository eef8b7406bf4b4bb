"""What a run reports: the hardware line, the versions, and the end-of-run
tables of DMFA and MFA runs."""

import os
import platform
import sys
import time

import numpy as np
import tensorflow as tf


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


def _score_lines(metrics, rows, described=None):
    """The header and the rows (label, NLL summary, MSE summary) of an
    end-of-run table; `described` is a line about the model, if any."""
    lines = [
        "",
        f"Test: {metrics['test_images']:,} {metrics['dataset']} images, masks "
        f"{metrics['test_mask']} (seed {metrics['eval_seed']}); per image, summed over "
        "missing pixels, lower is better",
    ]
    if described:
        lines.append(described)
    lines.append(f"  {'model':<32} {'NLL mean':>10} {'median':>10} {'MSE mean':>10}")
    for label, nll, mse in rows:
        lines.append(
            f"  {label:<32} {nll['mean']:>10.2f} {nll['median']:>10.2f} {mse['mean']:>10.3f}"
        )
    return lines


def _baseline_row(metrics):
    return ("diagonal Gaussian", metrics["baseline"]["nll"], metrics["baseline"]["mse"])


def format_summary(metrics, output):
    """The end-of-run table of a DMFA run."""
    model = metrics["model"]
    name = f"DMFA ({model['architecture']}, K={model['components']}, L={model['factors']})"
    lines = _score_lines(metrics, [(name, metrics["nll"], metrics["mse"]), _baseline_row(metrics)])
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
    prior = metrics.get("scale_prior")
    if prior:
        lines.append(
            f"Scale prior ({len(prior['scales'])} scales, {prior['scales'][0]:.3g} to "
            f"{prior['scales'][-1]:.3g}): validation NLL {prior['nll']:.2f} "
            f"(at scale 1 alone: {prior['nll_without']:.2f})."
        )
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


def format_mfa_summary(metrics, output):
    """The end-of-run table of an MFA run."""
    model = metrics["model"]
    rows = [
        ("MFA paper conditional", metrics["nll"], metrics["mse"]),
        ("MFA exact conditional", metrics["exact"]["nll"], metrics["exact"]["mse"]),
        _baseline_row(metrics),
    ]
    described = (
        f"MFA: K={model['components']}, L={model['factors']}, {model['noise']} noise, "
        f"{model['init']} init, {model['iterations']} EM iterations, variance floor "
        f"{model['variance_floor']:g}"
    )
    lines = _score_lines(metrics, rows, described)
    lines.append(
        f"EM fit {metrics['fit_seconds']:.1f} s, whole run {metrics['total_seconds']:.1f} s "
        f"on {metrics['hardware']}."
    )
    lines.append(f"Saved {os.path.join(output, 'mfa.npz')}, config.json, metrics.json")
    return "\n".join(lines)


def run_versions():
    """The versions a run records in `metrics.json`."""
    import keras

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def run_record(started, command=None):
    """What every run's `metrics.json` ends with: the whole run's seconds
    since `started` (a `time.time()`), the hardware, the versions and the
    command line."""
    return {
        "total_seconds": round(time.time() - started, 1),
        "hardware": hardware_description(),
        "versions": run_versions(),
        "command": command or " ".join(sys.argv),
    }
