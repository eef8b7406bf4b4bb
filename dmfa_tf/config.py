"""Training configuration: one dataclass, per-data-set defaults, JSON round trip.

The command line, the training driver and the saved `config.json` all speak
this one dataclass.
"""

import dataclasses
import json

from dmfa_tf.core.checks import check_positive_int

__all__ = [
    "DATASET_DEFAULTS", "DEQUANTIZE", "PRESETS", "MFA_INITS", "MFA_NOISE_TYPES", "LR_SCHEDULES", "MODELS", "SELECT_METRICS",
    "SCALE_PRIORS", "STRATEGIES", "TABULAR_DATASETS", "TrainConfig", "parse_select",
]

# Defaults that depend on the data set; any flag given overrides them. `objective`
# is "nll" where not given; MNIST's and CelebA's come from the README's study
# ("Training objectives"): the best validation MSE without a worse validation NLL.
DATASET_DEFAULTS = {
    "digits": dict(
        architecture="mlp", hole="4x4", epochs=150, batch_size=64, learning_rate=1e-3,
        mfa_components=10, mfa_factors=4,
    ),
    "mnist": dict(
        architecture="fullconv", hole="14x14", epochs=20, batch_size=64, learning_rate=1e-3,
        mfa_components=50, mfa_factors=6, objective="nll+mse:1",
    ),
    "fashion_mnist": dict(
        architecture="fullconv", hole="14x14", epochs=20, batch_size=64, learning_rate=1e-3,
        mfa_components=50, mfa_factors=6,
    ),
    # CelebA 32x32 as in the paper (resize 60, centre crop 32, one 16x16 hole);
    # --image-size=64 is its 64x64 variant (give it --hole=32x32). Batch 16: the
    # subset's 4,560 faces give few steps per epoch, and at equal CPU time batch
    # 16 beat 64 by 180 nats of validation NLL (README, "Batch size"). 64 global
    # factors led 32 by 82 nats of validation NLL after 12 epochs at 1.09x the
    # epoch time with the gathered density (README, "Global factors and mean fill");
    # per-image scales of them added 112 nats at 64, and with scales 96 led 64 by
    # 64 nats after 3 epochs at 1.2x the epoch time (README, "Per-image scales").
    "celeb_a": dict(
        architecture="fullconv", hole="16x16", image_size=32, epochs=30, batch_size=16,
        learning_rate=1e-3, mfa_components=300, mfa_factors=10, objective="nll+mse:0.1",
        colour_basis="opponent", standardize="on", fill="mean", global_factors=96,
        global_scale="pixel",
    ),
    "svhn_cropped": dict(
        architecture="fullconv", hole="16x16", epochs=20, batch_size=64, learning_rate=1e-3,
        mfa_components=300, mfa_factors=10,
    ),
    "cifar10": dict(
        architecture="fullconv", hole="16x16", epochs=20, batch_size=64, learning_rate=1e-3,
        mfa_components=300, mfa_factors=10,
    ),
}

# Named settings (`TrainConfig.preset`, `train.py --preset`): they fill in the
# flags left out, and the data set's defaults fill in the rest.
PRESETS = {
    # A run of seconds on 2 CPU cores, for tests, examples and smoke checks: the
    # bundled digits (no download), 2 epochs on 256 training images, 64 scored.
    "tiny": dict(dataset="digits", epochs=2, max_train_images=256, max_test_images=64),
}

# Tables (dmfa_tf.tabular): rows of numeric cells, MCAR masks drawn on top of
# the cells missing in the data. An epoch is at least 100 steps.
TABLE_DEFAULTS = dict(
    architecture="tabular", mask="dropout:0.2", epochs=60, batch_size=64, learning_rate=1e-3,
    lr_schedule="cosine", components=3, factors=4, width=128, dropout=0.5, val_fraction=0.2,
    test_fraction=0.2,
)
TABULAR_DATASETS = ("csv", "iris", "wine", "breast_cancer", "diabetes")  # as dmfa_tf.data.tables
for _name in TABULAR_DATASETS:
    DATASET_DEFAULTS[_name] = dict(TABLE_DEFAULTS)
