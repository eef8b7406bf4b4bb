"""Training speed of every architecture, on the paths a user can take.

For each case (an architecture, an image shape and a batch size) this script
trains the DMFA network with plain `model.fit` on a fixed in-memory batch of
masked images and times the steps with a callback. Each path runs in a fresh
process, so that its peak resident memory (RSS) is its own:

| path | compile call |
|---|---|
| `plain` | plain Keras: `compile(Adam, jit_compile=False, fuse_optimizer=False)` |
| `fused` | `compile(Adam, jit_compile=False)`: Adam's update in one kernel |
| `xla` | `compile(Adam, jit_compile=True)`: the whole step compiled by XLA |
| `default` | what `build_model -> compile(Adam) -> fit` and `train.py` do: `precision="auto"` (bfloat16 where `models.CPU_BF16` says so, on CPUs that have it) |
| `bf16` | `build_model(..., precision="mixed_bfloat16")`, then `compile(Adam)`: the backbone computes in bfloat16 (oneDNN's kernels; `auto` leaves XLA off for it on CPU), the head and the density in float32 |

It prints, per case and path: images per second and the median step (over the
steps after the warm-up), the first step (tracing, and compiling under XLA),
the peak RSS, the share of the machine's limit, and the ratio of each path's
speed to plain Keras's.

**The machine's limit** is measured in the same run: memory bandwidth from
large array copies, and matmul FLOP/s from a 4096 x 4096 float32 matmul (the
best of NumPy and TensorFlow). A step cannot take less than

    FLOPs / matmul FLOP/s  +  bytes / bandwidth

where FLOPs counts the convolutions and dense layers (forward, and twice that
backward) and bytes is a lower bound on the traffic of the weights: read in
the forward and in the backward pass, the gradient written once, then Adam's
4 reads (weights, m, v, gradient) and 3 writes (weights, m, v), 10 passes in
all. "Share of limit" is that bound over the measured median step. The bound
uses float32's matmul speed, so the `bf16` path, whose convolutions and
matmuls run in bfloat16, can exceed 100%.

Usage, from the repository root (about 15 minutes on 2 CPU cores):

    PYTHONPATH=. python benchmarks/bench_training.py
    PYTHONPATH=. python benchmarks/bench_training.py --cases linear_heads:28x28x1:24 --rounds 6
    PYTHONPATH=. python benchmarks/bench_training.py --json results/bench_training.json

Run it alone on the machine: other jobs on the same cores change every figure
(the ratios, measured back to back, move less).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]

PATHS = ("plain", "fused", "xla", "default", "bf16")

# architecture:HxWxC:batch[:width]
DEFAULT_CASES = (
    "linear_heads:28x28x1:24",
    "linear_heads:28x28x1:128",
    "fullconv:28x28x1:64:16",
    "fullconv:28x28x1:64:32",
    "fullconv:32x32x3:64:16",
    "fullconv:32x32x3:64:32",
    "mlp:28x28x1:64:256",
    "mlp:32x32x3:64:256",
)


class Case:
    def __init__(self, text):
        parts = text.split(":")
        if len(parts) not in (3, 4):
            raise ValueError(
                f"A case is architecture:HxWxC:batch[:width]. Received: {text!r}"
            )
        self.text = text
        self.architecture = parts[0]
        try:
            self.shape = tuple(int(v) for v in parts[1].split("x"))
            self.batch = int(parts[2])
            self.width = int(parts[3]) if len(parts) == 4 else None
        except ValueError:
            raise ValueError(f"Bad numbers in case {text!r}") from None
        if len(self.shape) != 3 or min(self.shape) < 1 or self.batch < 1:
            raise ValueError(f"Bad shape or batch in case {text!r}")

    def build(self, components=1, factors=4, precision="float32"):
        from dmfa_tf.models import build_model, width_kwargs

        return build_model(
            self.shape, self.architecture, components=components, factors=factors,
            precision=precision, **width_kwargs(self.architecture, self.width),
        )


# === Work counts ===


def forward_flops(model):
    """Multiply-adds x 2 of the convolutions and dense layers of one image's
    forward pass (the density's O(N L^2) work is left out: it is small)."""
    import keras

    total = 0

    def walk(layer):
        nonlocal total
        for sub in getattr(layer, "_layers", []) or []:
            walk(sub)
        if isinstance(layer, keras.layers.Dense):
            total += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            kh, kw = layer.kernel_size
            out_shape = layer.output.shape if layer._inbound_nodes else None
            if isinstance(layer, keras.layers.Conv2DTranspose):
                in_shape = layer.input.shape
                h, w = in_shape[1], in_shape[2]
                cin, cout = layer.kernel.shape[3], layer.kernel.shape[2]
            else:
                h, w = out_shape[1], out_shape[2]
                cin, cout = layer.kernel.shape[2], layer.kernel.shape[3]
            total += 2 * h * w * kh * kw * cin * cout

    for layer in model.layers:
        if layer.name == "mixture_head":
            total += _head_flops(model, layer)
        else:
            walk(layer)
    return total


def _head_flops(model, head):
    """The heads' layers are built inside the head, not called on symbolic
    inputs: count them from their kernels and the image size."""
    total = 0
    height, width, _ = head.image_shape
    for attr in ("logits_dense", "loc_dense", "factors_dense", "diag_dense"):
        dense = getattr(head, attr, None)
        if dense is not None:
            total += 2 * dense.kernel.shape[0] * dense.kernel.shape[1]
    for attr in ("loc_conv", "diag_conv", "factors_conv"):
        conv = getattr(head, attr, None)
        if conv is not None:
            kh, kw = conv.kernel_size
            total += 2 * height * width * kh * kw * conv.kernel.shape[2] * conv.kernel.shape[3]
    return total


def measure_machine(repeats=5):
    """Memory bandwidth (GB/s, copies of 512 MB) and matmul GFLOP/s (4096^2)."""
    import numpy as np
    import tensorflow as tf

    a = np.ones(128 * 2**20, np.float32)  # 512 MB
    b = np.empty_like(a)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(b, a)
        times.append(time.perf_counter() - started)
    bandwidth = 2 * a.nbytes / min(times) / 1e9  # read + write
    del a, b

    n = 4096
    x = np.random.RandomState(0).rand(n, n).astype(np.float32)
    flops = {}
    times = []
    x @ x
    for _ in range(repeats):
        started = time.perf_counter()
        x @ x
        times.append(time.perf_counter() - started)
    flops["numpy"] = 2 * n**3 / min(times) / 1e9
    tx = tf.constant(x)
    @tf.function
    def matmul(t):
        return tf.linalg.matmul(t, t)

    matmul(tx).numpy()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        matmul(tx).numpy()
        times.append(time.perf_counter() - started)
    flops["tensorflow"] = 2 * n**3 / min(times) / 1e9
    return {
        "bandwidth_gb_s": round(bandwidth, 2),
        "matmul_gflop_s": {k: round(v, 1) for k, v in flops.items()},
        "matmul_best_gflop_s": round(max(flops.values()), 1),
    }


# === One path of one case, in its own process ===


class Worker:
    """One path of one case, in its own process, trained a few steps at a time."""

    def __init__(self, case, path, learning_rate=1e-4):
        import keras
        import numpy as np
        import tensorflow as tf

        from dmfa_tf.models import optimizers

        keras.utils.set_random_seed(0)
        self.case = case
        self.path = path
        precision = {"bf16": "mixed_bfloat16", "default": "auto"}.get(path, "float32")
        # plain, fused and xla are the float32 paths
        self.model = model = case.build(precision=precision)
        kwargs = {
            "plain": dict(jit_compile=False, fuse_optimizer=False),
            "fused": dict(jit_compile=False),
            "xla": dict(jit_compile=True),
            "default": {},
            "bf16": {},
        }[path]
        model.compile(keras.optimizers.Adam(learning_rate), **kwargs)
        self.jit = bool(model.jit_compile)
        self.fused = optimizers.is_fused(model.optimizer)
        rng = np.random.RandomState(0)
        height, width, channels = case.shape
        image = rng.rand(case.batch, height, width, channels).astype(np.float32)
        mask = np.ones((case.batch, height, width, 1), np.float32)
        mask[:, height // 4 : height // 4 + height // 2, width // 4 : width // 4 + width // 2] = 0
        self.data = tf.data.Dataset.from_tensors({"image": image, "mask": mask}).repeat()

    def info(self):
        from dmfa_tf.models import precision_of

        weights = int(self.model.count_params())
        return {
            "case": self.case.text,
            "path": self.path,
            "jit_compile": self.jit,
            "fused_optimizer": self.fused,
            "weights": weights,
            "precision": precision_of(self.model),
            "weight_bytes": 4 * weights,
            "forward_flops_per_image": forward_flops(self.model),
            "peak_rss_mb": peak_rss_mb(),
        }


def worker_main(case, path):
    """A worker's loop: one JSON request a line in ({"steps": n}, {"info":
    true} or {"stop": true}), one JSON reply a line out.

    The worker trains in ONE `fit` call planned as a long run (as a real
    training is, so that `jit_compile="auto"` decides as it would there); a
    callback pauses it between requests. Each step is timed from its batch's
    start to its end, so the pauses are not counted."""
    import keras

    worker = Worker(case, path)
    print(json.dumps({"ready": True}), flush=True)

    def next_request():
        for line in sys.stdin:
            request = json.loads(line)
            if request.get("info"):
                print(json.dumps(worker.info()), flush=True)
                continue
            return request
        return {"stop": True}

    class Protocol(keras.callbacks.Callback):
        def __init__(self, first):
            super().__init__()
            self.left = first["steps"]
            self.intervals = []

        def on_train_batch_begin(self, batch, logs=None):
            self.started = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.intervals.append(time.perf_counter() - self.started)
            self.left -= 1
            if self.left > 0:
                return
            print(json.dumps({"intervals": self.intervals}), flush=True)
            self.intervals = []
            request = next_request()
            if request.get("stop"):
                self.model.stop_training = True
            else:
                self.left = request["steps"]

    first = next_request()
    if first.get("stop"):
        return
    worker.model.fit(
        worker.data, epochs=1000, steps_per_epoch=10**6, callbacks=[Protocol(first)], verbose=0
    )


def peak_rss_mb():
    """This process's peak resident memory: VmHWM (Linux; reset by exec, unlike
    ru_maxrss, which a child inherits from its parent), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class WorkerProcess:
    """The coordinator's handle on one worker process."""

    def __init__(self, case_text, path):
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker",
             "--cases", case_text, "--paths", path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env,
        )
        self._read()  # {"ready": true}

    def _read(self):
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        error = self.process.stderr.read().strip().splitlines()[-5:]
        raise RuntimeError(" / ".join(error) or f"worker exited with {self.process.wait()}")

    def ask(self, request):
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self):
        try:
            self.process.stdin.write(json.dumps({"stop": True}) + "\n")
            self.process.stdin.close()
            self.process.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()


