"""Unrolled small linear algebra against NumPy."""

import numpy as np
import pytest
import tensorflow as tf

from dmfa_tf.core import linalg


def _spd(rng, batch, size):
    a = rng.normal(size=batch + (size, size + 2))
    return np.eye(size) + a @ np.swapaxes(a, -1, -2)


@pytest.mark.parametrize("size", [1, 2, 4, 7, linalg.MAX_UNROLLED + 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cholesky_and_solves_match_numpy(size, dtype):
    rng = np.random.default_rng(size)
    matrix = _spd(rng, (3, 2), size)
    rhs = rng.normal(size=(3, 2, size, 5))
    tol = 1e-4 if dtype == np.float32 else 1e-10

    chol = linalg.cholesky(tf.constant(matrix, dtype)).numpy()
    expected = np.linalg.cholesky(matrix)
    np.testing.assert_allclose(chol, expected, rtol=tol, atol=tol)
    assert np.all(np.triu(chol, 1) == 0)

    np.testing.assert_allclose(
        linalg.cholesky_log_det(tf.constant(expected, dtype)).numpy(),
        np.linalg.slogdet(matrix)[1],
        rtol=tol,
    )
    lower = linalg.solve_lower(tf.constant(expected, dtype), tf.constant(rhs, dtype)).numpy()
    np.testing.assert_allclose(expected @ lower, rhs, rtol=tol * 10, atol=tol * 10)
    upper = linalg.solve_upper(tf.constant(expected, dtype), tf.constant(rhs, dtype)).numpy()
    np.testing.assert_allclose(
        np.swapaxes(expected, -1, -2) @ upper, rhs, rtol=tol * 10, atol=tol * 10
    )


def test_solves_broadcast_batch_shapes():
    rng = np.random.default_rng(0)
    chol = np.linalg.cholesky(_spd(rng, (2, 1), 3))  # [2, 1, 3, 3]
    rhs = rng.normal(size=(4, 3, 1))  # batch [4] broadcasts against [2, 1]
    x = linalg.solve_lower(tf.constant(chol), tf.constant(rhs)).numpy()
    assert x.shape == (2, 4, 3, 1)
    np.testing.assert_allclose(chol @ x, np.broadcast_to(rhs, (2, 4, 3, 1)), atol=1e-10)


def test_unrolled_graph_has_no_linalg_kernels():
    """The unrolled path must not use the ops TFLite lacks."""

    @tf.function
    def f(matrix, rhs):
        chol = linalg.cholesky(matrix)
        return linalg.solve_upper(chol, linalg.solve_lower(chol, rhs)), linalg.cholesky_log_det(chol)

    graph = f.get_concrete_function(
        tf.TensorSpec([None, 4, 4]), tf.TensorSpec([None, 4, 1])
    ).graph
    ops = {op.type for op in graph.get_operations()}
    assert not ops & {"Cholesky", "MatrixTriangularSolve", "LogMatrixDeterminant"}, ops


def test_gradient_of_log_det_matches_inverse():
    """d log det C / dC = C^-1 (symmetric), through the unrolled factorisation."""
    rng = np.random.default_rng(1)
    matrix = tf.constant(_spd(rng, (), 4))
    with tf.GradientTape() as tape:
        tape.watch(matrix)
        log_det = linalg.cholesky_log_det(linalg.cholesky(matrix))
    grad = tape.gradient(log_det, matrix).numpy()
    # Only the lower triangle is read: the gradient of the symmetric function
    # is C^-1 with the off-diagonal mass on the lower triangle.
    inverse = np.linalg.inv(matrix.numpy())
    expected = np.tril(2 * inverse) - np.diag(np.diag(inverse))
    np.testing.assert_allclose(grad, expected, atol=1e-10)


def test_whitened_capacitance_solve_matches_dense_woodbury():
    """`whitened_capacitance` + `capacitance_solve` on the selected block equal
    dense `Sigma[s, s]^-1` algebra (the distribution and the MFA share them)."""
    rng = np.random.default_rng(0)
    size, factors_count = 9, 3
    factors = rng.normal(size=(2, size, factors_count))
    diag = rng.uniform(0.1, 1.0, size=(2, size))
    selected = rng.random((2, size)) < 0.6
    selected[:, 0] = True
    residual = rng.normal(size=(2, size))
    out_diag, weight, whitened, chol = linalg.whitened_capacitance(
        tf.constant(factors), tf.constant(diag), tf.constant(selected)
    )
    latent = linalg.capacitance_solve(
        chol, whitened, tf.constant(np.where(selected, residual * weight.numpy(), 0.0))
    ).numpy()
    for b in range(2):
        s = selected[b]
        np.testing.assert_array_equal(out_diag.numpy()[b], np.where(s, diag[b], 1.0))
        np.testing.assert_array_equal(whitened.numpy()[b][~s], 0.0)
        a, d, r = factors[b][s], diag[b][s], residual[b][s]
        sigma = a @ a.T + np.diag(d)
        capacitance = np.eye(factors_count) + a.T @ (a / d[:, None])
        np.testing.assert_allclose(chol.numpy()[b] @ chol.numpy()[b].T, capacitance, rtol=1e-12)
        # u = C^-1 A^T D^-1 r, and |r~ - A~ u|^2 + |u|^2 = r^T Sigma^-1 r
        u = np.linalg.solve(capacitance, a.T @ (r / d))
        np.testing.assert_allclose(latent[b], u, rtol=1e-10, atol=1e-12)
        unexplained = r / np.sqrt(d) - (a / np.sqrt(d)[:, None]) @ latent[b]
        np.testing.assert_allclose(
            unexplained @ unexplained + latent[b] @ latent[b], r @ np.linalg.solve(sigma, r),
            rtol=1e-10,
        )
