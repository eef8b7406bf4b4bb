"""The density's two equivalent paths: gathering the scored coordinates (the
default) and masking all N rows (under XLA, `linalg.builtins_only()` and
`static_shapes()`)."""

import numpy as np
import pytest
import tensorflow as tf

import reference
from dmfa_tf.core import distribution, linalg, rows
from dmfa_tf.core.distribution import MaskedFactorMixture
from test_distribution import N, make_params, mixed_masks, sample_x


def _with_absent(rng, mask):
    mask = mask.copy()
    mask[rng.uniform(size=mask.shape) < 0.15] = -1  # absent: neither given nor scored
    return mask


def test_gathered_and_masked_paths_agree_with_dense_reference():
    rng = np.random.default_rng(21)
    mask = _with_absent(rng, mixed_masks(rng))
    params = make_params(rng, len(mask), 3, N, 4)
    x = np.stack([sample_x(rng, params, mask) for _ in range(2)])  # [S=2, B, N]
    dist = MaskedFactorMixture(**params, mask=mask)
    gathered = dist.log_prob(x).numpy()
    gathered_distance = dist.component_mahalanobis(x).numpy()
    with distribution.static_shapes():
        masked = dist.log_prob(x).numpy()
        masked_distance = dist.component_mahalanobis(x).numpy()
    expected = np.stack([reference.mixture_log_prob(**params, mask=mask, x=v) for v in x])
    np.testing.assert_allclose(gathered, expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(masked, expected, rtol=1e-9, atol=1e-9)
    expected_distance = np.stack([
        reference.component_mahalanobis(params["loc"], params["factors"], params["diag"], mask, v)
        for v in x
    ])
    np.testing.assert_allclose(gathered_distance, expected_distance, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(masked_distance, expected_distance, rtol=1e-9, atol=1e-9)


def test_gathered_and_masked_gradients_agree():
    rng = np.random.default_rng(22)
    mask = _with_absent(rng, mixed_masks(rng))
    params = make_params(rng, len(mask), 2, N, 3)
    x = sample_x(rng, params, mask)

    def gradients():
        tensors = {key: tf.Variable(value) for key, value in params.items()}
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(MaskedFactorMixture(**tensors, mask=mask).log_prob(x))
        return tape.gradient(total, tensors)

    gathered = gradients()
    with distribution.static_shapes():
        masked = gradients()
    for key in params:
        np.testing.assert_allclose(gathered[key].numpy(), masked[key].numpy(), rtol=1e-9, atol=1e-12)
        # nothing flows to the unscored coordinates' parameters
        if key in ("loc", "diag"):
            assert np.all(gathered[key].numpy()[np.broadcast_to(mask[:, None] != 0, params[key].shape)] == 0)


def test_the_algebra_runs_on_the_scored_rows_only(monkeypatch):
    rng = np.random.default_rng(23)
    mask = np.ones((3, N))
    mask[0, :5] = 0  # 5 scored, 2 and 0 for the others
    mask[1, 10:12] = 0
    mask[2, 20:23] = -1
    params = make_params(rng, 3, 2, N, 4)
    seen = []
    original = linalg.whitened_capacitance

    def recording(factors, diag, selected):
        seen.append(tuple(factors.shape))
        return original(factors, diag, selected)

    monkeypatch.setattr(linalg, "whitened_capacitance", recording)
    x = sample_x(rng, params, mask)
    got = MaskedFactorMixture(**params, mask=mask).log_prob(x).numpy()
    with distribution.static_shapes():
        MaskedFactorMixture(**params, mask=mask).log_prob(x)
    with linalg.builtins_only():
        MaskedFactorMixture(**params, mask=mask).log_prob(x)
    assert seen == [(3, 2, 5, 4), (3, 2, N, 4), (3, 2, N, 4)]
    np.testing.assert_allclose(got, reference.mixture_log_prob(**params, mask=mask, x=x), rtol=1e-9)


def test_graph_with_unknown_batch_and_xla_agree():
    rng = np.random.default_rng(24)
    mask = mixed_masks(rng).astype(np.float32)
    params = {k: v.astype(np.float32) for k, v in make_params(rng, len(mask), 2, N, 4).items()}
    x = sample_x(rng, params, mask).astype(np.float32)
    spec = lambda *shape: tf.TensorSpec(shape, tf.float32)  # noqa: E731

    def log_prob(logits, loc, factors, diag, mask, x):
        return MaskedFactorMixture(logits, loc, factors, diag, mask).log_prob(x)

    signature = [spec(None, 2), spec(None, 2, N), spec(None, 2, N, 4), spec(None, 2, N),
                 spec(None, N), spec(None, N)]
    graph = tf.function(log_prob, input_signature=signature)
    xla = tf.function(log_prob, jit_compile=True)
    args = (params["logits"], params["loc"], params["factors"], params["diag"], mask, x)
    expected = reference.mixture_log_prob(**params, mask=mask, x=x)
    for function in (graph, xla):
        np.testing.assert_allclose(function(*args).numpy(), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("values_shape,index_shape", [((4, 3, 7), (4, 1, 2)), ((3, 7), (4, 1, 2))])
def test_take_broadcasts_batch_dimensions(values_shape, index_shape):
    rng = np.random.default_rng(25)
    values = rng.normal(size=values_shape)
    index = rng.integers(0, 7, size=index_shape).astype(np.int32)
    got = rows.take(tf.constant(values), tf.constant(index), axis=-1).numpy()
    batch = np.broadcast_shapes(values_shape[:-1], index_shape[:-1])
    full_values = np.broadcast_to(values, batch + values_shape[-1:])
    full_index = np.broadcast_to(index, batch + index_shape[-1:])
    np.testing.assert_array_equal(got, np.take_along_axis(full_values, full_index, axis=-1))
