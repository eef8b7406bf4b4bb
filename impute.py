"""Impute the missing cells of a CSV with a trained table model.

    python impute.py --model=saved_models/iris --input=rows.csv --output=completed.csv
    python impute.py --model=saved_models/iris --input=rows.csv --output=completed.csv \
        --num-imputations=5

`--output` gets the input's columns with every empty / NA / NaN cell replaced
by its conditional mean given the row's observed cells, and one `<column>_sd`
column per column: the predictive standard deviation (0 where observed).
With `--num-imputations N`, `--imputations-output` (default
`<output>.imputations.csv`) gets N completions of every row, drawn from the
model's conditional density: columns `row` (the input row, from 0),
`imputation` (1..N) and the table's columns, N consecutive lines per row.
The input's columns must be the model's (any order); outputs keep the input's
order. Files are written whole or not at all.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Fill the missing cells of a CSV with a trained table model "
        "(python train.py --dataset=csv --data-dir=FILE.csv).",
    )
    parser.add_argument("--model", required=True, help="a table model folder (saved_models/<name>)")
    parser.add_argument("--input", required=True, help="CSV with a header row; empty, NA or NaN cells are missing")
    parser.add_argument("--output", required=True, help="CSV to write: imputations and <column>_sd")
    parser.add_argument(
        "--num-imputations", type=int, default=0,
        help="also write N completions per row, drawn from the conditional density (default 0)",
    )
    parser.add_argument(
        "--imputations-output",
        help="where the N completions go (default <output without .csv>.imputations.csv)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the completions (default 0)")
    parser.add_argument("--digits", type=int, default=6, help="significant digits written (default 6)")
    args = parser.parse_args(argv)
    if args.num_imputations < 0:
        parser.error(f"--num-imputations must be >= 0 (received {args.num_imputations})")
    if not 1 <= args.digits <= 17:
        parser.error(f"--digits must be in 1..17 (received {args.digits})")
    if args.imputations_output and not args.num_imputations:
        parser.error("--imputations-output needs --num-imputations N (N >= 1)")
    return args


def impute_csv(args):
    import numpy as np

    from dmfa_tf.data import tables
    from dmfa_tf.tabular import TabularModel

    model = TabularModel.load(args.model)
    table = tables.read_csv(args.input)
    missing = [c for c in model.columns if c not in table.columns]
    extra = [c for c in table.columns if c not in model.columns]
    if missing or extra:
        raise ValueError(
            f"{args.input!r} must have the model's columns ({', '.join(model.columns)})"
            + (f"; missing: {missing}" if missing else "") + (f"; not the model's: {extra}" if extra else "")
            + "."
        )
    order = [table.columns.index(c) for c in model.columns]  # input -> model order
    back = [model.columns.index(c) for c in table.columns]  # model -> input order
    rows = table.values[:, order]
    prediction = model.predict(rows)
    imputation, sd = prediction["imputation"][:, back], prediction["sd"][:, back]
    samples_path = None
    if args.num_imputations:
        samples_path = args.imputations_output or (
            (args.output[:-4] if args.output.endswith(".csv") else args.output) + ".imputations.csv"
        )
    for path in filter(None, (args.output, samples_path)):
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ValueError(f"Cannot write {path!r}: {folder} is not a folder.")
        if os.path.abspath(path) == os.path.abspath(args.input):
            raise ValueError(f"{path!r} is the input file; write the output elsewhere.")
    tables.write_csv(
        args.output, table.columns + [f"{c}_sd" for c in table.columns],
        np.concatenate([imputation, sd], axis=1).tolist(), digits=args.digits,
    )
    print(f"Imputed {int(np.isnan(rows).sum()):,} missing cells of {len(rows):,} rows: {args.output}")
    if samples_path:
        draws = model.sample(rows, args.num_imputations, seed=(args.seed, 0))[:, :, back]  # [N, n, D]
        lines = [
            [i, s + 1] + draws[s, i].tolist()
            for i in range(len(rows)) for s in range(args.num_imputations)
        ]
        tables.write_csv(samples_path, ["row", "imputation"] + table.columns, lines, digits=args.digits)
        print(f"Wrote {args.num_imputations} completions per row: {samples_path}")


def main(argv=None):
    args = parse_args(argv)
    try:
        impute_csv(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"impute.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