# Settings of tables only; images take their split from the data set.
TABLE_ONLY = ("val_fraction", "test_fraction", "dropout")
# Settings of images only.
IMAGE_ONLY = (
    "image_size", "hole", "mfa_components", "mfa_factors", "train_absent", "standardize", "fill",
    "scale_prior",
)

CROPS = ("paper", "aspect")  # as dmfa_tf.data.CROPS

# Settings of the DMFA network and its training, meaningless for --model=mfa.
DMFA_ONLY = (
    "architecture", "width", "factor_amplitude", "objective", "objective_switch_epoch",
    "epochs", "batch_size", "learning_rate", "colour_basis", "standardize", "fill",
    "global_factors", "global_scale", "scale_prior",
)

COLOUR_BASES = ("rgb", "opponent")  # as dmfa_tf.core.colour.BASES
STANDARDIZE = ("off", "on")
FILLS = ("zero", "mean")  # as dmfa_tf.models.layers.FILLS
GLOBAL_SCALES = ("none", "pixel")  # as dmfa_tf.models.layers.GLOBAL_SCALES
SCALE_PRIORS = ("on", "off")
# Training images the input standardisation's statistics are computed on (the first ones).
STANDARDIZE_IMAGES = 2000

MODELS = ("dmfa", "mfa")
MFA_NOISE_TYPES = ("isotropic", "diagonal")  # as dmfa_tf.baselines.mfa.NOISE_TYPES
MFA_INITS = ("kmeans", "random")  # as dmfa_tf.baselines.mfa.INITS

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
LR_SCHEDULES = ("constant", "cosine")
DEQUANTIZE = ("auto", "on", "off")
NONFINITE = ("error", "absent")  # as dmfa_tf.masks.with_masks

# What `select` may weigh: the per-epoch logs of `model.fit` (validation and training).
SELECT_METRICS = ("val_nll", "val_mse", "val_loss", "nll", "mse", "loss")


