"""Serving: SavedModels for TF Serving and TFLite files with builtin ops only.

Any model with the common interface (`model({"image", "mask"}, training=False)
-> {"logits", "loc", "factors", "diag"}` and an `image_shape` property: DMFA
networks, the classical MFA, `baselines.DiagonalGaussian`) exports the same
way; table models export through `tabular.export_rows`.

| module | owns |
|---|---|
| `signatures` | the model interface, the input checks (`dmfa_tf.core.checks`), the SavedModel and TFLite `tf.function`s |
| `saved_model` | `export_saved_model`, TF Serving versions, publishing a finished version |
| `tflite` | `export_tflite`, the flatbuffer's operator list, the interpreter, `run_tflite`, `tflite_parity` |
| `tabular` | `export_rows`: the rows SavedModel of a table model (NaN = missing) |
| `cli` | `python -m dmfa_tf.serving --model=DIR --output=BASE [--tflite] [--quantize=...]` |

```python
path = export_saved_model(model, "serving/mnist", tflite=True)   # -> serving/mnist/<n>/
export_tflite(model, "mnist.tflite", quantize="float16")
```
"""

from dmfa_tf.serving.cli import main
from dmfa_tf.serving.saved_model import export_saved_model, next_version
from dmfa_tf.serving.signatures import (
    PARAMETER_KEYS,
    SERVING_SIGNATURES,
    TFLITE_SIGNATURES,
    model_image_shape,
)
from dmfa_tf.serving.tflite import (
    QUANTIZATIONS,
    export_tflite,
    run_tflite,
    tflite_interpreter,
    tflite_ops,
    tflite_parity,
)

__all__ = [
    "PARAMETER_KEYS",
    "QUANTIZATIONS",
    "SERVING_SIGNATURES",
    "TFLITE_SIGNATURES",
    "export_saved_model",
    "export_tflite",
    "main",
    "model_image_shape",
    "next_version",
    "run_tflite",
    "tflite_interpreter",
    "tflite_ops",
    "tflite_parity",
]
