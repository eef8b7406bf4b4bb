"""Training configuration: one dataclass, per-data-set defaults, JSON round trip.

Standard library only: the command line, the training driver and the saved
`config.json` all speak this one dataclass.
"""

import dataclasses
import json

__all__ = ["DATASET_DEFAULTS", "STRATEGIES", "TrainConfig"]

# Defaults that depend on the data set; any flag given overrides them.
DATASET_DEFAULTS = {
    "digits": dict(
        architecture="mlp", hole="4x4", epochs=150, batch_size=64, learning_rate=1e-3
    ),
    "mnist": dict(
        architecture="fullconv", hole="14x14", epochs=20, batch_size=64, learning_rate=1e-3
    ),
    "fashion_mnist": dict(
        architecture="fullconv", hole="14x14", epochs=20, batch_size=64, learning_rate=1e-3
    ),
}

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on.

    Fields left `None` take the data set's default (`DATASET_DEFAULTS`) or the
    architecture's (see `dmfa_tf.models`) when the run starts: `resolved()`.
    """

    dataset: str = "digits"
    data_dir: str = None
    architecture: str = None
    components: int = 1
    factors: int = 4
    hole: str = None  # "HxW": a rectangle; `mask` takes any mask spec instead
    mask: str = None
    test_mask: str = None  # default: the training mask
    epochs: int = None
    batch_size: int = None
    learning_rate: float = None
    factor_amplitude: float = None
    variance_floor: float = None
    variance_activation: str = "sigmoid"
    width: int = None  # fullconv base channels
    seed: int = 0  # weights, shuffling and training masks
    eval_seed: int = 0  # validation and test masks: mask i is seeded (eval_seed, i)
    strategy: str = "default"
    name: str = None  # default: the data set's name
    output: str = None  # default: saved_models/<name>
    workdir: str = None  # checkpoints, backup, logs; default: runs/<name>
    max_train_images: int = None  # cap for quick runs
    max_test_images: int = None
    jit_compile: str = "auto"  # "auto" (XLA on GPU only), "true" or "false"

    def resolved(self):
        """A copy with every default filled in and every value checked."""
        if self.dataset not in DATASET_DEFAULTS:
            raise ValueError(
                f"Unknown dataset {self.dataset!r}; choose one of {sorted(DATASET_DEFAULTS)}."
            )
        values = dataclasses.asdict(self)
        for key, value in DATASET_DEFAULTS[self.dataset].items():
            if values[key] is None:
                values[key] = value
        values["name"] = values["name"] or self.dataset
        values["output"] = values["output"] or f"saved_models/{values['name']}"
        values["workdir"] = values["workdir"] or f"runs/{values['name']}"
        values["mask"] = values["mask"] or values["hole"]
        values["test_mask"] = values["test_mask"] or values["mask"]
        config = TrainConfig(**values)
        config._check()
        return config

    def _check(self):
        for key in ("components", "factors", "epochs", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{key}` must be a positive integer. Received: {key}={value!r}")
        for key in ("max_train_images", "max_test_images", "width"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"`{key}` must be a positive integer. Received: {key}={value!r}")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(
                f"`learning_rate` must be > 0. Received: learning_rate={self.learning_rate!r}"
            )
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"`strategy` must be one of {STRATEGIES}. Received: strategy={self.strategy!r}"
            )
        if self.jit_compile not in ("auto", "true", "false"):
            raise ValueError(
                "`jit_compile` must be 'auto', 'true' or 'false'. "
                f"Received: jit_compile={self.jit_compile!r}"
            )

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
