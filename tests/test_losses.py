"""The loss and the paper's per-image scores, on hand-computed examples."""

import numpy as np
import pytest
import tensorflow as tf

import reference
from dmfa_tf.models.losses import MaskedNLL, negative_log_likelihood, squared_error


def _params_2x2():
    """K = 2 components over a 2 x 2 grey image (N = 4), L = 1."""
    return {
        "logits": np.array([[0.0, 1.0]], np.float32),  # component 1 is the most probable
        "loc": np.array([[[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]], np.float32),
        "factors": np.zeros((1, 2, 4, 1), np.float32),
        "diag": np.full((1, 2, 4), 0.25, np.float32),
    }


def test_squared_error_hand_computed():
    params = _params_2x2()
    image = np.array([1.0, 0.0, 0.5, 0.5], np.float32).reshape(1, 2, 2, 1)
    mask = np.array([1, 0, -1, 0], np.float32).reshape(1, 2, 2, 1)
    # scored pixels 1 and 3 against component 1's means 0.6 and 0.8
    expected = (0.0 - 0.6) ** 2 + (0.5 - 0.8) ** 2
    np.testing.assert_allclose(squared_error(params, image, mask).numpy(), [expected], rtol=1e-6)


def test_nll_hand_computed_diagonal_mixture():
    params = _params_2x2()
    image = np.array([1.0, 0.0, 0.5, 0.5], np.float32).reshape(1, 2, 2, 1)
    mask = np.array([1, 0, -1, 0], np.float32).reshape(1, 2, 2, 1)

    def gauss(x, m, v):
        return np.exp(-((x - m) ** 2) / (2 * v)) / np.sqrt(2 * np.pi * v)

    weights = np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()
    density = weights[0] * gauss(0.0, 0.2, 0.25) * gauss(0.5, 0.4, 0.25) + weights[1] * gauss(
        0.0, 0.6, 0.25
    ) * gauss(0.5, 0.8, 0.25)
    got = negative_log_likelihood(params, image, mask).numpy()
    np.testing.assert_allclose(got, [-np.log(density)], rtol=1e-5)


def test_masked_nll_loss_reductions_and_input_forms():
    rng = np.random.default_rng(0)
    b, h, w, c, k, l = 3, 3, 3, 2, 2, 2
    n = h * w * c
    params = {
        "logits": rng.normal(size=(b, k)).astype(np.float32),
        "loc": rng.uniform(size=(b, k, n)).astype(np.float32),
        "factors": rng.uniform(-0.2, 0.2, size=(b, k, n, l)).astype(np.float32),
        "diag": rng.uniform(0.01, 0.5, size=(b, k, n)).astype(np.float32),
    }
    image = rng.uniform(size=(b, h, w, c)).astype(np.float32)
    mask = (rng.uniform(size=(b, h, w, 1)) > 0.4).astype(np.float32)
    mask[2] = 1.0  # nothing missing: NLL 0
    flat_mask = np.broadcast_to(mask, image.shape).reshape(b, -1)
    expected = -reference.mixture_log_prob(**params, mask=flat_mask, x=image.reshape(b, -1))
    assert expected[2] == 0.0
    per_image = MaskedNLL(reduction=None)({"image": image, "mask": mask}, params).numpy()
    np.testing.assert_allclose(per_image, expected, rtol=1e-4, atol=1e-4)
    assert per_image[2] == 0.0
    mean = MaskedNLL()((image, mask), params).numpy()
    np.testing.assert_allclose(mean, expected.mean(), rtol=1e-4)
    weighted = MaskedNLL()((image, mask), params, sample_weight=np.array([1.0, 0.0, 0.0])).numpy()
    np.testing.assert_allclose(weighted, expected[0] / 3, rtol=1e-4)
    assert MaskedNLL.from_config(MaskedNLL(name="x").get_config()).name == "x"


def test_masked_nll_rejects_bad_targets():
    with pytest.raises(ValueError, match=r"missing \['mask'\]"):
        MaskedNLL()({"image": np.zeros((1, 2, 2, 1))}, _params_2x2())
    with pytest.raises(ValueError, match="Expected"):
        MaskedNLL()(np.zeros((1, 2, 2, 1)), _params_2x2())


def test_scores_are_zero_when_nothing_is_missing():
    params = _params_2x2()
    image = np.zeros((1, 2, 2, 1), np.float32)
    mask = np.ones((1, 2, 2, 1), np.float32)
    assert negative_log_likelihood(params, image, mask).numpy()[0] == 0.0
    assert squared_error(params, image, mask).numpy()[0] == 0.0
    # absent pixels are not scored either
    assert squared_error(params, image, -mask).numpy()[0] == 0.0
    assert negative_log_likelihood(params, tf.constant(image), -mask).numpy()[0] == 0.0


# === Training objectives (dmfa_tf.models.losses.objective_loss) ===

from dmfa_tf.models.losses import Objective, objective_loss  # noqa: E402


def _random_problem(seed=0, k=2):
    """B = 3 colour 3x3 images (N = 18), K components, L = 2; image 2 has
    nothing missing, image 1 has absent pixels."""
    rng = np.random.default_rng(seed)
    b, h, w, c, l = 3, 3, 3, 2, 2
    n = h * w * c
    params = {
        "logits": rng.normal(size=(b, k)).astype(np.float32),
        "loc": rng.uniform(size=(b, k, n)).astype(np.float32),
        "factors": rng.uniform(-0.3, 0.3, size=(b, k, n, l)).astype(np.float32),
        "diag": rng.uniform(0.02, 0.5, size=(b, k, n)).astype(np.float32),
    }
    image = rng.uniform(size=(b, h, w, c)).astype(np.float32)
    mask = (rng.uniform(size=(b, h, w, 1)) > 0.5).astype(np.float32)
    mask[0, 0, 0] = 0.0
    mask[1, 0, :] = -1.0  # absent: in no score
    mask[1, 2, 2] = 0.0
    mask[2] = 1.0
    return params, image, mask


def _numpy_pieces(params, image, mask):
    """Dense float64 per-image NLL, paper MSE, responsibilities, per-component
    squared errors and mean predictive variance over the missing pixels."""
    logits, loc, factors, diag = (np.asarray(params[k], np.float64) for k in
                                  ("logits", "loc", "factors", "diag"))
    b, k, n = loc.shape
    x = image.reshape(b, -1).astype(np.float64)
    flat_mask = np.broadcast_to(mask, image.shape).reshape(b, -1)
    nll, se, resp, se_k, mean_var = (np.zeros(b), np.zeros(b), np.zeros((b, k)),
                                     np.zeros((b, k)), np.ones(b))
    for i in range(b):
        m = flat_mask[i] == 0
        weights = np.exp(logits[i] - np.logaddexp.reduce(logits[i]))
        se_k[i] = ((x[i] - loc[i]) ** 2 * m).sum(-1)
        se[i] = se_k[i, np.argmax(logits[i])]
        if not m.any():
            resp[i] = weights
            continue
        joint = []
        for j in range(k):
            cov = (factors[i, j] @ factors[i, j].T + np.diag(diag[i, j]))[np.ix_(m, m)]
            r = (x[i] - loc[i, j])[m]
            joint.append(np.log(weights[j]) - 0.5 * (
                m.sum() * np.log(2 * np.pi) + np.linalg.slogdet(cov)[1]
                + r @ np.linalg.solve(cov, r)))
        joint = np.array(joint)
        nll[i] = -np.logaddexp.reduce(joint)
        resp[i] = np.exp(joint + nll[i])
        mean = weights @ loc[i]
        var = sum(weights[j] * (diag[i, j] + (factors[i, j] ** 2).sum(-1)
                                + (loc[i, j] - mean) ** 2) for j in range(k))
        mean_var[i] = var[m].mean()
    return dict(nll=nll, se=se, resp=resp, se_k=se_k, mean_var=mean_var)


def test_objective_specs():
    assert str(Objective.parse("nll")) == "nll" and Objective.parse("nll").value is None
    assert str(Objective.parse("nll+mse")) == "nll+mse:1"
    assert Objective.parse(" nll+mse:0.25 ") == Objective("nll+mse", 0.25)
    assert str(Objective.parse("beta_nll")) == "beta_nll:0.5"
    assert str(Objective.parse("mse_mean")) == "mse_mean:1"
    objective = Objective("beta_nll", 1.0)
    assert Objective.parse(objective) is objective
    for bad, message in [
        ("mse", "Unknown objective"),
        ("nll:2", "takes no number"),
        ("beta_nll:-1", ">= 0"),
        ("nll+mse:x", ">= 0"),
        ("nll+mse:inf", ">= 0"),
        (3, "string"),
    ]:
        with pytest.raises(ValueError, match=message):
            Objective.parse(bad)


def test_nll_objective_is_the_nll_unchanged():
    params, image, mask = _random_problem()
    loss, nll = objective_loss("nll", params, image, mask)
    expected = negative_log_likelihood(params, image, mask).numpy()
    np.testing.assert_array_equal(loss.numpy(), expected)
    np.testing.assert_array_equal(nll.numpy(), expected)


@pytest.mark.parametrize("k", [1, 2])
def test_objective_values_match_numpy(k):
    params, image, mask = _random_problem(k=k)
    ref = _numpy_pieces(params, image, mask)
    assert ref["nll"][2] == 0 and ref["se"][2] == 0  # nothing missing in image 2
    expected = {
        "nll": ref["nll"],
        "nll+mse:0.3": ref["nll"] + 0.3 * ref["se"],
        "beta_nll:0": ref["nll"],
        "beta_nll:0.5": np.sqrt(ref["mean_var"]) * ref["nll"],
        "beta_nll:1": ref["mean_var"] * ref["nll"],
        "mse_mean": ref["nll"] + (ref["resp"] * ref["se_k"]).sum(-1),
        "mse_mean:2": ref["nll"] + 2 * (ref["resp"] * ref["se_k"]).sum(-1),
    }
    if k == 1:  # one component: the responsibility is 1, the term is the paper's MSE
        np.testing.assert_allclose(expected["mse_mean"], ref["nll"] + ref["se"], rtol=1e-12)
    for spec, value in expected.items():
        loss, nll = objective_loss(spec, params, image, mask)
        np.testing.assert_allclose(loss.numpy(), value, rtol=1e-4, atol=1e-4, err_msg=spec)
        np.testing.assert_allclose(nll.numpy(), ref["nll"], rtol=1e-4, atol=1e-4, err_msg=spec)


def _gradients(spec_or_fn, params, image, mask):
    variables = {key: tf.Variable(value) for key, value in params.items()}
    with tf.GradientTape() as tape:
        if callable(spec_or_fn):
            value = spec_or_fn(variables, image, mask)
        else:
            value = objective_loss(spec_or_fn, variables, image, mask)[0]
        total = tf.reduce_sum(value)
    grads = tape.gradient(total, variables)
    return {key: (np.zeros(params[key].shape) if g is None else g.numpy())
            for key, g in grads.items()}


@pytest.mark.parametrize("k", [1, 2])
def test_mse_mean_trains_the_means_by_the_squared_error_only(k):
    params, image, mask = _random_problem(seed=1, k=k)
    got = _gradients("mse_mean:1.5", params, image, mask)
    nll_grads = _gradients(negative_log_likelihood, params, image, mask)
    # The means: 1.5 x the (responsibility-weighted) squared error's gradient,
    # 2 r_k (mu_k - x) on the missing coordinates, nothing from the NLL.
    ref = _numpy_pieces(params, image, mask)
    b = len(image)
    x = image.reshape(b, 1, -1)
    missing = (np.broadcast_to(mask, image.shape).reshape(b, 1, -1) == 0)
    expected_loc = 1.5 * 2 * ref["resp"][..., None] * (params["loc"] - x) * missing
    np.testing.assert_allclose(got["loc"], expected_loc, rtol=1e-4, atol=1e-6)
    if k == 1:  # exactly the paper's MSE's gradient, by the tape
        mse_grads = _gradients(squared_error, params, image, mask)
        np.testing.assert_allclose(got["loc"], 1.5 * mse_grads["loc"], rtol=1e-5, atol=1e-7)
    assert np.abs(nll_grads["loc"]).max() > 1e-2  # the NLL would have moved them
    # Everything else: the NLL's gradients.
    for key in ("factors", "diag", "logits"):
        np.testing.assert_allclose(got[key], nll_grads[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_beta_nll_and_nll_plus_mse_gradients():
    params, image, mask = _random_problem(seed=2)
    ref = _numpy_pieces(params, image, mask)
    nll_grads = _gradients(negative_log_likelihood, params, image, mask)
    # beta = 0 is the NLL; beta = 1 scales each image's NLL gradient by its
    # (stopped) mean predictive variance.
    beta0 = _gradients("beta_nll:0", params, image, mask)
    beta1 = _gradients("beta_nll:1", params, image, mask)
    weight = ref["mean_var"]
    for key in params:
        np.testing.assert_allclose(beta0[key], nll_grads[key], rtol=1e-5, atol=1e-7)
        scale = weight.reshape((-1,) + (1,) * (params[key].ndim - 1))
        np.testing.assert_allclose(beta1[key], scale * nll_grads[key], rtol=1e-4, atol=1e-7)
    # nll+mse: the NLL's gradients plus w x the paper's MSE's (most probable component's mean).
    mixed = _gradients("nll+mse:0.5", params, image, mask)
    mse_grads = _gradients(squared_error, params, image, mask)
    for key in params:
        np.testing.assert_allclose(
            mixed[key], nll_grads[key] + 0.5 * mse_grads[key], rtol=1e-4, atol=1e-6
        )
