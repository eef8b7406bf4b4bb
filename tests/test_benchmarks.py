"""The log_prob benchmark script runs end to end on tiny sizes."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_log_prob.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_log_prob", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_log_prob_tiny(tmp_path, capsys):
    bench = load_benchmark()
    out = tmp_path / "bench.json"
    results = bench.main([
        "--batch", "4", "--components", "2", "--factors", "3", "--size", "8",
        "--hole", "4x4", "--repeats", "2", "--dense-repeats", "1", "--warmup", "1",
        "--accuracy", "--acc-batch", "6", "--acc-size", "6", "--acc-hole", "3x3",
        "--json", str(out),
    ])
    printed = capsys.readouterr().out

    agreement = results["agreement"]
    assert agreement["passed"], agreement["failures"]
    assert set(agreement["max_abs_diff_nats"]) == {"tfp_direct", "dense"}
    assert max(agreement["max_abs_diff_nats"].values()) < 1e-3
    assert "agreement check passed" in printed

    timings = results["timings"]
    assert set(timings) == {"ours", "tfp_direct", "dense"}
    for cases in timings.values():
        for case in ("forward", "gradient"):
            assert cases[case]["median_ms"] > 0
            assert cases[case]["q25_ms"] <= cases[case]["median_ms"] <= cases[case]["q75_ms"]
    assert timings["dense"]["forward"]["repeats"] == 1
    assert "| implementation | forward ms (median) | forward+grad ms (median)" in printed

    errors = results["accuracy"]["errors"]
    assert errors["ours"]["worst_rel"] < 1e-3
    assert errors["ours"]["median_rel"] <= errors["ours"]["worst_rel"]
    assert errors["tfp_direct"]["worst_rel"] < 1.0  # finite and sane; it is the less accurate one
    assert errors["dense"]["worst_rel"] < 1e-2

    written = json.loads(out.read_text())
    assert written["agreement"]["passed"]
    assert written["config"]["hole"] == [4, 4]
