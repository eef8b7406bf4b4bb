"""Tables with missing cells: reading, standardising, splitting, masking.

NumPy and the standard library only (scikit-learn for its bundled data sets).
A table is rows of `D` numeric columns; NaN is a missing cell. DMFA models a
row as an event of shape `(1, D, 1)` (`dmfa_tf.tabular`).

- `read_csv(path)`: a CSV with a header row. Empty cells, `NA`, `N/A`, `?` and
  `nan` are missing; a column with any other non-number is an error naming it.
- `load_table(name, data_dir)`: `csv` (`data_dir` is the file), an `.npz`
  (`x`, optional `columns`), or one of scikit-learn's bundled sets `iris`,
  `wine`, `breast_cancer`, `diabetes` (their feature columns, offline).
- `Standardizer`: per-column mean and standard deviation of the training rows
  (NaN ignored), applied to model inputs and undone on outputs.
- `split_rows`: a seeded train / validation / test split of the row indices.
- `mcar_mask`: cells missing completely at random, seeded; cells missing in
  the data are absent (-1).
"""

import csv
import dataclasses
import io
import math
import os

import numpy as np

from dmfa_tf import files

__all__ = [
    "MISSING_TOKENS", "SKLEARN_TABLES", "TABULAR_DATASETS", "Standardizer", "Table", "load_table",
    "mcar_mask", "read_csv", "split_rows", "write_csv",
]

SKLEARN_TABLES = ("iris", "wine", "breast_cancer", "diabetes")
TABULAR_DATASETS = ("csv",) + SKLEARN_TABLES
# Cell texts read as missing (besides anything float() reads as NaN).
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "?", "null", "none"})


@dataclasses.dataclass
class Table:
    """`values` `[n, D]` float64 (NaN: missing) and the `columns` names."""

    columns: list
    values: np.ndarray

    def __post_init__(self):
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.values.ndim != 2:
            raise ValueError(
                f"A table must be 2-D (rows, columns). Received shape {self.values.shape}."
            )
        if self.columns is None:
            self.columns = [f"x{j}" for j in range(self.values.shape[1])]
        self.columns = [str(c) for c in self.columns]
        if len(self.columns) != self.values.shape[1]:
            raise ValueError(
                f"{len(self.columns)} column names for {self.values.shape[1]} columns."
            )
        if len(set(self.columns)) != len(self.columns):
            repeated = sorted({c for c in self.columns if self.columns.count(c) > 1})
            raise ValueError(f"Column names must be unique; repeated: {repeated}.")
        if np.isinf(self.values).any():
            raise ValueError(
                f"The table holds {int(np.isinf(self.values).sum())} infinite cells; "
                "use an empty cell or NaN for a missing one."
            )

    def __len__(self):
        return len(self.values)

    @property
    def missing_share(self):
        return float(np.isnan(self.values).mean()) if self.values.size else 0.0


def _cell(text):
    """The number in a CSV cell, NaN for a missing one, None if not a number."""
    text = text.strip()
    if text.lower() in MISSING_TOKENS:
        return math.nan
    try:
        return float(text)
    except ValueError:
        return None


def read_csv(path, delimiter=","):
    """A `Table` from a CSV file with a header row.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an empty file, rows of another length than the header,
            or non-numeric columns (named, with a bad value and its line).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No CSV file at {path!r}.")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [row for row in csv.reader(f, delimiter=delimiter) if row]
    if not rows:
        raise ValueError(f"{path!r} is empty: a CSV with a header row is expected.")
    header, body = [c.strip() for c in rows[0]], rows[1:]
    if not body:
        raise ValueError(f"{path!r} has a header and no rows.")
    values = np.empty((len(body), len(header)))
    bad = {}  # column -> (line, text)
    for i, row in enumerate(body):
        if len(row) != len(header):
            raise ValueError(
                f"{path!r} line {i + 2} has {len(row)} cells; the header has {len(header)}."
            )
        for j, text in enumerate(row):
            number = _cell(text)
            if number is None:
                bad.setdefault(header[j], (i + 2, text.strip()))
                number = math.nan
            values[i, j] = number
    if bad:
        details = "; ".join(f"{name!r} (line {line}: {text!r})" for name, (line, text) in bad.items())
        raise ValueError(
            f"{path!r}: only numeric columns can be modelled (empty, NA or NaN cells are "
            f"missing). Non-numeric column{'s' if len(bad) > 1 else ''}: {details}. Drop or "
            "encode them first."
        )
    if np.isinf(values).any():
        raise ValueError(f"{path!r} holds infinite cells; use an empty cell for a missing one.")
    return Table(header, values)


def write_csv(path, columns, rows, digits=6):
    """Writes `rows` (numbers; NaN as an empty cell) under the header `columns`
    atomically (`dmfa_tf.files`)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in rows:
        writer.writerow(
            ["" if isinstance(v, float) and math.isnan(v) else
             (f"{v:.{digits}g}" if isinstance(v, float) else v) for v in row]
        )
    files.write_text(path, out.getvalue())


