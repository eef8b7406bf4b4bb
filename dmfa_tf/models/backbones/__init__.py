"""Backbones: one file each, and one line in `BACKBONES` below.

A backbone module defines:

- `NAME`: the `architecture` name that `build_model` and `--architecture` take;
- `build(inputs, image_shape, **options)`: the network from the `[B, H, W, 2C]`
  input (`ObservedInput`) to features, returning `(features, head class,
  head defaults)` where the defaults give `factor_amplitude` and
  `variance_floor`;
- `CPU_XLA`, `CPU_BF16`: whether XLA and bfloat16 were measured to pay for it
  on CPU (`jit_compile="auto"`, `precision="auto"`);
- optionally `width_kwargs(width)`: the build options one `--width` flag sets
  (absent: the flag does not apply), and `TAKES_DROPOUT = True` if `--dropout`
  applies.

| architecture | network | defaults |
|---|---|---|
| `linear_heads` | the paper's: 4 convolutions (5x5, 5x5, 5x5, 3x3; 16, 32, 64, 32 or 24 channels), dense heads on the flattened features | `a = 0.5`, floor `1e-10` (the paper's) |
| `fullconv` | U-Net encoder-decoder (3 levels, 32 base channels, global context) with convolutional heads; the weight count does not depend on the image size | `a = 0.5`, floor `1e-4` |
| `mlp` | two dense layers of 256 units, dense heads; for small inputs (8x8 digits) | `a = 0.5`, floor `1e-4` |
| `tabular` | for table rows (`[B, 1, D, 1]`, standardised cells): a dense layer of 256 units (tables' default: 128), 2 residual blocks (layer norm, two dense layers, dropout), dense heads that also see the network input | `a = 4`, floor `1e-3` |
"""

from dmfa_tf.models.backbones import fullconv, linear_heads, mlp, tabular

BACKBONES = {module.NAME: module for module in (linear_heads, fullconv, mlp, tabular)}

# Derived views, one entry per backbone.
ARCHITECTURES = {name: module.build for name, module in BACKBONES.items()}
CPU_XLA = {name: module.CPU_XLA for name, module in BACKBONES.items()}
CPU_BF16 = {name: module.CPU_BF16 for name, module in BACKBONES.items()}


def _names(names):
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def width_kwargs(architecture, width, dropout=None):
    """`build_model` keyword arguments for one `width` flag (fullconv's base
    channels, the units of both of mlp's hidden layers, tabular's units; None:
    none) and the `dropout` rate of backbones that take one."""
    module = BACKBONES.get(architecture)
    if dropout is not None:
        if not getattr(module, "TAKES_DROPOUT", False):
            takes = _names(name for name, m in BACKBONES.items() if getattr(m, "TAKES_DROPOUT", False))
            raise ValueError(
                f"`dropout` applies to the {takes} architecture only. "
                f"Received: architecture={architecture!r}, dropout={dropout!r}"
            )
        return {"dropout": dropout, **width_kwargs(architecture, width)}
    if width is None:
        return {}
    if module is None or not hasattr(module, "width_kwargs"):
        takes = _names(name for name, m in BACKBONES.items() if hasattr(m, "width_kwargs"))
        raise ValueError(
            f"`width` applies to the {takes} architectures only. "
            f"Received: architecture={architecture!r}, width={width!r}"
        )
    return module.width_kwargs(width)