def measure_case(case, paths, rounds, steps, warmup):
    """Rows for every path of one case. Each path has its own process (for its
    peak RSS); the timed steps run in rounds, the paths taking turns in a
    rotating order, so that load from other jobs falls on all of them alike."""
    workers, rows = {}, {}
    try:
        for path in paths:
            try:
                workers[path] = WorkerProcess(case.text, path)
                first = workers[path].ask({"steps": warmup})["intervals"]
                rows[path] = {"first_step_s": round(first[0], 3), "intervals": []}
            except RuntimeError as error:
                rows[path] = {"case": case.text, "path": path, "error": str(error)}
                workers.pop(path, None)
        live = [p for p in paths if p in workers]
        for r in range(rounds):
            for path in live[r % len(live):] + live[: r % len(live)] if live else []:
                rows[path]["intervals"] += workers[path].ask({"steps": steps})["intervals"]
        for path in live:
            rows[path].update(workers[path].ask({"info": True}))
    finally:
        for worker in workers.values():
            worker.close()
    out = []
    for path in paths:
        row = rows[path]
        if "error" not in row:
            measured = row.pop("intervals")
            median = statistics.median(measured)
            quartiles = statistics.quantiles(measured, n=4) if len(measured) > 1 else [median] * 3
            row.update(
                median_step_s=median,
                q25_step_s=quartiles[0],
                q75_step_s=quartiles[2],
                timed_steps=len(measured),
                images_per_s=case.batch / median,
            )
        out.append(row)
    return out