def _sklearn_table(name):
    from sklearn import datasets as sk  # bundled with scikit-learn: no download

    bunch = getattr(sk, f"load_{name}")()
    return Table(list(bunch.feature_names), bunch.data)


def load_table(name, data_dir=None):
    """The table of a tabular data set (module docstring)."""
    if name in SKLEARN_TABLES:
        if data_dir is not None:
            raise ValueError(f"--data-dir does not apply to {name} (bundled with scikit-learn).")
        return _sklearn_table(name)
    if name != "csv":
        raise ValueError(f"Unknown tabular data set {name!r}; choose one of {TABULAR_DATASETS}.")
    if not data_dir:
        raise ValueError("--dataset=csv needs --data-dir=FILE.csv (or an .npz with `x`).")
    if data_dir.endswith(".npz"):
        if not os.path.isfile(data_dir):
            raise FileNotFoundError(f"No .npz file at {data_dir!r}.")
        with np.load(data_dir, allow_pickle=False) as archive:
            if "x" not in archive:
                raise ValueError(f"{data_dir!r} must hold an array `x` [rows, columns].")
            columns = list(archive["columns"]) if "columns" in archive else None
            return Table(columns, archive["x"])
    return read_csv(data_dir)


@dataclasses.dataclass
class Standardizer:
    """`(x - mean) / scale` per column, fitted on training rows (NaN ignored).
    A column with no spread or no values gets scale 1."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, values):
        values = np.asarray(values, dtype=np.float64)
        observed = np.isfinite(values)
        counts = observed.sum(axis=0)
        empty = [j for j in range(values.shape[1]) if counts[j] == 0]
        filled = np.where(observed, values, 0.0)
        mean = filled.sum(axis=0) / np.maximum(counts, 1)
        var = (np.where(observed, values - mean, 0.0) ** 2).sum(axis=0) / np.maximum(counts, 1)
        scale = np.sqrt(var)
        scale[(scale <= 1e-12) | (counts == 0)] = 1.0
        if empty:
            raise ValueError(
                f"Columns {empty} have no observed value in the training rows; drop them."
            )
        return cls(mean, scale)

    def transform(self, values):
        return (np.asarray(values, dtype=np.float64) - self.mean) / self.scale

    def inverse(self, values):
        return np.asarray(values, dtype=np.float64) * self.scale + self.mean

    def to_dict(self):
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, values):
        return cls(np.asarray(values["mean"], np.float64), np.asarray(values["scale"], np.float64))


def split_rows(count, seed, val_fraction=0.2, test_fraction=0.2):
    """`(train, val, test)` row indices: a permutation seeded by `seed`, cut at
    the fractions (each split gets at least one row; train at least 2)."""
    for value, what in ((val_fraction, "val_fraction"), (test_fraction, "test_fraction")):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"`{what}` must be in [0, 1). Received: {value!r}")
    n_val = max(1, int(round(count * val_fraction))) if val_fraction else 0
    n_test = max(1, int(round(count * test_fraction))) if test_fraction else 0
    if count - n_val - n_test < 2:
        raise ValueError(
            f"{count} rows are too few for a split with {n_val} validation and {n_test} test "
            "rows: at least 2 training rows are needed."
        )
    order = np.random.default_rng([int(seed), 0x7461626C]).permutation(count)  # "tabl"
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return np.sort(train), np.sort(val), np.sort(test)


def mcar_mask(values, rate, seed):
    """A mask for `values` `[n, D]`: 1 observed, 0 missing (each observed cell
    with probability `rate`, seeded by an int or a tuple of ints), -1 absent
    (NaN in `values`)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"`rate` must be in [0, 1]. Received: rate={rate!r}")
    values = np.asarray(values)
    seed = [int(s) for s in np.atleast_1d(seed)]
    uniform = np.random.default_rng(seed + [0x6D636172]).random(values.shape)  # "mcar"
    mask = np.where(uniform < rate, 0.0, 1.0).astype(np.float32)
    return np.where(np.isnan(values), -1.0, mask).astype(np.float32)
