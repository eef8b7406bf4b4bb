"""DMFA on scikit-learn's bundled tables against the imputers a user tries first.

    PYTHONPATH=. python benchmarks/bench_tabular.py --json results/bench_tabular.json
    PYTHONPATH=. python benchmarks/bench_tabular.py --protocol=forest --datasets iris wine

`--protocol=heldout` (default): for each data set and seed, `train.py`'s path
(`dmfa_tf.tabular.train_and_evaluate`: rows split 60/20/20 by the seed, MCAR
20% training masks, the lowest-validation-NLL epoch) trains a model; its test
rows are scored under 10 MCAR 20% masks each against the column mean,
KNNImputer, IterativeImputer and a full-covariance Gaussian fitted to the
training and validation rows. Prints mean +- std over seeds.

`--protocol=forest`: ForestDiffusion's imputation protocol (Jolicoeur-Martineau
et al., AISTATS 2024; `script_imputation.py`): an 80/20 split stratified by
the label (`train_test_split(random_state=seed)`), MCAR 20% of the training
features removed, the model trained on that incomplete table (90% of its rows;
10% for validation), then 5 imputations of the removed cells. AvgMAE (mean
absolute error per missing cell and imputation) and MinMAE (per row, the
closest of the 5 imputations) on the min-max scale of the complete training
features, as their `utils.MAE` / `MAE_min`. The published figures are printed
beside ours for comparison; their masks are drawn by torch, ours by NumPy.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from dmfa_tf.data import tables
from dmfa_tf.config import TrainConfig

METHODS = ("mean", "knn", "iterative", "gaussian")

# ForestDiffusion's published results (Results/Results_tabular - imputation.csv,
# SamsungSAILMontreal/ForestDiffusion): mean of 3 runs, 5 imputations.
# method: (MinMAE, AvgMAE)
PUBLISHED = {
    "iris": {
        "ForestDiffusion": (0.04118531871, 0.09685042793),
        "ForestDiffusion (repaint)": (0.04614560975, 0.09489011886),
        "MissForest": (0.06070641182, 0.07161124561),
        "miceforest": (0.04502877485, 0.08229963024),
        "ice": (0.04764477331, 0.1261485172),
        "KNN (k=1)": (0.1047882556, 0.1047882556),
        "GAIN": (0.09163409553, 0.09268842493),
    },
    "wine": {
        "ForestDiffusion": (0.08456474269, 0.1286900021),
        "ForestDiffusion (repaint)": (0.08514083328, 0.127183519),
        "MissForest": (0.0946346998, 0.106358072),
        "miceforest": (0.07926563649, 0.1121674486),
        "ice": (0.1279827011, 0.2269569978),
        "KNN (k=1)": (0.139171438, 0.139171438),
        "GAIN": (0.1477617688, 0.1492843007),
    },
}


def _config(dataset, seed, folder, flags, **overrides):
    values = dict(dataset=dataset, seed=seed, output=os.path.join(folder, "model"),
                  workdir=os.path.join(folder, "run"), restart=True, **overrides)
    for flag in flags:
        key, _, value = flag.lstrip("-").partition("=")
        key = key.replace("-", "_")
        for kind in (int, float):
            try:
                value = kind(value)
                break
            except ValueError:
                continue
        values[key] = value
    return TrainConfig(**values)


def heldout(dataset, seed, flags, folder):
    import keras

    from dmfa_tf import tabular

    keras.backend.clear_session()
    started = time.time()
    metrics = tabular.train_and_evaluate(_config(dataset, seed, folder, flags), verbose=0)
    model = tabular.TabularModel.load(os.path.join(folder, "model"))
    table = tables.load_table(dataset)
    config = TrainConfig.from_json(open(os.path.join(folder, "model", "config.json")).read())
    train, val, test = tabular.split_for(config, table)
    results = tabular.evaluate_table(
        model, table, np.concatenate([train, val]), test, tabular.mcar_rate(config.mask),
        config.eval_seed, compare=METHODS,
    )
    results["DMFA"]["train_seconds"] = metrics["train_seconds"]
    results["DMFA"]["epoch"] = metrics["selection"]["epoch"]
    print(f"  {dataset} seed {seed}: " + ", ".join(
        f"{name} nll {r['nll_per_cell'] if r['nll_per_cell'] is None else round(r['nll_per_cell'], 3)}"
        f" rmse {r['rmse']:.4g}" for name, r in results.items()
    ) + f" ({time.time() - started:.0f} s)", flush=True)
    return results


def forest(dataset, seed, flags, folder, imputations=5, rate=0.2):
    import keras
    from sklearn import datasets as sk
    from sklearn.model_selection import train_test_split

    from dmfa_tf import tabular

    keras.backend.clear_session()
    bunch = getattr(sk, f"load_{dataset}")()
    x_train, _ = train_test_split(
        bunch.data, test_size=0.2, random_state=seed, stratify=bunch.target
    )
    removed = np.random.default_rng([seed, 0x666F72]).random(x_train.shape) < rate
    keep = ~removed.all(axis=1)  # as theirs: rows with every feature missing dropped
    x_train, removed = x_train[keep], removed[keep]
    incomplete = np.where(removed, np.nan, x_train)
    path = os.path.join(folder, f"{dataset}-{seed}.csv")
    tables.write_csv(path, list(bunch.feature_names), incomplete.tolist(), digits=10)
    config = _config("csv", seed, folder, flags, data_dir=path, val_fraction=0.1, test_fraction=0.0)
    tabular.train_and_evaluate(config, verbose=0)
    model = tabular.TabularModel.load(os.path.join(folder, "model"))
    draws = model.sample(incomplete, imputations, seed=(seed, 1))  # [S, n, D]
    mean = model.impute(incomplete)
    low, high = x_train.min(axis=0), x_train.max(axis=0)
    scale = np.where(high > low, high - low, 1.0)
    n_miss = removed.sum()

    def scaled(values):
        return (values - low) / scale

    errors = np.abs(scaled(draws) - scaled(x_train)) * removed  # [S, n, D]
    avg_mae = errors.sum() / (n_miss * imputations)
    min_mae = errors.sum(axis=2).min(axis=0).sum() / n_miss
    mean_mae = (np.abs(scaled(mean) - scaled(x_train)) * removed).sum() / n_miss
    print(f"  {dataset} seed {seed}: MinMAE {min_mae:.4f}, AvgMAE {avg_mae:.4f}, "
          f"MAE of the mean {mean_mae:.4f}", flush=True)
    return {"DMFA": {"min_mae": min_mae, "avg_mae": avg_mae, "mean_mae": mean_mae}}


def summarize(runs):
    """`{method: {metric: (mean, std)}}` over the runs (metrics with values)."""
    summary = {}
    for method in runs[0]:
        summary[method] = {}
        for key, value in runs[0][method].items():
            values = [run[method][key] for run in runs]
            if all(isinstance(v, (int, float)) for v in values):
                summary[method][key] = (float(np.mean(values)), float(np.std(values)))
    return summary


def markdown(dataset, summary):
    def cell(stats, digits=3, fmt="f"):
        if stats is None:
            return "–"
        return f"{stats[0]:.{digits}{fmt}} ± {stats[1]:.{digits}{fmt}}"

    lines = [
        f"**{dataset}**", "",
        "| method | NLL / cell | RMSE | MAE | 90% cov. | 50% cov. |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method, s in summary.items():
        lines.append(
            f"| {method} | {cell(s.get('nll_per_cell'))} | {cell(s.get('rmse'), 4, 'g')} | "
            f"{cell(s.get('mae'), 4, 'g')} | {cell(s.get('coverage_90'))} | "
            f"{cell(s.get('coverage_50'))} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=["heldout", "forest"], default="heldout")
    parser.add_argument("--datasets", nargs="+", default=list(tables.SKLEARN_TABLES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--flags", nargs="*", default=[],
                        help="train.py settings, e.g. --flags epochs=10 components=5")
    parser.add_argument("--json", help="write every run and the summary here")
    args = parser.parse_args(argv)
    report = {"protocol": args.protocol, "flags": args.flags, "datasets": {}}
    from dmfa_tf.reporting import hardware_description

    print(f"{args.protocol} protocol, seeds {args.seeds}, flags {args.flags}, on "
          f"{hardware_description()}", flush=True)
    for dataset in args.datasets:
        runs = []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as folder:
                run = (heldout if args.protocol == "heldout" else forest)(
                    dataset, seed, args.flags, folder)
            runs.append(run)
        summary = summarize(runs)
        report["datasets"][dataset] = {"runs": runs, "summary": summary}
        if args.protocol == "heldout":
            print(markdown(dataset, summary), flush=True)
        else:
            s = summary["DMFA"]
            print(f"\n**{dataset}** (MinMAE / AvgMAE, min-max scale)\n\n| method | MinMAE | AvgMAE |"
                  f"\n|---|---:|---:|\n| DMFA (ours, {len(args.seeds)} seeds) | "
                  f"{s['min_mae'][0]:.4f} ± {s['min_mae'][1]:.4f} | "
                  f"{s['avg_mae'][0]:.4f} ± {s['avg_mae'][1]:.4f} |")
            for method, (min_mae, avg_mae) in PUBLISHED.get(dataset, {}).items():
                print(f"| {method} (published) | {min_mae:.4f} | {avg_mae:.4f} |")
            print(f"\nDMFA's mixture-mean imputation: MAE {s['mean_mae'][0]:.4f} ± "
                  f"{s['mean_mae'][1]:.4f}", flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
