"""Small dense linear algebra written with element-wise ops only.

The factor-analyser densities in this package need one Cholesky factorisation of
an `L x L` capacitance matrix per component, where `L` (the number of factors) is
small and known when the graph is built. `tf.linalg.cholesky` and
`tf.linalg.triangular_solve` are not TFLite builtin ops, so a model that uses
them cannot run in the plain LiteRT interpreter. Unrolling the factorisation
over the static `L` gives a graph of slices, multiplies, adds, square roots and
divisions, which converts to TFLite builtins, compiles under XLA and has
ordinary gradients. The distribution and the exported models share these
functions, so there is one copy of the math.

For `L` above `MAX_UNROLLED` the functions fall back to the TensorFlow kernels
(the graph of an unrolled factorisation grows as `L**3`), except inside
`builtins_only()` (the TFLite export), where they loop over the columns
instead: `L` steps of matrix-vector products, a graph that grows as `L**2`.

Glossary of shape letters: `L` the matrix size (number of factors), `M` the
number of right-hand sides, `...` any batch shape.
"""

import contextlib
import threading

import tensorflow as tf

__all__ = [
    "MAX_UNROLLED",
    "builtins_only",
    "capacitance_solve",
    "cholesky",
    "cholesky_log_det",
    "is_builtins_only",
    "solve_lower",
    "solve_upper",
    "whitened_capacitance",
]

# Largest matrix size that is factorised with unrolled element-wise ops.
MAX_UNROLLED = 16


_STATE = threading.local()


def _unrolled(size):
    return size is not None and size <= MAX_UNROLLED


def _by_columns(size):
    return size is not None and is_builtins_only()


def is_builtins_only():
    """True within `builtins_only()`."""
    return getattr(_STATE, "builtins_only", False)


@contextlib.contextmanager
def builtins_only():
    """Within this context, graphs traced for `L > MAX_UNROLLED` use TFLite
    builtin ops only (a loop over the columns instead of `tf.linalg`'s
    Cholesky and triangular-solve kernels), and `MaskedFactorMixture` keeps
    its shapes static (it does not gather the scored coordinates). Slower to
    train through than the kernels; the TFLite export traces its functions
    in it."""
    previous = is_builtins_only()
    _STATE.builtins_only = True
    try:
        yield
    finally:
        _STATE.builtins_only = previous


def cholesky(matrix):
    """Lower-triangular Cholesky factor of symmetric positive definite matrices.

    Args:
        matrix: `[..., L, L]` float tensor; only its lower triangle is read.

    Returns:
        `[..., L, L]` lower-triangular `chol` with `chol @ chol^T == matrix`.
    """
    matrix = tf.convert_to_tensor(matrix)
    size = matrix.shape[-1]
    if not _unrolled(size):
        return _cholesky_by_columns(matrix) if _by_columns(size) else tf.linalg.cholesky(matrix)
    entries = [tf.unstack(row, axis=-1) for row in tf.unstack(matrix, axis=-2)]
    chol = [[None] * size for _ in range(size)]
    for j in range(size):
        pivot = entries[j][j]
        for k in range(j):
            pivot = pivot - tf.square(chol[j][k])
        chol[j][j] = tf.sqrt(pivot)  # [...]
        for i in range(j + 1, size):
            value = entries[i][j]
            for k in range(j):
                value = value - chol[i][k] * chol[j][k]
            chol[i][j] = value / chol[j][j]  # [...]
    zero = tf.zeros_like(entries[0][0])
    rows = [
        tf.stack([chol[i][j] if j <= i else zero for j in range(size)], axis=-1)
        for i in range(size)
    ]
    return tf.stack(rows, axis=-2)  # [..., L, L]


def cholesky_log_det(chol):
    """`log det(chol @ chol^T)` from a Cholesky factor `[..., L, L]` -> `[...]`."""
    chol = tf.convert_to_tensor(chol)
    size = chol.shape[-1]
    if _unrolled(size) or _by_columns(size):
        # Slices, not `tf.linalg.diag_part`: MatrixDiagPartV3 is no TFLite builtin.
        diagonal = tf.stack([chol[..., i, i] for i in range(size)], axis=-1)  # [..., L]
    else:
        diagonal = tf.linalg.diag_part(chol)
    return 2.0 * tf.reduce_sum(tf.math.log(diagonal), axis=-1)


def solve_lower(chol, rhs):
    """Solves `chol @ x = rhs` for lower-triangular `chol`.

    Args:
        chol: `[..., L, L]` lower-triangular matrices with non-zero diagonals.
        rhs: `[..., L, M]` right-hand sides (batch shapes broadcast).

    Returns:
        `[..., L, M]` solutions.
    """
    size = chol.shape[-1]
    if not _unrolled(size):
        chol, rhs = _broadcast_batch(chol, rhs)
        if _by_columns(size):
            return _solve_by_rows(chol, rhs, upper=False)
        return tf.linalg.triangular_solve(chol, rhs, lower=True)
    c = [tf.unstack(row, axis=-1) for row in tf.unstack(chol, axis=-2)]
    b = tf.unstack(rhs, axis=-2)  # L tensors [..., M]
    x = []
    for i in range(size):
        value = b[i]
        for k in range(i):
            value = value - c[i][k][..., None] * x[k]
        x.append(value / c[i][i][..., None])  # [..., M]
    return tf.stack(x, axis=-2)  # [..., L, M]


