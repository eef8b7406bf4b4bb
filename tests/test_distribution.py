"""MaskedFactorMixture against independent dense float64 references."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import reference
from dmfa_tf import masks
from dmfa_tf.core.distribution import MaskedFactorMixture, flatten_mask

HEIGHT, WIDTH = 6, 5  # N = 30
N = HEIGHT * WIDTH


def make_params(rng, batch, k, n, l, min_var=1e-6, factor_scale=0.25):
    return dict(
        logits=rng.normal(size=(batch, k)),
        loc=rng.uniform(0, 1, size=(batch, k, n)),
        factors=rng.uniform(-factor_scale, factor_scale, size=(batch, k, n, l)),
        diag=np.exp(rng.uniform(np.log(min_var), 0, size=(batch, k, n))),
    )


def mixed_masks(rng):
    """Rectangles and random pixels of different sizes in one batch, plus an
    empty mask (nothing missing) and a full one (everything missing)."""
    rows = [np.ones(N), np.zeros(N)]  # nothing missing, all missing
    for i, spec in enumerate(["2x2", "3x4", "6x5", "1x1", "4x2@paper"]):
        mask = masks.parse(spec)(HEIGHT, WIDTH, seed=[7, i]).numpy().reshape(-1)
        rows.append(mask)
    for rate in (0.1, 0.5, 0.9):
        rows.append((rng.uniform(size=N) >= rate).astype(float))
    return np.stack(rows)  # [10, N]


def sample_x(rng, params, mask):
    """x near the model (so the log densities are typical), random elsewhere."""
    x = params["loc"][:, 0] + rng.normal(size=mask.shape) * 0.1
    return np.where(mask == 1, rng.uniform(size=mask.shape), x)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("l", [1, 4])
def test_log_prob_matches_dense_reference_float32(k, l):
    rng = np.random.default_rng(10 * k + l)
    mask = mixed_masks(rng)
    params = make_params(rng, len(mask), k, N, l)
    x = sample_x(rng, params, mask)
    expected = reference.mixture_log_prob(**params, mask=mask, x=x)

    dist = MaskedFactorMixture(
        **{key: v.astype(np.float32) for key, v in params.items()},
        mask=mask.astype(np.float32),
        validate_args=True,
    )
    got = dist.log_prob(x.astype(np.float32)).numpy()
    assert got.dtype == np.float32
    relative = np.abs(got - expected) / np.maximum(1.0, np.abs(expected))
    assert relative.max() < 1e-3, (relative.max(), got, expected)
    assert got[0] == 0.0  # nothing missing: exactly log 1


@pytest.mark.parametrize("k", [1, 3])
def test_log_prob_float64_is_exact(k):
    rng = np.random.default_rng(k)
    mask = mixed_masks(rng)
    params = make_params(rng, len(mask), k, N, 4)
    x = sample_x(rng, params, mask)
    expected = reference.mixture_log_prob(**params, mask=mask, x=x)
    got = MaskedFactorMixture(**params, mask=mask).log_prob(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


def test_more_accurate_than_textbook_woodbury_with_tiny_variances():
    """With variances near 1e-6 the float32 error stays far below TFP's
    MultivariateNormalDiagPlusLowRankCovariance (the textbook formula)."""
    rng = np.random.default_rng(3)
    n, l = 196, 4
    params = make_params(rng, 8, 1, n, l, min_var=1e-6)
    mask = np.zeros((8, n))
    latent = rng.normal(size=(8, l))
    x = (
        params["loc"][:, 0]
        + np.einsum("bnl,bl->bn", params["factors"][:, 0], latent)
        + np.sqrt(params["diag"][:, 0]) * rng.normal(size=(8, n))
    )
    expected = reference.mixture_log_prob(**params, mask=mask, x=x)
    f32 = {key: tf.constant(v, tf.float32) for key, v in params.items()}
    ours = MaskedFactorMixture(**f32, mask=tf.constant(mask, tf.float32)).log_prob(
        tf.constant(x, tf.float32)
    )
    tfp_mvn = tfp.distributions.MultivariateNormalDiagPlusLowRankCovariance(
        f32["loc"][:, 0], f32["diag"][:, 0], f32["factors"][:, 0]
    ).log_prob(tf.constant(x, tf.float32))
    ours_error = np.max(np.abs(ours.numpy() - expected) / np.abs(expected))
    tfp_error = np.max(np.abs(tfp_mvn.numpy() - expected) / np.abs(expected))
    assert ours_error < 1e-5, ours_error
    assert ours_error * 100 < tfp_error, (ours_error, tfp_error)


def test_absent_coordinates_are_marginalised_out():
    rng = np.random.default_rng(4)
    mask = mixed_masks(rng)
    absent = (rng.uniform(size=mask.shape) < 0.3) & (mask == 0)
    mask_with_absent = np.where(absent, -1.0, mask)
    params = make_params(rng, len(mask), 2, N, 3)
    x = sample_x(rng, params, mask)
    # the reference scores exactly the mask-0 coordinates
    expected = reference.mixture_log_prob(**params, mask=np.where(absent, 1.0, mask), x=x)
    got = MaskedFactorMixture(**params, mask=mask_with_absent).log_prob(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-9), (np.float32, 1e-3)])
def test_component_mahalanobis_matches_dense_reference(dtype, tolerance):
    rng = np.random.default_rng(11)
    mask = mixed_masks(rng)
    absent = (rng.uniform(size=mask.shape) < 0.3) & (mask == 0)
    params = make_params(rng, len(mask), 3, N, 4, min_var=1e-3)
    x = sample_x(rng, params, mask)
    expected = reference.component_mahalanobis(
        params["loc"], params["factors"], params["diag"], np.where(absent, 1.0, mask), x
    )
    dist = MaskedFactorMixture(
        **{key: v.astype(dtype) for key, v in params.items()},
        mask=np.where(absent, -1.0, mask).astype(dtype),
    )
    got = dist.component_mahalanobis(x.astype(dtype)).numpy()
    assert got.shape == (len(mask), 3) and got.dtype == dtype
    np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance)
    assert np.all(got[0] == 0.0)  # nothing missing
    # the quadratic form inside log_prob: log N = -(maha + log det + m log 2 pi) / 2
    if dtype == np.float64:
        component = dist.component_log_prob(x).numpy()
        missing = (mask == 0) & ~absent
        for b in range(len(mask)):
            for k in range(3):
                cov = params["factors"][b, k] @ params["factors"][b, k].T + np.diag(params["diag"][b, k])
                _, log_det = np.linalg.slogdet(cov[np.ix_(missing[b], missing[b])])
                m = missing[b].sum()
                assert component[b, k] == pytest.approx(
                    -0.5 * (got[b, k] + (log_det if m else 0.0) + m * np.log(2 * np.pi)), abs=1e-8
                )


def test_values_at_unscored_coordinates_are_ignored():
    rng = np.random.default_rng(5)
    mask = mixed_masks(rng)
    params = make_params(rng, len(mask), 2, N, 2)
    x = sample_x(rng, params, mask)
    dist = MaskedFactorMixture(**params, mask=mask)
    garbage = np.where(mask == 1, np.nan, x)
    np.testing.assert_array_equal(dist.log_prob(garbage).numpy(), dist.log_prob(x).numpy())


def test_log_prob_with_sample_dimensions():
    rng = np.random.default_rng(6)
    mask = mixed_masks(rng)[:4]
    params = make_params(rng, 4, 2, N, 2)
    xs = np.stack([sample_x(rng, params, mask) for _ in range(3)])  # [3, 4, N]
    got = MaskedFactorMixture(**params, mask=mask).log_prob(xs).numpy()
    assert got.shape == (3, 4)
    for s in range(3):
        np.testing.assert_allclose(
            got[s], reference.mixture_log_prob(**params, mask=mask, x=xs[s]), rtol=1e-9
        )


def test_gradients_match_finite_differences_of_dense_reference():
    rng = np.random.default_rng(7)
    mask = mixed_masks(rng)[2:6]  # rectangles of different sizes
    params = make_params(rng, len(mask), 2, N, 2, min_var=1e-2)
    x = sample_x(rng, params, mask)
    tensors = {key: tf.Variable(v) for key, v in params.items()}
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(MaskedFactorMixture(**tensors, mask=mask).log_prob(x))
    grads = tape.gradient(total, tensors)

    def reference_total(overrides):
        return reference.mixture_log_prob(**{**params, **overrides}, mask=mask, x=x).sum()

    eps = 1e-6
    for key, value in params.items():
        grad = grads[key].numpy()
        assert np.all(np.isfinite(grad)), key
        for index in list(zip(*np.nonzero(np.ones_like(value))))[::7][:12]:
            plus, minus = value.copy(), value.copy()
            plus[index] += eps
            minus[index] -= eps
            numeric = (reference_total({key: plus}) - reference_total({key: minus})) / (2 * eps)
            np.testing.assert_allclose(grad[index], numeric, rtol=1e-5, atol=1e-6, err_msg=key)


def test_gradients_are_finite_in_float32_with_tiny_variances():
    rng = np.random.default_rng(8)
    mask = mixed_masks(rng)
    params = make_params(rng, len(mask), 3, N, 4, min_var=1e-6)
    x = sample_x(rng, params, mask).astype(np.float32)
    tensors = {key: tf.Variable(v.astype(np.float32)) for key, v in params.items()}
    with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(MaskedFactorMixture(**tensors, mask=mask).log_prob(x))
    for key, grad in tape.gradient(loss, tensors).items():
        assert np.all(np.isfinite(grad.numpy())), key


def test_no_n_by_n_tensor_in_forward_or_gradient():
    n, l, k = 400, 4, 2

    @tf.function
    def loss_and_grads(logits, loc, factors, diag, mask, x):
        with tf.GradientTape() as tape:
            tape.watch([logits, loc, factors, diag])
            loss = -tf.reduce_mean(
                MaskedFactorMixture(logits, loc, factors, diag, mask).log_prob(x)
            )
        return loss, tape.gradient(loss, [logits, loc, factors, diag])

    spec = lambda *shape: tf.TensorSpec(shape, tf.float32)  # noqa: E731
    graph = loss_and_grads.get_concrete_function(
        spec(8, k), spec(8, k, n), spec(8, k, n, l), spec(8, k, n), spec(8, n), spec(8, n)
    ).graph
    for op in graph.get_operations():
        for output in op.outputs:
            dims = [d for d in (output.shape.as_list() if output.shape.rank else []) if d]
            assert sum(d >= n for d in dims) < 2, (op.type, op.name, output.shape)


def test_xla_compiles_log_prob_and_gradient():
    rng = np.random.default_rng(9)
    mask = mixed_masks(rng).astype(np.float32)
    params = {k: tf.constant(v, tf.float32) for k, v in make_params(rng, len(mask), 2, N, 4).items()}
    x = tf.constant(sample_x(rng, params_np := {k: v.numpy() for k, v in params.items()}, mask), tf.float32)

    @tf.function(jit_compile=True)
    def f(loc):
        with tf.GradientTape() as tape:
            tape.watch(loc)
            lp = MaskedFactorMixture(params["logits"], loc, params["factors"], params["diag"], mask).log_prob(x)
            total = tf.reduce_sum(lp)
        return lp, tape.gradient(total, loc)

    lp, grad = f(params["loc"])
    expected = reference.mixture_log_prob(**params_np, mask=mask, x=x.numpy())
    np.testing.assert_allclose(lp.numpy(), expected, rtol=1e-3, atol=1e-3)
    assert np.all(np.isfinite(grad.numpy()))


def test_mean_variance_imputation_against_moments():
    rng = np.random.default_rng(11)
    mask = mixed_masks(rng)
    params = make_params(rng, len(mask), 3, N, 2)
    observed = rng.uniform(size=mask.shape)
    dist = MaskedFactorMixture(**params, mask=mask, observed=observed)
    mean, variance, imputation = (v.numpy() for v in (dist.mean(), dist.variance(), dist.imputation()))
    for b in range(len(mask)):
        m, cov = reference.mixture_moments(*(params[key][b] for key in ("logits", "loc", "factors", "diag")))
        given = mask[b] == 1
        np.testing.assert_allclose(mean[b][~given], m[~given], atol=1e-12)
        np.testing.assert_allclose(variance[b][~given], np.diag(cov)[~given], rtol=1e-10)
        best = np.argmax(params["logits"][b])
        np.testing.assert_allclose(imputation[b][~given], params["loc"][b, best][~given])
        # observed values untouched, variance 0 there
        np.testing.assert_array_equal(mean[b][given], observed[b][given])
        np.testing.assert_array_equal(imputation[b][given], observed[b][given])
        np.testing.assert_array_equal(variance[b][given], 0.0)


@pytest.mark.parametrize("noise", [True, False])
def test_sample_moments_on_missing_block(noise):
    rng = np.random.default_rng(12)
    n, k, l, count = 12, 2, 2, 40000
    params = make_params(rng, 1, k, n, l, min_var=1e-2, factor_scale=1.0)
    params["logits"] = np.array([[0.3, -0.2]])
    mask = np.ones((1, n))
    mask[0, 3:9] = 0
    observed = rng.uniform(size=(1, n))
    dist = MaskedFactorMixture(**params, mask=mask, observed=observed)
    samples = dist.sample(count, seed=[3, 4], diagonal_noise=noise).numpy()[:, 0]  # [count, n]
    assert samples.shape == (count, n)
    again = dist.sample(count, seed=[3, 4], diagonal_noise=noise).numpy()[:, 0]
    np.testing.assert_array_equal(samples, again)  # same seed, same samples
    given = mask[0] == 1
    np.testing.assert_array_equal(samples[:, given], np.broadcast_to(observed[0][given], (count, given.sum())))

    mean, cov = reference.mixture_moments(*(params[key][0] for key in ("logits", "loc", "factors", "diag")), noise=noise)
    hidden = ~given
    std = np.sqrt(np.diag(cov)[hidden])
    np.testing.assert_array_less(
        np.abs(samples[:, hidden].mean(0) - mean[hidden]), 5 * std / np.sqrt(count)
    )
    sample_cov = np.cov(samples[:, hidden], rowvar=False)
    # Var of a sample covariance entry is about (s_ii s_jj + s_ij^2) / count
    bound = 5 * np.sqrt((np.outer(std**2, std**2) + cov[np.ix_(hidden, hidden)] ** 2) / count)
    # a mixture's fourth moments exceed the Gaussian's: allow a factor of 2
    np.testing.assert_array_less(np.abs(sample_cov - cov[np.ix_(hidden, hidden)]), 2 * bound)


def test_sample_count_is_bounded():
    rng = np.random.default_rng(14)
    params = make_params(rng, 3, 2, 10, 2)
    dist = MaskedFactorMixture(**params, mask=np.zeros((3, 10)))
    # 2**28 values per call: 3 x 10 values per sample allow 8,947,848 samples
    with pytest.raises(ValueError, match=r"cannot draw 8947849 samples of 30 values.*2\*\*28"):
        dist.sample(8947849, seed=[1, 2])
    with pytest.raises(ValueError, match=r"cannot draw 1073741824 samples"):
        dist.sample(2**30, seed=[1, 2])
    assert dist.sample(5, seed=[1, 2]).shape == (5, 3, 10)

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
    def draw(n):  # n unknown when traced: an assertion
        return tf.shape(dist.sample(n, seed=[1, 2]))

    assert draw(tf.constant(4)).numpy().tolist() == [4, 3, 10]
    with pytest.raises(tf.errors.InvalidArgumentError, match="MAX_SAMPLE_VALUES"):
        draw(tf.constant(2**30))


def test_shapes_and_slicing():
    rng = np.random.default_rng(13)
    params = make_params(rng, 4, 3, N, 2)
    mask = mixed_masks(rng)[:4]
    dist = MaskedFactorMixture(**params, mask=mask)
    assert dist.batch_shape == [4]
    assert dist.event_shape == [N]
    assert dist.num_components == 3 and dist.num_factors == 2
    assert dist.sample(2, seed=[1, 1]).shape == (2, 4, N)
    sliced = dist[1:3]
    assert sliced.batch_shape == [2]
    np.testing.assert_allclose(
        sliced.log_prob(np.zeros((2, N))).numpy(), dist.log_prob(np.zeros((4, N))).numpy()[1:3]
    )
    # a mask shared by the whole batch broadcasts
    shared = MaskedFactorMixture(**params, mask=mask[0])
    assert shared.batch_shape == [4]


def test_static_shape_errors_name_the_values():
    rng = np.random.default_rng(14)
    params = make_params(rng, 2, 3, N, 2)
    with pytest.raises(ValueError, match=r"components K.*logits.shape\[-1\]: 2"):
        MaskedFactorMixture(**{**params, "logits": np.zeros((2, 2))}, mask=np.ones((2, N)))
    with pytest.raises(ValueError, match=r"event size.*mask.shape\[-1\]: 7"):
        MaskedFactorMixture(**params, mask=np.ones((2, 7)))
    with pytest.raises(ValueError, match=r"rank >= 3.*factors.shape=\(2, 3\)"):
        MaskedFactorMixture(**{**params, "factors": np.zeros((2, 3))}, mask=np.ones((2, N)))
    dist = MaskedFactorMixture(**params, mask=np.ones((2, N)))
    with pytest.raises(ValueError, match=r"30 coordinates.*x.shape=\(2, 29\)"):
        dist.log_prob(np.zeros((2, 29)))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p, m: (dict(p, diag=-p["diag"]), m), "diag"),
        (lambda p, m: (p, m * 0.5), "mask"),
        (lambda p, m: (dict(p, loc=np.where(p["loc"] > 0.5, np.nan, p["loc"])), m), "loc"),
    ],
)
def test_validate_args_errors(change, message):
    rng = np.random.default_rng(15)
    params = make_params(rng, 2, 2, N, 2)
    params, mask = change(params, mixed_masks(rng)[2:4])
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        MaskedFactorMixture(**params, mask=mask, validate_args=True).log_prob(np.zeros((2, N)))


def test_validate_args_rejects_nan_at_scored_coordinates_only():
    rng = np.random.default_rng(16)
    params = make_params(rng, 2, 2, N, 2)
    mask = mixed_masks(rng)[2:4]
    dist = MaskedFactorMixture(**params, mask=mask, validate_args=True)
    x = np.where(mask == 1, np.nan, 0.5)
    assert np.all(np.isfinite(dist.log_prob(x).numpy()))
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or inf"):
        dist.log_prob(np.where(mask == 0, np.nan, 0.5))


def test_nan_at_scored_coordinates_is_an_error_in_eager_mode():
    """Without validate_args, an eager log_prob names NaN at scored coordinates
    instead of returning a silent NaN; NaN elsewhere is never read."""
    rng = np.random.default_rng(26)
    params = make_params(rng, 2, 2, N, 2)
    mask = mixed_masks(rng)[2:4]
    dist = MaskedFactorMixture(**params, mask=mask)
    assert np.all(np.isfinite(dist.log_prob(np.where(mask != 0, np.nan, 0.5)).numpy()))
    x = np.where(mask == 0, np.nan, 0.5)
    count = int((mask == 0).sum())
    with pytest.raises(ValueError, match=f"holds {count} NaN or inf values at missing .*-1 \\(absent\\)"):
        dist.log_prob(x)
    from dmfa_tf.models.losses import negative_log_likelihood

    image = np.where(mask == 0, np.nan, 0.5).reshape(2, 1, N, 1)
    with pytest.raises(ValueError, match="NaN or inf values at missing"):
        negative_log_likelihood(params, image, mask.reshape(2, 1, N, 1))


def test_from_images_broadcasts_single_channel_mask():
    rng = np.random.default_rng(17)
    h, w, c = 4, 3, 3
    params = make_params(rng, 2, 2, h * w * c, 2)
    mask = np.ones((2, h, w, 1))
    mask[:, 1:3, 0:2] = 0
    image = rng.uniform(size=(2, h, w, c))
    dist = MaskedFactorMixture.from_images(params, mask, image)
    flat = np.broadcast_to(mask, (2, h, w, c)).reshape(2, -1)
    np.testing.assert_array_equal(dist.mask.numpy(), flat)
    expected = reference.mixture_log_prob(**params, mask=flat, x=image.reshape(2, -1))
    np.testing.assert_allclose(dist.log_prob(image.reshape(2, -1)).numpy(), expected, rtol=1e-9)
    with pytest.raises(ValueError, match="does not fit"):
        flatten_mask(np.ones((2, h, w, 2)), h * w * c)


def test_most_probable_component_by_hand():
    """The one rule for "the most probable component": the largest logit, the
    first one on a tie; the distribution's method and imputation use it."""
    from dmfa_tf.core.distribution import most_probable_component

    logits = np.array([[0.0, 2.0, 1.0], [3.0, 3.0, -1.0]], np.float32)
    np.testing.assert_array_equal(most_probable_component(logits).numpy(), [1, 0])
    loc = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    dist = MaskedFactorMixture(
        logits, loc, np.zeros((2, 3, 2, 1), np.float32), np.ones((2, 3, 2), np.float32),
        mask=np.zeros((2, 2), np.float32),
    )
    np.testing.assert_array_equal(dist.most_probable_component().numpy(), [1, 0])
    np.testing.assert_array_equal(dist.imputation().numpy(), [loc[0, 1], loc[1, 0]])
