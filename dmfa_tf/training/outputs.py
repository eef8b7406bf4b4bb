"""The model folder: output paths checked before a run, free space, and the
atomic write of `model.keras`, `config.json` and `metrics.json`."""

import json
import os
import shutil

from dmfa_tf.training.common import inference_copy

# What a model folder written by `write_outputs` holds: replacing such a folder
# loses nothing that is not ours.
OUTPUT_FILES = frozenset({
    "model.keras", "mfa.npz", "config.json", "metrics.json", "table.json", "recalibration.json",
})


def _nearest_existing(path):
    """`path`, or the nearest folder above it that exists (absolute)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_output_paths(output, workdir=None):
    """Raises a ValueError naming the problem, before any training, when the
    run could not write its outputs or would destroy something:

    - `output` or `workdir` lies below a regular file, or is a file itself;
    - the nearest existing folder above either one is not writable;
    - `output` is a folder holding anything but a model of ours (`OUTPUT_FILES`):
      it is replaced whole when the run ends, so that would be deleted;
    - one of `output` and `workdir` lies inside the other.
    """
    output = os.path.abspath(output)
    paths = [("output", output)] + ([("workdir", os.path.abspath(workdir))] if workdir else [])
    for flag, path in paths:
        if os.path.isfile(path):
            raise ValueError(f"--{flag} {path} is a file; give a folder.")
        existing = _nearest_existing(path)
        if not os.path.isdir(existing):
            raise ValueError(f"--{flag} {path} lies below {existing}, which is a file, not a folder.")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f"--{flag} {path}: {existing} is not writable.")
    if os.path.isdir(output):
        foreign = sorted(set(os.listdir(output)) - OUTPUT_FILES)
        if foreign:
            raise ValueError(
                f"--output {output} holds files that are not a dmfa_tf model "
                f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}). The output "
                "folder is replaced whole when the run ends, so they would be deleted. "
                "Give another --output, or move them away."
            )
    if workdir:
        workdir = os.path.abspath(workdir)
        for inner, outer, a, b in ((workdir, output, "workdir", "output"),
                                   (output, workdir, "output", "workdir")):
            if os.path.commonpath([inner, outer]) == outer:
                raise ValueError(
                    f"--{a} {inner} lies inside --{b} {outer}; keep the two apart "
                    "(the output folder is replaced whole when the run ends)."
                )


def _remove_stale_partials(output):
    """Removes `<output>.partial-PID` / `.old-PID` folders left by a killed save
    (their process is gone); those of live processes are left alone."""
    parent, base = os.path.dirname(output), os.path.basename(output)
    for name in os.listdir(parent):
        for tag in (".partial-", ".old-"):
            prefix = base + tag
            if name.startswith(prefix) and name[len(prefix):].isdigit():
                pid = int(name[len(prefix):])
                try:
                    os.kill(pid, 0)
                    alive = pid != os.getpid()
                except ProcessLookupError:
                    alive = False
                except PermissionError:  # another user's live process
                    alive = True
                if not alive:
                    shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


# Bytes per weight a run writes at most: float32 weights in the last checkpoint
# and the backup with Adam's two moments (3 + 3 copies), the best epoch's weights
# and the output model (1 + 1), and as much again while a file is replaced.
BYTES_PER_WEIGHT = 4 * 8 * 2


def check_free_space(config, weights):
    """A ValueError before any training when the workdir's or the output's file
    system has less free space than the run will write (`BYTES_PER_WEIGHT` per
    weight): a full disk found later fails deep inside h5py."""
    needed = BYTES_PER_WEIGHT * int(weights)
    for flag, path in (("workdir", config.workdir), ("output", config.output)):
        free = shutil.disk_usage(_nearest_existing(path)).free
        if free < needed:
            raise ValueError(
                f"--{flag} {path}: {free / 2**20:,.0f} MiB free on its file system, and the run "
                f"writes up to {needed / 2**20:,.0f} MiB ({int(weights):,} weights: checkpoints, "
                "backup and model). Free some space or choose another folder."
            )


def write_outputs(output, model=None, files=None, save=None):
    """Writes `model.keras` and the JSON `files` into `output` atomically: a
    complete new folder replaces the old one, or nothing changes.

    `save`, if given, is called with the folder being written (before it
    replaces `output`) to add other model files, e.g. `MFA.save`. A folder
    `output` holding anything but a model of ours is never replaced: a
    ValueError says so (`check_output_paths`)."""
    check_output_paths(output)
    output = os.path.abspath(output)
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_partials(output)
    partial = f"{output}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        if model is not None:
            inference_copy(model).save(os.path.join(partial, "model.keras"))
        if save is not None:
            save(partial)
        for name, content in (files or {}).items():
            with open(os.path.join(partial, name), "w") as f:
                f.write(content if isinstance(content, str) else json.dumps(content, indent=2))
                f.write("\n")
        old = None
        if os.path.exists(output):
            old = f"{output}.old-{os.getpid()}"
            os.replace(output, old)
        os.replace(partial, output)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
