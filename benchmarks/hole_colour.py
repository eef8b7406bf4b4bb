"""How well a model's hole means get each face's colour (issue 7's CelebA study).

For each test image, the true and the imputed values of the hole are rotated into
the opponent basis (brightness, red − green, (red + green) − 2 blue) and averaged
over the hole. Per channel, the imputed hole averages are regressed on the true
ones: a slope of 1 with a high correlation is a model that carries each face's
colour into the hole; a slope well under its correlation is a model that knows
which way the colour goes but shrinks it toward the average face. The squared
error of the imputation on the two colour differences (and on the brightness) is
split into the part a per-image constant explains (`P |mean residual|²`, `P`
missing pixels) and the rest.

    PYTHONPATH=. python benchmarks/hole_colour.py --model=saved_models/celeb_a --hole=16x16 --images=200
    PYTHONPATH=. python benchmarks/hole_colour.py --model=saved_models/celeb_a --gaussian   # beside the full Gaussian

Colour images only (3 channels). The imputation is the model's (`model.impute`:
the most probable component's mean), in RGB, whatever basis the model uses.
"""

import argparse

import numpy as np

OPPONENT = np.array([[1, 1, 1], [1, -1, 0], [1, 1, -2]], np.float64)
OPPONENT = OPPONENT / np.linalg.norm(OPPONENT, axis=1, keepdims=True)


def hole_values(images, masks, imputations):
    """Per image, the true and imputed values of its missing pixels in the
    opponent basis: two lists of `[P_i, 3]` arrays. `images` and
    `imputations` `[B, H, W, 3]`, `masks` `[B, H, W, 1 or 3]` (0 missing; a
    pixel is missing when its first channel is)."""
    truth, imputed = [], []
    for image, mask, imputation in zip(images, masks, imputations):
        missing = mask[..., 0] == 0
        truth.append(np.asarray(image, np.float64)[missing] @ OPPONENT.T)
        imputed.append(np.asarray(imputation, np.float64)[missing] @ OPPONENT.T)
    return truth, imputed


def shrinkage(truth, imputed):
    """Per channel, the least-squares slope and intercept of the imputed hole
    averages on the true ones, and their correlation: `{"slope", "intercept",
    "correlation"}`, each `[3]`. Images without a missing pixel are left out."""
    kept = [i for i, t in enumerate(truth) if len(t)]
    if len(kept) < 2:
        raise ValueError("The shrinkage needs at least 2 images with missing pixels.")
    t = np.stack([truth[i].mean(axis=0) for i in kept])
    p = np.stack([imputed[i].mean(axis=0) for i in kept])
    tc, pc = t - t.mean(axis=0), p - p.mean(axis=0)
    slope = (tc * pc).sum(axis=0) / (tc * tc).sum(axis=0)
    correlation = (tc * pc).sum(axis=0) / np.sqrt((tc * tc).sum(axis=0) * (pc * pc).sum(axis=0))
    return {"slope": slope, "intercept": p.mean(axis=0) - slope * t.mean(axis=0),
            "correlation": correlation}


def error_split(truth, imputed):
    """Mean over images of the squared error summed over the hole, on the
    brightness and on the two colour differences, each as `(total, constant,
    rest)`: `constant = P |mean residual|²` per image, `rest = total - constant`."""
    rows = []
    for t, p in zip(truth, imputed):
        residual = t - p
        constant = len(t) * residual.mean(axis=0) ** 2 if len(t) else np.zeros(3)
        total = (residual**2).sum(axis=0)
        rows.append([total[0], constant[0], total[1:].sum(), constant[1:].sum()])
    mean = np.mean(rows, axis=0)
    return {"brightness": (mean[0], mean[1], mean[0] - mean[1]),
            "colour": (mean[2], mean[3], mean[2] - mean[3])}


def _gaussian_imputations(gaussian, images, masks):
    flat = images.reshape(len(images), -1).astype(np.float64)
    per_value = np.broadcast_to(masks, images.shape).reshape(len(images), -1)
    out = flat.copy()
    for b in range(len(images)):
        index, mean, _ = gaussian.conditional(flat[b], per_value[b])
        out[b, index] = mean
    return out.reshape(images.shape)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a saved model folder (colour images)")
    parser.add_argument("--hole", default="16x16", help="mask spec of the test masks (16x16)")
    parser.add_argument("--images", type=int, default=200, help="test images scored (200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test masks (0)")
    parser.add_argument("--gaussian", action="store_true",
                        help="also the full Gaussian fitted to the training images")
    args = parser.parse_args(argv)
    if args.images < 2:
        parser.error(f"--images must be at least 2. Received: {args.images}")

    from dmfa_tf import data, evaluation, saving
    from dmfa_tf.baselines.gaussian import FullGaussian

    model = saving.load(args.model)
    splits = ("train", "test") if args.gaussian else ("test",)
    sources = data.load_model_sources(saving.load_config(args.model), splits)
    images = sources.test.take(args.images).to_float_array()
    if images.shape[-1] != 3:
        parser.error(f"{args.model}'s images have {images.shape[-1]} channels; this needs 3.")
    masks = evaluation.seeded_masks(images, args.hole, seed=args.seed)
    imputations = {"model": np.asarray(model.impute(images, masks))}
    if args.gaussian:
        gaussian = FullGaussian.fit(sources.train.to_float_array())
        imputations["full Gaussian"] = _gaussian_imputations(gaussian, images, masks)
    print(f"{args.model}: {len(images)} test images, {args.hole} holes (seed {args.seed})")
    print("| imputation | slope b / rg / yb | correlation b / rg / yb | colour SE = constant + rest "
          "| brightness SE = constant + rest |")
    print("|---|---:|---:|---:|---:|")
    for name, values in imputations.items():
        truth, imputed = hole_values(images, masks, values)
        fit, split = shrinkage(truth, imputed), error_split(truth, imputed)
        print(f"| {name} | {' / '.join(f'{v:.3f}' for v in fit['slope'])} | "
              f"{' / '.join(f'{v:.3f}' for v in fit['correlation'])} | "
              "{:.3f} = {:.3f} + {:.3f} | {:.3f} = {:.3f} + {:.3f} |".format(
                  *split["colour"], *split["brightness"]))


if __name__ == "__main__":
    main()