def parse_select(spec):
    """The checkpoint-selection criterion `spec` as `[(coefficient, metric), ...]`
    (the epoch with the lowest sum wins), or `[]` for `"last"` (the last epoch).

    `"val_nll"`, `"val_mse"`, or a weighted sum such as `"val_nll+20*val_mse"`;
    metrics are the per-epoch logs in `SELECT_METRICS`, coefficients > 0.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"`select` must be a string such as 'val_nll'. Received: select={spec!r}")
    if spec.strip() == "last":
        return []
    terms = []
    for term in spec.replace(" ", "").split("+"):
        coefficient, _, metric = term.rpartition("*")
        try:
            coefficient = float(coefficient) if coefficient else 1.0
        except ValueError:
            coefficient = float("nan")
        if metric not in SELECT_METRICS or not 0 < coefficient < float("inf"):
            raise ValueError(
                f"`select` must be 'last' or a sum of [coefficient*]metric terms with "
                f"coefficients > 0 and metrics in {SELECT_METRICS}, e.g. 'val_nll' or "
                f"'val_nll+20*val_mse'. Received: select={spec!r}"
            )
        terms.append((coefficient, metric))
    return terms




@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on.

    Fields left `None` take the data set's default (`DATASET_DEFAULTS`) or the
    architecture's (see `dmfa_tf.models`) when the run starts: `resolved()`.
    """

    dataset: str = "digits"
    data_dir: str = None
    image_size: int = None  # CelebA's side (celeb_a: 32); fixed-size data sets: None
    crop: str = "paper"  # CelebA: "paper" (resize 1.875 S, centre crop S) or "aspect"
    download: bool = False  # let TFDS download the data (machines with internet only)
    architecture: str = None
    components: int = None  # default 1 (tables: 3)
    factors: int = None  # default 4
    hole: str = None  # "HxW": a rectangle; `mask` takes any mask spec instead
    mask: str = None
    test_mask: str = None  # default: the training mask
    epochs: int = None
    batch_size: int = None
    learning_rate: float = None
    lr_schedule: str = None  # "constant" (default; tables: "cosine") or "cosine" (decays to 1% over the run)
    factor_amplitude: float = None
    factor_activation: str = "sigmoid"  # "sigmoid" (the paper's), "tanh" or "linear"
    variance_floor: float = None
    variance_activation: str = "sigmoid"
    # The basis of each pixel's colour values that the diagonal is in: "rgb" or
    # "opponent" (dmfa_tf.core.colour; default per data set: celeb_a "opponent")
    colour_basis: str = None
    # "on": the network sees each channel of the colour basis standardised by the
    # training images' mean and standard deviation
    # (dmfa_tf.models.build_model(standardize=...)); "off" (default; celeb_a "on")
    standardize: str = None
    # What the network sees at unknown pixels: "zero" (default) or "mean", the
    # image's mean over its known pixels per channel (ObservedInput(fill=...))
    fill: str = None
    # G, factor columns per component shared by every image, learned as
    # weights (default 0; build_model(global_factors=...))
    global_factors: int = None
    # "pixel": each image scales each row of the global factors' loadings,
    # predicted by the head (default "none"; build_model(global_scale=...))
    global_scale: str = None
    # The backbone's arithmetic: "auto" (bfloat16 on CPUs that have it, else float32),
    # "float32" or "mixed_bfloat16" (dmfa_tf.models.build_model, resolve_precision)
    precision: str = "auto"
    # Fit the density to dequantized targets (dmfa_tf.data.dequantization): "off" (default),
    # "auto" (8-bit data, values k/255: yes; other data: nothing to do) or "on" (8-bit
    # data only)
    dequantize: str = "off"
    width: int = None  # fullconv: base channels; mlp: units of each hidden layer
    dropout: float = None  # tabular: dropout rate inside the residual blocks (default per data set)
    seed: int = 0  # weights, shuffling and training masks
    eval_seed: int = 0  # validation and test masks: mask i is seeded (eval_seed, i)
    strategy: str = "default"
    name: str = None  # default: the data set's name (`<dataset>_mfa` for model="mfa")
    output: str = None  # default: saved_models/<name>
    workdir: str = None  # checkpoints, backup, logs; default: runs/<name>
    export: str = None  # also export a TF Serving SavedModel to <export>/<name>/<version>/
    max_train_images: int = None  # cap for quick runs
    max_test_images: int = None
    jit_compile: str = "auto"  # "auto" (dmfa_tf.models.auto_jit_compile), "true" or "false"
    model: str = "dmfa"  # "dmfa" (a network) or "mfa" (the classical baseline, by EM)
    mfa_components: int = None  # K of the MFA; default per data set
    mfa_factors: int = None  # L of the MFA; default per data set
    mfa_iterations: int = 30  # EM iterations
    mfa_noise: str = "isotropic"  # "isotropic" (MPPCA, the paper's) or "diagonal"
    mfa_init: str = "kmeans"  # "kmeans" or "random"
    # Training objective (dmfa_tf.models.losses): nll, nll+mse[:w], beta_nll[:beta], mse_mean[:w];
    # default per data set (mnist nll+mse:1, celeb_a nll+mse:0.1, others nll)
    objective: str = None
    objective_switch_epoch: int = None  # train on `objective` for this many epochs, then on nll
    # The shipped epoch: the lowest of this validation criterion (parse_select), or "last"
    select: str = "val_nll"
    # "on" (default): after training, fit the scale prior (dmfa_tf.core.scales) on the
    # validation split; "off": none
    scale_prior: str = None
    # Start over: delete the workdir's backup of an interrupted run instead of continuing it
    restart: bool = False
    # Incomplete training data: NaN / inf training pixels stop the run ("error") or are
    # absent ("absent": mask -1, neither seen nor scored)
    nonfinite: str = "error"
    # Make training data incomplete: a mask spec whose 0 pixels are absent in each training
    # image, fixed per image (seeded), e.g. "dropout:0.3"; implies nonfinite="absent"
    train_absent: str = None
    # Tables: the shares of rows held out for validation and test (seeded by `seed`)
    val_fraction: float = None
    test_fraction: float = None

    def resolved(self):
        """A copy with every default filled in and every value checked."""
        if self.dataset not in DATASET_DEFAULTS:
            raise ValueError(
                f"Unknown dataset {self.dataset!r}; choose one of {sorted(DATASET_DEFAULTS)}."
            )
        values = dataclasses.asdict(self)
        self._check_applicable(values)
        scale_given = values["global_scale"] is not None
        for key, value in {"components": 1, "factors": 4, "lr_schedule": "constant",
                           **DATASET_DEFAULTS[self.dataset]}.items():
            if values[key] is None:
                values[key] = value
        if not scale_given and not values["global_factors"]:
            values["global_scale"] = None  # a data set's default scale needs its global factors
        # An MFA run does not overwrite the data set's DMFA model by default.
        default_name = self.dataset if self.model != "mfa" else f"{self.dataset}_mfa"
        values["name"] = values["name"] or default_name
        values["output"] = values["output"] or f"saved_models/{values['name']}"
        values["workdir"] = values["workdir"] or f"runs/{values['name']}"
        values["mask"] = values["mask"] or values["hole"]
        values["test_mask"] = values["test_mask"] or values["mask"]
        values["objective"] = values["objective"] or "nll"
        values["colour_basis"] = values["colour_basis"] or "rgb"
        values["standardize"] = values["standardize"] or "off"
        values["fill"] = values["fill"] or "zero"
        values["global_factors"] = values["global_factors"] or 0
        values["global_scale"] = values["global_scale"] or "none"
        values["scale_prior"] = values["scale_prior"] or "on"
        if values["train_absent"] is not None:
            values["nonfinite"] = "absent"
        config = TrainConfig(**values)
        config._check()
        from dmfa_tf.models.losses import Objective

        config.objective = str(Objective.parse(config.objective))  # canonical: "nll+mse:1"
        return config

    def _check_applicable(self, values):
        """Flags given for what they do not apply to are errors, not silently
        ignored (and then recorded in config.json as if they had acted)."""
        defaults = {"components": 1, "factors": 4, "lr_schedule": "constant",
                    **DATASET_DEFAULTS.get(self.dataset, {})}
        defaults.setdefault("objective", "nll")
        defaults.setdefault("colour_basis", "rgb")
        defaults.setdefault("standardize", "off")
        defaults.setdefault("fill", "zero")
        defaults.setdefault("global_factors", 0)
        defaults.setdefault("global_scale", "none")
        defaults.setdefault("scale_prior", "on")

        def given(keys, where):  # set, and not to what resolution fills in (idempotent)
            keys = [k for k in keys if values.get(k) is not None and values[k] != defaults.get(k)]
            if keys:
                flags = ", ".join("--" + k.replace("_", "-") for k in keys)
                problems.append(f"{flags} appl{'ies' if len(keys) == 1 else 'y'} {where}")

        problems = []
        if self.model == "mfa":
            given(DMFA_ONLY, "to DMFA networks, not to --model=mfa")
        else:
            given(("mfa_components", "mfa_factors"), "to --model=mfa only")
        if self.dataset != "celeb_a" and self.crop != "paper":
            problems.append(f"--crop applies to celeb_a only, not to {self.dataset}")
        if self.dataset in TABULAR_DATASETS:
            given(IMAGE_ONLY, f"to images, not to the table {self.dataset}")
            if self.model != "dmfa":
                problems.append(f"--model={self.model} applies to images, not to tables")
            for key, allowed in (("strategy", "default"), ("dequantize", "off")):
                if values[key] != allowed:
                    problems.append(f"--{key}={values[key]} applies to images, not to tables")
        else:
            given(TABLE_ONLY, f"to tables, not to {self.dataset}")
        if problems:
            raise ValueError("; ".join(problems) + ".")

    def _check(self):
        if self.export is not None and (not isinstance(self.export, str) or not self.export.strip()):
            raise ValueError(
                "`export` must be a folder path (TF Serving's base folder). "
                f"Received: export={self.export!r}"
            )
        for key in ("components", "factors", "epochs", "batch_size"):
            check_positive_int(getattr(self, key), key)
        for key in ("val_fraction", "test_fraction", "dropout"):
            value = getattr(self, key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1
            ):
                raise ValueError(f"`{key}` must be in [0, 1). Received: {key}={value!r}")
        for key in ("max_train_images", "max_test_images", "width"):
            if getattr(self, key) is not None:
                check_positive_int(getattr(self, key), key)
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(
                f"`learning_rate` must be > 0. Received: learning_rate={self.learning_rate!r}"
            )
        if self.image_size is not None and (
            isinstance(self.image_size, bool)
            or not isinstance(self.image_size, int)
            or self.image_size < 1
        ):
            raise ValueError(
                f"`image_size` must be a positive integer. Received: image_size={self.image_size!r}"
            )
        if self.colour_basis not in COLOUR_BASES:
            raise ValueError(
                f"`colour_basis` must be one of {COLOUR_BASES}. "
                f"Received: colour_basis={self.colour_basis!r}"
            )
        if self.standardize not in STANDARDIZE:
            raise ValueError(
                f"`standardize` must be one of {STANDARDIZE}. "
                f"Received: standardize={self.standardize!r}"
            )
        if self.fill not in FILLS:
            raise ValueError(f"`fill` must be one of {FILLS}. Received: fill={self.fill!r}")
        if (
            isinstance(self.global_factors, bool)
            or not isinstance(self.global_factors, int)
            or self.global_factors < 0
        ):
            raise ValueError(
                "`global_factors` must be an integer >= 0. "
                f"Received: global_factors={self.global_factors!r}"
            )
        if self.global_scale not in GLOBAL_SCALES:
            raise ValueError(
                f"`global_scale` must be one of {GLOBAL_SCALES}. "
                f"Received: global_scale={self.global_scale!r}"
            )
        if self.global_scale != "none" and not self.global_factors:
            raise ValueError(
                f"`global_scale={self.global_scale!r}` scales the global factors: it needs "
                f"`global_factors` > 0. Received: global_factors={self.global_factors!r}"
            )
        if self.scale_prior not in SCALE_PRIORS:
            raise ValueError(
                f"`scale_prior` must be one of {SCALE_PRIORS}. Received: scale_prior={self.scale_prior!r}"
            )
        if self.crop not in CROPS:
            raise ValueError(f"`crop` must be one of {CROPS}. Received: crop={self.crop!r}")
        if not isinstance(self.download, bool):
            raise ValueError(
                f"`download` must be True or False. Received: download={self.download!r}"
            )
        from dmfa_tf.models.losses import Objective  # TensorFlow: imported here only

        Objective.parse(self.objective)  # raises ValueError with the accepted forms
        if self.objective_switch_epoch is not None:
            value = self.objective_switch_epoch
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    "`objective_switch_epoch` must be a positive integer. "
                    f"Received: objective_switch_epoch={value!r}"
                )
            if Objective.parse(self.objective).kind == "nll":
                raise ValueError(
                    "`objective_switch_epoch` switches from `objective` to nll; give an "
                    f"objective other than nll. Received: objective={self.objective!r}"
                )
        parse_select(self.select)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"`lr_schedule` must be one of {LR_SCHEDULES}. "
                f"Received: lr_schedule={self.lr_schedule!r}"
            )
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"`strategy` must be one of {STRATEGIES}. Received: strategy={self.strategy!r}"
            )
        if self.nonfinite not in NONFINITE:
            raise ValueError(
                f"`nonfinite` must be one of {NONFINITE}. Received: nonfinite={self.nonfinite!r}"
            )
        if self.train_absent is not None:
            from dmfa_tf import masks as masks_lib  # TensorFlow: imported here only

            masks_lib.parse(self.train_absent)  # a ValueError naming a bad spec
            if self.model == "mfa":
                raise ValueError("--train-absent applies to DMFA networks, not to --model=mfa.")
        if self.dequantize not in DEQUANTIZE:
            raise ValueError(
                f"`dequantize` must be one of {DEQUANTIZE}. Received: dequantize={self.dequantize!r}"
            )
        if self.jit_compile not in ("auto", "true", "false"):
            raise ValueError(
                "`jit_compile` must be 'auto', 'true' or 'false'. "
                f"Received: jit_compile={self.jit_compile!r}"
            )
        for key in ("mfa_components", "mfa_factors", "mfa_iterations"):
            value = getattr(self, key)
            if value is None and self.dataset in TABULAR_DATASETS:
                continue  # no MFA for tables
            check_positive_int(value, key)
        for key, allowed in (
            ("model", MODELS),
            ("mfa_noise", MFA_NOISE_TYPES),
            ("mfa_init", MFA_INITS),
        ):
            value = getattr(self, key)
            if value not in allowed:
                raise ValueError(f"`{key}` must be one of {allowed}. Received: {key}={value!r}")

    @classmethod
    def preset(cls, name, **overrides):
        """The configuration of preset `name` (`PRESETS`), with `overrides`."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        values = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown TrainConfig fields: {unknown}")
        return cls(**values)
