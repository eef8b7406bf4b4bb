"""Reports of a comparison: the markdown tables and the per-image CSV."""

import csv
import io
import math

from dmfa_tf import files
from dmfa_tf.evaluation.metrics import METRICS


def comparison_table(rows):
    """Markdown tables of summaries: rows of (label, {metric: summary,
    "calibration": calibration}). The calibration table follows the metrics
    table when any row has calibration results."""
    lines = [
        "| model | NLL mean ± std | NLL median | MSE mean ± std | MSE of the mixture mean "
        "| PSNR (dB) | SSIM |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(summary, digits, spread=True, key="mean"):
        if summary is None or summary[key] is None:
            return "n/a"
        text = f"{summary[key]:.{digits}f}"
        return text + (f" ± {summary['std']:.{digits}f}" if spread else "")

    for label, summary in rows:
        lines.append(
            f"| {label} | {fmt(summary['nll'], 2)} | {fmt(summary['nll'], 2, False, 'median')} | "
            f"{fmt(summary['squared_error'], 2)} | "
            f"{fmt(summary.get('squared_error_mixture_mean'), 2, False)} | "
            f"{fmt(summary['psnr'], 2, False)} | "
            f"{fmt(summary['ssim'], 4, False)} |"
        )
    if not any("calibration" in summary for _, summary in rows):
        return "\n".join(lines)

    def share(value, digits=1):
        return "n/a" if value is None else f"{100 * value:.{digits}f}%"

    lines += [
        "",
        "| model | 50% interval coverage | 90% interval coverage | PIT deciles (ideal 0.100 each) "
        "| χ² < 1st pct. | χ² > 99th pct. | the same, posterior component |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for label, summary in rows:
        result = summary.get("calibration")
        if result is None:
            lines.append(f"| {label} | n/a | n/a | n/a | n/a | n/a | n/a |")
            continue
        deciles = result["pit_deciles"]
        deciles = "n/a" if deciles is None else " ".join(f"{v:.3f}" for v in deciles)
        lines.append(
            f"| {label} | {share(result['coverage_50'])} | {share(result['coverage_90'])} | "
            f"{deciles} | {share(result['mahalanobis_below_p1'])} | "
            f"{share(result['mahalanobis_above_p99'])} | "
            f"{share(result.get('mahalanobis_posterior_below_p1'))} / "
            f"{share(result.get('mahalanobis_posterior_above_p99'))} |"
        )
        recalibrated = result.get("recalibrated")
        if recalibrated:
            deciles = " ".join(f"{v:.3f}" for v in recalibrated["pit_deciles"])
            fitted_for = f" ({recalibrated['map_mask']} map)" if recalibrated.get("map_mask") else ""
            lines.append(
                f"| {label}, recalibrated intervals{fitted_for} | {share(recalibrated['coverage_50'])} | "
                f"{share(recalibrated['coverage_90'])} | {deciles} | – | – | – |"
            )
    steps = {
        (summary.get("calibration") or {}).get("dequantization_step") for _, summary in rows
    } - {None}
    if any(steps):
        q = max(steps)
        lines += [
            "",
            f"Calibration measured at the dequantized missing values x + (v - 1/2) q, "
            f"q = 1/{round(1 / q)}, v ~ U(0, 1) seeded per image (dmfa_tf.data.dequantization); "
            "evaluate.py --dequantize=off measures it at the stored values.",
        ]
    return "\n".join(lines)


write_text = files.write_text  # atomic (dmfa_tf.files)


def write_csv(path, scores, labels=None):
    """Per-image scores as CSV (index, label if known, the number of missing
    values, every metric), atomically. An empty cell is a metric the model
    does not have (NaN: the NLL and Mahalanobis distance of the KNN baseline)."""
    out = io.StringIO()
    writer = csv.writer(out)
    keys = ["missing"] + list(METRICS)
    writer.writerow(["index"] + (["label"] if labels is not None else []) + keys)
    for i in range(len(scores["nll"])):
        row = [i] + ([int(labels[i])] if labels is not None else [])
        values = [float(scores[k][i]) for k in METRICS]
        row += [int(scores["missing"][i])] + ["" if math.isnan(v) else repr(v) for v in values]
        writer.writerow(row)
    write_text(path, out.getvalue())


write_json = files.write_json  # atomic (dmfa_tf.files)
