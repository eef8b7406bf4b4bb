"""Per-device choices: the compute precision (`precision="auto"`), XLA
(`jit_compile="auto"`), and float32 copies for exports.

What pays on CPU is measured per backbone (`CPU_BF16`, `CPU_XLA` in
`dmfa_tf.models.backbones`; benchmarks/bench_training.py and bench_quality.py,
README "Speed").
"""

import keras
import tensorflow as tf

from dmfa_tf.models.backbones import BACKBONES, CPU_BF16, CPU_XLA
from dmfa_tf.models.layers import ConvMixtureHead, DenseMixtureHead

__all__ = [
    "AUTO_XLA_MIN_STEPS", "PRECISIONS", "architecture_of", "auto_jit_compile", "cpu_has_bfloat16",
    "float32_copy", "precision_of", "resolve_precision",
]

PRECISIONS = ("float32", "mixed_bfloat16", "auto")


def cpu_has_bfloat16():
    """Whether this CPU has bfloat16 arithmetic that oneDNN uses (the Linux
    `avx512_bf16` or `amx_bf16` flags); False where that cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision, architecture="fullconv"):
    """`"auto"` made concrete: `"mixed_bfloat16"` for the architectures where
    it was measured to pay (`CPU_BF16`: the U-Net and the paper's network;
    the width-16 U-Net trained 1.8x the images per second of float32 with
    XLA, and a better model in the same minutes) on a machine without a GPU
    whose CPU has bfloat16 arithmetic, else `"float32"` (GPUs are not
    measured here). Other values are returned as they are."""
    if precision != "auto":
        return precision
    if not CPU_BF16.get(architecture, False) or tf.config.list_physical_devices("GPU"):
        return "float32"
    return "mixed_bfloat16" if cpu_has_bfloat16() else "float32"


# With jit_compile="auto", `fit` compiles with XLA only runs of at least this
# many steps: XLA's compile (10-30 s on 2 CPU cores) must be paid back.
AUTO_XLA_MIN_STEPS = 200


def architecture_of(model):
    """The architecture `build_model` built `model` as: read from its default
    name `dmfa_<architecture>` when that names a registered backbone, else from
    its layers (`"fullconv"`, `"linear_heads"` or `"mlp"`); None for other
    networks."""
    name = getattr(model, "name", "") or ""
    if name.startswith("dmfa_") and name[len("dmfa_"):] in BACKBONES:
        return name[len("dmfa_"):]
    layers = {layer.name: layer for layer in model.layers}
    head = layers.get("mixture_head")
    if isinstance(head, ConvMixtureHead):
        return "fullconv"
    if isinstance(head, DenseMixtureHead):
        if any(isinstance(layer, keras.layers.Conv2D) for layer in model.layers):
            return "linear_heads"
        return "mlp"
    return None


def auto_jit_compile(model):
    """What `jit_compile="auto"` means for `model` on this machine.

    On a GPU, XLA (as Keras). On CPU, XLA for the architectures where it was
    measured to pay (`CPU_XLA`), not for the others nor for networks that
    `build_model` did not make. Never under a `tf.distribute` strategy with
    several replicas, where Keras does not support it.
    """
    strategy = getattr(model, "_distribute_strategy", None)
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        return False
    if any(d.device_type != "CPU" for d in tf.config.list_physical_devices()):
        return True
    if precision_of(model) != "float32":
        return False  # XLA's CPU code does not use oneDNN's bfloat16 kernels
    return CPU_XLA.get(architecture_of(model), False)


def float32_copy(model):
    """`model` itself if it computes in float32; else an uncompiled copy with
    the same (float32) weights whose every layer computes in float32. Exports
    use it: TFLite has no bfloat16 kernels."""
    if precision_of(model) == "float32":
        return model

    def to_float32(value):
        if isinstance(value, dict):
            if value.get("class_name") == "DTypePolicy" and value.get("config", {}).get(
                "name"
            ) != "float32":
                return "float32"
            return {key: to_float32(item) for key, item in value.items()}
        if isinstance(value, list):
            return [to_float32(item) for item in value]
        return "float32" if value == "mixed_bfloat16" else value

    copy = model.__class__.from_config(to_float32(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def precision_of(model):
    """`"mixed_bfloat16"` if some layer of `model` computes in bfloat16, else
    `"float32"` (see `build_model`'s `precision`)."""
    for layer in getattr(model, "layers", ()):
        if getattr(layer, "compute_dtype", "float32") == "bfloat16":
            return "mixed_bfloat16"
    return "float32"