# === Report ===


def add_limits(row, machine, batch):
    if "error" in row:
        return row
    flops = 3 * row["forward_flops_per_image"] * batch  # forward + backward (2x)
    traffic = 10 * row["weight_bytes"]
    limit = flops / (machine["matmul_best_gflop_s"] * 1e9) + traffic / (
        machine["bandwidth_gb_s"] * 1e9
    )
    row["step_flops"] = flops
    row["step_bytes_lower_bound"] = traffic
    row["limit_step_s"] = limit
    row["share_of_limit"] = limit / row["median_step_s"]
    return row


def format_table(rows):
    lines = [
        "| case | path | XLA | fused Adam | bfloat16 | img/s | median step ms [q25, q75] | first step s "
        "| peak RSS MB | share of limit | vs plain |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    plain = {r["case"]: r for r in rows if r.get("path") == "plain" and "error" not in r}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['path']} | error: {r['error']} ||||||||| ")
            continue
        base = plain.get(r["case"])
        ratio = f"{base['median_step_s'] / r['median_step_s']:.2f}x" if base else "n/a"
        lines.append(
            f"| {r['case']} | {r['path']} | {'yes' if r['jit_compile'] else 'no'} | "
            f"{'yes' if r['fused_optimizer'] else 'no'} | "
            f"{'yes' if r.get('precision', 'float32') != 'float32' else 'no'} | "
            f"{r['images_per_s']:.1f} | "
            f"{1000 * r['median_step_s']:.1f} [{1000 * r['q25_step_s']:.1f}, "
            f"{1000 * r['q75_step_s']:.1f}] | {r['first_step_s']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {100 * r['share_of_limit']:.0f}% | {ratio} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES),
                        help="architecture:HxWxC:batch[:width] (default: all)")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds of timed steps, the paths taking turns (4)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per path and round (3)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed first steps per path (2); the first is reported")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.rounds, args.steps, args.warmup) < 1:
        parser.error("--rounds, --steps and --warmup must be >= 1")
    cases = [Case(text) for text in args.cases]

    if args.worker:
        return worker_main(cases[0], args.paths[0])

    import tensorflow as tf

    machine = measure_machine()
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    print(
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), GPUs: {gpus or 'none'}; "
        f"copy bandwidth {machine['bandwidth_gb_s']} GB/s, 4096^2 matmul "
        f"{machine['matmul_gflop_s']} GFLOP/s; TensorFlow {tf.__version__}",
        flush=True,
    )
    rows = []
    for case in cases:
        for row in measure_case(case, args.paths, args.rounds, args.steps, args.warmup):
            row = add_limits(row, machine, case.batch)
            rows.append(row)
            if "error" in row:
                print(f"  {case.text} {row['path']}: error: {row['error']}", flush=True)
            else:
                print(
                    f"  {case.text} {row['path']}: {row['images_per_s']:.1f} img/s, median step "
                    f"{1000 * row['median_step_s']:.1f} ms, first {row['first_step_s']:.2f} s, "
                    f"peak RSS {row['peak_rss_mb']:.0f} MB, "
                    f"{100 * row['share_of_limit']:.0f}% of the limit",
                    flush=True,
                )
    print()
    print(format_table(rows))
    results = {
        "machine": machine,
        "hardware": f"{os.cpu_count()} CPU cores ({platform.machine()})",
        "gpus": gpus,
        "tensorflow": tf.__version__,
        "rounds": args.rounds,
        "steps": args.steps,
        "warmup": args.warmup,
        "rows": rows,
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
