"""The package's layout rules (README, "Layout"), read from the source: imports
point downward only, no module is oversized, each rule has one home, a
backbone is one file plus one registry line, and the public API still imports."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "dmfa_tf")

# The README's import order: a module may import from its own row or above.
ORDER = {
    "files": 0, "core": 1, "data": 2, "masks": 3, "models": 4, "baselines": 5,
    "serving": 6, "saving": 6, "visualization": 6, "config": 7, "evaluation": 8,
    "reporting": 8, "training": 9, "tabular": 10, "comparison": 11,
    "mfa": 12,  # the deprecated alias of baselines.mfa
}
MAX_LINES = 650


def _modules():
    for folder, _, names in os.walk(PACKAGE):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                yield ".".join(parts), path


def _level(module):
    parts = module.split(".")
    if parts == ["dmfa_tf"]:
        return max(ORDER.values())  # the package root re-exports the public API
    if parts[1] not in ORDER:
        raise AssertionError(f"{module}: not in the README's import order; add its room there")
    return ORDER[parts[1]]


def _imports(path):
    """`(line, module)` for every dmfa_tf import, function-level ones included."""
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dmfa_tf":
            if node.module == "dmfa_tf":
                for alias in node.names:
                    yield node.lineno, "dmfa_tf." + alias.name
            else:
                yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "dmfa_tf":
                    yield node.lineno, alias.name


def test_every_import_points_downward():
    climbing = []
    for module, path in _modules():
        if module == "dmfa_tf":
            continue
        for line, target in _imports(path):
            if target != "dmfa_tf" and _level(target) > _level(module):
                climbing.append(f"{module}:{line} imports {target}")
    assert not climbing, "imports that climb (README, Layout):\n" + "\n".join(climbing)


def test_the_order_check_catches_a_climbing_import(tmp_path):
    # The check itself can fail: a data module that imports training climbs.
    path = tmp_path / "bad.py"
    path.write_text("def f():\n    from dmfa_tf.training import run\n")
    targets = [t for _, t in _imports(str(path))]
    assert targets == ["dmfa_tf.training"]
    assert _level("dmfa_tf.training") > _level("dmfa_tf.data.loading")


def test_no_module_is_oversized():
    sizes = {}
    for module, path in _modules():
        with open(path) as f:
            sizes[module] = sum(1 for _ in f)
    big = {m: n for m, n in sizes.items() if n > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


@pytest.mark.parametrize("definition, home", [
    ("def check_positive_int(", "dmfa_tf/core/checks.py"),
    ("def check_choice(", "dmfa_tf/core/checks.py"),
    ("def valid_codes(", "dmfa_tf/core/checks.py"),
    ("def most_probable_component(", "dmfa_tf/core/distribution.py"),
    ("def atomic_path(", "dmfa_tf/files.py"),
    ("def hardware_description(", "dmfa_tf/reporting.py"),
    ("def whitened_capacitance(", "dmfa_tf/core/linalg.py"),
])
def test_each_rule_has_one_home(definition, home):
    homes = []
    for _, path in _modules():
        with open(path) as f:
            if any(line.lstrip().startswith(definition) for line in f):
                homes.append(os.path.relpath(path, ROOT).replace(os.sep, "/"))
    assert homes == [home]


def test_mask_codes_are_compared_only_through_core_checks():
    # `mask == 1.0`-style literals outside core/checks.py would be a second
    # copy of the rule (ObservedInput once used `mask > 0.5`).
    offenders = []
    for module, path in _modules():
        if module == "dmfa_tf.core.checks":
            continue
        with open(path) as f:
            for number, line in enumerate(f, 1):
                code = line.split("#")[0]
                if any(text in code for text in (
                    "mask == 1", "mask == 0", "mask == -1", "mask > 0.5", "mask, 0.5",
                    "equal(mask, 1", "equal(mask, 0", "equal(mask, -1",
                )):
                    offenders.append(f"{module}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_a_backbone_is_one_file_plus_one_registry_line():
    from dmfa_tf.models import backbones

    folder = os.path.dirname(backbones.__file__)
    files = sorted(n[:-3] for n in os.listdir(folder) if n.endswith(".py") and n != "__init__.py")
    assert sorted(backbones.BACKBONES) == files
    for name, module in backbones.BACKBONES.items():
        assert module.NAME == name and callable(module.build)
        assert isinstance(module.CPU_XLA, bool) and isinstance(module.CPU_BF16, bool)
    # everything that lists architectures reads the registry
    from dmfa_tf import models

    assert set(models.ARCHITECTURES) == set(models.CPU_XLA) == set(models.CPU_BF16) == set(files)
    # a model knows which backbone it was built with, for jit_compile="auto"
    for name in files:
        shape = (1, 5, 1) if name == "tabular" else (8, 8, 1)
        model = models.build_model(shape, name, precision="float32", bounded_inputs=name != "tabular")
        assert models.architecture_of(model) == name


def test_the_public_api_still_imports():
    import dmfa_tf
    from dmfa_tf import masks
    from dmfa_tf.baselines.mfa import MFA

    for name in ("MaskedFactorMixture", "build_model", "MaskedNLL", "export_saved_model"):
        assert callable(getattr(dmfa_tf, name))
    assert dmfa_tf.masks is masks
    assert MFA.__module__.startswith("dmfa_tf.baselines.mfa")  # dmfa_tf.mfa: tests/test_mfa.py
