"""Pictures of a model's predictions (matplotlib, imported only here).

`mosaic` draws the paper's Figure 2 layout, one row per test image:
original | masked | baseline imputation | DMFA imputation | DMFA mean |
factors a_0 ... a_{L-1} | variances d.
Imputations keep the observed pixels. "DMFA mean", the factors and the
variances are those of the most probable component, over the whole image.
Factors are drawn symmetrically around mid-grey (0.5 + a / (2 max|a|)),
variances scaled by their maximum.
"""


import numpy as np
import tensorflow as tf

from dmfa_tf import files
from dmfa_tf.core import colour
from dmfa_tf.core.distribution import (
    MaskedFactorMixture,
    flatten_mask,
    most_probable_component,
    unflatten_images,
)

__all__ = ["mosaic"]


def _best(params, key):
    best = most_probable_component(params["logits"])  # [B]
    return tf.gather(params[key], best, axis=1, batch_dims=1).numpy()  # [B, N(, L)]


def mosaic(path, model, images, masks, baseline=None, baseline_label="baseline", max_factors=4):
    """Writes the Figure 2 mosaic of `images` (a few) to `path` (PNG), atomically.

    Args:
        path: output file (`.png`).
        model: a DMFA model (or any callable returning mixture parameters).
        images: `[n, H, W, C]` images in [0, 1].
        masks: `[n, H, W, 1 or C]` masks.
        baseline: optional second model whose imputation gets a column (a
            mixture model, or a baseline with `predict_missing`).
        baseline_label: that column's title.
        max_factors: show at most this many factor columns.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    images = np.asarray(images, np.float32)
    masks = np.asarray(masks, np.float32)
    image_shape = images.shape[1:]
    channels = image_shape[-1]
    inputs = {"image": images, "mask": masks}

    def imputation_of(m):
        if hasattr(m, "predict_missing"):  # a NumPy baseline (`dmfa_tf.baselines`)
            flat_masks = flatten_mask(masks, int(np.prod(image_shape))).numpy()
            flat = images.reshape(len(images), -1).astype(np.float64)
            values = m.predict_missing(flat, flat_masks)["imputation"]
            return None, np.clip(values.reshape(images.shape), 0, 1).astype(np.float32)
        params = m(inputs, training=False)
        dist = MaskedFactorMixture.from_images(params, masks, images)
        return params, np.clip(unflatten_images(dist.imputation(), image_shape).numpy(), 0, 1)

    params, imputed = imputation_of(model)
    loc, factors, diag = (_best(params, key) for key in ("loc", "factors", "diag"))
    if "basis" in params:  # a colour basis (dmfa_tf.core.colour): shown in RGB
        q = tf.convert_to_tensor(params["basis"])[0]  # [C, C], the same for every image
        loc = colour.from_basis(loc, q).numpy()
        factors = np.swapaxes(colour.from_basis(np.swapaxes(factors, -1, -2), q).numpy(), -1, -2)
        diag = colour.from_basis(diag, tf.square(q)).numpy()  # diag(d) in RGB: sum_j Q_jc^2 d_j
    loc = np.clip(loc.reshape((-1,) + image_shape), 0, 1)
    diag = diag.reshape((-1,) + image_shape)
    num_factors = min(max_factors, factors.shape[-1])
    missing = np.broadcast_to(masks < 0.5, images.shape)
    masked = np.where(missing, 0.5, images)
    if channels == 1:
        # missing pixels in red on grey images
        grey = np.repeat(images, 3, axis=-1)
        masked = np.where(np.repeat(missing, 3, axis=-1), np.array([0.9, 0.1, 0.1]), grey)

    columns = [("original", images), ("masked", masked)]
    if baseline is not None:
        columns.append((f"{baseline_label}\nimputation", imputation_of(baseline)[1]))
    columns += [("DMFA\nimputation", imputed), ("DMFA\nmean", loc)]
    for j in range(num_factors):
        a = factors[..., j].reshape((-1,) + image_shape)
        scale = np.abs(a).max(axis=tuple(range(1, a.ndim)), keepdims=True) + 1e-12
        columns.append((f"a{j}", 0.5 + a / (2 * scale)))
    scale = diag.max(axis=tuple(range(1, diag.ndim)), keepdims=True) + 1e-12
    columns.append(("d", diag / scale))

    rows = len(images)
    fig, axes = plt.subplots(
        rows, len(columns), figsize=(1.1 * len(columns), 1.1 * rows + 0.5), squeeze=False
    )
    for c, (title, values) in enumerate(columns):
        for r in range(rows):
            ax = axes[r, c]
            picture = values[r]
            if picture.shape[-1] == 1:
                ax.imshow(picture[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(np.clip(picture, 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout(pad=0.2)
    try:
        with files.atomic_path(path) as partial:
            fig.savefig(partial, dpi=120, format="png")
    finally:
        plt.close(fig)