def solve_upper(chol, rhs):
    """Solves `chol^T @ x = rhs` for lower-triangular `chol` (back substitution).

    Args:
        chol: `[..., L, L]` lower-triangular matrices with non-zero diagonals.
        rhs: `[..., L, M]` right-hand sides (batch shapes broadcast).

    Returns:
        `[..., L, M]` solutions.
    """
    size = chol.shape[-1]
    if not _unrolled(size):
        chol, rhs = _broadcast_batch(chol, rhs)
        if _by_columns(size):
            return _solve_by_rows(chol, rhs, upper=True)
        return tf.linalg.triangular_solve(chol, rhs, lower=True, adjoint=True)
    c = [tf.unstack(row, axis=-1) for row in tf.unstack(chol, axis=-2)]
    b = tf.unstack(rhs, axis=-2)
    x = [None] * size
    for i in reversed(range(size)):
        value = b[i]
        for k in range(i + 1, size):
            value = value - c[k][i][..., None] * x[k]
        x[i] = value / c[i][i][..., None]
    return tf.stack(x, axis=-2)


def whitened_capacitance(factors, diag, selected):
    """Woodbury's capacitance of `Sigma = diag(diag) + factors @ factors^T`
    restricted to the `selected` coordinates `s`.

    With `W = diag(1/sqrt(diag))` on `s` and 0 elsewhere, the whitened factors
    `A~ = W factors` and `C = I + A~^T A~` give the inverse and determinant of
    `Sigma[s, s]` (`capacitance_solve`; `log det Sigma[s, s] = log det C +
    sum_s log diag`). `MaskedFactorMixture` (`s`: the scored coordinates) and
    the MFA baseline's conditionals (`s`: the observed ones) share this.

    Args:
        factors: `[..., N, L]` factor loadings.
        diag: `[..., N]` variances, > 0 on `s`.
        selected: `[..., N]` bool, True on `s` (batch shapes broadcast).

    Returns:
        `(diag, weight, whitened, chol)`: `diag` with 1 outside `s`
        `[..., N]`, the weights `W` `[..., N]`, `A~` `[..., N, L]` (rows outside
        `s` zero) and the lower Cholesky factor of `C` `[..., L, L]`.
    """
    diag = tf.where(selected, diag, tf.ones_like(diag))
    weight = tf.where(selected, tf.math.rsqrt(diag), tf.zeros_like(diag))
    whitened = factors * weight[..., None]
    capacitance = tf.linalg.matmul(whitened, whitened, transpose_a=True)
    capacitance += tf.eye(tf.shape(whitened)[-1], dtype=whitened.dtype)
    return diag, weight, whitened, cholesky(capacitance)


def capacitance_solve(chol, whitened, residual):
    """`u = C^-1 A~^T r~` for `C = chol @ chol^T` and `A~` from
    `whitened_capacitance`, and a whitened residual `r~ = W (x - loc)`.

    `u` is the posterior mean of the factors given the selected coordinates;
    `(x - loc)^T Sigma[s, s]^-1 (x - loc) = |r~ - A~ u|^2 + |u|^2`.

    Args:
        chol: `[..., L, L]` lower Cholesky factor of `C`.
        whitened: `[..., N, L]` whitened factors `A~`.
        residual: `[..., N]` whitened residuals `r~` (0 outside `s`).

    Returns:
        `[..., L]` (batch shapes broadcast).
    """
    projected = tf.linalg.matvec(whitened, residual, transpose_a=True)  # [..., L]
    return solve_upper(chol, solve_lower(chol, projected[..., None]))[..., 0]


def _cholesky_by_columns(matrix):
    """`cholesky` as `L` column steps (left-looking): column `j` is
    `(a_j - C_<j c_j) / pivot` below the diagonal, `C_<j` the columns before."""
    size = matrix.shape[-1]
    rows = tf.range(size)
    columns = []
    for j in range(size):
        value = matrix[..., :, j]  # [..., L]; rows i >= j are the lower triangle
        if columns:
            before = tf.stack(columns, axis=-1)  # [..., L, j]
            value = value - tf.linalg.matvec(before, before[..., j, :])
        pivot = tf.sqrt(value[..., j])  # [...]
        below = tf.cast(rows >= j, matrix.dtype)  # zero above the diagonal
        columns.append(value / pivot[..., None] * below)
    return tf.stack(columns, axis=-1)  # [..., L, L]


def _solve_by_rows(chol, rhs, upper):
    """Forward (`chol x = rhs`) or, with `upper`, back (`chol^T x = rhs`)
    substitution, one row of `x` per step; batch shapes already broadcast."""
    size = chol.shape[-1]
    solved = {}
    for i in (reversed(range(size)) if upper else range(size)):
        value = rhs[..., i, :]  # [..., M]
        done = sorted(solved)
        if done:
            known = tf.stack([solved[k] for k in done], axis=-2)  # [..., n, M]
            # chol^T's row i is chol's column i (rows below i); chol's row i, columns before i
            coefficients = chol[..., done[0]:, i] if upper else chol[..., i, :done[-1] + 1]
            value = value - tf.linalg.matvec(known, coefficients, transpose_a=True)
        solved[i] = value / chol[..., i, i][..., None]
    return tf.stack([solved[i] for i in range(size)], axis=-2)  # [..., L, M]


def _broadcast_batch(chol, rhs):
    batch = tf.broadcast_dynamic_shape(tf.shape(chol)[:-2], tf.shape(rhs)[:-2])
    chol = tf.broadcast_to(chol, tf.concat([batch, tf.shape(chol)[-2:]], 0))
    rhs = tf.broadcast_to(rhs, tf.concat([batch, tf.shape(rhs)[-2:]], 0))
    return chol, rhs
