"""What `evaluate.py` scores: saved DMFA and MFA folders and the baselines fitted
to the training split, named by a spec such as `saved_models/mnist`,
`mnist_mfa:exact`, `gaussian:1e-3` or `knn:5000`."""

import math
import os

# Baseline names `parse_model_spec` knows, fitted to the training split.
BASELINES = {
    "diagonal": "a Gaussian per pixel (diagonal covariance)",
    "gaussian": "one full-covariance Gaussian and its exact conditional; "
    "'gaussian:R' sets the diagonal regularisation R (1e-4)",
    "knn": "scikit-learn's KNNImputer (k = 5), imputation only; 'knn:N' uses the "
    "first N training images (all)",
}


class ModelSpec:
    """A model named on the command line: a saved model folder, `.keras` file,
    an MFA folder with `:paper` / `:exact` (its conditional), or a baseline
    fitted to the training split (`BASELINES`): `diagonal`, `gaussian` (or
    `gaussian:R`, regularisation R) and `knn` (or `knn:N`, the first N
    training images)."""

    def __init__(self, path, conditional=None, option=None):
        self.path = path
        self.conditional = conditional
        self.option = option

    @property
    def is_baseline(self):
        return self.path in BASELINES

    @property
    def label(self):
        if self.path == "diagonal":
            return "diagonal Gaussian"
        if self.path == "gaussian":
            return "full Gaussian" + ("" if self.option is None else f" (reg. {self.option:g})")
        if self.path == "knn":
            from dmfa_tf.baselines import KNN_NEIGHBORS

            rows = "" if self.option is None else f", first {self.option:,} images"
            return f"KNN (k={KNN_NEIGHBORS}{rows})"
        name = os.path.basename(os.path.normpath(self.path))
        return f"{name} ({self.conditional})" if self.conditional else name

    def check(self):
        """Raises `FileNotFoundError` now, before any data are loaded, for a
        name that is neither a baseline nor an existing path."""
        if not self.is_baseline and not os.path.exists(self.path):
            raise FileNotFoundError(
                f"No saved model at {self.path!r}, and it is not a baseline name "
                f"({', '.join(sorted(BASELINES))})."
            )

    def load(self, train_images=None, variance_floor=1e-4, dataset=None):
        """The model; baselines are fitted to `train_images`.

        Raises:
            ValueError: a baseline without training images, or a non-MFA model
                with a conditional.
            FileNotFoundError: no model at the path.
        """
        if self.is_baseline:
            from dmfa_tf import baselines

            if train_images is None or not len(train_images):
                where = f"the data set {dataset!r} has" if dataset else "there are"
                raise ValueError(
                    f"The {self.path!r} baseline is fitted to the training split, and "
                    f"{where} no training images."
                )
            if self.path == "diagonal":
                return baselines.DiagonalGaussian.fit(train_images, variance_floor=variance_floor)
            if self.path == "gaussian":
                regularization = baselines.DEFAULT_REGULARIZATION if self.option is None else self.option
                return baselines.FullGaussian.fit(train_images, regularization=regularization)
            return baselines.KNNImputation.fit(train_images, max_rows=self.option)
        from dmfa_tf import saving

        self.check()
        model = saving.load(self.path)
        if self.conditional is not None:
            if not hasattr(model, "conditional"):
                raise ValueError(
                    f"{self.path!r} is not an MFA model: ':{self.conditional}' applies to MFA models only."
                )
            model.conditional = self.conditional
        return model


def parse_model_spec(text):
    """`path`, `path:paper`, `path:exact`, `diagonal`, `gaussian[:R]` or
    `knn[:N]` -> `ModelSpec`.

    Raises:
        ValueError: a baseline option that is not a number of the right kind.
    """
    name, colon, option = text.partition(":")
    if name in BASELINES:
        if not colon:
            return ModelSpec(name)
        if name == "diagonal":
            raise ValueError(f"{text!r}: the diagonal baseline takes no option; use 'diagonal'.")
        try:
            value = float(option) if name == "gaussian" else int(option)
        except ValueError:
            value = None
        if name == "gaussian" and (value is None or not 0 < value < math.inf):
            raise ValueError(
                f"{text!r}: 'gaussian:R' needs a regularisation R > 0, e.g. 'gaussian:1e-3'."
            )
        if name == "knn" and (value is None or value < 1):
            raise ValueError(
                f"{text!r}: 'knn:N' needs a whole number N >= 1 of training images, e.g. 'knn:10000'."
            )
        return ModelSpec(name, option=value)
    path, _, conditional = text.rpartition(":")
    if path and conditional in ("paper", "exact"):
        return ModelSpec(path, conditional)
    return ModelSpec(text)
